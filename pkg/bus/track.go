package bus

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
)

// Outcome is what became of a published batch downstream.
type Outcome int

// Outcomes of a batch.
const (
	// Pending: nothing heard yet.
	Pending Outcome = iota
	// Delivered: every messenger accepted every record.
	Delivered
	// Failed: the batch, or some of its records, went to a dead-letter
	// subject instead.
	Failed
)

func (o Outcome) String() string {
	switch o {
	case Delivered:
		return "delivered"
	case Failed:
		return "failed"
	}
	return "pending"
}

// Tracker follows batches from publication to their enriched or dead-letter
// twin, so an extractor moves its window only once everything arrived.
// Create it before publishing: it hears only what comes after.
type Tracker struct {
	subs []*nats.Subscription

	mu      sync.Mutex
	changed chan struct{}
	partial map[string]string // batch id → a record's dead-letter reason
	done    map[string]Outcome
	reasons map[string]string
	held    map[string][]string // batch id → projects with dead-lettered records
	// admitted are the batches Admit let through that had no outcome
	// when last looked at.
	admitted map[string]struct{}
}

// NewTracker listens for the outcomes of batches published for region.
func (b *Bus) NewTracker(region string) (*Tracker, error) {
	t := &Tracker{changed: make(chan struct{}), partial: map[string]string{}, done: map[string]Outcome{},
		reasons: map[string]string{}, held: map[string][]string{}, admitted: map[string]struct{}{}}
	for _, subj := range []string{"tally.records.enriched." + Token(region) + ".>", DeadLetterAll} {
		sub, err := b.NC.Subscribe(subj, t.on)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("track %s: %w", subj, err)
		}
		// A run publishes many batches at once; never drop an outcome.
		_ = sub.SetPendingLimits(-1, -1)
		t.subs = append(t.subs, sub)
	}
	if err := b.NC.Flush(); err != nil {
		t.Close()
		return nil, fmt.Errorf("track: %w", err)
	}
	return t, nil
}

func (t *Tracker) on(m *nats.Msg) {
	id := m.Header.Get(HeaderBatchID)
	if id == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	dead := m.Header.Get(HeaderReason) != ""
	switch {
	case dead && m.Header.Get(HeaderRecordIndex) != "":
		t.partial[id] = m.Header.Get(HeaderReason)
		return
	case dead:
		t.done[id] = Failed
		t.reasons[id] = m.Header.Get(HeaderReason)
		if h := m.Header.Get(HeaderHeldProjects); h != "" {
			t.held[id] = strings.Split(h, ",")
		}
	case t.partial[id] != "":
		t.done[id] = Failed
		t.reasons[id] = "a record was dead-lettered: " + t.partial[id]
	default:
		t.done[id] = Delivered
	}
	close(t.changed)
	t.changed = make(chan struct{})
}

// Wait blocks until every id has an outcome or ctx ends, and returns the
// outcomes (Pending for the ones not heard of) and the failure reasons.
func (t *Tracker) Wait(ctx context.Context, ids []string) (map[string]Outcome, map[string]string) {
	for {
		t.mu.Lock()
		out := make(map[string]Outcome, len(ids))
		reasons := map[string]string{}
		complete := true
		for _, id := range ids {
			o := t.done[id]
			out[id] = o
			if o == Pending {
				complete = false
			}
			if r := t.reasons[id]; r != "" {
				reasons[id] = r
			}
		}
		changed := t.changed
		t.mu.Unlock()
		if complete {
			return out, reasons
		}
		select {
		case <-ctx.Done():
			return out, reasons
		case <-changed:
		}
	}
}

// Admit blocks until fewer than limit of the batches admitted before are
// without an outcome, then counts id among them; it returns ctx's error
// if that does not happen first. A publisher that admits each batch before
// publishing it has at most limit of them on the bus and in the stages
// behind it: a slow stage holds the publisher back, where the bus would
// otherwise store, and cache, whatever the publisher lists.
func (t *Tracker) Admit(ctx context.Context, id string, limit int) error {
	for {
		t.mu.Lock()
		for a := range t.admitted {
			if t.done[a] != Pending {
				delete(t.admitted, a)
			}
		}
		_, again := t.admitted[id]
		if again || len(t.admitted) < limit || t.done[id] != Pending {
			if t.done[id] == Pending {
				t.admitted[id] = struct{}{}
			}
			t.mu.Unlock()
			return nil
		}
		changed := t.changed
		t.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// FailedProjects returns, for a batch that failed only in part, the
// projects whose records were held; empty when the batch failed whole.
func (t *Tracker) FailedProjects(id string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.held[id]
}

// Close stops listening.
func (t *Tracker) Close() {
	for _, s := range t.subs {
		_ = s.Unsubscribe()
	}
}
