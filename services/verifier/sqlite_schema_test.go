package verifier

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestSQLiteUpgradeNumbersInstances: a store written before stores had a
// version (version 1) is upgraded at open to keys by instance number, and
// reads as a store written by this tally from the same notifications:
// every launch, delete and exists, the exists' ids, bodies (in the row or
// beside it) and outcomes, the reports' index, and the dedup of an exists
// redelivered after the upgrade.
func TestSQLiteUpgradeNumbersInstances(t *testing.T) {
	ctx := context.Background()
	a, b := "2f6f9a0e-5b0f-4c53-9d55-6b1b8d1b00aa", "2f6f9a0e-5b0f-4c53-9d55-6b1b8d1b00bb"
	launchOf := func(instance string, at time.Time) InstanceUsage {
		u := launch()
		u.Instance, u.LaunchedAt, u.Updated = instance, at, at
		return u
	}
	launches := []InstanceUsage{launchOf(b, l1), launchOf(a, l1), launchOf(a, l1.Add(time.Hour))}
	deletes := []InstanceDelete{{Instance: a, LaunchedAt: l1, DeletedAt: del1}}
	existsOf := func(instance, key string, raw string) InstanceExists {
		return exists(func(e *InstanceExists) {
			e.Usage.Instance, e.Key, e.MessageID, e.Raw = instance, key, "m-"+key, []byte(raw)
			e.Received = apb.Add(time.Minute)
		})
	}
	// The first body in its row, as tally stored bodies before
	// instance_exists_raw; the others beside it.
	es := []InstanceExists{existsOf(b, "k1", `{"n":1}`), existsOf(a, "k2", `{"n":2}`), existsOf(a, "k3", `{"n":3}`)}
	failed := Finished{ID: 3, Status: StatusFailed, Failure: &Failure{Field: "launched_at", Expected: "x", Actual: "y", Reason: "differs"}}

	// The version-1 store, written with the statements of that version.
	path := filepath.Join(t.TempDir(), "v1.db")
	db, err := sql.Open("sqlite", path)
	mustDo(t, err)
	_, err = db.ExecContext(ctx, schemaV1+";"+reportMigrations[0]+
		";CREATE TABLE verifier_reports_schema (version INTEGER NOT NULL); INSERT INTO verifier_reports_schema VALUES (1)")
	mustDo(t, err)
	for _, u := range launches {
		_, err := db.ExecContext(ctx, `INSERT INTO instance_usage (launched_sec, `+usageCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			sec(u.LaunchedAt), u.Instance, micro(u.LaunchedAt), u.Tenant, u.InstanceTypeID, u.InstanceFlavorID, u.FlavorName,
			u.OSArchitecture, u.OSDistro, u.OSVersion, u.RaxOptions, u.ImageType, micro(u.Updated))
		mustDo(t, err)
	}
	for _, d := range deletes {
		_, err := db.ExecContext(ctx, `INSERT INTO instance_deletes (instance, launched_sec, launched_at, deleted_at) VALUES (?, ?, ?, ?)`,
			d.Instance, sec(d.LaunchedAt), micro(d.LaunchedAt), micro(d.DeletedAt))
		mustDo(t, err)
	}
	for i, e := range es {
		args := existsArgs(e)
		if i > 0 {
			args[len(args)-1] = nil
		}
		res, err := db.ExecContext(ctx, `INSERT INTO instance_exists (msg_key, message_id, event_type, versioned, instance,
			launched_at, deleted_at, audit_begin, audit_end, tenant, instance_type_id, instance_flavor_id, flavor_name,
			os_architecture, os_distro, os_version, rax_options, image_type, bandwidth, invalid, received, status, routing_key, raw)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, args...)
		mustDo(t, err)
		if i > 0 {
			id, err := res.LastInsertId()
			mustDo(t, err)
			_, err = db.ExecContext(ctx, `INSERT INTO instance_exists_raw (id, raw) VALUES (?, ?)`, id, e.Raw)
			mustDo(t, err)
		}
	}
	_, err = db.ExecContext(ctx, `UPDATE instance_exists SET status = ?, fail_field = ?, fail_expected = ?, fail_actual = ?,
		fail_reason = ? WHERE id = ?`, append(append([]any{failed.Status}, failArgs(failed.Failure)...), failed.ID)...)
	mustDo(t, err)
	mustDo(t, db.Close())

	upgraded, err := OpenSQLite(ctx, path, DefaultCacheMiB)
	mustDo(t, err)
	defer upgraded.Close()
	var version int
	mustDo(t, upgraded.db.QueryRowContext(ctx, `SELECT version FROM verifier_schema`).Scan(&version))
	if version != len(sqliteMigrations) {
		t.Fatalf("store at version %d after the upgrade, want %d", version, len(sqliteMigrations))
	}

	// The same notifications, stored by this tally.
	fresh := openStore(t)
	for _, u := range launches {
		apply(t, fresh, Batch{Usage: []UsageEvent{{Usage: u, Overwrite: true}}})
	}
	apply(t, fresh, Batch{Deletes: deletes, Exists: es})
	mustDo(t, fresh.FinishInstanceExistsBatch(ctx, []Finished{failed}))

	want := readState(t, fresh, nil)
	if len(want.Launches) != 3 || len(want.Deletes) != 1 || len(want.Exists) != 3 {
		t.Fatalf("the fresh store holds %d launches, %d deletes, %d exists; the test wants 3, 1, 3",
			len(want.Launches), len(want.Deletes), len(want.Exists))
	}
	if diff := cmp.Diff(want, readState(t, upgraded, nil)); diff != "" {
		t.Errorf("upgraded store vs fresh (-fresh +upgraded):\n%s", diff)
	}
	for name, s := range map[string]*SQLiteStore{"fresh": fresh, "upgraded": upgraded} {
		for _, id := range []string{a, b} {
			l, err := s.Launches(ctx, id)
			mustDo(t, err)
			d, err := s.Deletes(ctx, id)
			mustDo(t, err)
			e, err := s.InstanceExistsList(ctx, ExistsFilter{UUID: id})
			mustDo(t, err)
			wantL, wantD, wantE := 1, 0, 1
			if id == a {
				wantL, wantD, wantE = 2, 1, 2
			}
			if len(l) != wantL || len(d) != wantD || len(e) != wantE {
				t.Errorf("%s: %d launches, %d deletes, %d exists of %s; want %d, %d, %d", name, len(l), len(d), len(e), id, wantL, wantD, wantE)
			}
			for _, x := range e {
				if x.Usage.Instance != id {
					t.Errorf("exists %d of %s listed for %s", x.ID, x.Usage.Instance, id)
				}
			}
		}
		lo, err := s.LaunchesOf(ctx, []string{a, b, "unknown"})
		mustDo(t, err)
		do, err := s.DeletesOf(ctx, []string{a, b})
		mustDo(t, err)
		if len(lo[a]) != 2 || len(lo[b]) != 1 || len(do[a]) != 1 || len(do[b]) != 0 || lo[a][0].LaunchedAt.After(lo[a][1].LaunchedAt) {
			t.Errorf("LaunchesOf %v, DeletesOf %v; want a's two launches in order, b's one, a's delete", lo, do)
		}
	}

	var failedIndex int
	mustDo(t, upgraded.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE name = 'instance_exists_failed'`).Scan(&failedIndex))
	if failedIndex != 1 {
		t.Error("the reports' index instance_exists_failed is gone after the upgrade")
	}
	// Redelivered after the upgrade: ignored. A new instance is numbered
	// after the old ones.
	c := "2f6f9a0e-5b0f-4c53-9d55-6b1b8d1b00cc"
	apply(t, upgraded, Batch{Exists: []InstanceExists{es[1], existsOf(c, "k4", `{"n":4}`)}})
	all, err := upgraded.InstanceExistsList(ctx, ExistsFilter{})
	mustDo(t, err)
	if len(all) != 4 || all[3].Usage.Instance != c || all[3].ID != 4 {
		t.Errorf("after a redelivery and a new exists: %d exists, the last %+v; want 4, the last of %s with id 4", len(all), all[len(all)-1], c)
	}
	var iid int64
	mustDo(t, upgraded.db.QueryRowContext(ctx, `SELECT iid FROM instances WHERE uuid = ?`, c).Scan(&iid))
	if iid != 3 {
		t.Errorf("the new instance is number %d, want 3 (after a and b)", iid)
	}
	// Version 3: the UUIDs are no longer indexed, and each still has one
	// number.
	var indexes, twice int
	mustDo(t, upgraded.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'instances'`).Scan(&indexes))
	mustDo(t, upgraded.db.QueryRowContext(ctx, `SELECT COUNT(*) - COUNT(DISTINCT uuid) FROM instances`).Scan(&twice))
	if indexes != 0 || twice != 0 {
		t.Errorf("instances has %d indexes and %d UUIDs numbered twice; want 0 and 0", indexes, twice)
	}
}

// TestSQLiteRefusesNewerStore: a store of a later version is refused, not
// written by a tally that does not know its tables.
func TestSQLiteRefusesNewerStore(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v.db")
	s, err := OpenSQLite(ctx, path, 0)
	mustDo(t, err)
	_, err = s.db.ExecContext(ctx, `UPDATE verifier_schema SET version = version + 1`)
	mustDo(t, err, s.Close())
	if s, err := OpenSQLite(ctx, path, 0); !errors.Is(err, errStoreTooNew) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("open a store of a later version: %v, want %v", err, errStoreTooNew)
	}
}
