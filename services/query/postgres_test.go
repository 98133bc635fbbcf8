package query

import (
	"context"
	"errors"
	"fmt"
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
