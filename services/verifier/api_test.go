package verifier

import (
	"context"
	"math"
	"net"
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
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	vt "github.com/tally-accounting/tally/services/verifier/verifiertest"
)

var apiDay = time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)

func hm(h, m int) time.Time {
	return apiDay.Add(time.Duration(h)*time.Hour + time.Duration(m)*time.Minute)
}

const (
	tenant1 = "aaaa0000aaaa0000aaaa0000aaaa0001"
	tenant2 = "bbbb0000bbbb0000bbbb0000bbbb0002"
	image1  = "9b000001-0000-4000-8000-000000000001"
)

// scenarioVM is one VM as the notifications and the record store see it.
type scenarioVM struct {
	in vt.Instance
	// notified: the lifecycle notifications are sent.
	notified bool
	// failHours are hours whose exists is tampered (another flavor) and fail.
	failHours []time.Time
	// recorded: a cloud record of [recStart, recEnd) (recEnd zero: running).
	recorded         bool
	recStart, recEnd time.Time
}

// The period every test looks at: notifications and records up to until.
var (
	scenarioFrom  = hm(10, 0)
	scenarioUntil = hm(16, 0)
)

func vmID(c byte) string { return strings.Repeat(string(c), 8) + "-0000-4000-8000-000000000001" }

func scenarioVMs() []scenarioVM {
	inst := func(c byte, tenant, flavor string, mem int, launched, deleted time.Time) vt.Instance {
		return vt.Instance{ID: vmID(c), Tenant: tenant, FlavorID: flavor, FlavorName: "m1." + flavor, MemoryMB: mem, Launched: launched, Deleted: deleted}
	}
	return []scenarioVM{
		// In agreement.
		{in: inst('a', tenant1, "f1", 2048, hm(10, 20), time.Time{}), notified: true, recorded: true, recStart: hm(10, 20)},
		{in: inst('b', tenant1, "f2", 4096, hm(11, 10), hm(13, 30)), notified: true, recorded: true, recStart: hm(11, 10), recEnd: hm(13, 30)},
		// One hour's exists fails: the notifications prove an hour less
		// than the record claims, at the default threshold exactly.
		{in: inst('c', tenant2, "f3", 512, hm(10, 0), time.Time{}), notified: true, failHours: []time.Time{hm(12, 0)}, recorded: true, recStart: hm(10, 0)},
		// Only a record.
		{in: inst('d', tenant2, "f3", 512, hm(12, 0), hm(14, 0)), recorded: true, recStart: hm(12, 0), recEnd: hm(14, 0)},
		// Only notifications.
		{in: inst('e', tenant2, "f3", 512, hm(14, 0), time.Time{}), notified: true},
		// The record ends three hours before the delete.
		{in: inst('f', tenant1, "f1", 2048, hm(10, 0), hm(15, 0)), notified: true, recorded: true, recStart: hm(10, 0), recEnd: hm(12, 0)},
	}
}

// fillStore drives a verifier over the scenario's notifications (and one
// image.exists of an unknown image, which fails) and verifies them.
func fillStore(t *testing.T) *SQLiteStore {
	t.Helper()
	store := openStore(t)
	v := New(testConfig(), nil, nil, nil, WithStore(store), WithClock(func() time.Time { return scenarioUntil.Add(time.Hour) }))
	ctx := context.Background()
	ingest := func(body []byte) {
		t.Helper()
		if err := v.Ingest(ctx, body, "notifications.info"); err != nil {
			t.Fatal(err)
		}
	}
	for _, vm := range scenarioVMs() {
		if !vm.notified {
			continue
		}
		tampered := map[string]bool{}
		for _, h := range vm.failHours {
			bad := vm.in
			bad.FlavorID = "tampered"
			body := vt.HourlyExists(bad, h)
			tampered[string(vt.HourlyExists(vm.in, h))] = true
			ingest(body)
		}
		for _, body := range vt.Lifecycle(vm.in, scenarioUntil) {
			if !tampered[string(body)] {
				ingest(body)
			}
		}
	}
	ingest(vt.ImageExists("img-exists-1", image1, tenant1, 1024, hm(9, 0), hm(11, 0), hm(12, 0)))
	if _, err := v.VerifyPending(ctx); err != nil {
		t.Fatal(err)
	}
	return store
}

// scenarioRecords are the cloud records the record store holds.
func scenarioRecords() []*tallyv1.Record {
	var out []*tallyv1.Record
	for _, vm := range scenarioVMs() {
		if vm.recorded {
			out = append(out, vt.CloudRecord(vm.in.ID, vm.in.Tenant, vm.recStart, vm.recEnd, scenarioUntil))
		}
	}
	return out
}

// fakeRecords is a RecordSource over records, filtered as the record store
// filters them.
type fakeRecords []*tallyv1.Record

func (f fakeRecords) CloudUsage(_ context.Context, from, to time.Time, project string) ([]CloudUsage, error) {
	var out []CloudUsage
	for _, r := range f {
		u, ok := CloudUsageOf(r)
		if !ok || (project != "" && u.Project != project) || !u.Start.Before(to) || (!u.End.IsZero() && u.End.Before(from)) {
			continue
		}
		out = append(out, u)
	}
	return out, nil
}

// overlap is the length of [a, b) within [from, to).
func overlap(a, b, from, to time.Time) time.Duration {
	if a.Before(from) {
		a = from
	}
	if b.After(to) {
		b = to
	}
	return max(b.Sub(a), 0)
}

type wantMismatch struct {
	Project, VM, Kind string
	Difference        int64
}

// expectedMismatches computes, from the scenario, what the cross-check of
// [scenarioFrom, scenarioUntil) must report with a threshold.
func expectedMismatches(project string, threshold time.Duration, pct float64) []wantMismatch {
	out := []wantMismatch{}
	for _, vm := range scenarioVMs() {
		if project != "" && vm.in.Tenant != project {
			continue
		}
		var n, r time.Duration
		if vm.notified {
			end := vm.in.Deleted
			if end.IsZero() {
				end = scenarioUntil
			}
			n = overlap(vm.in.Launched, end, scenarioFrom, scenarioUntil)
			for _, h := range vm.failHours {
				n -= overlap(vm.in.Launched, end, h, h.Add(time.Hour))
			}
		}
		if vm.recorded {
			end := vm.recEnd
			if end.IsZero() {
				end = scenarioUntil
			}
			r = overlap(vm.recStart, end, scenarioFrom, scenarioUntil)
		}
		w := wantMismatch{Project: vm.in.Tenant, VM: vm.in.ID, Difference: int64((r - n) / time.Second)}
		switch {
		case n > 0 && r == 0:
			w.Kind = OnlyInNotifications
		case r > 0 && n == 0:
			w.Kind = OnlyInRecords
		case (r - n).Abs() > max(threshold, time.Duration(pct/100*float64(max(r, n)))):
			w.Kind = WallTimeDiffers
		default:
			continue
		}
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Project+out[i].VM < out[j].Project+out[j].VM })
	return out
}

func gotMismatches(r *CrossCheckReport) []wantMismatch {
	out := []wantMismatch{}
	for _, p := range r.Projects {
		for _, m := range p.Mismatches {
			out = append(out, wantMismatch{Project: p.Project, VM: m.VM, Kind: m.Kind, Difference: m.DifferenceSeconds})
		}
	}
	return out
}

// TestCrossCheck compares the verified exists of a store filled by the
// verifier with cloud records, and checks every mismatch against what the
// scenario says was inserted on each side.
func TestCrossCheck(t *testing.T) {
	store := fillStore(t)
	src := fakeRecords(scenarioRecords())
	tests := []struct {
		name string
		opt  CrossCheckOptions
	}{
		{"default threshold", DefaultCrossCheckOptions()},
		{"30 minutes", CrossCheckOptions{Threshold: 30 * time.Minute}},
		{"10 percent", CrossCheckOptions{Threshold: time.Minute, ThresholdPercent: 10}},
		{"one project", CrossCheckOptions{Project: tenant2, Threshold: time.Hour, ThresholdPercent: 5}},
	}
	kinds := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := CrossCheck(context.Background(), store, src, scenarioFrom, scenarioUntil, tt.opt)
			if err != nil {
				t.Fatal(err)
			}
			want := expectedMismatches(tt.opt.Project, tt.opt.Threshold, tt.opt.ThresholdPercent)
			if diff := cmp.Diff(want, gotMismatches(r)); diff != "" {
				t.Errorf("mismatches (-expected from the scenario +cross-check):\n%s", diff)
			}
			if r.Mismatches != len(want) || !r.ComparedUntil.Equal(scenarioUntil) {
				t.Errorf("mismatch_count %d, compared_until %s; want %d, %s", r.Mismatches, r.ComparedUntil, len(want), scenarioUntil)
			}
			for _, w := range want {
				kinds[w.Kind] = true
			}
		})
	}
	// The scenario must exercise every kind, or the test proves little.
	for _, k := range []string{OnlyInNotifications, OnlyInRecords, WallTimeDiffers} {
		if !kinds[k] {
			t.Errorf("no case expects a %s mismatch", k)
		}
	}
	// c is exactly one hour apart: reported at 30 minutes, not at 1 hour.
	def := expectedMismatches("", time.Hour, 5)
	strict := expectedMismatches("", 30*time.Minute, 0)
	if slices.ContainsFunc(def, func(w wantMismatch) bool { return w.VM == vmID('c') }) ||
		!slices.ContainsFunc(strict, func(w wantMismatch) bool { return w.VM == vmID('c') }) {
		t.Errorf("the scenario no longer puts c between the thresholds: %v / %v", def, strict)
	}
	if _, err := CrossCheck(context.Background(), store, src, scenarioUntil, scenarioFrom, DefaultCrossCheckOptions()); err == nil {
		t.Error("a period ending before it begins was accepted")
	}
}

// expectedHours is StackTach's count over the scenario's verified exists.
func expectedHours() (groups map[string]int64, total int64) {
	groups = map[string]int64{}
	for _, vm := range scenarioVMs() {
		if !vm.notified {
			continue
		}
		for h := vm.in.Launched.Truncate(time.Hour); h.Before(scenarioUntil); h = h.Add(time.Hour) {
			if slices.ContainsFunc(vm.failHours, h.Equal) || (!vm.in.Deleted.IsZero() && !vm.in.Deleted.After(h)) {
				continue
			}
			end := h.Add(time.Hour)
			if !vm.in.Deleted.IsZero() && vm.in.Deleted.Before(end) {
				end = vm.in.Deleted
			}
			hours := int64(math.Ceil(overlap(vm.in.Launched, end, h, end).Hours()))
			groups[vm.in.Tenant+"/"+vm.in.FlavorID] += hours
			total += hours
		}
	}
	return groups, total
}

func TestInstanceHours(t *testing.T) {
	store := fillStore(t)
	r, err := InstanceHours(context.Background(), store, scenarioFrom, scenarioUntil)
	if err != nil {
		t.Fatal(err)
	}
	wantGroups, wantTotal := expectedHours()
	got := map[string]int64{}
	for _, g := range r.Groups {
		got[g.Tenant+"/"+g.FlavorID] = g.Hours
	}
	if diff := cmp.Diff(wantGroups, got); diff != "" || r.TotalHours != wantTotal {
		t.Errorf("hours by tenant/flavor (-want +got):\n%s\ntotal %d, want %d", diff, r.TotalHours, wantTotal)
	}
	// tenant1/f1 is a (2048 MB) and f: units are memory/256 per hour.
	for _, g := range r.Groups {
		if g.Tenant == tenant1 && g.FlavorID == "f1" && (g.Instances != 2 || g.UnitHours != float64(g.Hours)*8) {
			t.Errorf("tenant1/f1 = %+v, want 2 instances and 8 units an hour", g)
		}
	}
	if r.TotalInstances != 5 { // a, b, c, e, f
		t.Errorf("total_instance_count = %d, want 5", r.TotalInstances)
	}
}

func TestReportStore(t *testing.T) {
	store := fillStore(t)
	ctx := context.Background()
	reports, err := OpenReports(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	// Opening again finds the tables at the current version.
	if _, err := NewSQLiteReports(ctx, store); err != nil {
		t.Fatalf("second migration: %v", err)
	}
	audit, err := Audit(ctx, store, "nova", hm(12, 0), hm(13, 0))
	if err != nil {
		t.Fatal(err)
	}
	created := hm(17, 0)
	var ids []int64
	for range 3 {
		id, err := reports.SaveAudit(ctx, StoredAudit{Created: created, Period: "hour", Report: audit})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	got, err := reports.GetAudit(ctx, ids[1])
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(audit, got.Report); diff != "" || got.Period != "hour" || !got.Created.Equal(created) {
		t.Errorf("stored audit (-saved +read):\n%s", diff)
	}
	if _, err := reports.GetAudit(ctx, 999); err != ErrReportNotFound {
		t.Errorf("unknown id: %v, want ErrReportNotFound", err)
	}
	list, err := reports.ListAudits(ctx, AuditListFilter{Service: "nova", BeforeID: ids[2], Limit: 5})
	if err != nil || len(list) != 2 || list[0].ID != ids[1] {
		t.Errorf("ListAudits before %d = %d reports, %v", ids[2], len(list), err)
	}
	if list, _ := reports.ListAudits(ctx, AuditListFilter{Service: "glance"}); len(list) != 0 {
		t.Errorf("glance audits: %d, want none", len(list))
	}
}

// ---- the gRPC API ----

func startAPI(t *testing.T, api *API) tallyv1.VerificationClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	tallyv1.RegisterVerificationServer(srv, api)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return lis.DialContext(ctx)
	}), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return tallyv1.NewVerificationClient(conn)
}

// call is one RPC case: the request, the code wanted (and for errors the
// field the message must name), and a check of a successful response.
type call[Req, Resp any] struct {
	name  string
	req   Req
	code  codes.Code
	field string
	check func(t *testing.T, resp Resp)
}

func runCalls[Req, Resp any](t *testing.T, rpc func(context.Context, Req, ...grpc.CallOption) (Resp, error), cases []call[Req, Resp]) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, err := rpc(context.Background(), c.req)
			if st := status.Convert(err); st.Code() != c.code || (c.field != "" && !strings.HasPrefix(st.Message(), c.field+":")) {
				t.Fatalf("got %v %q, want %v naming %q", st.Code(), st.Message(), c.code, c.field)
			}
			if err == nil && c.check != nil {
				c.check(t, resp)
			}
		})
	}
}

func tsp(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

func TestVerificationAPI(t *testing.T) {
	store := fillStore(t)
	ctx := context.Background()
	reports, err := OpenReports(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := Audit(ctx, store, "nova", hm(11, 0), hm(12, 0))
	storedID, err := reports.SaveAudit(ctx, StoredAudit{Created: hm(17, 0), Period: "hour", Report: stored})
	if err != nil {
		t.Fatal(err)
	}
	glanceID, err := reports.SaveAudit(ctx, StoredAudit{Created: hm(17, 0), Period: "hour", Report: &AuditReport{Service: "glance",
		PeriodBegin: hm(11, 0), PeriodEnd: hm(12, 0), Summary: map[string]StatusCounts{}}})
	if err != nil {
		t.Fatal(err)
	}
	api := NewAPI(nil)
	api.now = func() time.Time { return hm(17, 0) }
	api.Attach(store, reports, fakeRecords(scenarioRecords()))
	client := startAPI(t, api)

	t.Run("GetInstanceStatus", func(t *testing.T) {
		runCalls(t, client.GetInstanceStatus, []call[*tallyv1.GetInstanceStatusRequest, *tallyv1.GetInstanceStatusResponse]{
			{name: "running", req: &tallyv1.GetInstanceStatusRequest{Instance: vmID('a')}, check: func(t *testing.T, r *tallyv1.GetInstanceStatusResponse) {
				if len(r.GetLaunches()) != 1 || r.GetLaunches()[0].GetDeletedAt() != nil || len(r.GetExists()) != 6 {
					t.Fatalf("a: %d launches, %d exists, want 1 not deleted and 6 (10:00 to 16:00)", len(r.GetLaunches()), len(r.GetExists()))
				}
				for _, e := range r.GetExists() {
					if e.GetStatus() != tallyv1.ExistsStatus_EXISTS_STATUS_VERIFIED || e.GetFailure() != nil {
						t.Errorf("exists %d: %v %v", e.GetId(), e.GetStatus(), e.GetFailure())
					}
				}
			}},
			{name: "deleted", req: &tallyv1.GetInstanceStatusRequest{Instance: vmID('b')}, check: func(t *testing.T, r *tallyv1.GetInstanceStatusResponse) {
				if !r.GetLaunches()[0].GetDeletedAt().AsTime().Equal(hm(13, 30)) {
					t.Errorf("b deleted at %v, want 13:30", r.GetLaunches()[0].GetDeletedAt())
				}
			}},
			{name: "failed exists", req: &tallyv1.GetInstanceStatusRequest{Instance: vmID('c')}, check: func(t *testing.T, r *tallyv1.GetInstanceStatusResponse) {
				var failed []*tallyv1.VerificationFailure
				for _, e := range r.GetExists() {
					if e.GetStatus() == tallyv1.ExistsStatus_EXISTS_STATUS_FAILED {
						failed = append(failed, e.GetFailure())
					}
				}
				want := []*tallyv1.VerificationFailure{{Field: "instance_flavor_id", Expected: "f3", Actual: "tampered"}}
				if len(failed) == 1 {
					want[0].Reason = failed[0].GetReason()
				}
				if diff := cmp.Diff(want, failed, cmp.Comparer(proto.Equal)); diff != "" || want[0].Reason == "" {
					t.Errorf("c's failures (-want +got):\n%s", diff)
				}
			}},
			{name: "unknown", req: &tallyv1.GetInstanceStatusRequest{Instance: vmID('z')}, code: codes.NotFound},
			{name: "only a record", req: &tallyv1.GetInstanceStatusRequest{Instance: vmID('d')}, code: codes.NotFound},
			{name: "empty", req: &tallyv1.GetInstanceStatusRequest{}, code: codes.InvalidArgument, field: "instance"},
			{name: "too long", req: &tallyv1.GetInstanceStatusRequest{Instance: strings.Repeat("x", 600)}, code: codes.InvalidArgument, field: "instance"},
		})
	})

	uuids := func(r *tallyv1.ListFailuresResponse) []string {
		var out []string
		for _, f := range r.GetFailures() {
			out = append(out, f.GetKind().String()+" "+f.GetUuid()+" "+f.GetFailure().GetField())
		}
		return out
	}
	nova := "EXISTS_KIND_NOVA " + vmID('c') + " instance_flavor_id"
	glance := "EXISTS_KIND_GLANCE " + image1 + " uuid"
	wantFailures := func(want ...string) func(*testing.T, *tallyv1.ListFailuresResponse) {
		return func(t *testing.T, r *tallyv1.ListFailuresResponse) {
			if diff := cmp.Diff(want, uuids(r)); diff != "" {
				t.Errorf("failures (-want +got):\n%s", diff)
			}
		}
	}
	t.Run("ListFailures", func(t *testing.T) {
		runCalls(t, client.ListFailures, []call[*tallyv1.ListFailuresRequest, *tallyv1.ListFailuresResponse]{
			{name: "all", req: &tallyv1.ListFailuresRequest{}, check: wantFailures(nova, glance)},
			{name: "nova", req: &tallyv1.ListFailuresRequest{Kind: tallyv1.ExistsKind_EXISTS_KIND_NOVA}, check: wantFailures(nova)},
			{name: "glance", req: &tallyv1.ListFailuresRequest{Kind: tallyv1.ExistsKind_EXISTS_KIND_GLANCE}, check: wantFailures(glance)},
			{name: "field", req: &tallyv1.ListFailuresRequest{Field: "uuid"}, check: wantFailures(glance)},
			{name: "reason", req: &tallyv1.ListFailuresRequest{Reason: "DATA MISMATCH for 'instance_flavor_id'"}, check: wantFailures(nova)},
			{name: "period with c's failure", req: &tallyv1.ListFailuresRequest{Start: tsp(hm(12, 0)), End: tsp(hm(13, 0))}, check: wantFailures(nova)},
			{name: "period without", req: &tallyv1.ListFailuresRequest{Start: tsp(hm(13, 0))}, check: wantFailures()},
			{name: "bad kind", req: &tallyv1.ListFailuresRequest{Kind: 9}, code: codes.InvalidArgument, field: "kind"},
			{name: "end before start", req: &tallyv1.ListFailuresRequest{Start: tsp(hm(13, 0)), End: tsp(hm(12, 0))}, code: codes.InvalidArgument, field: "end"},
			{name: "bad start", req: &tallyv1.ListFailuresRequest{Start: &timestamppb.Timestamp{Nanos: -1}}, code: codes.InvalidArgument, field: "start"},
			{name: "page size", req: &tallyv1.ListFailuresRequest{PageSize: 5000}, code: codes.InvalidArgument, field: "page_size"},
			{name: "bad token", req: &tallyv1.ListFailuresRequest{PageToken: "nonsense"}, code: codes.InvalidArgument, field: "page_token"},
		})
		// Paging: one at a time, nova's then glance's; a token is bound to
		// its filter.
		var got []string
		req := &tallyv1.ListFailuresRequest{PageSize: 1}
		for range 3 {
			resp, err := client.ListFailures(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, uuids(resp)...)
			if resp.GetNextPageToken() == "" {
				break
			}
			req.PageToken = resp.GetNextPageToken()
		}
		if diff := cmp.Diff([]string{nova, glance}, got); diff != "" {
			t.Errorf("paged failures (-want +got):\n%s", diff)
		}
		first, _ := client.ListFailures(ctx, &tallyv1.ListFailuresRequest{PageSize: 1})
		_, err := client.ListFailures(ctx, &tallyv1.ListFailuresRequest{PageSize: 1, Field: "uuid", PageToken: first.GetNextPageToken()})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("a token reused with another filter: %v, want InvalidArgument", err)
		}
	})

	t.Run("GetAudit", func(t *testing.T) {
		runCalls(t, client.GetAudit, []call[*tallyv1.GetAuditRequest, *tallyv1.GetAuditResponse]{
			{name: "hour before at", req: &tallyv1.GetAuditRequest{Kind: tallyv1.ExistsKind_EXISTS_KIND_NOVA, Period: tallyv1.AuditPeriod_AUDIT_PERIOD_HOUR,
				At: tsp(hm(13, 0))}, check: func(t *testing.T, r *tallyv1.GetAuditResponse) {
				a := r.GetReport()
				// 12:00-13:00: a, b, c (failed) and f sent their periodic exists.
				want := &tallyv1.ExistsCounts{Count: 4, Verified: 3, Failed: 1}
				if !proto.Equal(want, a.GetPeriodic()) || a.GetId() != 0 || !a.GetPeriodBeginning().AsTime().Equal(hm(12, 0)) ||
					len(a.GetExistFails()) != 1 || a.GetExistFails()[0].GetUuid() != vmID('c') || len(a.GetMissingExists()) != 0 {
					t.Errorf("audit = %v", a)
				}
			}},
			{name: "custom", req: &tallyv1.GetAuditRequest{Kind: tallyv1.ExistsKind_EXISTS_KIND_GLANCE, Period: tallyv1.AuditPeriod_AUDIT_PERIOD_CUSTOM,
				Start: tsp(hm(11, 0)), End: tsp(hm(12, 0))}, check: func(t *testing.T, r *tallyv1.GetAuditResponse) {
				if c := r.GetReport().GetPeriodic(); c.GetCount() != 1 || c.GetFailed() != 1 {
					t.Errorf("glance 11:00-12:00 periodic = %v, want the one failed image exists", c)
				}
			}},
			{name: "default day", req: &tallyv1.GetAuditRequest{Kind: tallyv1.ExistsKind_EXISTS_KIND_NOVA}, check: func(t *testing.T, r *tallyv1.GetAuditResponse) {
				if r.GetReport().GetPeriod() != tallyv1.AuditPeriod_AUDIT_PERIOD_DAY || !r.GetReport().GetPeriodEnding().AsTime().Equal(apiDay) {
					t.Errorf("default period: %v to %v", r.GetReport().GetPeriod(), r.GetReport().GetPeriodEnding().AsTime())
				}
			}},
			{name: "stored", req: &tallyv1.GetAuditRequest{Id: storedID}, check: func(t *testing.T, r *tallyv1.GetAuditResponse) {
				want := AuditProto(storedID, "hour", hm(17, 0), stored)
				if !proto.Equal(want, r.GetReport()) {
					t.Errorf("stored audit = %v\nwant %v", r.GetReport(), want)
				}
			}},
			{name: "unknown id", req: &tallyv1.GetAuditRequest{Id: 999}, code: codes.NotFound},
			{name: "id and kind", req: &tallyv1.GetAuditRequest{Id: storedID, Kind: tallyv1.ExistsKind_EXISTS_KIND_NOVA}, code: codes.InvalidArgument, field: "id"},
			{name: "no kind", req: &tallyv1.GetAuditRequest{}, code: codes.InvalidArgument, field: "kind"},
			{name: "custom without start", req: &tallyv1.GetAuditRequest{Kind: tallyv1.ExistsKind_EXISTS_KIND_NOVA, Period: tallyv1.AuditPeriod_AUDIT_PERIOD_CUSTOM,
				End: tsp(hm(12, 0))}, code: codes.InvalidArgument, field: "start"},
			{name: "day with start", req: &tallyv1.GetAuditRequest{Kind: tallyv1.ExistsKind_EXISTS_KIND_NOVA, Start: tsp(hm(12, 0))},
				code: codes.InvalidArgument, field: "start"},
			{name: "bad period", req: &tallyv1.GetAuditRequest{Kind: tallyv1.ExistsKind_EXISTS_KIND_NOVA, Period: 42}, code: codes.InvalidArgument, field: "period"},
		})
	})

	t.Run("ListAudits", func(t *testing.T) {
		ids := func(want ...int64) func(*testing.T, *tallyv1.ListAuditsResponse) {
			return func(t *testing.T, r *tallyv1.ListAuditsResponse) {
				var got []int64
				for _, a := range r.GetAudits() {
					got = append(got, a.GetId())
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("ids (-want +got):\n%s", diff)
				}
			}
		}
		runCalls(t, client.ListAudits, []call[*tallyv1.ListAuditsRequest, *tallyv1.ListAuditsResponse]{
			{name: "all newest first", req: &tallyv1.ListAuditsRequest{}, check: ids(glanceID, storedID)},
			{name: "nova", req: &tallyv1.ListAuditsRequest{Kind: tallyv1.ExistsKind_EXISTS_KIND_NOVA}, check: func(t *testing.T, r *tallyv1.ListAuditsResponse) {
				ids(storedID)(t, r)
				if s := r.GetAudits()[0]; s.GetPeriodic().GetCount() == 0 || s.GetPeriod() != tallyv1.AuditPeriod_AUDIT_PERIOD_HOUR {
					t.Errorf("summary = %v", s)
				}
			}},
			{name: "page", req: &tallyv1.ListAuditsRequest{PageSize: 1}, check: func(t *testing.T, r *tallyv1.ListAuditsResponse) {
				ids(glanceID)(t, r)
				next, err := client.ListAudits(ctx, &tallyv1.ListAuditsRequest{PageSize: 1, PageToken: r.GetNextPageToken()})
				if err != nil || next.GetNextPageToken() != "" {
					t.Fatalf("second page: %v, token %q", err, next.GetNextPageToken())
				}
				ids(storedID)(t, next)
			}},
			{name: "bad page size", req: &tallyv1.ListAuditsRequest{PageSize: -1}, code: codes.InvalidArgument, field: "page_size"},
			{name: "bad kind", req: &tallyv1.ListAuditsRequest{Kind: 7}, code: codes.InvalidArgument, field: "kind"},
		})
	})

	t.Run("InstanceHours", func(t *testing.T) {
		wantGroups, wantTotal := expectedHours()
		runCalls(t, client.InstanceHours, []call[*tallyv1.InstanceHoursRequest, *tallyv1.InstanceHoursResponse]{
			{name: "custom", req: &tallyv1.InstanceHoursRequest{Period: tallyv1.AuditPeriod_AUDIT_PERIOD_CUSTOM, Start: tsp(scenarioFrom), End: tsp(scenarioUntil)},
				check: func(t *testing.T, r *tallyv1.InstanceHoursResponse) {
					got := map[string]int64{}
					for _, g := range r.GetGroups() {
						got[g.GetTenant()+"/"+g.GetFlavorId()] = g.GetHours()
					}
					if diff := cmp.Diff(wantGroups, got); diff != "" || r.GetTotalHours() != wantTotal {
						t.Errorf("hours (-want +got):\n%s\ntotal %d, want %d", diff, r.GetTotalHours(), wantTotal)
					}
				}},
			{name: "hour", req: &tallyv1.InstanceHoursRequest{Period: tallyv1.AuditPeriod_AUDIT_PERIOD_HOUR, At: tsp(hm(11, 30))},
				check: func(t *testing.T, r *tallyv1.InstanceHoursResponse) {
					// 10:00-11:00: a, c and f.
					if r.GetTotalInstanceCount() != 3 || r.GetTotalHours() != 3 {
						t.Errorf("10:00-11:00: %d instances, %d hours; want 3, 3", r.GetTotalInstanceCount(), r.GetTotalHours())
					}
				}},
			{name: "custom without end", req: &tallyv1.InstanceHoursRequest{Period: tallyv1.AuditPeriod_AUDIT_PERIOD_CUSTOM, Start: tsp(scenarioFrom)},
				code: codes.InvalidArgument, field: "end"},
			{name: "custom with at", req: &tallyv1.InstanceHoursRequest{Period: tallyv1.AuditPeriod_AUDIT_PERIOD_CUSTOM, At: tsp(scenarioFrom)},
				code: codes.InvalidArgument, field: "at"},
		})
	})

	t.Run("CrossCheck", func(t *testing.T) {
		got := func(r *tallyv1.CrossCheckResponse) []wantMismatch {
			out := []wantMismatch{}
			names := map[tallyv1.CrossCheckMismatchKind]string{
				tallyv1.CrossCheckMismatchKind_CROSS_CHECK_MISMATCH_KIND_ONLY_IN_NOTIFICATIONS: OnlyInNotifications,
				tallyv1.CrossCheckMismatchKind_CROSS_CHECK_MISMATCH_KIND_ONLY_IN_RECORDS:       OnlyInRecords,
				tallyv1.CrossCheckMismatchKind_CROSS_CHECK_MISMATCH_KIND_WALL_TIME:             WallTimeDiffers,
			}
			for _, p := range r.GetProjects() {
				for _, m := range p.GetMismatches() {
					out = append(out, wantMismatch{Project: p.GetProjectId(), VM: m.GetVmUuid(), Kind: names[m.GetKind()],
						Difference: int64(m.GetDifference().AsDuration() / time.Second)})
				}
			}
			return out
		}
		want := func(project string, d time.Duration, pct float64) func(*testing.T, *tallyv1.CrossCheckResponse) {
			return func(t *testing.T, r *tallyv1.CrossCheckResponse) {
				if diff := cmp.Diff(expectedMismatches(project, d, pct), got(r)); diff != "" {
					t.Errorf("mismatches (-expected +got):\n%s", diff)
				}
			}
		}
		zero := 0.0
		runCalls(t, client.CrossCheck, []call[*tallyv1.CrossCheckRequest, *tallyv1.CrossCheckResponse]{
			{name: "defaults", req: &tallyv1.CrossCheckRequest{Start: tsp(scenarioFrom), End: tsp(scenarioUntil)}, check: want("", time.Hour, 5)},
			{name: "30m strict", req: &tallyv1.CrossCheckRequest{Start: tsp(scenarioFrom), End: tsp(scenarioUntil),
				Threshold: durationpb.New(30 * time.Minute), ThresholdPercent: &zero}, check: want("", 30*time.Minute, 0)},
			{name: "project", req: &tallyv1.CrossCheckRequest{Start: tsp(scenarioFrom), End: tsp(scenarioUntil), ProjectId: tenant1},
				check: want(tenant1, time.Hour, 5)},
			{name: "no start", req: &tallyv1.CrossCheckRequest{End: tsp(scenarioUntil)}, code: codes.InvalidArgument, field: "start"},
			{name: "no end", req: &tallyv1.CrossCheckRequest{Start: tsp(scenarioFrom)}, code: codes.InvalidArgument, field: "end"},
			{name: "negative threshold", req: &tallyv1.CrossCheckRequest{Start: tsp(scenarioFrom), End: tsp(scenarioUntil),
				Threshold: durationpb.New(-time.Minute)}, code: codes.InvalidArgument, field: "threshold"},
			{name: "percent", req: &tallyv1.CrossCheckRequest{Start: tsp(scenarioFrom), End: tsp(scenarioUntil), ThresholdPercent: proto.Float64(150)},
				code: codes.InvalidArgument, field: "threshold_percent"},
		})
	})

	t.Run("Unavailable", func(t *testing.T) {
		api.Attach(store, reports, nil)
		_, err := client.CrossCheck(ctx, &tallyv1.CrossCheckRequest{Start: tsp(scenarioFrom), End: tsp(scenarioUntil)})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("cross-check without a record store: %v, want FailedPrecondition", err)
		}
		api.Detach()
		if _, err := client.GetInstanceStatus(ctx, &tallyv1.GetInstanceStatusRequest{Instance: vmID('a')}); status.Code(err) != codes.Unavailable {
			t.Errorf("detached: %v, want Unavailable", err)
		}
	})
}
