package query

import (
	"context"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

var monthVO = []tallyv1.UsageGroupBy{tallyv1.UsageGroupBy_USAGE_GROUP_BY_MONTH, tallyv1.UsageGroupBy_USAGE_GROUP_BY_VO}

// gets is what s gives for every key of batches.
func gets(t *testing.T, s Store, batches [][]*tallyv1.Record) map[string]*tallyv1.Record {
	t.Helper()
	out := map[string]*tallyv1.Record{}
	for _, b := range batches {
		for _, r := range b {
			got, err := s.Get(context.Background(), r.GetKey())
			if err != nil {
				t.Fatalf("Get(%q): %v", r.GetKey(), err)
			}
			out[r.GetKey()] = got
		}
	}
	return out
}

// sameGets fails t unless got gives the records of want by their keys.
func sameGets(t *testing.T, want map[string]*tallyv1.Record, got Store, how string) {
	t.Helper()
	for k, w := range want {
		g, err := got.Get(context.Background(), k)
		if err != nil {
			t.Fatalf("Get(%q), %s: %v", k, how, err)
		}
		if !proto.Equal(w, g) {
			t.Errorf("Get(%q), %s = %v, want %v", k, how, g, w)
		}
	}
}

// TestIdentHashCollisions: a hash only narrows the lookup of a record by
// identity; identities that share one are told apart by the rows
// themselves. With every identity on one hash, and on two, the store
// holds what a store with the real hash holds, through redeliveries and
// batches committed in one group (one transaction).
func TestIdentHashCollisions(t *testing.T) {
	batches := history(11, 40)
	fill := func(s Store) {
		for i, b := range batches {
			write(t, s, b...)
			if i%3 == 0 {
				write(t, s, b...) // redelivered
			}
		}
	}
	want := openAt(t, "sqlite://"+filepath.Join(t.TempDir(), "want.db"))
	fill(want)
	// The reference store's Gets, while identHash is the one it wrote.
	wantGets := gets(t, want, batches)
	real := identHash
	t.Cleanup(func() { identHash = real })
	for _, tc := range []struct {
		name string
		hash func(string) int64
	}{
		{"one hash", func(string) int64 { return 42 }},
		{"two hashes", func(id string) int64 { return real(id) & 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			identHash = tc.hash
			defer func() { identHash = real }()
			loc := "sqlite://" + filepath.Join(t.TempDir(), "q.db")
			s := openAt(t, loc).(*sqliteStore)
			// Half queued while the writer is held, so that batches
			// sharing a hash share a transaction; then in order.
			half := len(batches) / 2
			for i, err := range writeAll(t, s, batches[:half]) {
				if err != nil {
					t.Fatalf("batch %d: %v", i, err)
				}
			}
			for _, b := range batches[:half] {
				write(t, s, b...) // in order again: the latest wins
			}
			for _, b := range batches[half:] {
				write(t, s, b...)
			}
			sameContent(t, want, s, monthVO, 100, "colliding hashes vs real")
			sameGets(t, wantGets, s, "colliding hashes")
			if n, m := count(t, s, "records"), count(t, want, "records"); n != m {
				t.Errorf("%d records stored, want %d", n, m)
			}
			// Reopened, the index is loaded from the file.
			s.Close()
			again := openAt(t, loc)
			write(t, again, batches[len(batches)-1]...)
			sameContent(t, want, again, monthVO, 100, "reopened, colliding hashes vs real")
		})
	}
}

// TestIdentsOfAnotherProcess: two stores open on one file, as two
// processes would be. Each finds the records the other wrote, by key
// and when it writes them again: a write updates the other's row instead
// of adding a second of the same identity.
func TestIdentsOfAnotherProcess(t *testing.T) {
	batches := history(12, 30)
	want := openAt(t, "sqlite://"+filepath.Join(t.TempDir(), "want.db"))
	for _, b := range batches {
		write(t, want, b...)
	}
	loc := "sqlite://" + filepath.Join(t.TempDir(), "q.db")
	a, b := openAt(t, loc), openAt(t, loc)
	third := len(batches) / 3
	for _, bt := range batches[:third] {
		write(t, a, bt...)
	}
	// b opened on an empty file: it learns of a's records as it reads.
	first := batches[0][0]
	if got, err := b.Get(context.Background(), first.GetKey()); err != nil || got.GetKey() != first.GetKey() {
		t.Fatalf("Get(%q) of a record the other store wrote = %v, %v", first.GetKey(), got, err)
	}
	// b writes a's batches again and the next third; a, which has not
	// read since, the rest, which update b's records.
	for _, bt := range batches[:2*third] {
		write(t, b, bt...)
	}
	for _, bt := range batches[2*third:] {
		write(t, a, bt...)
	}
	for _, s := range []Store{a, b} {
		sameContent(t, want, s, monthVO, 100, "two stores on one file vs one")
		if n, m := count(t, s, "records"), count(t, want, "records"); n != m {
			t.Errorf("%d records stored, want %d", n, m)
		}
	}
	sameGets(t, gets(t, want, batches), b, "the other store's records")
}
