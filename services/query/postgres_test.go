package query

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// TestPostgresWriteIsOneTransaction: a PostgreSQL write is one
// transaction, holding the write lock, whose statements go on one
// pipeline. A statement refused late in it (a month, after the records
// were upserted) must leave nothing of the batch, release the lock, and
// leave concurrent writers' batches whole.
func TestPostgresWriteIsOneTransaction(t *testing.T) {
	ctx := context.Background()
	s := openAt(t, pgSchema(t)).(*pgStore)
	exec(t, s, `CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.vo = 'poison' THEN RAISE EXCEPTION 'poisoned month'; END IF; RETURN NEW; END $$`)
	exec(t, s, `CREATE TRIGGER poison BEFORE INSERT ON cloud_months FOR EACH ROW EXECUTE FUNCTION poison()`)

	start := at("2026-01-10T00:00:00Z")
	good := vm{id: "vm-good", site: "S1", vo: "atlas", project: "p", cpus: 1, start: start}.cloud(start, start.Add(time.Hour))
	bad := vm{id: "vm-bad", site: "S1", vo: "poison", project: "p", cpus: 1, start: start}.cloud(start, start.Add(time.Hour))
	acc := accel("vm-good", "S1", "atlas", "p", 2026, 1, 1, 3600, start.Add(time.Hour))
	err := s.Write(ctx, []*tallyv1.Record{good, acc, bad})
	if err == nil || !strings.Contains(err.Error(), "poisoned month") {
		t.Fatalf("Write(a batch with a refused month) = %v, want the trigger's error", err)
	}
	for _, key := range []string{good.GetKey(), acc.GetKey(), bad.GetKey()} {
		if _, err := s.Get(ctx, key); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%q) after the refused batch = %v, want ErrNotFound", key, err)
		}
	}
	for _, table := range []string{"records", "record_windows", "cloud_months", "cloud_rollup", "usage_rollup", "key_sites"} {
		if n := count(t, s, table); n != 0 {
			t.Errorf("%s holds %d rows after the refused batch", table, n)
		}
	}

	// Writers at once, each of its own VMs, one of them refused: the
	// others are stored whole, and none waits for a lock left held.
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for w := range errs {
		wg.Go(func() {
			var b []*tallyv1.Record
			for i := range 50 {
				v := vm{id: fmt.Sprintf("vm-%d-%d", w, i), site: "S1", vo: "cms", project: "p", cpus: 2, start: start}
				if w == 3 && i == 49 {
					v.vo = "poison"
				}
				b = append(b, v.cloud(start.Add(time.Hour), start.Add(2*time.Hour)))
			}
			errs[w] = s.Write(wctx, b)
		})
	}
	wg.Wait()
	for w, err := range errs {
		if (err != nil) != (w == 3) {
			t.Errorf("writer %d: %v", w, err)
		}
	}
	if n := count(t, s, "records"); n != 7*50 {
		t.Errorf("%d records stored, want the 7 accepted batches' %d", n, 7*50)
	}
	sum, err := s.Summarize(ctx, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sum) != 1 || sum[0].GetValues().GetRecordCount() != 7*50 {
		t.Errorf("summary after the writers: %v, want 350 records", sum)
	}
}

// TestPostgresConcurrentWriters writes batches that share records from
// writers at once, as the enricher's workers push them: redeliveries of
// one batch, and VMs extracted at several times in batches that overlap.
// Each record's rollup deltas depend on its stored row and months, which
// a writer must not read while another writes them (record locks): the
// store must end as one that got every record once, in extraction order.
func TestPostgresConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	start := at("2026-01-20T00:00:00Z")
	vms := make([]vm, 30)
	for i := range vms {
		vms[i] = vm{id: fmt.Sprintf("vm-%02d", i), site: "S1", vo: []string{"atlas", "cms", "lhcb"}[i%3], project: fmt.Sprintf("p%d", i%4),
			cpus: int32(1 + i%4), benchmark: float64(i % 2 * 10), start: start.Add(time.Duration(i) * time.Hour)}
	}
	// A record's content depends only on its identity and extraction
	// time, so that the latest extraction decides, whoever writes last.
	ends := []time.Time{at("2026-01-28T00:00:00Z"), at("2026-02-03T00:00:00Z"), at("2026-02-25T00:00:00Z")}
	records := func(v int, e time.Time) []*tallyv1.Record {
		y, m, _ := e.Date()
		return []*tallyv1.Record{
			vms[v].cloud(e.Add(-time.Hour), e),
			accel(vms[v].id, "S1", vms[v].vo, vms[v].project, int32(y), int32(m), 1, int64(e.Day())*3600, e),
			storage(fmt.Sprintf("vol-%02d", v), "S1", vms[v].vo, vms[v].project, int64(10+v), e.Add(-24*time.Hour), e),
		}
	}
	const writers, rounds = 6, 5
	batches := make([][][]*tallyv1.Record, writers)
	for w := range writers {
		for r := range rounds {
			var b []*tallyv1.Record
			for i := range 12 {
				v := (w*5 + r*7 + i) % len(vms)
				b = append(b, records(v, ends[(v+w+r)%len(ends)])...)
			}
			batches[w] = append(batches[w], b)
		}
	}

	s := openAt(t, pgSchema(t)).(*pgStore)
	for r := range rounds {
		var wg sync.WaitGroup
		// Each writer twice: a batch redelivered while it is written.
		errs := make([]error, 2*writers)
		for i := range errs {
			wg.Go(func() { errs[i] = s.Write(ctx, batches[i%writers][r]) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, writer %d: %v", r, i, err)
			}
		}
	}

	// Every record written, once, in extraction order.
	seq := openAt(t, pgSchema(t))
	for _, e := range ends {
		var b []*tallyv1.Record
		seen := map[string]bool{}
		for w := range writers {
			for _, batch := range batches[w] {
				for _, rec := range batch {
					if rec.GetProvenance().GetWindowTo().AsTime().Equal(e) && !seen[rec.GetKey()] {
						seen[rec.GetKey()] = true
						b = append(b, rec)
					}
				}
			}
		}
		if len(b) > 0 {
			write(t, seq, b...)
		}
	}
	sameContent(t, seq, s, []tallyv1.UsageGroupBy{tallyv1.UsageGroupBy_USAGE_GROUP_BY_MONTH, tallyv1.UsageGroupBy_USAGE_GROUP_BY_VO,
		tallyv1.UsageGroupBy_USAGE_GROUP_BY_PROJECT}, 2*len(vms), "concurrent vs sequential")
}

// TestPostgresWriteRetriesAfterDeadlock: a writer caught in a cycle of
// lock waits (here, another session holds the rollup row the writer adds
// to, then asks for the writer's record lock) is the one the server's
// deadlock check aborts; its write is retried under the store's lock
// alone, and stored once.
func TestPostgresWriteRetriesAfterDeadlock(t *testing.T) {
	ctx := context.Background()
	s := openAt(t, pgSchema(t)).(*pgStore)
	start := at("2026-01-10T00:00:00Z")
	a := vm{id: "vm-a", site: "S1", vo: "atlas", project: "p", cpus: 1, start: start}
	write(t, s, a.cloud(start, start.Add(time.Hour)))
	// Another VM of the same rollup row.
	b := a
	b.id = "vm-b"
	rec := b.cloud(start, start.Add(2*time.Hour))
	planned, err := planBatch([]*tallyv1.Record{rec})
	if err != nil {
		t.Fatal(err)
	}
	key := recordLockKeys(planned)[0]

	other, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback(ctx)
	var otherPID int32
	var super string
	if err := other.QueryRow(ctx, "SELECT pg_backend_pid(), current_setting('is_superuser')").Scan(&otherPID, &super); err != nil {
		t.Fatal(err)
	}
	// Each waiting session checks for a cycle once, deadlock_timeout (1 s by
	// default) after its wait began, and the one that finds it is aborted. The
	// writer waits first, but only by the tens of milliseconds the poll
	// below takes, and on a loaded machine the two checks came in either
	// order. Where the role may (a superuser), this session checks late.
	if super == "on" {
		if _, err := other.Exec(ctx, "SET LOCAL deadlock_timeout = '30s'"); err != nil {
			t.Fatal(err)
		}
	}
	if tag, err := other.Exec(ctx, "UPDATE cloud_rollup SET n = n WHERE vo = 'atlas'"); err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("hold the rollup row: %v, %d rows", err, tag.RowsAffected())
	}
	done := make(chan error, 1)
	go func() { done <- s.Write(ctx, []*tallyv1.Record{rec}) }()
	// The writer holds its record lock once it waits for the row.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		var waiting bool
		// From another session: a transaction sees one snapshot of
		// pg_stat_activity.
		err := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1::int4 = ANY (pg_blocking_pids(pid)))", otherPID).Scan(&waiting)
		if err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer never waited for the held rollup row")
		}
	}
	// The cycle: the writer, waiting longer, finds it and is aborted,
	// which hands this session the record lock.
	if _, err := other.Exec(ctx, "SELECT pg_advisory_xact_lock($1::int4, $2::int4)", int32(recordLockClass), key); err != nil {
		t.Fatalf("the record lock: %v (the deadlock check aborted this session, not the writer)", err)
	}
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Write after a deadlock: %v, want it retried", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Write still waiting a minute after the other session committed")
	}
	sum, err := s.Summarize(ctx, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sum) != 1 || sum[0].GetValues().GetRecordCount() != 2 {
		t.Errorf("summary: %v, want 2 records, the retried one counted once", sum)
	}
}

func TestRecordLockKeys(t *testing.T) {
	start := at("2026-01-10T00:00:00Z")
	batch := func(n int) *batch {
		var recs []*tallyv1.Record
		for i := range n {
			recs = append(recs, vm{id: fmt.Sprintf("vm-%d", i), site: "S1", vo: "atlas", project: "p", cpus: 1, start: start}.cloud(start, start.Add(time.Hour)))
		}
		b, err := planBatch(recs)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		records, keys int
	}{{1, 1}, {50, 50}, {pgMaxRecordLocks, pgMaxRecordLocks}, {pgMaxRecordLocks + 1, 0}} {
		keys := recordLockKeys(batch(tc.records))
		if len(keys) != tc.keys || (tc.keys == 0) != (keys == nil) {
			t.Errorf("%d records: %d keys (nil %v), want %d", tc.records, len(keys), keys == nil, tc.keys)
		}
		if !slices.IsSorted(keys) {
			t.Errorf("%d records: keys out of order", tc.records)
		}
	}
}
