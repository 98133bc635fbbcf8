package verifier

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/services/verifier/bridge"
)

// batchMessages are bus messages as the bridge sends them: creates and
// exists of a few instances, with duplicates and one malformed body.
func batchMessages() []*bus.Message {
	launched := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	bodies := newBenchBodies(launched)
	var msgs []*bus.Message
	add := func(body []byte) {
		msgs = append(msgs, &bus.Message{Data: body, Header: map[string][]string{bridge.HeaderRoutingKey: {"notifications.info"}}})
	}
	for _, i := range []int{3, 0, 1, 0, 2, 1, 5, 4, 3} {
		add(bodies.body(i))
	}
	add([]byte(`{"oslo.version": "2.0", "oslo.message": "{\"message_id\": \"m\"}"}`)) // no event_type
	return msgs
}

// failingStore refuses any batch with an exists whose key has fail in it.
type failingStore struct {
	Store
	fail string
}

func (s failingStore) ApplyBatch(ctx context.Context, b *Batch) error {
	for _, e := range b.Exists {
		if strings.Contains(e.Key, s.fail) {
			return errors.New("refused")
		}
	}
	return s.Store.ApplyBatch(ctx, b)
}

// TestHandleBatch: a batch of bus messages leaves the state Ingest of each
// leaves; the malformed one, alone, is answered with a permanent error;
// the batch redelivered whole (a crash between the commit and the acks)
// changes nothing; and a message the store refuses fails alone.
func TestHandleBatch(t *testing.T) {
	eachStorePair(t, func(t *testing.T, one, batched Store) {
		ctx := context.Background()
		msgs := batchMessages()
		vOne := New(DefaultConfig(), nil, nil, nil, WithStore(one))
		for _, m := range msgs {
			_ = vOne.Ingest(ctx, m.Data, m.Header.Get(bridge.HeaderRoutingKey))
		}
		want := readState(t, one, nil)
		if len(want.Launches) != 3 || len(want.Exists) != 3 {
			t.Fatalf("one by one: %d launches, %d exists; the test wants 3 and 3", len(want.Launches), len(want.Exists))
		}

		v := New(DefaultConfig(), nil, nil, nil, WithStore(batched))
		for round := range 2 {
			errs := v.handleBatch(ctx, msgs)
			for i, err := range errs {
				var perm *bus.PermanentError
				if last := i == len(msgs)-1; last != errors.As(err, &perm) || !last && err != nil {
					t.Errorf("round %d, message %d: %v", round, i, err)
				}
			}
			if diff := cmp.Diff(want, readState(t, batched, nil)); diff != "" {
				t.Errorf("round %d: batch vs one by one (-one by one +batch):\n%s", round, diff)
			}
		}
	})

	eachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		msgs := batchMessages()
		v := New(DefaultConfig(), nil, nil, nil, WithStore(failingStore{Store: s, fail: benchMessageID(3) + "."}))
		errs := v.handleBatch(ctx, msgs)
		for i, err := range errs {
			refused := i == 0 || i == 8 // exists 3, twice
			var perm *bus.PermanentError
			switch {
			case refused && (err == nil || errors.As(err, &perm)):
				t.Errorf("message %d: %v, want the store's error (retried later)", i, err)
			case !refused && i < len(msgs)-1 && err != nil:
				t.Errorf("message %d: %v, want it applied despite the refused one", i, err)
			}
		}
		st := readState(t, s, nil)
		if len(st.Launches) != 3 || len(st.Exists) != 2 {
			t.Errorf("%d launches, %d exists; want 3 and 2 (all but the refused exists)", len(st.Launches), len(st.Exists))
		}
	})
}

// passFailing fails the failAt-th FinishInstanceExistsBatch that finishes
// exists (putting exists back to pending always passes), or the
// launchesAt-th LaunchesOf.
type passFailing struct {
	Store
	mu                       sync.Mutex
	finishes, failAt         int
	launches, failLaunchesAt int
}

func (s *passFailing) FinishInstanceExistsBatch(ctx context.Context, fs []Finished) error {
	if len(fs) > 0 && fs[0].Status != StatusPending {
		s.mu.Lock()
		s.finishes++
		n := s.finishes
		s.mu.Unlock()
		if n == s.failAt {
			return errors.New("disk full")
		}
	}
	return s.Store.FinishInstanceExistsBatch(ctx, fs)
}

func (s *passFailing) LaunchesOf(ctx context.Context, instances []string) (map[string][]InstanceUsage, error) {
	s.mu.Lock()
	s.launches++
	n := s.launches
	s.mu.Unlock()
	if n == s.failLaunchesAt {
		return nil, errors.New("disk unreadable")
	}
	return s.Store.LaunchesOf(ctx, instances)
}

// TestPassClaimsAhead: a pass claims and prepares the next batch while it
// checks and finishes one. When a finish fails, the pass stops and the
// batch it claimed ahead goes back to pending: only the batch whose finish
// failed is left verifying (in a store whose claims mark them) until the
// next start. A batch whose preparation failed goes back to pending too.
// The next pass verifies everything else.
func TestPassClaimsAhead(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		failAt, failLaunchesAt int
		wantErr                string
		verified, left         int // verified, and left verifying, by the failed pass
	}{
		{name: "finish", failAt: 2, wantErr: "disk full", verified: 5, left: 5},
		{name: "prepare", failLaunchesAt: 2, wantErr: "disk unreadable", verified: 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eachStore(t, func(t *testing.T, s Store) {
				ctx := context.Background()
				b := Batch{Usage: []UsageEvent{{Usage: launch(), Overwrite: true}}}
				for i := range 20 {
					b.Exists = append(b.Exists, exists(func(e *InstanceExists) { e.Key, e.MessageID = fmt.Sprint("k", i), fmt.Sprint("m", i) }))
				}
				apply(t, s, b)
				cfg := DefaultConfig()
				cfg.BatchSize, cfg.PoolSize = 5, 2
				fs := &passFailing{Store: s, failAt: tc.failAt, failLaunchesAt: tc.failLaunchesAt}
				v := New(cfg, nil, nil, nil, WithStore(fs), WithClock(func() time.Time { return ape.Add(time.Hour) }))
				if _, err := v.VerifyPending(ctx); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("pass: %v, want %q", err, tc.wantErr)
				}
				counts, _, err := s.CountExists(ctx)
				mustDo(t, err)
				want := map[Status]int{StatusVerified: tc.verified}
				want[StatusPending] += 20 - tc.verified - tc.left
				if tc.left > 0 {
					want[claimedStatus(s)] += tc.left
				}
				if diff := cmp.Diff(want, counts); diff != "" {
					t.Errorf("after the failed pass (-want +got):\n%s", diff)
				}
				_, err = s.ResetVerifying(ctx)
				mustDo(t, err)
				fs.failAt, fs.failLaunchesAt = 0, 0
				res, err := v.VerifyPending(ctx)
				mustDo(t, err)
				if res.Verified != 20-tc.verified || res.Failed != 0 {
					t.Errorf("next pass: %+v, want the %d others verified", res, 20-tc.verified)
				}
			})
		})
	}
}
