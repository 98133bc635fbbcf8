package messenger

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/metrics"
	"github.com/tally-accounting/tally/pkg/record"
)

type countingSink struct {
	mu      sync.Mutex
	records int
	writes  int
	err     error
}

func (c *countingSink) Write(_ context.Context, _ string, rs []*tallyv1.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	c.writes++
	c.records += len(rs)
	return nil
}

func cloud() *tallyv1.Record {
	return &tallyv1.Record{Payload: &tallyv1.Record_Cloud{Cloud: &tallyv1.CloudRecord{VmUuid: "v"}}}
}

func storage() *tallyv1.Record {
	return &tallyv1.Record{Payload: &tallyv1.Record_Storage{Storage: &tallyv1.StorageRecord{RecordId: "s"}}}
}

func newServer(t *testing.T, sink Sink, types ...string) (*Server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ledger")
	l, err := OpenLedger(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ts, err := record.ParseTypes(types)
	if err != nil {
		t.Fatal(err)
	}
	return NewServer("test", sink, l, ts, metrics.New(), slog.New(slog.NewTextHandler(io.Discard, nil))), path
}

func TestPush(t *testing.T) {
	tests := []struct {
		name     string
		types    []string
		sinkErr  error
		req      *tallyv1.PushRequest
		want     *tallyv1.PushResponse
		wantCode codes.Code
		written  int
	}{
		{"all types", nil, nil, &tallyv1.PushRequest{BatchId: "b", Records: []*tallyv1.Record{cloud(), storage()}},
			&tallyv1.PushResponse{Accepted: 2}, codes.OK, 2},
		{"filtered", []string{"cloud"}, nil, &tallyv1.PushRequest{BatchId: "b", Records: []*tallyv1.Record{cloud(), storage()}},
			&tallyv1.PushResponse{Accepted: 1, Filtered: 1}, codes.OK, 1},
		{"no batch id", nil, nil, &tallyv1.PushRequest{Records: []*tallyv1.Record{cloud()}}, nil, codes.InvalidArgument, 0},
		{"destination down", nil, errors.New("disk full"), &tallyv1.PushRequest{BatchId: "b", Records: []*tallyv1.Record{cloud()}},
			nil, codes.Unavailable, 0},
		{"rejected", nil, ErrRejected, &tallyv1.PushRequest{BatchId: "b", Records: []*tallyv1.Record{cloud()}},
			nil, codes.InvalidArgument, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sink := &countingSink{err: tt.sinkErr}
			s, _ := newServer(t, sink, tt.types...)
			got, err := s.Push(t.Context(), tt.req)
			if code := status.Code(err); code != tt.wantCode {
				t.Fatalf("Push() code = %v (%v), want %v", code, err, tt.wantCode)
			}
			if err == nil && (got.Accepted != tt.want.Accepted || got.Filtered != tt.want.Filtered || got.Duplicate) {
				t.Errorf("Push() = %v, want %v", got, tt.want)
			}
			if sink.records != tt.written {
				t.Errorf("sink got %d records, want %d", sink.records, tt.written)
			}
		})
	}
}

func TestPushIsIdempotentAcrossRestarts(t *testing.T) {
	sink := &countingSink{}
	s, path := newServer(t, sink)
	req := &tallyv1.PushRequest{BatchId: "nova/p/w/cloud/0", Records: []*tallyv1.Record{cloud()}}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := s.Push(t.Context(), req); err != nil {
				t.Errorf("Push: %v", err)
			}
		})
	}
	wg.Wait()
	if sink.writes != 1 {
		t.Fatalf("8 concurrent pushes of one batch wrote %d times, want 1", sink.writes)
	}
	s.ledger.Close()

	// A new process with the same ledger file still knows the batch.
	l, err := OpenLedger(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s2 := NewServer("test", sink, l, s.types, metrics.New(), s.logger)
	resp, err := s2.Push(t.Context(), req)
	if err != nil || !resp.Duplicate {
		t.Fatalf("push after reopen = %v, %v; want duplicate", resp, err)
	}
	if sink.writes != 1 {
		t.Errorf("redelivered batch written again")
	}
}

func TestLedgerCompactsToKeep(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger")
	l, err := OpenLedger(path, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		if err := l.Record(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Record("bad\nid"); err == nil {
		t.Error("an id with a newline was accepted")
	}
	l.Close()
	l, err = OpenLedger(path, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for id, want := range map[string]bool{"a": false, "b": false, "c": true, "d": true, "e": true} {
		if got := l.Seen(id); got != want {
			t.Errorf("Seen(%q) = %v after compaction, want %v", id, got, want)
		}
	}
}

// TestLedgerConcurrentRecords has many batches finish at once: each
// Record returns only with its id durable (seen, and in the file a
// reopened ledger reads), however the writes were grouped.
func TestLedgerConcurrentRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger")
	l, err := OpenLedger(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 50 {
				id := fmt.Sprintf("b-%d-%d", w, i)
				if err := l.Record(id); err != nil {
					t.Error(err)
					return
				}
				if !l.Seen(id) {
					t.Errorf("%s not seen after Record returned", id)
				}
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "\n"); n != 400 {
		t.Errorf("%d lines in the ledger, want 400", n)
	}
	l, err = OpenLedger(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for w := range 8 {
		for i := range 50 {
			if id := fmt.Sprintf("b-%d-%d", w, i); !l.Seen(id) {
				t.Errorf("%s lost across a reopen", id)
			}
		}
	}
	if err := l.Record("b-0-0"); err != nil {
		t.Fatal(err)
	}
}

// TestLedgerRecordAfterClose fails rather than losing the id silently.
func TestLedgerRecordAfterClose(t *testing.T) {
	l, err := OpenLedger(filepath.Join(t.TempDir(), "ledger"), 0)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if err := l.Record("x"); err == nil || l.Seen("x") {
		t.Errorf("Record after Close: %v, seen %v", err, l.Seen("x"))
	}
}
