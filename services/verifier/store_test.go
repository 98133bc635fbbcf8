package verifier

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tally-accounting/tally/pkg/pgtest"
)

// pgSchema is a PostgreSQL schema of this test's own (pkg/pgtest).
func pgSchema(tb testing.TB) string { return pgtest.Schema(tb, "tally_verifier_test_") }

// storeBackend opens stores of one kind; config returns the StoreConfig
// of a fresh store for one test, that every open of it shares.
type storeBackend struct {
	name   string
	config func(tb testing.TB) StoreConfig
}

var storeBackends = []storeBackend{
	{"sqlite", func(tb testing.TB) StoreConfig {
		return StoreConfig{Driver: "sqlite", Path: filepath.Join(tb.TempDir(), "verifier.db")}
	}},
	{"postgres", func(tb testing.TB) StoreConfig { return StoreConfig{Driver: "postgres", DSN: secret(pgSchema(tb))} }},
}

func openConfigured(tb testing.TB, c StoreConfig) Store {
	tb.Helper()
	s, err := OpenStore(context.Background(), c)
	if err != nil {
		tb.Fatalf("open %s store: %v", c.Driver, err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// eachStore runs fn once per store kind, on a fresh store.
func eachStore(t *testing.T, fn func(t *testing.T, s Store)) {
	for _, b := range storeBackends {
		t.Run(b.name, func(t *testing.T) { fn(t, openConfigured(t, b.config(t))) })
	}
}

// claimedStatus is the status of a claimed exists: verifying where
// several verifiers share the store, still pending in SQLite's, whose one
// verifier only reads its claims.
func claimedStatus(s Store) Status {
	if _, ok := s.(*SQLiteStore); ok {
		return StatusPending
	}
	return StatusVerifying
}

func mustDo(t *testing.T, errs ...error) {
	t.Helper()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// apply applies b to s in one ApplyBatch and fails the test if s refuses
// it.
func apply(t *testing.T, s Store, b Batch) {
	t.Helper()
	mustDo(t, s.ApplyBatch(context.Background(), &b))
}

func TestStoreUsage(t *testing.T) {
	eachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		l := launch()
		l.Updated = apb
		fill := InstanceUsage{Instance: inst, LaunchedAt: l1.Truncate(time.Second), Tenant: "other", OSDistro: "debian",
			Updated: apb.Add(-time.Hour)}
		later := InstanceUsage{Instance: inst, LaunchedAt: l1, InstanceFlavorID: "resized", Updated: apb.Add(time.Minute)}
		applyOneByOne(t, s, Batch{Usage: []UsageEvent{{fill, false}, {l, true}, {l, true}, {later, true},
			{InstanceUsage{Instance: "i2", LaunchedAt: l1, Tenant: "t2"}, false}}})
		got, err := s.Launches(ctx, inst)
		mustDo(t, err)
		want := mergeUsage(mergeUsage(mergeUsage(InstanceUsage{}, fill, false), l, true), later, true)
		if diff := cmp.Diff([]InstanceUsage{want}, got); diff != "" {
			t.Errorf("launches (-want +got):\n%s", diff)
		}
		if got[0].LaunchedAt != l1 || got[0].InstanceFlavorID != "resized" || got[0].Tenant != tenant {
			t.Errorf("merged launch %+v: want the microseconds, the later flavor and the .end's tenant", got[0])
		}
		if err := s.ApplyBatch(ctx, &Batch{Usage: []UsageEvent{{Usage: InstanceUsage{Instance: inst}}}}); err == nil {
			t.Error("a launch without launched_at was stored")
		}

		d := InstanceDelete{Instance: inst, LaunchedAt: l1, DeletedAt: del1}
		applyOneByOne(t, s, Batch{Deletes: []InstanceDelete{d, {Instance: inst, LaunchedAt: l1, DeletedAt: ape}}})
		dels, err := s.Deletes(ctx, inst)
		mustDo(t, err)
		if diff := cmp.Diff([]InstanceDelete{d}, dels); diff != "" {
			t.Errorf("deletes: the first one is kept (-want +got):\n%s", diff)
		}
		all, err := s.AllLaunches(ctx)
		mustDo(t, err)
		allDels, err := s.AllDeletes(ctx)
		mustDo(t, err)
		if len(all) != 2 || all[0].Instance != inst || all[1].Instance != "i2" || len(allDels) != 1 {
			t.Errorf("all launches %v, all deletes %v", all, allDels)
		}
		none, err := s.Launches(ctx, "nobody")
		mustDo(t, err)
		if len(none) != 0 {
			t.Errorf("launches of an unknown instance: %v", none)
		}
	})
}

func TestStoreInstanceExists(t *testing.T) {
	eachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		var added []InstanceExists
		for i := range 5 {
			e := exists(func(e *InstanceExists) {
				e.Key, e.MessageID, e.Received, e.RoutingKey = fmt.Sprint("k", i), fmt.Sprint("m", i), ape.Add(time.Minute), "notifications.info"
				e.Raw, e.Bandwidth, e.Versioned, e.DeletedAt = []byte(fmt.Sprintf(`{"n":%d}`, i)), int64(i)<<40, i%2 == 1, del1
				e.AuditEnd = ape.Add(time.Duration(i) * time.Hour)
			})
			applyOneByOne(t, s, Batch{Exists: []InstanceExists{e, e}}) // the second is a duplicate
			added = append(added, e)
		}
		// The first three have ended by ape+2h; claimed two at a time, as
		// a pass does.
		c := Claim{EndingMax: ape.Add(2 * time.Hour), Limit: 2, Raw: true}
		var claims [][]InstanceExists
		for range 3 {
			got, err := s.ClaimInstanceExists(ctx, c)
			mustDo(t, err)
			claims = append(claims, got)
			c.After = next(c.After, len(got), func(i int) Cursor { return Cursor{got[i].AuditEnd, got[i].ID} })
		}
		c1, c2, c3 := claims[0], claims[1], claims[2]
		if len(c1) != 2 || len(c2) != 1 || len(c3) != 0 || c1[0].ID >= c1[1].ID {
			t.Fatalf("claims of 2: %d, %d, %d exists; want 2, 1, 0 in id order", len(c1), len(c2), len(c3))
		}
		claimed := append(c1, c2...)
		for i, e := range claimed {
			want := added[i]
			want.ID, want.Status = e.ID, claimedStatus(s)
			if diff := cmp.Diff(want, e); diff != "" {
				t.Errorf("claimed exists %d (-want +got):\n%s", i, diff)
			}
		}
		f := &Failure{Field: "tenant", Expected: "a", Actual: "b", Reason: strings.Repeat("r", 1200)}
		mustDo(t, s.FinishInstanceExistsBatch(ctx, []Finished{{claimed[0].ID, StatusFailed, f}, {claimed[1].ID, StatusVerified, nil}}))
		failed, err := s.InstanceExistsList(ctx, ExistsFilter{Status: StatusFailed})
		mustDo(t, err)
		if len(failed) != 1 || failed[0].Failure == nil || failed[0].Failure.Field != "tenant" || len(failed[0].Failure.Reason) != 1000 {
			t.Errorf("failed exists %+v: want the failure, reason cut to 1000 bytes", failed)
		}
		byUUID, err := s.InstanceExistsList(ctx, ExistsFilter{UUID: inst, Status: StatusVerified})
		mustDo(t, err)
		if len(byUUID) != 1 || byUUID[0].ID != claimed[1].ID || byUUID[0].Failure != nil {
			t.Errorf("verified exists of %s: %+v", inst, byUUID)
		}
		if sq, ok := s.(*SQLiteStore); ok {
			// Only a SQLite store an older tally wrote has exists left
			// verifying.
			_, err := sq.db.ExecContext(ctx, `UPDATE instance_exists SET status = ? WHERE id = ?`, StatusVerifying, claimed[2].ID)
			mustDo(t, err)
		}
		n, err := s.ResetVerifying(ctx)
		mustDo(t, err)
		if n != 1 {
			t.Errorf("reset %d exists, want the one left verifying", n)
		}
		counts, _, err := s.CountExists(ctx)
		mustDo(t, err)
		if diff := cmp.Diff(map[Status]int{StatusPending: 3, StatusVerified: 1, StatusFailed: 1}, counts); diff != "" {
			t.Errorf("counts (-want +got):\n%s", diff)
		}
		// Without Raw, the three pending exists come without their bodies.
		again, err := s.ClaimInstanceExists(ctx, Claim{EndingMax: ape.Add(10 * time.Hour), Limit: 10})
		mustDo(t, err)
		if len(again) != 3 || slices.ContainsFunc(again, func(e InstanceExists) bool { return e.Raw != nil }) {
			t.Errorf("claim without bodies: %d exists, bodies %q; want 3 without", len(again), bodies(again))
		}
	})
}

func TestStoreImages(t *testing.T) {
	eachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		const img = "9b000001-0000-4000-8000-000000000001"
		applyOneByOne(t, s, Batch{ImageUsage: []ImageUsage{{UUID: img, Owner: "o1", CreatedAt: apb, Updated: apb},
			{UUID: img, Size: 42, HasSize: true, Updated: apb.Add(time.Minute)},
			{UUID: img, Owner: "old", Updated: apb.Add(-time.Minute)}}})
		u, err := s.ImageUsage(ctx, img)
		mustDo(t, err)
		want := &ImageUsage{UUID: img, Owner: "o1", Size: 42, HasSize: true, CreatedAt: apb, Updated: apb.Add(time.Minute)}
		if diff := cmp.Diff(want, u); diff != "" {
			t.Errorf("image (-want +got):\n%s", diff)
		}
		if u, err := s.ImageUsage(ctx, "none"); u != nil || err != nil {
			t.Errorf("unknown image: %v, %v", u, err)
		}
		applyOneByOne(t, s, Batch{ImageDeletes: []ImageDelete{{UUID: img, DeletedAt: del1}, {UUID: img, DeletedAt: ape}}})
		dels, err := s.ImageDeletes(ctx, img)
		mustDo(t, err)
		if diff := cmp.Diff([]ImageDelete{{UUID: img, DeletedAt: del1}}, dels); diff != "" {
			t.Errorf("image deletes (-want +got):\n%s", diff)
		}
		e := ImageExists{Key: "k", MessageID: "m", Image: *want, DeletedAt: del1, AuditBegin: apb, AuditEnd: ape, Received: ape,
			RoutingKey: "notifications.info", Raw: []byte("{}")}
		e.Image.Updated = time.Time{}
		e2 := e
		e2.Image.UUID, e2.Raw = "9b000001-0000-4000-8000-000000000002", nil
		applyOneByOne(t, s, Batch{ImageExists: []ImageExists{e, e, e2}})
		claimed, err := s.ClaimImageExists(ctx, Claim{EndingMax: ape, Limit: 10, Raw: true})
		mustDo(t, err)
		if len(claimed) != 2 {
			t.Fatalf("claimed %d image exists, want 2", len(claimed))
		}
		want1 := e
		want1.ID, want1.Status = claimed[0].ID, claimedStatus(s)
		want1.Image.Size, want1.Image.HasSize = 42, true
		if diff := cmp.Diff(want1, claimed[0]); diff != "" {
			t.Errorf("claimed image exists (-want +got):\n%s", diff)
		}
		mustDo(t, s.FinishImageExistsBatch(ctx, []Finished{{claimed[0].ID, StatusFailed, &Failure{Field: "owner", Reason: "r"}},
			{claimed[1].ID, StatusVerified, nil}}))
		list, err := s.ImageExistsList(ctx, ExistsFilter{UUID: img})
		mustDo(t, err)
		if len(list) != 1 || list[0].Status != StatusFailed || list[0].Failure == nil || list[0].Failure.Field != "owner" {
			t.Errorf("image exists of %s: %+v", img, list)
		}
		_, images, err := s.CountExists(ctx)
		mustDo(t, err)
		if diff := cmp.Diff(map[Status]int{StatusVerified: 1, StatusFailed: 1}, images); diff != "" {
			t.Errorf("image counts (-want +got):\n%s", diff)
		}
		all, err := s.AllImages(ctx)
		mustDo(t, err)
		if len(all) != 1 || all[0].UUID != img {
			t.Errorf("all images: %v", all)
		}
	})
}

func TestStoreReconciles(t *testing.T) {
	eachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		rc := InstanceReconcile{Usage: launch(), Source: SourceNovaAPI, NovaStatus: "ACTIVE", Reconciled: ape}
		later := rc
		later.Usage.LaunchedAt, later.DeletedAt, later.NovaStatus = l1.Truncate(time.Second), del1, "DELETED"
		other := rc
		other.Usage.LaunchedAt = ape
		mustDo(t, s.AddReconcile(ctx, rc), s.AddReconcile(ctx, other), s.AddReconcile(ctx, later))
		got, err := s.Reconciles(ctx, inst)
		mustDo(t, err)
		if diff := cmp.Diff([]InstanceReconcile{later, other}, got); diff != "" {
			t.Errorf("reconciles: the latest of a launch replaces the earlier (-want +got):\n%s", diff)
		}
	})
}

// TestPostgresClaimReplicas claims from several stores on one database at
// once, as verifier replicas do: every exists is claimed exactly once.
func TestPostgresClaimReplicas(t *testing.T) {
	cfg := storeBackends[1].config(t)
	ctx := context.Background()
	const n, replicas = 300, 4
	var b Batch
	for i := range n {
		b.Exists = append(b.Exists, exists(func(e *InstanceExists) { e.Key = fmt.Sprint("k", i) }))
	}
	apply(t, openConfigured(t, cfg), b)
	var mu sync.Mutex
	seen := map[int64]int{}
	var wg sync.WaitGroup
	for range replicas {
		s := openConfigured(t, cfg)
		wg.Go(func() {
			for {
				batch, err := s.ClaimInstanceExists(ctx, Claim{EndingMax: ape, Limit: 7})
				if err != nil {
					t.Error(err)
					return
				}
				if len(batch) == 0 {
					return
				}
				mu.Lock()
				for _, e := range batch {
					seen[e.ID]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	twice := 0
	for _, c := range seen {
		if c != 1 {
			twice++
		}
	}
	if len(seen) != n || twice != 0 {
		t.Errorf("%d of %d exists claimed, %d more than once", len(seen), n, twice)
	}
}

// TestPostgresMigrations opens a store written at schema version 1 and
// expects it upgraded with its rows kept, and refuses a newer schema.
func TestPostgresMigrations(t *testing.T) {
	dsn := pgSchema(t)
	ctx := context.Background()
	old, err := openPostgres(ctx, dsn, 1)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, old, Batch{Usage: []UsageEvent{{launch(), true}}, Exists: []InstanceExists{exists(func(e *InstanceExists) {
		e.Key, e.Raw = "k", []byte(`{"old":1}`)
	})}})
	if v, err := old.SchemaVersion(ctx); v != 1 || err != nil {
		t.Fatalf("old store at version %d (%v), want 1", v, err)
	}
	if _, err := old.Reconciles(ctx, inst); err == nil {
		t.Fatal("a version 1 store has instance_reconcile already: the test does not test the upgrade")
	}
	old.Close()

	// Replicas starting together: each upgrades or waits for the other.
	var wg sync.WaitGroup
	stores := make([]*PostgresStore, 3)
	errs := make([]error, 3)
	for i := range stores {
		wg.Go(func() { stores[i], errs[i] = OpenPostgres(ctx, dsn) })
	}
	wg.Wait()
	for i, s := range stores {
		if errs[i] != nil {
			t.Fatalf("upgrade %d: %v", i, errs[i])
		}
		defer s.Close()
	}
	s := stores[0]
	if v, err := s.SchemaVersion(ctx); v != len(pgMigrations) || err != nil {
		t.Errorf("upgraded store at version %d (%v), want %d", v, err, len(pgMigrations))
	}
	ls, err := s.Launches(ctx, inst)
	mustDo(t, err)
	es, err := s.InstanceExistsList(ctx, ExistsFilter{})
	mustDo(t, err)
	if len(ls) != 1 || len(es) != 1 {
		t.Errorf("after the upgrade: %d launches, %d exists; want the 1 and 1 written before", len(ls), len(es))
	}
	mustDo(t, s.AddReconcile(ctx, InstanceReconcile{Usage: launch(), Source: SourceNovaAPI}))
	var pendingIndexes int
	mustDo(t, s.pool.QueryRow(ctx, `SELECT (to_regclass('instance_exists_pending') IS NOT NULL)::int
		+ (to_regclass('image_exists_pending') IS NOT NULL)::int`).Scan(&pendingIndexes))
	if pendingIndexes != 0 {
		t.Errorf("%d of the (status, audit_end) indexes left after the upgrade, want none", pendingIndexes)
	}
	// The body of an exists stored before stays in its row; a new one's
	// goes beside it (version 6); both read the same.
	apply(t, s, Batch{Exists: []InstanceExists{exists(func(e *InstanceExists) { e.Key, e.Raw = "k2", []byte(`{"new":1}`) })}})
	var inRow, beside int
	mustDo(t, s.pool.QueryRow(ctx, `SELECT COUNT(raw) FROM instance_exists`).Scan(&inRow),
		s.pool.QueryRow(ctx, `SELECT COUNT(*) FROM instance_exists_raw`).Scan(&beside))
	if inRow != 1 || beside != 1 {
		t.Errorf("%d bodies in instance_exists, %d beside it; want 1 and 1", inRow, beside)
	}
	listed, err := s.InstanceExistsList(ctx, ExistsFilter{})
	mustDo(t, err)
	claimed, err := s.ClaimInstanceExists(ctx, Claim{EndingMax: ape, Limit: 10, Raw: true})
	mustDo(t, err)
	for what, got := range map[string][]InstanceExists{"listed": listed, "claimed": claimed} {
		if len(got) != 2 || string(got[0].Raw) != `{"old":1}` || string(got[1].Raw) != `{"new":1}` {
			t.Errorf("%s after the upgrade: %d exists, bodies %q; want the old and the new one", what, len(got), bodies(got))
		}
	}

	if _, err := s.pool.Exec(ctx, "UPDATE verifier_schema SET version = $1", len(pgMigrations)+1); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenPostgres(ctx, dsn); !errors.Is(err, ErrSchemaTooNew) {
		t.Errorf("opening a newer schema: %v, want ErrSchemaTooNew", err)
	}
}

func TestPostgresUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := OpenStore(ctx, StoreConfig{Driver: "postgres", DSN: "postgres://postgres:hunter2@127.0.0.1:1/test?connect_timeout=2"})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("open an unreachable server: %v; want an error without the password", err)
	}
	_, err = OpenStore(ctx, StoreConfig{Driver: "postgres", DSN: "postgres://postgres:hunter2@[::1"})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("open a malformed DSN: %v; want an error without the password", err)
	}
}

// TestStoreReports runs the ReportStore of each store kind (OpenReports).
func TestStoreReports(t *testing.T) {
	eachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		r, err := OpenReports(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		var ids []int64
		for i, svc := range []string{"nova", "glance", "nova"} {
			rep := &AuditReport{Service: svc, PeriodBegin: apb.Add(time.Duration(i) * time.Hour), PeriodEnd: ape.Add(time.Duration(i) * time.Hour),
				Summary: map[string]StatusCounts{"periodic": {Count: i}}, ExistFails: []ExistFail{}, MissingExists: []MissingExists{}}
			id, err := r.SaveAudit(ctx, StoredAudit{Created: ape, Period: "hour", Report: rep})
			mustDo(t, err)
			ids = append(ids, id)
		}
		got, err := r.GetAudit(ctx, ids[1])
		mustDo(t, err)
		if got.ID != ids[1] || got.Period != "hour" || !got.Created.Equal(ape) || got.Report.Service != "glance" || !got.Report.PeriodBegin.Equal(apb.Add(time.Hour)) {
			t.Errorf("audit %d: %+v %+v", ids[1], got, got.Report)
		}
		if _, err := r.GetAudit(ctx, ids[2]+100); !errors.Is(err, ErrReportNotFound) {
			t.Errorf("unknown audit: %v", err)
		}
		nova, err := r.ListAudits(ctx, AuditListFilter{Service: "nova"})
		mustDo(t, err)
		page, err := r.ListAudits(ctx, AuditListFilter{BeforeID: ids[2], Limit: 1})
		mustDo(t, err)
		if len(nova) != 2 || nova[0].ID != ids[2] || len(page) != 1 || page[0].ID != ids[1] {
			t.Errorf("nova audits %v, page before %d: %v", nova, ids[2], page)
		}

		b := Batch{ImageExists: []ImageExists{{Key: "ik", MessageID: "im", Image: ImageUsage{UUID: "img"}, AuditBegin: apb, AuditEnd: ape}}}
		for i := range 3 {
			b.Exists = append(b.Exists, exists(func(e *InstanceExists) { e.Key = fmt.Sprint("k", i) }))
		}
		apply(t, s, b)
		ie, err := s.ClaimInstanceExists(ctx, Claim{EndingMax: ape, Limit: 10})
		mustDo(t, err)
		im, err := s.ClaimImageExists(ctx, Claim{EndingMax: ape, Limit: 10})
		mustDo(t, err)
		mustDo(t, s.FinishInstanceExistsBatch(ctx, []Finished{{ie[0].ID, StatusFailed, &Failure{Field: "tenant", Reason: "Tenant differs"}},
			{ie[1].ID, StatusVerified, nil}, {ie[2].ID, StatusFailed, &Failure{Field: "launched_at", Reason: "no launch"}}}),
			s.FinishImageExistsBatch(ctx, []Finished{{im[0].ID, StatusFailed, &Failure{Field: "owner", Reason: "owner differs"}}}))
		all, err := r.ListFailures(ctx, FailureFilter{}, nil, 10)
		mustDo(t, err)
		first, err := r.ListFailures(ctx, FailureFilter{}, nil, 2)
		mustDo(t, err)
		rest, err := r.ListFailures(ctx, FailureFilter{}, &FailureCursor{Service: "nova", ID: first[1].ID}, 2)
		mustDo(t, err)
		tenants, err := r.ListFailures(ctx, FailureFilter{Reason: "TENANT", Begin: apb, End: ape}, nil, 10)
		mustDo(t, err)
		if len(all) != 3 || all[2].Service != "glance" || len(first) != 2 || len(rest) != 1 || rest[0].Service != "glance" ||
			len(tenants) != 1 || tenants[0].Failure.Field != "tenant" || tenants[0].UUID != inst {
			t.Errorf("failures: all %+v, first %+v, rest %+v, tenant %+v", all, first, rest, tenants)
		}
	})
}

// TestSQLiteExistsBody: a body is stored beside its exists, not in the
// row the verification passes rewrite; a row stored before that keeps its
// body in the row and still reads it.
func TestSQLiteExistsBody(t *testing.T) {
	ctx := context.Background()
	s, err := OpenSQLite(ctx, filepath.Join(t.TempDir(), "v.db"), DefaultCacheMiB)
	mustDo(t, err)
	defer s.Close()
	e := exists(func(e *InstanceExists) { e.Key, e.MessageID, e.Raw = "new", "m-new", []byte(`{"new":1}`) })
	apply(t, s, Batch{Exists: []InstanceExists{e}})
	var inRow, beside int
	mustDo(t, s.db.QueryRowContext(ctx, `SELECT COUNT(raw) FROM instance_exists`).Scan(&inRow),
		s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM instance_exists_raw`).Scan(&beside))
	if inRow != 0 || beside != 1 {
		t.Errorf("%d bodies in instance_exists, %d beside it; want 0 and 1", inRow, beside)
	}
	// As an older tally stored it.
	old := exists(func(e *InstanceExists) { e.Key, e.MessageID, e.Raw = "old", "m-old", []byte(`{"old":1}`) })
	args := existsArgs(old)
	_, err = s.db.ExecContext(ctx, `INSERT INTO instance_exists (msg_key, message_id, event_type, versioned, instance,
		launched_at, deleted_at, audit_begin, audit_end, tenant, instance_type_id, instance_flavor_id, flavor_name,
		os_architecture, os_distro, os_version, rax_options, image_type, bandwidth, invalid, received, status, routing_key, raw, iid)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, (SELECT iid FROM instances WHERE uuid = ?))`,
		append(args, old.Usage.Instance)...)
	mustDo(t, err)
	claimed, err := s.ClaimInstanceExists(ctx, Claim{EndingMax: e.AuditEnd.Add(time.Hour), Limit: 10, Raw: true})
	mustDo(t, err)
	listed, err := s.InstanceExistsList(ctx, ExistsFilter{})
	mustDo(t, err)
	for what, got := range map[string][]InstanceExists{"claimed": claimed, "listed": listed} {
		if len(got) != 2 || string(got[0].Raw) != `{"new":1}` || string(got[1].Raw) != `{"old":1}` {
			t.Errorf("%s exists: %d, bodies %q; want the new and the old body", what, len(got), bodies(got))
		}
	}
}

func bodies(es []InstanceExists) []string {
	var out []string
	for _, e := range es {
		out = append(out, string(e.Raw))
	}
	return out
}
