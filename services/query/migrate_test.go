package query

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// exec runs a statement on a store's database directly, as an old tally
// or an operator would.
func exec(t *testing.T, s Store, q string, args ...any) {
	t.Helper()
	var err error
	switch s := s.(type) {
	case *sqliteStore:
		_, err = s.db.ExecContext(context.Background(), q, args...)
	case *pgStore:
		_, err = s.pool.Exec(context.Background(), s.d.bind(q), args...)
	}
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func TestMigrations(t *testing.T) {
	ctx := context.Background()
	f := newFixture()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			loc := b.location(t)
			// A store written by a tally that knew only version 1.
			old, err := openStore(ctx, loc, "", 1, DefaultCacheMiB)
			if err != nil {
				t.Fatal(err)
			}
			if v, err := old.SchemaVersion(ctx); err != nil || v != 1 {
				t.Fatalf("old store at version %d (%v), want 1", v, err)
			}
			a, err := attrsOf(f.vmA2)
			if err != nil {
				t.Fatal(err)
			}
			exec(t, old, "INSERT INTO records ("+strings.Join(recordColumns, ", ")+") VALUES ("+placeholders(len(recordColumns))+")", recordValues(&a)...)
			acc, err := attrsOf(f.acc1)
			if err != nil {
				t.Fatal(err)
			}
			exec(t, old, "INSERT INTO records ("+strings.Join(recordColumns, ", ")+") VALUES ("+placeholders(len(recordColumns))+")", recordValues(&acc)...)
			m, _ := mergeMonths(nil, []monthRow{newMonthRow(&a, f.vmA2.GetCloud())})
			exec(t, old, upsertMonths(1), m[0].values()...)
			old.Close()

			s := openAt(t, loc)
			if v, err := s.SchemaVersion(ctx); err != nil || v != len(migrations) {
				t.Fatalf("upgraded store at version %d (%v), want %d", v, err, len(migrations))
			}
			got, err := s.Get(ctx, f.vmA2.GetKey())
			if err != nil {
				t.Fatalf("the record written before the upgrade: %v", err)
			}
			if diff := cmp.Diff(f.vmA2, got, protocmp.Transform()); diff != "" {
				t.Errorf("record after upgrade (-want +got):\n%s", diff)
			}
			// Version 2 filled record_windows from what version 1 kept.
			rs, err := readerOf(s).query(ctx, "SELECT COUNT(*) FROM record_windows")
			if err != nil {
				t.Fatal(err)
			}
			var n int64
			for rs.Next() {
				if err := rs.Scan(&n); err != nil {
					t.Fatal(err)
				}
			}
			rs.Close()
			if n != 2 {
				t.Errorf("%d windows after the upgrade, want 2", n)
			}
			sum, err := s.Summarize(ctx, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			// Version 3 summed cloud_months into cloud_rollup and the
			// accelerator record into usage_rollup.
			if v := sum[0].GetValues(); len(sum) != 1 || v.GetRecordCount() != 2 || v.GetWallHours() != 1200 || v.GetGpuHours() != 2*22*24 {
				t.Errorf("summary after the upgrade: %v, want 2 records, vm-a's 1200 wall hours and 1056 GPU hours", sum)
			}
			write(t, s, f.all...)
			s.Close()

			// A store from a newer tally is refused, not touched.
			again := openAt(t, loc)
			exec(t, again, "UPDATE tally_schema SET version = ?", len(migrations)+1)
			again.Close()
			_, err = OpenStore(ctx, loc, "")
			if !errors.Is(err, ErrSchemaTooNew) {
				t.Fatalf("opening a newer store: %v, want ErrSchemaTooNew", err)
			}
			t.Logf("refused with: %v", err)
		})
	}
}

// TestMigrationFromV4 upgrades stores written at version 4, whose
// PostgreSQL text compared under the database's collation, at version 5,
// whose SQLite records had no seq nor bucket indexes, and at version 6,
// whose SQLite windows and months were keyed by identity, at version 8,
// whose PostgreSQL ones were, and at versions 9 and 10, whose SQLite
// records had their identity as primary key: reads give what they gave,
// no window or month is lost, and writes go on from the stored rows.
func TestMigrationFromV4(t *testing.T) {
	filters := []*tallyv1.RecordFilter{
		nil,
		{Vos: []string{"atlas"}},
		{Vos: []string{"cms", "atlas"}, Start: ts(at("2026-02-10T00:00:00Z")), End: ts(at("2026-03-01T00:00:00Z"))},
		{ProjectIds: []string{"pA"}},
		{Vos: []string{"cms", "atlas"}},
		{Start: ts(at("2026-02-10T00:00:00Z"))},
	}
	for _, b := range backends {
		for _, from := range []int{4, 5, 6, 7, 8, 9, 10} {
			t.Run(fmt.Sprintf("%s/v%d", b.name, from), func(t *testing.T) { upgradeFrom(t, b, from, filters) })
		}
	}
}

// upgradeFrom is TestMigrationFromV4 for a store written at version from.
func upgradeFrom(t *testing.T, b backend, from int, filters []*tallyv1.RecordFilter) {
	ctx := context.Background()
	f := newFixture()
	loc := b.location(t)
	old, err := openStore(ctx, loc, "", from, DefaultCacheMiB)
	if err != nil {
		t.Fatal(err)
	}
	write(t, old, f.vmA1, f.acc1)
	var lists [][]string
	for _, flt := range filters {
		got, _, err := old.List(ctx, flt, nil, 100)
		if err != nil {
			t.Fatal(err)
		}
		lists = append(lists, keys(got))
	}
	tables := []string{"record_windows", "cloud_months"}
	var counts []int64
	for _, table := range tables {
		counts = append(counts, count(t, old, table))
	}
	old.Close()

	s := openAt(t, loc)
	if v, err := s.SchemaVersion(ctx); err != nil || v != len(migrations) {
		t.Fatalf("upgraded store at version %d (%v), want %d", v, err, len(migrations))
	}
	for i, flt := range filters {
		got, _, err := s.List(ctx, flt, nil, 100)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(lists[i], keys(got)); diff != "" {
			t.Errorf("List(%v) after the upgrade (-before +after):\n%s", flt, diff)
		}
	}
	for i, table := range tables {
		if n := count(t, s, table); n != counts[i] || n == 0 {
			t.Errorf("%s holds %d rows after the upgrade, %d before", table, n, counts[i])
		}
	}
	// Records stored before the upgrade are found by key.
	for _, want := range []*tallyv1.Record{f.vmA1, f.acc1} {
		if got, err := s.Get(ctx, want.GetKey()); err != nil || !proto.Equal(got, want) {
			t.Errorf("Get(%q) after the upgrade = %v, %v; want the record stored before", want.GetKey(), got, err)
		}
	}
	// vm-a's second month takes its delta from the first, written
	// before the upgrade; acc1's redelivery is not counted twice.
	f.write(t, s)
	write(t, s, f.acc1)
	if got, err := s.Get(ctx, f.vmA2.GetKey()); err != nil || !proto.Equal(got, f.vmA2) {
		t.Errorf("Get(%q) after a write = %v, %v; want the later record", f.vmA2.GetKey(), got, err)
	}
	sum, err := s.Summarize(ctx, &tallyv1.RecordFilter{Vos: []string{"atlas"}}, []tallyv1.UsageGroupBy{tallyv1.UsageGroupBy_USAGE_GROUP_BY_MONTH})
	if err != nil {
		t.Fatal(err)
	}
	fresh := openAt(t, b.location(t))
	f.write(t, fresh)
	want, err := fresh.Summarize(ctx, &tallyv1.RecordFilter{Vos: []string{"atlas"}}, []tallyv1.UsageGroupBy{tallyv1.UsageGroupBy_USAGE_GROUP_BY_MONTH})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, sum, protocmp.Transform()); diff != "" {
		t.Errorf("summary of the upgraded store (-fresh store +upgraded):\n%s", diff)
	}
	got, _, err := s.List(ctx, &tallyv1.RecordFilter{Vos: []string{"atlas"}}, nil, 100)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(keys([]*tallyv1.Record{f.vmC, f.ip, f.stor, f.acc2, f.vmA2, f.acc1}), keys(got)); diff != "" {
		t.Errorf("List by VO after writes (-want +got):\n%s", diff)
	}
}

func readerOf(s Store) *reader {
	switch s := s.(type) {
	case *sqliteStore:
		return &s.reader
	case *pgStore:
		return &s.reader
	}
	return nil
}

// TestMigrationKeepsOrphans: a window or month whose record is missing
// (an operator's hand, a damaged file) cannot be keyed by rid; the
// upgrade that brings rids (SQLite's 7, PostgreSQL's 9) fails, naming
// it, and leaves the store at the version before, with the row, rather
// than dropping the row.
func TestMigrationKeepsOrphans(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends {
		before, refusal := ridsVersion-1, "NOT NULL constraint failed: %s_rid.rid"
		if b.name == "postgres" {
			before, refusal = pgRidsVersion-1, `null value in column "rid" of relation "%s_rid"`
		}
		for _, table := range []string{"record_windows", "cloud_months"} {
			t.Run(b.name+"/"+table, func(t *testing.T) {
				loc := b.location(t)
				old, err := openStore(ctx, loc, "", before, DefaultCacheMiB)
				if err != nil {
					t.Fatal(err)
				}
				f := newFixture()
				write(t, old, f.vmA1)
				exec(t, old, "DELETE FROM records")
				if table == "cloud_months" {
					exec(t, old, "DELETE FROM record_windows")
				}
				old.Close()
				_, err = OpenStore(ctx, loc, "")
				step := fmt.Sprintf("version %d to %d", before, before+1)
				if err == nil || !strings.Contains(err.Error(), fmt.Sprintf(refusal, table)) || !strings.Contains(err.Error(), step) {
					t.Fatalf("upgrade with an orphaned row: %v, want a NOT NULL failure of %s from %s", err, table, step)
				}
				t.Logf("refused with: %v", err)
				again, err := openStore(ctx, loc, "", before, DefaultCacheMiB)
				if err != nil {
					t.Fatal(err)
				}
				defer again.Close()
				if v, err := again.SchemaVersion(ctx); err != nil || v != before {
					t.Fatalf("store at version %d (%v) after the failed upgrade, want %d", v, err, before)
				}
				if count(t, again, table) == 0 {
					t.Errorf("%s lost its rows in the failed upgrade", table)
				}
			})
		}
	}
}

// count is the number of rows in table.
func count(t *testing.T, s Store, table string) int64 {
	t.Helper()
	rs, err := readerOf(s).query(context.Background(), "SELECT COUNT(*) FROM "+table)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var n int64
	for rs.Next() {
		if err := rs.Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}
