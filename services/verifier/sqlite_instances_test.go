package verifier

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestUUIDKey(t *testing.T) {
	for _, tc := range []struct {
		id   string
		uuid bool
	}{
		{"2f6f9a0e-5b0f-4c53-9d55-6b1b8d1b00cc", true},
		{"00000000-0000-0000-0000-000000000000", true},
		// Another string for the same 16 bytes: kept apart, as SQLite
		// compares the text.
		{"2F6F9A0E-5B0F-4C53-9D55-6B1B8D1B00CC", false},
		{"2f6f9a0e5b0f4c539d556b1b8d1b00cc", false},
		{"2f6f9a0e-5b0f-4c53-9d55-6b1b8d1b00c", false},
		{"2f6f9a0e-5b0f-4c53-9d55-6b1b8d1b00cg", false},
		{"2f6f9a0e+5b0f-4c53-9d55-6b1b8d1b00cc", false},
		{"i-1", false},
		{"", false},
	} {
		k, ok := uuidKey(tc.id)
		if ok != tc.uuid {
			t.Errorf("uuidKey(%q) is a UUID: %v, want %v", tc.id, ok, tc.uuid)
		}
		if want, _ := hex.DecodeString(strings.ReplaceAll(tc.id, "-", "")); ok && !bytes.Equal(k[:], want) {
			t.Errorf("uuidKey(%q) = %x, want %x", tc.id, k, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { uuidKey("2f6f9a0e-5b0f-4c53-9d55-6b1b8d1b00cc") }); n != 0 {
		t.Errorf("uuidKey allocates %v times", n)
	}
	// Both spellings are numbered apart.
	x := newInstanceIDs()
	x.put([]numbered{{"2f6f9a0e-5b0f-4c53-9d55-6b1b8d1b00cc", 1}, {"2F6F9A0E-5B0F-4C53-9D55-6B1B8D1B00CC", 2}, {"i-1", 3}})
	for id, want := range map[string]int64{"2f6f9a0e-5b0f-4c53-9d55-6b1b8d1b00cc": 1, "2F6F9A0E-5B0F-4C53-9D55-6B1B8D1B00CC": 2, "i-1": 3} {
		if got, ok := x.get(id); !ok || got != want {
			t.Errorf("get(%q) = %d, %v; want %d", id, got, ok, want)
		}
	}
	if _, ok := x.get("2f6f9a0e-5b0f-4c53-9d55-6b1b8d1b00cd"); ok {
		t.Error("an unknown UUID has a number")
	}
}

// launchOf is a launch of instance id, with a tenant to tell it apart.
func launchOf(id string) UsageEvent {
	return UsageEvent{Usage: InstanceUsage{Instance: id, LaunchedAt: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC), Tenant: "t-" + id}}
}

// checkInstances checks that every instance of ids has one number, that
// the store's memory agrees with the table, and that each has its launch.
func checkInstances(t *testing.T, s *SQLiteStore, ids []string) {
	t.Helper()
	ctx := context.Background()
	var rows, distinct int
	mustDo(t, s.db.QueryRowContext(ctx, `SELECT COUNT(*), COUNT(DISTINCT uuid) FROM instances`).Scan(&rows, &distinct))
	if rows != len(ids) || distinct != len(ids) {
		t.Errorf("instances holds %d rows of %d UUIDs, want %d of %d", rows, distinct, len(ids), len(ids))
	}
	for _, id := range ids {
		var stored int64
		mustDo(t, s.db.QueryRowContext(ctx, `SELECT iid FROM instances WHERE uuid = ?`, id).Scan(&stored))
		if iid, ok, err := s.iidOf(ctx, id); err != nil || !ok || iid != stored {
			t.Errorf("%s: number %d, %v, %v in memory; %d in the table", id, iid, ok, err, stored)
		}
		ls, err := s.Launches(ctx, id)
		mustDo(t, err)
		if len(ls) != 1 || ls[0].Tenant != "t-"+id {
			t.Errorf("launches of %s: %+v; want its one launch", id, ls)
		}
	}
}

// TestInstanceNumbersUndoneWithTheirOp: an op that numbers an instance
// and then fails is rolled back to its savepoint, and the number goes
// with it; the next instance, which SQLite gives the same number, must not
// be taken for the first one, nor the first one, numbered again later,
// for the next.
func TestInstanceNumbersUndoneWithTheirOp(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	a, b := "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"
	failing := errors.New("injected failure")
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := s.instanceNumbers(ctx, tx, &Batch{Usage: []UsageEvent{launchOf(a)}}); err != nil {
			return err
		}
		return failing
	})
	if !errors.Is(err, failing) {
		t.Fatalf("the failing op returned %v", err)
	}
	apply(t, s, Batch{Usage: []UsageEvent{launchOf(b)}})
	apply(t, s, Batch{Usage: []UsageEvent{launchOf(a)}})
	checkInstances(t, s, []string{b, a})

	// The same, both ops in one group transaction: the failing one first.
	c, d := "cccccccc-0000-4000-8000-000000000003", "dddddddd-0000-4000-8000-000000000004"
	errs := make(chan error, 2)
	queued := make(chan struct{})
	go func() {
		errs <- s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
			<-queued // hold the committer until the second op waits
			if _, err := s.instanceNumbers(ctx, tx, &Batch{Usage: []UsageEvent{launchOf(c)}}); err != nil {
				return err
			}
			return failing
		})
	}()
	go func() { errs <- s.ApplyBatch(ctx, &Batch{Usage: []UsageEvent{launchOf(d)}}) }()
	time.Sleep(50 * time.Millisecond)
	close(queued)
	for range 2 {
		if err := <-errs; err != nil && !errors.Is(err, failing) {
			t.Fatal(err)
		}
	}
	apply(t, s, Batch{Usage: []UsageEvent{launchOf(c)}})
	checkInstances(t, s, []string{b, a, d, c})
}

// TestInstanceNumbersOfAnotherProcess: two stores on one file (two
// processes) number instances in turn; each finds those of the other,
// before it writes and when it reads, and no UUID is numbered twice.
func TestInstanceNumbersOfAnotherProcess(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "verifier.db")
	open := func() *SQLiteStore {
		s, err := OpenSQLite(ctx, path, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	one, two := open(), open()
	var ids []string
	for i := range 20 {
		id := fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)
		ids = append(ids, id)
		s := one
		if i%2 == 1 {
			s = two
		}
		if i > 0 {
			// An instance the other store numbered, which this one never
			// read: found before the write, not numbered twice.
			apply(t, s, Batch{Exists: []InstanceExists{{Key: "k" + id, MessageID: "m" + id, EventType: "compute.instance.exists",
				Usage: InstanceUsage{Instance: ids[i-1], LaunchedAt: launchOf(id).Usage.LaunchedAt}}}})
		}
		apply(t, s, Batch{Usage: []UsageEvent{launchOf(id)}})
	}
	// Each reads what the other wrote last, which it never wrote after.
	checkInstances(t, one, ids)
	checkInstances(t, two, ids)
}
