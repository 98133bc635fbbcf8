package verifier

import (
	"context"
	"errors"
	"strings"
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
