package query

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// hold takes s's writer lock and returns its release, which first waits
// until want batches were ever queued: Writes started meanwhile meet in
// the queue, as under load.
func hold(t *testing.T, s *sqliteStore) func(want int) {
	t.Helper()
	s.writeMu.Lock()
	return func(want int) {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			s.qmu.Lock()
			n := s.enqueued
			s.qmu.Unlock()
			if n >= want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d batches queued", n, want)
			}
		}
		s.writeMu.Unlock()
	}
}

// writeAll writes each batch from a goroutine of its own while s's
// writer lock is held, and returns each Write's error.
func writeAll(t *testing.T, s *sqliteStore, batches [][]*tallyv1.Record) []error {
	t.Helper()
	s.qmu.Lock()
	before := s.enqueued
	s.qmu.Unlock()
	release := hold(t, s)
	errs := make([]error, len(batches))
	var wg sync.WaitGroup
	for i, b := range batches {
		wg.Go(func() { errs[i] = s.Write(context.Background(), b) })
	}
	release(before + len(batches))
	wg.Wait()
	return errs
}

// TestGroupCommit writes the same records from concurrent writers, whose
// batches are committed in groups, and one at a time: the stores must
// hold the same records and summaries, and a batch the store refuses
// must fail its own Write alone.
func TestGroupCommit(t *testing.T) {
	ctx := context.Background()
	start := at("2026-01-10T00:00:00Z")
	var batches [][]*tallyv1.Record
	for w := range 6 {
		var b []*tallyv1.Record
		for i := range 20 {
			// VMs shared between batches, extracted at different times,
			// so that order and grouping matter to cloud_months.
			v := vm{id: fmt.Sprintf("vm-%02d", (i+w)%25), site: "S1", vo: []string{"atlas", "cms"}[i%2], project: "p", cpus: 2, start: start}
			end := start.Add(time.Duration(24*(w+1)) * time.Hour * 7)
			b = append(b, v.cloud(end.Add(-time.Hour), end))
		}
		batches = append(batches, b)
	}
	poison := []*tallyv1.Record{vm{id: "vm-poison", site: "S1", vo: "poison", project: "p", cpus: 1, start: start}.cloud(start, start.Add(time.Hour))}

	s := openAt(t, "sqlite://"+filepath.Join(t.TempDir(), "q.db")).(*sqliteStore)
	for i, err := range writeAll(t, s, batches) {
		if err != nil {
			t.Errorf("batch %d: %v", i, err)
		}
	}
	// All but the first writer's batch waited in the queue while the
	// lock was held: two groups at most.
	s.writeMu.Lock()
	commits := s.commits
	s.writeMu.Unlock()
	if commits > 2 {
		t.Errorf("%d transactions for %d batches", commits, len(batches))
	}

	// A trigger refuses the poisoned batch in the transaction, where a
	// broken disk or a constraint would: it fails alone.
	if _, err := s.db.ExecContext(ctx, `CREATE TRIGGER poison BEFORE INSERT ON records WHEN NEW.vo = 'poison'
		BEGIN SELECT RAISE(ABORT, 'poisoned record'); END`); err != nil {
		t.Fatal(err)
	}
	later := vm{id: "vm-later", site: "S1", vo: "atlas", project: "p", cpus: 1, start: start}
	errs := writeAll(t, s, [][]*tallyv1.Record{poison, {later.cloud(start, start.Add(time.Hour))}})
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "poisoned record") {
		t.Errorf("poisoned batch: Write = %v, want the trigger's error", errs[0])
	}
	if errs[1] != nil {
		t.Errorf("batch beside the poisoned one: %v", errs[1])
	}
	if _, err := s.Get(ctx, poison[0].GetKey()); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(poisoned) = %v, want ErrNotFound", err)
	}
	if _, err := s.Get(ctx, "cloud/vm-later"); err != nil {
		t.Errorf("Get(batch beside the poisoned one) = %v", err)
	}
	if _, err := s.db.ExecContext(ctx, "DROP TRIGGER poison"); err != nil {
		t.Fatal(err)
	}
	write(t, s, batches[0]...) // a redelivery changes nothing

	seq := openAt(t, "sqlite://"+filepath.Join(t.TempDir(), "seq.db"))
	for _, b := range append(batches, []*tallyv1.Record{later.cloud(start, start.Add(time.Hour))}) {
		write(t, seq, b...)
	}
	sameContent(t, seq, s, []tallyv1.UsageGroupBy{tallyv1.UsageGroupBy_USAGE_GROUP_BY_MONTH, tallyv1.UsageGroupBy_USAGE_GROUP_BY_VO},
		1, "one at a time vs grouped")
}

// TestGroupCommitHandsOver queues many more batches than a group holds
// behind the first writer: once its own batch is committed, that writer
// must hand the lead on, or the others would wait for ever.
func TestGroupCommitHandsOver(t *testing.T) {
	ctx := context.Background()
	s := openAt(t, "sqlite://"+filepath.Join(t.TempDir(), "q.db")).(*sqliteStore)
	release := hold(t, s)
	const writers = 3 * maxGroup
	start := at("2026-01-10T00:00:00Z")
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			v := vm{id: fmt.Sprintf("vm-%02d", w), site: "S1", vo: "atlas", project: "p", cpus: 1, start: start}
			if err := s.Write(ctx, []*tallyv1.Record{v.cloud(start, start.Add(time.Hour))}); err != nil {
				t.Error(err)
			}
		})
	}
	release(writers)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		s.qmu.Lock()
		t.Fatalf("Writes still waiting after 30 s, %d batches in the queue, leading %v", len(s.queue), s.leading)
	}
	recs, _, err := s.List(ctx, &tallyv1.RecordFilter{}, nil, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != writers {
		t.Errorf("%d records stored, want %d", len(recs), writers)
	}
}
