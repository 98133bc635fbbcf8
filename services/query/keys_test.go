package query

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

func energyRec(vmID, site string, start, end time.Time) *tallyv1.Record {
	return &tallyv1.Record{Key: fmt.Sprintf("energy/%s/%d", vmID, end.Unix()), Provenance: prov("p", start, end),
		Payload: &tallyv1.Record_Energy{Energy: &tallyv1.EnergyRecord{
			ExecUnitId: vmID, SiteName: site, CloudType: "tally", StartExecTime: ts(start), EndExecTime: ts(end), EnergyWh: 12, Owner: "atlas",
		}}}
}

// rekeyed is r with key k.
func rekeyed(r *tallyv1.Record, k string) *tallyv1.Record {
	r.Key = k
	return r
}

// TestIdentifyKeyIdents checks that keyIdents turns exactly the keys
// identify calls derived back into the record's identity.
func TestIdentifyKeyIdents(t *testing.T) {
	start, end := at("2026-03-01T00:00:00Z"), at("2026-03-02T00:00:00Z")
	tests := []struct {
		name    string
		rec     *tallyv1.Record
		derived bool
	}{
		{"cloud", vm{id: "0b7a", site: "S1", start: start}.cloud(start, end), true},
		{"cloud, key given", rekeyed(vm{id: "0b7a", site: "S1", start: start}.cloud(start, end), "vm:0b7a"), false},
		{"cloud, key with another site", rekeyed(vm{id: "0b7a", site: "S1", start: start}.cloud(start, end), "cloud/S1/0b7a"), false},
		{"cloud, id with a slash", vm{id: "a/b", site: "S1", start: start}.cloud(start, end), false},
		{"accelerator", accel("0b7a", "S1", "atlas", "p", 2026, 3, 1, 3600, end), true},
		{"storage", storage("vol1", "S1", "atlas", "p", 10, start, end), true},
		{"storage, RFC 3339 time", rekeyed(storage("vol1", "S1", "atlas", "p", 10, start, end), "storage/vol1/"+end.Format(time.RFC3339)), false},
		{"energy", energyRec("0b7a", "S1", start, end), true},
		{"ip", ipRec("S1", "atlas", "p", 4, 2, end), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := attrsOf(tc.rec)
			if err != nil {
				t.Fatal(err)
			}
			if a.keyDerived != tc.derived {
				t.Errorf("key %q of %q: derived %v, want %v", a.key, a.ident, a.keyDerived, tc.derived)
			}
			ids := keyIdents(a.key, []string{"OTHER", a.site})
			if got := slices.Contains(ids, a.ident); got != tc.derived {
				t.Errorf("keyIdents(%q) = %q: holds %q %v, want %v", a.key, ids, a.ident, got, tc.derived)
			}
		})
	}
}

// TestGetKeys reads records by key whichever way the key was stored:
// derived or given, changed by a later extraction, the same key at two
// sites.
func TestGetKeys(t *testing.T) {
	start := at("2026-03-01T00:00:00Z")
	w1, w2, w3 := at("2026-03-02T00:00:00Z"), at("2026-03-03T00:00:00Z"), at("2026-03-04T00:00:00Z")
	x1, x2 := vm{id: "x", site: "S1", vo: "atlas", start: start}, vm{id: "x", site: "S2", vo: "atlas", start: start}
	y, z, w := vm{id: "y", site: "S1", start: start}, vm{id: "z", site: "S1", start: start}, vm{id: "w", site: "S1", start: start}
	slash := vm{id: "a/b", site: "S1", start: start}
	stor := storage("vol1", "S1", "atlas", "p", 10, start, w1)
	batches := [][]*tallyv1.Record{
		{x1.cloud(start, w1), rekeyed(y.cloud(start, w1), "vm:y"), z.cloud(start, w1), rekeyed(w.cloud(start, w1), "vm:w")},
		// The same VM at a second site, extracted later; z's key now
		// given, w's derived.
		{x2.cloud(start, w2), rekeyed(z.cloud(start, w2), "vm:z"), w.cloud(start, w2)},
		{slash.cloud(start, w3), accel("x", "S1", "atlas", "p", 2026, 3, 1, 3600, w3), stor,
			rekeyed(storage("vol2", "S1", "atlas", "p", 10, start, w3), "storage/vol2/"+w3.Format(time.RFC3339)), energyRec("x", "S3", start, w3)},
	}
	found := []*tallyv1.Record{x2.cloud(start, w2), rekeyed(y.cloud(start, w1), "vm:y"), rekeyed(z.cloud(start, w2), "vm:z"),
		w.cloud(start, w2), batches[2][0], batches[2][1], batches[2][2], batches[2][3], batches[2][4]}
	gone := []string{"cloud/y", "cloud/z", "vm:w", "cloud/nope", "accelerator/x/2026-04", "storage/vol1", "energy/x", "nope"}
	eachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		for _, b := range batches {
			write(t, s, b...)
		}
		for _, want := range found {
			got, err := s.Get(ctx, want.GetKey())
			if err != nil {
				t.Fatalf("Get(%q): %v", want.GetKey(), err)
			}
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Get(%q) (-want +got):\n%s", want.GetKey(), diff)
			}
		}
		for _, k := range gone {
			if _, err := s.Get(ctx, k); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get(%q) = %v, want ErrNotFound", k, err)
			}
		}
		// Only given keys are left for the key index.
		var rd *reader
		switch st := s.(type) {
		case *sqliteStore:
			rd = &st.reader
		case *pgStore:
			rd = &st.reader
		}
		var given []string
		rs, err := rd.query(ctx, "SELECT key FROM records WHERE key_derived = 0 ORDER BY key")
		if err != nil {
			t.Fatal(err)
		}
		for rs.Next() {
			var k string
			if err := rs.Scan(&k); err != nil {
				t.Fatal(err)
			}
			given = append(given, k)
		}
		rs.Close()
		want := []string{"cloud/a/b", "storage/vol2/" + w3.Format(time.RFC3339), "vm:y", "vm:z"}
		if diff := cmp.Diff(want, given); diff != "" {
			t.Errorf("records with given keys (-want +got):\n%s", diff)
		}
		ss, ok := s.(*sqliteStore)
		if !ok {
			return
		}
		// Both halves of the lookup search an index; neither scans. The
		// identities' half reads the rows of their rids (schema 11).
		q, args, err := ss.getDerived(ctx, "cloud/x")
		if err != nil {
			t.Fatal(err)
		}
		plan, err := ss.db.QueryContext(ctx, "EXPLAIN QUERY PLAN "+q, args...)
		if err != nil {
			t.Fatal(err)
		}
		defer plan.Close()
		var steps []string
		for plan.Next() {
			var id, parent, notused int
			var detail string
			if err := plan.Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			steps = append(steps, detail)
		}
		all := strings.Join(steps, "\n")
		if strings.Contains(all, "SCAN records") || !strings.Contains(all, "records_key_given") || !strings.Contains(all, "USING INTEGER PRIMARY KEY (rowid=?)") {
			t.Errorf("Get's plan:\n%s", all)
		}
	})
}
