package verifier

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

func TestPool(t *testing.T) {
	errBad := errors.New("bad item")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name    string
		ctx     context.Context
		n       int
		items   int
		failAt  int // -1: none
		wantErr error
		// wantAll: every item ran; else fewer than all did.
		wantAll bool
	}{
		{name: "all ran", ctx: context.Background(), n: 3, items: 50, failAt: -1, wantAll: true},
		{name: "one worker", ctx: context.Background(), n: 1, items: 10, failAt: -1, wantAll: true},
		{name: "no items", ctx: context.Background(), n: 2, items: 0, failAt: -1, wantAll: true},
		{name: "first error stops it", ctx: context.Background(), n: 1, items: 50, failAt: 3, wantErr: errBad},
		{name: "cancelled", ctx: cancelled, n: 2, items: 10, failAt: -1, wantErr: context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			items := make([]int, tt.items)
			for i := range items {
				items[i] = i
			}
			var ran, running, most atomic.Int64
			var mu sync.Mutex
			seen := map[int]bool{}
			err := pool(tt.ctx, tt.n, items, func(i int) error {
				cur := running.Add(1)
				defer running.Add(-1)
				for {
					m := most.Load()
					if cur <= m || most.CompareAndSwap(m, cur) {
						break
					}
				}
				ran.Add(1)
				mu.Lock()
				seen[i] = true
				mu.Unlock()
				if i == tt.failAt {
					return errBad
				}
				return nil
			})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got := most.Load(); got > int64(tt.n) {
				t.Errorf("%d ran at once, want at most %d", got, tt.n)
			}
			if tt.wantAll && (int(ran.Load()) != tt.items || len(seen) != tt.items) {
				t.Errorf("%d of %d items ran (%d distinct)", ran.Load(), tt.items, len(seen))
			}
			if !tt.wantAll && int(ran.Load()) == tt.items {
				t.Errorf("all %d items ran after the error", tt.items)
			}
		})
	}
}
