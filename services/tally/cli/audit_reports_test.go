package cli

import (
	"context"
	"encoding/json"
	"io"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/services/query"
	"github.com/tally-accounting/tally/services/verifier"
	vt "github.com/tally-accounting/tally/services/verifier/verifiertest"
)

var auditDay = time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)

func at(h, m int) time.Time {
	return auditDay.Add(time.Duration(h)*time.Hour + time.Duration(m)*time.Minute)
}

// crossVM is one VM of the cross-check scenario: what the notifications
// say (notified) and what the record store holds (recorded).
type crossVM struct {
	id, project        string
	notified, recorded bool
	launched, deleted  time.Time // notifications
	recStart, recEnd   time.Time // record; recEnd zero while running
}

var (
	crossFrom  = at(10, 0)
	crossUntil = at(16, 0)
	project1   = "aaaa0000aaaa0000aaaa0000aaaa0001"
	project2   = "bbbb0000bbbb0000bbbb0000bbbb0002"
)

func crossVMs() []crossVM {
	id := func(n string) string { return n + "0000000-0000-4000-8000-000000000001" }
	return []crossVM{
		{id: id("1"), project: project1, notified: true, recorded: true, launched: at(10, 0), recStart: at(10, 0)},
		{id: id("2"), project: project1, notified: true, launched: at(11, 0)},
		{id: id("3"), project: project2, recorded: true, recStart: at(12, 0), recEnd: at(14, 0)},
		// 30 minutes apart: under 1 h, over 10 min.
		{id: id("4"), project: project2, notified: true, recorded: true, launched: at(10, 0), deleted: at(15, 0), recStart: at(10, 0), recEnd: at(14, 30)},
		// 3 hours apart.
		{id: id("5"), project: project2, notified: true, recorded: true, launched: at(10, 0), deleted: at(15, 0), recStart: at(10, 0), recEnd: at(12, 0)},
	}
}

// fillAuditStores drives the verifier over the scenario's notifications
// into <dir>/verifier.db, and writes its cloud records into the record
// store <dir>/query.db, as the query service does.
func fillAuditStores(t *testing.T, dir string) {
	t.Helper()
	ctx := context.Background()
	store, err := verifier.OpenSQLite(ctx, filepath.Join(dir, "verifier.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	v := verifier.New(verifier.DefaultConfig(), nil, nil, nil, verifier.WithStore(store),
		verifier.WithClock(func() time.Time { return crossUntil.Add(time.Hour) }))
	var recs []*tallyv1.Record
	for _, vm := range crossVMs() {
		in := vt.Instance{ID: vm.id, Tenant: vm.project, FlavorID: "f1", FlavorName: "m1.small", MemoryMB: 2048, Launched: vm.launched, Deleted: vm.deleted}
		if vm.notified {
			for _, body := range vt.Lifecycle(in, crossUntil) {
				if err := v.Ingest(ctx, body, "notifications.info"); err != nil {
					t.Fatal(err)
				}
			}
		}
		if vm.recorded {
			recs = append(recs, vt.CloudRecord(vm.id, vm.project, vm.recStart, vm.recEnd, crossUntil))
		}
	}
	if res, err := v.VerifyPending(ctx); err != nil || res.Failed != 0 {
		t.Fatalf("verification: %+v %v", res, err)
	}
	rs, err := query.OpenStore(ctx, "", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	if err := rs.Write(ctx, recs); err != nil {
		t.Fatal(err)
	}
}

type mismatch struct {
	Project, VM, Kind string
	Difference        int64
}

// clipped is the length of [a, b) (b zero: open) within the period.
func clipped(a, b time.Time) time.Duration {
	if a.Before(crossFrom) {
		a = crossFrom
	}
	if b.IsZero() || b.After(crossUntil) {
		b = crossUntil
	}
	return max(b.Sub(a), 0)
}

// expectedCrossCheck is what the scenario inserted, judged with a threshold.
func expectedCrossCheck(project string, threshold time.Duration, pct float64) []mismatch {
	out := []mismatch{}
	for _, vm := range crossVMs() {
		if project != "" && vm.project != project {
			continue
		}
		var n, r time.Duration
		if vm.notified {
			n = clipped(vm.launched, vm.deleted)
		}
		if vm.recorded {
			r = clipped(vm.recStart, vm.recEnd)
		}
		m := mismatch{Project: vm.project, VM: vm.id, Difference: int64((r - n) / time.Second)}
		switch {
		case r == 0:
			m.Kind = verifier.OnlyInNotifications
		case n == 0:
			m.Kind = verifier.OnlyInRecords
		case (r - n).Abs() > max(threshold, time.Duration(pct/100*float64(max(n, r)))):
			m.Kind = verifier.WallTimeDiffers
		default:
			continue
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Project+out[i].VM < out[j].Project+out[j].VM })
	return out
}

func TestAuditCrossCheck(t *testing.T) {
	dir := t.TempDir()
	fillAuditStores(t, dir)
	period := []string{"--data-dir", dir, "--from", crossFrom.Format(time.RFC3339), "--to", crossUntil.Format(time.RFC3339), "--json"}
	tests := []struct {
		name      string
		args      []string
		project   string
		threshold time.Duration
		pct       float64
	}{
		{"defaults", nil, "", time.Hour, 5},
		{"10 minutes", []string{"--threshold", "10m,0%"}, "", 10 * time.Minute, 0},
		{"percent only", []string{"--threshold", "50%"}, "", time.Hour, 50},
		{"one project", []string{"--project", project2, "--threshold", "10m"}, project2, 10 * time.Minute, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := run(t, nil, append(append([]string{"audit", "crosscheck"}, period...), tt.args...)...)
			want := expectedCrossCheck(tt.project, tt.threshold, tt.pct)
			wantCode := 0
			if len(want) > 0 {
				wantCode = 3
			}
			if code != wantCode {
				t.Fatalf("exit %d, want %d: %s", code, wantCode, stderr)
			}
			var r verifier.CrossCheckReport
			if err := json.Unmarshal([]byte(stdout), &r); err != nil {
				t.Fatalf("crosscheck --json printed %q: %v", stdout, err)
			}
			got := []mismatch{}
			for _, p := range r.Projects {
				for _, m := range p.Mismatches {
					got = append(got, mismatch{Project: p.Project, VM: m.VM, Kind: m.Kind, Difference: m.DifferenceSeconds})
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("mismatches (-inserted +reported):\n%s", diff)
			}
		})
	}
	// The scenario covers each kind, and vm 4 sits between the thresholds.
	kinds := map[string]bool{}
	for _, m := range expectedCrossCheck("", 10*time.Minute, 0) {
		kinds[m.Kind] = true
	}
	if len(kinds) != 3 || len(expectedCrossCheck("", time.Hour, 5)) != len(expectedCrossCheck("", 10*time.Minute, 0))-1 {
		t.Errorf("the scenario no longer tells the thresholds apart: %v", kinds)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"audit", "crosscheck", "--data-dir", dir}, "--from and --to are required"},
		{[]string{"audit", "crosscheck", "--data-dir", dir, "--from", "2026-11-21", "--to", "2026-11-20"}, "is not after"},
		{[]string{"audit", "crosscheck", "--data-dir", dir, "--from", "2026-11-20", "--to", "2026-11-21", "--threshold", "soon"}, "--threshold"},
		{[]string{"audit", "crosscheck", "--data-dir", t.TempDir(), "--from", "2026-11-20", "--to", "2026-11-21"}, "is the verifier running"},
	} {
		if code, _, stderr := run(t, nil, tt.args...); code == 0 || code == 3 || !strings.Contains(stderr, tt.want) {
			t.Errorf("tally %q = %d, stderr %q; want an error with %q", tt.args, code, stderr, tt.want)
		}
	}
}

func TestAuditStoreAndHours(t *testing.T) {
	dir := t.TempDir()
	fillAuditStores(t, dir)
	code, stdout, stderr := run(t, nil, "audit", "nova", "--data-dir", dir, "--period", "hour", "--at", at(13, 0).Format(time.RFC3339), "--store", "--json")
	if code != 0 || !strings.Contains(stderr, "stored as audit report 1") {
		t.Fatalf("audit --store: %d %s", code, stderr)
	}
	var printed verifier.AuditReport
	if err := json.Unmarshal([]byte(stdout), &printed); err != nil {
		t.Fatal(err)
	}
	store, err := verifier.OpenSQLite(t.Context(), filepath.Join(dir, "verifier.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	reports, err := verifier.OpenReports(t.Context(), store)
	if err != nil {
		t.Fatal(err)
	}
	got, err := reports.GetAudit(t.Context(), 1)
	store.Close()
	if err != nil {
		t.Fatal(err)
	}
	// 12:00-13:00: vms 1, 2, 4 and 5 sent a periodic exists.
	if diff := cmp.Diff(&printed, got.Report); diff != "" || got.Period != "hour" || printed.Summary["periodic"].Verified != 4 {
		t.Errorf("stored report (-printed +stored):\n%s\nperiodic %+v", diff, printed.Summary["periodic"])
	}

	code, stdout, stderr = run(t, nil, "audit", "hours", "--data-dir", dir, "--from", crossFrom.Format(time.RFC3339), "--to", crossUntil.Format(time.RFC3339), "--json")
	if code != 0 {
		t.Fatalf("audit hours: %d %s", code, stderr)
	}
	var hours verifier.InstanceHoursReport
	if err := json.Unmarshal([]byte(stdout), &hours); err != nil {
		t.Fatal(err)
	}
	// Whole hours each, all in the period: the wall time, in hours.
	var want int64
	instances := 0
	for _, vm := range crossVMs() {
		if vm.notified {
			want += int64(clipped(vm.launched, vm.deleted) / time.Hour)
			instances++
		}
	}
	if hours.TotalHours != want || hours.TotalInstances != instances || hours.TotalUnitHours != float64(want)*8 {
		t.Errorf("hours report: %d hours, %d instances, %g units; want %d, %d, %d", hours.TotalHours, hours.TotalInstances,
			hours.TotalUnitHours, want, instances, want*8)
	}
	if code, _, stderr := run(t, nil, "audit", "hours", "--data-dir", dir, "--from", "2026-11-20"); code != 2 || !strings.Contains(stderr, "--from and --to go together") {
		t.Errorf("hours --from alone = %d %q", code, stderr)
	}
}

// TestServeVerificationAPI runs tally serve with the verifier: reflection
// lists tally.v1.Verification and it answers from the verifier's store,
// the cross-check from the record store of the same process.
func TestServeVerificationAPI(t *testing.T) {
	dir := t.TempDir()
	fillAuditStores(t, dir)
	api, natsAddr := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"serve", "--data-dir", dir, "--listen", api, "--metrics-listen", "", "--site-name", "TEST"},
			Env{Stdout: io.Discard, Stderr: &stderr, Environ: []string{
				"TALLY_NATS_EMBEDDED_LISTEN=" + natsAddr,
				"TALLY_MESSENGERS_SSM_ENABLED=false",
				"TALLY_EXTRACTORS_NOVA_ENABLED=false",
				"TALLY_ENRICHER_DEFAULT_VO=ops",
				"TALLY_QUERY_LISTEN=" + freeAddr(t),
				"TALLY_VERIFIER_ENABLED=true",
			}})
	}()
	waitServing(t, api)
	if got := listServices(t, api); !slices.Contains(got, "tally.v1.Verification") {
		t.Errorf("reflection lists %q, missing tally.v1.Verification", got)
	}
	conn, err := grpc.NewClient(api, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	vc := tallyv1.NewVerificationClient(conn)
	st, err := vc.GetInstanceStatus(t.Context(), &tallyv1.GetInstanceStatusRequest{Instance: crossVMs()[0].id})
	if err != nil || len(st.GetExists()) != 6 {
		t.Errorf("GetInstanceStatus: %d exists, %v; want 6", len(st.GetExists()), err)
	}
	cc, err := vc.CrossCheck(t.Context(), &tallyv1.CrossCheckRequest{Start: timestamppb.New(crossFrom), End: timestamppb.New(crossUntil)})
	if err != nil || int(cc.GetMismatchCount()) != len(expectedCrossCheck("", time.Hour, 5)) {
		t.Errorf("CrossCheck: %d mismatches, %v; want %d", cc.GetMismatchCount(), err, len(expectedCrossCheck("", time.Hour, 5)))
	}
	if _, err := vc.GetAudit(t.Context(), &tallyv1.GetAuditRequest{Id: 42}); status.Code(err) != codes.NotFound {
		t.Errorf("GetAudit of an unknown id: %v, want NotFound", err)
	}
	if _, err := vc.ListFailures(t.Context(), &tallyv1.ListFailuresRequest{PageSize: -1}); status.Code(err) != codes.InvalidArgument ||
		!strings.Contains(status.Convert(err).Message(), "page_size") {
		t.Errorf("ListFailures page_size -1: %v, want InvalidArgument naming page_size", err)
	}
	conn.Close()
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("serve exited %d:\n%s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop within 10s")
	}
}
