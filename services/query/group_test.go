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

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// heldSQLite opens a SQLite store and holds its writer lock until the
// returned release is called, with want batches queued: concurrent Writes
// then meet in the queue, as under load.
func heldSQLite(t *testing.T) (*sqliteStore, func(want int)) {
	t.Helper()
	s := openAt(t, "sqlite://"+filepath.Join(t.TempDir(), "q.db")).(*sqliteStore)
	s.writeMu.Lock()
	return s, func(want int) {
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

	s, release := heldSQLite(t)
	// A trigger refuses the poisoned batch in the transaction, where a
	// broken disk or a constraint would.
	if _, err := s.db.ExecContext(ctx, `CREATE TRIGGER poison BEFORE INSERT ON records WHEN NEW.vo = 'poison'
		BEGIN SELECT RAISE(ABORT, 'poisoned record'); END`); err != nil {
		t.Fatal(err)
	}
	all := append(batches[:len(batches):len(batches)], poison)
	errs := make([]error, len(all))
	var wg sync.WaitGroup
	for i, b := range all {
		wg.Go(func() { errs[i] = s.Write(ctx, b) })
	}
	release(len(all))
	wg.Wait()
	for i, err := range errs {
		if i == len(all)-1 {
			if err == nil || !strings.Contains(err.Error(), "poisoned record") {
				t.Errorf("poisoned batch: Write = %v, want the trigger's error", err)
			}
		} else if err != nil {
			t.Errorf("batch %d: %v", i, err)
		}
	}
	s.writeMu.Lock()
	commits := s.commits
	s.writeMu.Unlock()
	// All but the first writer's batch wait in the queue while the lock
	// is held: at most two groups, and the retry of each batch of the
	// group the poisoned one failed.
	if commits > 2+len(all) || commits < 2 {
		t.Errorf("%d transactions for %d batches", commits, len(all))
	}
	if _, err := s.Get(ctx, poison[0].GetKey()); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(poisoned) = %v, want ErrNotFound", err)
	}

	seq := openAt(t, "sqlite://"+filepath.Join(t.TempDir(), "seq.db"))
	for _, b := range batches {
		write(t, seq, b...)
	}
	list := func(st Store) []*tallyv1.Record {
		recs, _, err := st.List(ctx, &tallyv1.RecordFilter{}, nil, 1000)
		if err != nil {
			t.Fatal(err)
		}
		return recs
	}
	if diff := cmp.Diff(list(seq), list(s), protocmp.Transform()); diff != "" {
		t.Errorf("records, one at a time vs grouped (-want +got):\n%s", diff)
	}
	by := []tallyv1.UsageGroupBy{tallyv1.UsageGroupBy_USAGE_GROUP_BY_MONTH, tallyv1.UsageGroupBy_USAGE_GROUP_BY_VO}
	for _, f := range []*tallyv1.RecordFilter{{}, {Start: ts(at("2026-02-01T00:00:00Z")), End: ts(at("2026-03-01T00:00:00Z"))}} {
		want, err := seq.Summarize(ctx, f, by)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Summarize(ctx, f, by)
		if err != nil {
			t.Fatal(err)
		}
		if len(want) == 0 {
			t.Fatal("empty summary")
		}
		if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Errorf("Summarize(%v), one at a time vs grouped (-want +got):\n%s", f, diff)
		}
	}
}

// TestGroupCommitHandsOver queues many more batches than a group holds
// behind the first writer: once its own batch is committed, that writer
// must hand the lead on, or the others would wait for ever.
func TestGroupCommitHandsOver(t *testing.T) {
	ctx := context.Background()
	s, release := heldSQLite(t)
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
