package query

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/pgtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// pgSchema is a PostgreSQL schema of this test's own (pkg/pgtest).
func pgSchema(tb testing.TB) string { return pgtest.Schema(tb, "tally_query_test_") }

// backend opens a fresh store of one kind, closed at cleanup.
type backend struct {
	name string
	// location returns a store location of its own for one test.
	location func(tb testing.TB) string
}

var backends = []backend{
	{"sqlite", func(tb testing.TB) string { return "sqlite://" + filepath.Join(tb.TempDir(), "q.db") }},
	{"postgres", pgSchema},
}

func openAt(tb testing.TB, location string) Store {
	tb.Helper()
	s, err := OpenStore(context.Background(), location, "")
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func eachStore(t *testing.T, fn func(t *testing.T, s Store)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { fn(t, openAt(t, b.location(t))) })
	}
}

// ---- records ----

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func ts(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

// vm describes a test VM; cloud renders its record as extracted at a
// window's end.
type vm struct {
	id, site, vo, project, user, global, status string
	cpus                                        int32
	benchmark                                   float64
	start                                       time.Time
	end                                         time.Time // zero while running
}

func prov(project string, from, to time.Time) *tallyv1.Provenance {
	return &tallyv1.Provenance{Region: "r1", Site: "SITE", Service: "nova", Extractor: "extractor-nova", ProjectId: project,
		WindowFrom: ts(from), WindowTo: ts(to), ExtractedAt: ts(to.Add(time.Minute))}
}

// cloud is the VM's cumulative record at windowEnd (as cASO: wall time
// from start to the window end or the VM's end).
func (v vm) cloud(windowFrom, windowEnd time.Time) *tallyv1.Record {
	upTo := windowEnd
	status := v.status
	if status == "" {
		status = "started"
	}
	c := &tallyv1.CloudRecord{
		VmUuid: v.id, SiteName: v.site, CloudComputeService: v.site + "-nova", CloudType: "tally", MachineName: "m-" + v.id,
		LocalUserId: v.user, LocalGroupId: v.project, Fqan: v.vo, Status: status, StartTime: ts(v.start),
		CpuCount: v.cpus, Memory: 2048, Disk: 20, ImageId: proto.String("img"),
	}
	if v.global != "" {
		c.GlobalUserName = proto.String(v.global)
	}
	if v.benchmark > 0 {
		c.BenchmarkType, c.Benchmark = proto.String("HEPSPEC06"), proto.Float64(v.benchmark)
	}
	if !v.end.IsZero() && !v.end.After(windowEnd) {
		upTo = v.end
		c.EndTime = ts(v.end)
		c.Status = "completed"
	}
	c.WallDuration = int64(upTo.Sub(v.start) / time.Second)
	c.CpuDuration = c.WallDuration * int64(v.cpus)
	return &tallyv1.Record{Key: "cloud/" + v.id, Provenance: prov(v.project, windowFrom, windowEnd), Payload: &tallyv1.Record_Cloud{Cloud: c}}
}

func accel(vmID, site, vo, project string, year, month int32, count int32, seconds int64, extracted time.Time) *tallyv1.Record {
	from := time.Date(int(year), time.Month(month), 1, 0, 0, 0, 0, time.UTC)
	return &tallyv1.Record{Key: fmt.Sprintf("accelerator/%s/%04d-%02d", vmID, year, month),
		Provenance: prov(project, from, extracted),
		Payload: &tallyv1.Record_Accelerator{Accelerator: &tallyv1.AcceleratorRecord{
			SiteName: site, CloudType: "tally", CloudComputeService: site + "-nova", AssociatedRecord: vmID, AssociatedRecordType: "cloud",
			Fqan: vo, Count: count, AvailableDuration: seconds, MeasurementYear: year, MeasurementMonth: month, Type: "GPU", Model: proto.String("A100"),
		}}}
}

// storage is a volume's storage record measured at to, keyed as
// extractor-cinder keys them.
func storage(vol, site, vo, project string, gib int64, from, to time.Time) *tallyv1.Record {
	return &tallyv1.Record{Key: fmt.Sprintf("storage/%s/%d", vol, to.Unix()), Provenance: prov(project, from, to),
		Payload: &tallyv1.Record_Storage{Storage: &tallyv1.StorageRecord{
			RecordId: vol, CreateTime: ts(to), StorageSystem: site + "-cinder", Site: proto.String(site),
			LocalGroup: proto.String(project), Group: proto.String(vo), StartTime: ts(from), EndTime: ts(to),
			ResourceCapacityUsed: gib << 30, VolumeStatus: proto.String("in-use"),
		}}}
}

func ipRec(site, vo, project string, version, count int32, measured time.Time) *tallyv1.Record {
	return &tallyv1.Record{Key: fmt.Sprintf("ip/%s/%d/%d", project, version, measured.Unix()), Provenance: prov(project, measured.Add(-time.Hour), measured),
		Payload: &tallyv1.Record_Ip{Ip: &tallyv1.IPRecord{
			MeasurementTime: ts(measured), SiteName: site, CloudType: "tally", LocalGroup: project, Fqan: vo, IpVersion: version, IpCount: count,
		}}}
}

func write(tb testing.TB, s Store, recs ...*tallyv1.Record) {
	tb.Helper()
	if err := s.Write(context.Background(), recs); err != nil {
		tb.Fatalf("write: %v", err)
	}
}

func keys(recs []*tallyv1.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.GetKey()
	}
	return out
}

// sameContent fails t unless got holds what want holds: the same records,
// at least minRecords of them, and the same summaries by by, over
// everything and over February 2026. how names the two ways the stores
// were written, for the messages ("concurrent vs sequential").
func sameContent(t *testing.T, want, got Store, by []tallyv1.UsageGroupBy, minRecords int, how string) {
	t.Helper()
	ctx := context.Background()
	list := func(st Store) []*tallyv1.Record {
		recs, _, err := st.List(ctx, &tallyv1.RecordFilter{}, nil, 1000)
		if err != nil {
			t.Fatal(err)
		}
		return recs
	}
	wantRecs := list(want)
	if len(wantRecs) < minRecords {
		t.Fatalf("only %d records, want at least %d", len(wantRecs), minRecords)
	}
	if diff := cmp.Diff(wantRecs, list(got), protocmp.Transform()); diff != "" {
		t.Errorf("records, %s (-want +got):\n%s", how, diff)
	}
	for _, f := range []*tallyv1.RecordFilter{{}, {Start: ts(at("2026-02-01T00:00:00Z")), End: ts(at("2026-03-01T00:00:00Z"))}} {
		w, err := want.Summarize(ctx, f, by)
		if err != nil {
			t.Fatal(err)
		}
		g, err := got.Summarize(ctx, f, by)
		if err != nil {
			t.Fatal(err)
		}
		if len(w) == 0 {
			t.Fatal("empty summary")
		}
		if diff := cmp.Diff(w, g, protocmp.Transform()); diff != "" {
			t.Errorf("Summarize(%v), %s (-want +got):\n%s", f, how, diff)
		}
	}
}
