package query

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/messenger"
)

// fixture is a small, hand-checked set of records (newest start first):
// vmC, ip, vmB, storage, accel 02, vmA, accel 01.
type fixture struct {
	all                            []*tallyv1.Record // latest version of each, in List order
	vmA1, vmA2, vmB, vmC, ip, stor *tallyv1.Record
	acc1, acc2                     *tallyv1.Record
}

func newFixture() fixture {
	a := vm{id: "vm-a", site: "S1", vo: "atlas", project: "pA", user: "uA", global: "alice", cpus: 2, benchmark: 10, start: at("2026-01-10T00:00:00Z")}
	b := vm{id: "vm-b", site: "S1", vo: "cms", project: "pB", user: "uB", cpus: 4, start: at("2026-02-05T00:00:00Z"), end: at("2026-02-20T00:00:00Z")}
	c := vm{id: "vm-c", site: "S2", vo: "atlas", project: "pC", user: "uC", cpus: 1, start: at("2026-03-01T00:00:00Z")}
	f := fixture{
		vmA1: a.cloud(at("2026-01-01T00:00:00Z"), at("2026-02-01T00:00:00Z")),
		vmA2: a.cloud(at("2026-02-01T00:00:00Z"), at("2026-03-01T00:00:00Z")),
		vmB:  b.cloud(at("2026-02-01T00:00:00Z"), at("2026-03-01T00:00:00Z")),
		vmC:  c.cloud(at("2026-03-01T00:00:00Z"), at("2026-03-02T00:00:00Z")),
		ip:   ipRec("S1", "atlas", "pA", 4, 3, at("2026-02-15T00:00:00Z")),
		stor: storage("vol-1", "S1", "atlas", "pA", 10, at("2026-02-01T00:00:00Z"), at("2026-02-02T00:00:00Z")),
		acc1: accel("vm-a", "S1", "atlas", "pA", 2026, 1, 2, 22*86400, at("2026-02-01T00:00:00Z")),
		acc2: accel("vm-a", "S1", "atlas", "pA", 2026, 2, 2, 28*86400, at("2026-03-01T00:00:00Z")),
	}
	f.all = []*tallyv1.Record{f.vmC, f.ip, f.vmB, f.stor, f.acc2, f.vmA2, f.acc1}
	return f
}

func (f fixture) write(tb testing.TB, s Store) {
	write(tb, s, f.vmA1, f.acc1)
	write(tb, s, f.vmA2, f.acc2, f.vmB, f.vmC, f.ip, f.stor)
}

func TestGet(t *testing.T) {
	f := newFixture()
	eachStore(t, func(t *testing.T, s Store) {
		f.write(t, s)
		ctx := context.Background()
		for _, want := range f.all {
			got, err := s.Get(ctx, want.GetKey())
			if err != nil {
				t.Fatalf("Get(%q): %v", want.GetKey(), err)
			}
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Get(%q) (-want +got):\n%s", want.GetKey(), diff)
			}
		}
		if _, err := s.Get(ctx, "cloud/nope"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(unknown) = %v, want ErrNotFound", err)
		}
	})
}

func TestList(t *testing.T) {
	f := newFixture()
	cloud := tallyv1.RecordType_RECORD_TYPE_CLOUD
	tests := []struct {
		name   string
		filter *tallyv1.RecordFilter
		want   []*tallyv1.Record
	}{
		{"all", nil, f.all},
		{"cloud", &tallyv1.RecordFilter{Types: []tallyv1.RecordType{cloud}}, []*tallyv1.Record{f.vmC, f.vmB, f.vmA2}},
		{"vo", &tallyv1.RecordFilter{Vos: []string{"atlas"}}, []*tallyv1.Record{f.vmC, f.ip, f.stor, f.acc2, f.vmA2, f.acc1}},
		{"site", &tallyv1.RecordFilter{Sites: []string{"S2"}}, []*tallyv1.Record{f.vmC}},
		{"region", &tallyv1.RecordFilter{Regions: []string{"r2"}}, nil},
		{"global user", &tallyv1.RecordFilter{Users: []string{"alice"}}, []*tallyv1.Record{f.vmA2}},
		{"local user", &tallyv1.RecordFilter{Users: []string{"uB", "uC"}}, []*tallyv1.Record{f.vmC, f.vmB}},
		{"status", &tallyv1.RecordFilter{Statuses: []string{"completed"}}, []*tallyv1.Record{f.vmB}},
		{"project", &tallyv1.RecordFilter{ProjectIds: []string{"pA"}}, []*tallyv1.Record{f.ip, f.stor, f.acc2, f.vmA2, f.acc1}},
		{"time", &tallyv1.RecordFilter{Start: ts(at("2026-02-21T00:00:00Z")), End: ts(at("2026-03-01T00:00:00Z"))}, []*tallyv1.Record{f.acc2, f.vmA2}},
		{"from only", &tallyv1.RecordFilter{Start: ts(at("2026-02-21T00:00:00Z"))}, []*tallyv1.Record{f.vmC, f.acc2, f.vmA2}},
		{"to only", &tallyv1.RecordFilter{End: ts(at("2026-01-10T00:00:01Z"))}, []*tallyv1.Record{f.vmA2, f.acc1}},
		{"vo and month", &tallyv1.RecordFilter{Vos: []string{"atlas"}, Types: []tallyv1.RecordType{cloud},
			Start: ts(at("2026-03-01T00:00:00Z")), End: ts(at("2026-04-01T00:00:00Z"))}, []*tallyv1.Record{f.vmC, f.vmA2}},
	}
	eachStore(t, func(t *testing.T, s Store) {
		f.write(t, s)
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				got, next, err := s.List(context.Background(), tc.filter, nil, 100)
				if err != nil {
					t.Fatal(err)
				}
				if next != nil {
					t.Errorf("next cursor %+v on the only page", next)
				}
				if diff := cmp.Diff(tc.want, got, protocmp.Transform(), cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("List (-want +got):\n%s", diff)
				}
				// The watch filter must agree with the SQL one.
				var matched []*tallyv1.Record
				for _, r := range f.all {
					a, _ := attrsOf(r)
					if a.matches(tc.filter) {
						matched = append(matched, r)
					}
				}
				if diff := cmp.Diff(keys(tc.want), keys(matched), cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("attrs.matches (-want +got):\n%s", diff)
				}
			})
		}
		t.Run("pages", func(t *testing.T) {
			var got []*tallyv1.Record
			var after *Cursor
			for pages := 0; ; pages++ {
				if pages > 10 {
					t.Fatal("paging does not end")
				}
				page, next, err := s.List(context.Background(), nil, after, 2)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, page...)
				if next == nil {
					break
				}
				after = next
			}
			if diff := cmp.Diff(keys(f.all), keys(got)); diff != "" {
				t.Errorf("pages (-want +got):\n%s", diff)
			}
		})
	})
}

// TestRedelivery: a batch written twice, an older extraction arriving
// after a newer one, and a re-extraction of a window change nothing.
func TestRedelivery(t *testing.T) {
	f := newFixture()
	eachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		f.write(t, s)
		by := []tallyv1.UsageGroupBy{tallyv1.UsageGroupBy_USAGE_GROUP_BY_MONTH, tallyv1.UsageGroupBy_USAGE_GROUP_BY_VO}
		once, err := s.Summarize(ctx, nil, by)
		if err != nil {
			t.Fatal(err)
		}
		f.write(t, s)
		write(t, s, f.vmA1) // older than the vmA2 stored
		write(t, s, f.all...)
		twice, err := s.Summarize(ctx, nil, by)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(once, twice, protocmp.Transform()); diff != "" {
			t.Errorf("summary after redelivery (-once +again):\n%s", diff)
		}
		got, err := s.Get(ctx, f.vmA1.GetKey())
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(f.vmA2, got, protocmp.Transform()); diff != "" {
			t.Errorf("an older extraction replaced a newer one (-want +got):\n%s", diff)
		}
		all, _, err := s.List(ctx, nil, nil, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != len(f.all) {
			t.Errorf("%d records after redelivery, want %d", len(all), len(f.all))
		}
	})
}

// apelMonth is a row of APEL's CloudRecords as the by-hand summariser
// below sees it.
type apelRow struct {
	vm, vo             string
	year, month        int
	measure            int64
	wall, cpu          int64
	benchmark          float64
	extracted, ordinal int
}

// apelSummary computes what SummariseVMs (schemas/cloud.sql) would, from
// records loaded in order: REPLACE per (VMUUID, month, year), last loaded
// wins; then per row R the delta to the row of the same VM with the
// greatest MeasurementTime below R's; then sums by month and VO.
func apelSummary(loaded []*tallyv1.Record) map[[3]string]*sums {
	table := map[string]apelRow{}
	for _, r := range loaded {
		c := r.GetCloud()
		if c == nil {
			continue
		}
		var mt int64
		if c.GetStatus() == "completed" {
			mt = c.GetEndTime().GetSeconds()
		} else {
			mt = c.GetStartTime().GetSeconds() + c.GetSuspendDuration() + c.GetWallDuration()
		}
		tm := time.Unix(mt, 0).UTC()
		row := apelRow{vm: c.GetVmUuid(), vo: c.GetFqan(), year: tm.Year(), month: int(tm.Month()), measure: mt,
			wall: c.GetWallDuration(), cpu: c.GetCpuDuration(), benchmark: c.GetBenchmark()}
		table[fmt.Sprintf("%s/%d/%d", row.vm, row.month, row.year)] = row
	}
	out := map[[3]string]*sums{}
	for _, r := range table {
		var p *apelRow
		for _, q := range table {
			if q.vm == r.vm && q.measure < r.measure && (p == nil || q.measure > p.measure) {
				p = &q
			}
		}
		wall, cpu := r.wall, r.cpu
		if p != nil {
			wall, cpu = r.wall-p.wall, r.cpu-p.cpu
		}
		k := [3]string{fmt.Sprint(r.year), fmt.Sprint(r.month), r.vo}
		if out[k] == nil {
			out[k] = &sums{}
		}
		out[k].count++
		out[k].wall += float64(wall)
		out[k].cpu += float64(cpu)
		out[k].norm += float64(cpu) * r.benchmark
	}
	return out
}

// history is a synthetic extraction history: weekly windows over four
// months of VMs that start, run and end, with accelerators, volumes and
// public IPs; batches in load order.
func history(seed uint64, vms int) [][]*tallyv1.Record {
	rng := rand.New(rand.NewPCG(seed, 1))
	vos := []string{"atlas", "cms", "lhcb"}
	var fleet []vm
	base := at("2026-01-01T00:00:00Z")
	for i := range vms {
		v := vm{id: fmt.Sprintf("vm-%03d", i), site: "S1", vo: vos[rng.IntN(len(vos))], project: fmt.Sprintf("p%d", rng.IntN(4)),
			user: fmt.Sprintf("u%d", rng.IntN(5)), cpus: int32(1 + rng.IntN(8)),
			start: base.Add(time.Duration(rng.IntN(100*24)) * time.Hour)}
		if rng.IntN(3) == 0 {
			v.benchmark = float64(5 + rng.IntN(10))
		}
		if rng.IntN(2) == 0 {
			v.end = v.start.Add(time.Duration(1+rng.IntN(40*24)) * time.Hour)
		}
		fleet = append(fleet, v)
	}
	var batches [][]*tallyv1.Record
	for from := base; from.Before(at("2026-05-01T00:00:00Z")); from = from.Add(7 * 24 * time.Hour) {
		to := from.Add(7 * 24 * time.Hour)
		var b []*tallyv1.Record
		for i, v := range fleet {
			if !v.start.Before(to) || (!v.end.IsZero() && v.end.Before(from)) {
				continue
			}
			b = append(b, v.cloud(from, to))
			if i%4 == 0 {
				y, m, _ := to.Add(-time.Second).Date()
				b = append(b, accel(v.id, v.site, v.vo, v.project, int32(y), int32(m), 1+int32(i%3), int64(to.Sub(from)/time.Second), to))
			}
			if i%5 == 0 {
				b = append(b, storage("vol-"+v.id, v.site, v.vo, v.project, int64(1+i%7), from, to))
			}
		}
		for p := range 4 {
			b = append(b, ipRec("S1", vos[p%3], fmt.Sprintf("p%d", p), 4, int32(1+rng.IntN(5)), to))
		}
		rng.Shuffle(len(b), func(i, j int) { b[i], b[j] = b[j], b[i] })
		batches = append(batches, b)
	}
	return batches
}

// expected computes every metric by month and VO straight from records.
func expected(loaded []*tallyv1.Record) []*tallyv1.UsageGroup {
	acc := apelSummary(loaded)
	get := func(y, m int, vo string) *sums {
		k := [3]string{fmt.Sprint(y), fmt.Sprint(m), vo}
		if acc[k] == nil {
			acc[k] = &sums{}
		}
		return acc[k]
	}
	latest := map[string]*tallyv1.Record{}
	for _, r := range loaded {
		if r.GetCloud() == nil {
			a, _ := attrsOf(r)
			latest[a.ident] = r
		}
	}
	type ipKey struct {
		y, m    int
		vo, prj string
		ver     int32
	}
	ips := map[ipKey]*tallyv1.IPRecord{}
	for _, r := range latest {
		switch p := r.GetPayload().(type) {
		case *tallyv1.Record_Accelerator:
			s := get(int(p.Accelerator.GetMeasurementYear()), int(p.Accelerator.GetMeasurementMonth()), p.Accelerator.GetFqan())
			s.count++
			s.gpu += float64(p.Accelerator.GetCount()) * float64(p.Accelerator.GetAvailableDuration())
		case *tallyv1.Record_Storage:
			st := p.Storage
			tm := st.GetCreateTime().AsTime()
			s := get(tm.Year(), int(tm.Month()), st.GetGroup())
			s.count++
			s.gbSeconds += float64(st.GetResourceCapacityUsed()>>30) * float64(st.GetEndTime().GetSeconds()-st.GetStartTime().GetSeconds())
		case *tallyv1.Record_Ip:
			tm := p.Ip.GetMeasurementTime().AsTime()
			get(tm.Year(), int(tm.Month()), p.Ip.GetFqan()).count++
			k := ipKey{tm.Year(), int(tm.Month()), p.Ip.GetFqan(), p.Ip.GetLocalGroup(), p.Ip.GetIpVersion()}
			if old := ips[k]; old == nil || old.GetMeasurementTime().GetSeconds() < p.Ip.GetMeasurementTime().GetSeconds() {
				ips[k] = p.Ip
			}
		}
	}
	for k, ip := range ips {
		get(k.y, k.m, k.vo).ips += int64(ip.GetIpCount())
	}
	var out []*tallyv1.UsageGroup
	for k, s := range acc {
		var y, m int
		fmt.Sscan(k[0], &y)
		fmt.Sscan(k[1], &m)
		g := &groupAcc{key: &tallyv1.UsageKey{Year: int32(y), Month: int32(m), Vo: k[2]}, s: *s}
		out = append(out, g.group())
	}
	slices.SortFunc(out, func(a, b *tallyv1.UsageGroup) int { return compareKeys(a.GetKey(), b.GetKey()) })
	return out
}

func TestSummarize(t *testing.T) {
	batches := history(7, 60)
	var loaded []*tallyv1.Record
	for _, b := range batches {
		loaded = append(loaded, b...)
	}
	want := expected(loaded)
	opts := []cmp.Option{protocmp.Transform(), cmpopts.EquateApprox(0, 1e-6)}
	by := []tallyv1.UsageGroupBy{tallyv1.UsageGroupBy_USAGE_GROUP_BY_MONTH, tallyv1.UsageGroupBy_USAGE_GROUP_BY_VO}
	eachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		// Out of order: the later half of the history first, then all of
		// it again (redelivery), which must come to the same.
		for _, b := range batches[len(batches)/2:] {
			write(t, s, b...)
		}
		for _, b := range batches {
			write(t, s, b...)
		}
		got, err := s.Summarize(ctx, nil, by)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got, opts...); diff != "" {
			t.Errorf("Summarize by month, VO (-want +got):\n%s", diff)
		}
		// A time range is summed from cloud_months rather than from
		// cloud_rollup: one that holds everything gives the same.
		wide, err := s.Summarize(ctx, &tallyv1.RecordFilter{Start: ts(at("2000-01-01T00:00:00Z")), End: ts(at("2100-01-01T00:00:00Z"))}, by)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, wide, opts...); diff != "" {
			t.Errorf("Summarize by month, VO over a time range (-want +got):\n%s", diff)
		}
		// Totals over every dimension equal the sum of the groups.
		total, err := s.Summarize(ctx, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		var sum groupAcc
		sum.key = &tallyv1.UsageKey{}
		for _, g := range want {
			v := g.GetValues()
			sum.add(sums{count: v.GetRecordCount(), wall: v.GetWallHours() * 3600, cpu: v.GetCpuHours() * 3600,
				norm: v.GetNormalisedCpuHours() * 3600, gpu: v.GetGpuHours() * 3600, gbSeconds: v.GetStorageGbHours() * 3600, ips: v.GetPublicIpCount()})
		}
		// Except the public IP count, a level: the latest per project and
		// IP version over everything.
		latestIP := map[string]*tallyv1.IPRecord{}
		for _, r := range loaded {
			if ip := r.GetIp(); ip != nil {
				k := fmt.Sprint(ip.GetLocalGroup(), ip.GetIpVersion())
				if old := latestIP[k]; old == nil || old.GetMeasurementTime().GetSeconds() < ip.GetMeasurementTime().GetSeconds() {
					latestIP[k] = ip
				}
			}
		}
		sum.s.ips = 0
		for _, ip := range latestIP {
			sum.s.ips += int64(ip.GetIpCount())
		}
		if diff := cmp.Diff([]*tallyv1.UsageGroup{sum.group()}, total, opts...); diff != "" {
			t.Errorf("Summarize total (-want +got):\n%s", diff)
		}
		// A filter narrows the same way the records do.
		vo, err := s.Summarize(ctx, &tallyv1.RecordFilter{Vos: []string{"cms"}}, by)
		if err != nil {
			t.Fatal(err)
		}
		var wantCMS []*tallyv1.UsageGroup
		for _, g := range want {
			if g.GetKey().GetVo() == "cms" {
				wantCMS = append(wantCMS, g)
			}
		}
		if diff := cmp.Diff(wantCMS, vo, opts...); diff != "" {
			t.Errorf("Summarize vo=cms (-want +got):\n%s", diff)
		}
	})
}

// TestAPELMonthDeltas reproduces SummariseVMs by hand for one VM over three
// months, including a completed record.
func TestAPELMonthDeltas(t *testing.T) {
	v := vm{id: "vm-x", site: "S1", vo: "atlas", project: "p", user: "u", cpus: 2, benchmark: 10,
		start: at("2026-01-20T00:00:00Z"), end: at("2026-03-10T00:00:00Z")}
	recs := []*tallyv1.Record{
		v.cloud(at("2026-01-24T00:00:00Z"), at("2026-01-25T00:00:00Z")), // Jan, superseded
		v.cloud(at("2026-01-31T00:00:00Z"), at("2026-02-01T00:00:00Z")), // measured 02-01: February
		v.cloud(at("2026-01-30T00:00:00Z"), at("2026-01-31T00:00:00Z")), // January's last
		v.cloud(at("2026-02-27T00:00:00Z"), at("2026-02-28T00:00:00Z")), // February's last
		v.cloud(at("2026-03-31T00:00:00Z"), at("2026-04-01T00:00:00Z")), // completed 03-10: March
	}
	// By hand: January's row measures 2026-01-31 (11 days), February's
	// 2026-02-28 (39 days), March's is the end, 2026-03-10 (49 days).
	day := 86400.0
	want := []*tallyv1.UsageGroup{
		{Key: &tallyv1.UsageKey{Year: 2026, Month: 1, Vo: "atlas"}, Values: values(1, 11*day, 2*11*day, 10*2*11*day)},
		{Key: &tallyv1.UsageKey{Year: 2026, Month: 2, Vo: "atlas"}, Values: values(1, 28*day, 2*28*day, 10*2*28*day)},
		{Key: &tallyv1.UsageKey{Year: 2026, Month: 3, Vo: "atlas"}, Values: values(1, 10*day, 2*10*day, 10*2*10*day)},
	}
	by := []tallyv1.UsageGroupBy{tallyv1.UsageGroupBy_USAGE_GROUP_BY_MONTH, tallyv1.UsageGroupBy_USAGE_GROUP_BY_VO}
	apel := apelSummary(recs)
	if got := apel[[3]string{"2026", "2", "atlas"}].wall; got != 28*day {
		t.Fatalf("the by-hand APEL summariser gives February %v s, want %v", got, 28*day)
	}
	eachStore(t, func(t *testing.T, s Store) {
		for _, r := range recs {
			write(t, s, r)
		}
		got, err := s.Summarize(context.Background(), &tallyv1.RecordFilter{Types: []tallyv1.RecordType{tallyv1.RecordType_RECORD_TYPE_CLOUD}}, by)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got, protocmp.Transform(), cmpopts.EquateApprox(0, 1e-9)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
}

func values(count int64, wall, cpu, norm float64) *tallyv1.UsageValues {
	zero, z := 0.0, int64(0)
	wall, cpu, norm = wall/3600, cpu/3600, norm/3600
	return &tallyv1.UsageValues{RecordCount: &count, WallHours: &wall, CpuHours: &cpu, NormalisedCpuHours: &norm,
		GpuHours: &zero, StorageGbHours: &zero, PublicIpCount: &z}
}

func TestRejected(t *testing.T) {
	start := at("2026-01-10T00:00:00Z")
	withNUL := func(field string) *tallyv1.Record {
		v := vm{id: "vm-x", site: "S1", vo: "atlas", project: "pA", user: "uA", cpus: 1, start: start}
		switch field {
		case "VO":
			v.vo = "at\x00las"
		case "site":
			v.site = "S\x001"
		case "local user":
			v.user = "u\x00A"
		}
		return v.cloud(at("2026-01-01T00:00:00Z"), at("2026-02-01T00:00:00Z"))
	}
	tests := []struct {
		name, want string
		rec        *tallyv1.Record
	}{
		{"cloud without VMUUID", "without VMUUID", &tallyv1.Record{Key: "cloud/x", Payload: &tallyv1.Record_Cloud{Cloud: &tallyv1.CloudRecord{}}}},
		{"NUL in the VO", "VO", withNUL("VO")},
		{"NUL in the site", "site", withNUL("site")},
		{"NUL in the user", "local user", withNUL("local user")},
	}
	eachStore(t, func(t *testing.T, s Store) {
		for _, tt := range tests {
			err := s.Write(context.Background(), []*tallyv1.Record{tt.rec})
			if !errors.Is(err, messenger.ErrRejected) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s: %v, want a rejection naming %q", tt.name, err, tt.want)
			}
		}
		if got, _, err := s.List(context.Background(), nil, nil, 10); err != nil || len(got) != 0 {
			t.Errorf("after the rejections the store holds %d records (%v), want none", len(got), err)
		}
	})
}

// TestSummarizeDimensions checks each dimension on the fixture, by hand:
// cloud_months holds vm-a February (22 days, 2 CPUs, benchmark 10) and
// March (28 more days), vm-b February (15 days, 4 CPUs, completed) and
// vm-c March (1 day, 1 CPU).
func TestSummarizeDimensions(t *testing.T) {
	f := newFixture()
	cloud := &tallyv1.RecordFilter{Types: []tallyv1.RecordType{tallyv1.RecordType_RECORD_TYPE_CLOUD}}
	type row struct {
		key   *tallyv1.UsageKey
		count int64
		wallH float64
	}
	tests := []struct {
		name   string
		filter *tallyv1.RecordFilter
		by     tallyv1.UsageGroupBy
		want   []row
	}{
		{"cpu count", cloud, tallyv1.UsageGroupBy_USAGE_GROUP_BY_CPU_COUNT, []row{
			{&tallyv1.UsageKey{CpuCount: 1}, 1, 24}, {&tallyv1.UsageKey{CpuCount: 2}, 2, 1200}, {&tallyv1.UsageKey{CpuCount: 4}, 1, 360}}},
		{"user", cloud, tallyv1.UsageGroupBy_USAGE_GROUP_BY_USER, []row{
			{&tallyv1.UsageKey{User: "alice"}, 2, 1200}, {&tallyv1.UsageKey{User: "uB"}, 1, 360}, {&tallyv1.UsageKey{User: "uC"}, 1, 24}}},
		{"site", cloud, tallyv1.UsageGroupBy_USAGE_GROUP_BY_SITE, []row{
			{&tallyv1.UsageKey{Site: "S1"}, 3, 1560}, {&tallyv1.UsageKey{Site: "S2"}, 1, 24}}},
		{"project", cloud, tallyv1.UsageGroupBy_USAGE_GROUP_BY_PROJECT, []row{
			{&tallyv1.UsageKey{ProjectId: "pA"}, 2, 1200}, {&tallyv1.UsageKey{ProjectId: "pB"}, 1, 360}, {&tallyv1.UsageKey{ProjectId: "pC"}, 1, 24}}},
		{"region", cloud, tallyv1.UsageGroupBy_USAGE_GROUP_BY_REGION, []row{{&tallyv1.UsageKey{Region: "r1"}, 4, 1584}}},
		// Only the monthly deltas whose span overlaps: vm-a's March delta
		// (02-01 to 03-01) and vm-b's (02-05 to 02-20).
		{"time", &tallyv1.RecordFilter{Types: cloud.Types, Start: ts(at("2026-02-15T00:00:00Z")), End: ts(at("2026-02-25T00:00:00Z"))},
			tallyv1.UsageGroupBy_USAGE_GROUP_BY_REGION, []row{{&tallyv1.UsageKey{Region: "r1"}, 2, 672 + 360}}},
	}
	eachStore(t, func(t *testing.T, s Store) {
		f.write(t, s)
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				groups, err := s.Summarize(context.Background(), tc.filter, []tallyv1.UsageGroupBy{tc.by})
				if err != nil {
					t.Fatal(err)
				}
				var got []row
				for _, g := range groups {
					got = append(got, row{g.GetKey(), g.GetValues().GetRecordCount(), g.GetValues().GetWallHours()})
				}
				if diff := cmp.Diff(tc.want, got, protocmp.Transform(), cmp.AllowUnexported(row{}), cmpopts.EquateApprox(0, 1e-9)); diff != "" {
					t.Errorf("(-want +got):\n%s", diff)
				}
			})
		}
	})
}

func TestSummarizeEmpty(t *testing.T) {
	eachStore(t, func(t *testing.T, s Store) {
		got, err := s.Summarize(context.Background(), nil, nil)
		if err != nil || len(got) != 0 {
			t.Errorf("Summarize on an empty store = %v, %v; want no groups", got, err)
		}
	})
}

// TestListByVOPages lists a common VO and a rare one, page by page,
// against the order List promises, where many records share a start.
func TestListByVOPages(t *testing.T) {
	var recs []*tallyv1.Record
	base := at("2026-01-01T00:00:00Z")
	for i := range 1200 {
		vo := "big"
		if i%100 == 7 {
			vo = "small"
		}
		// Starts repeat, so the identity breaks ties.
		v := vm{id: fmt.Sprintf("vm-%04d", i), site: "S1", vo: vo, project: "p", user: "u", cpus: 1, start: base.Add(time.Duration(i%500) * time.Hour)}
		recs = append(recs, v.cloud(base.Add(600*time.Hour), base.Add(601*time.Hour)))
	}
	eachStore(t, func(t *testing.T, s Store) {
		write(t, s, recs...)
		ctx := context.Background()
		for _, vo := range []string{"big", "small"} {
			var want []*tallyv1.Record
			for _, r := range recs {
				if r.GetCloud().GetFqan() == vo && r.GetCloud().GetStartTime().AsTime().Before(base.Add(400*time.Hour)) {
					want = append(want, r)
				}
			}
			slices.SortFunc(want, func(a, b *tallyv1.Record) int {
				if c := b.GetCloud().GetStartTime().AsTime().Compare(a.GetCloud().GetStartTime().AsTime()); c != 0 {
					return c
				}
				return strings.Compare(b.GetCloud().GetVmUuid(), a.GetCloud().GetVmUuid())
			})
			f := &tallyv1.RecordFilter{Vos: []string{vo}, End: ts(base.Add(400 * time.Hour))}
			var got []*tallyv1.Record
			var after *Cursor
			for {
				page, next, err := s.List(ctx, f, after, 100)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, page...)
				if after = next; next == nil {
					break
				}
			}
			if diff := cmp.Diff(keys(want), keys(got)); diff != "" {
				t.Errorf("List of VO %s (-want +got):\n%s", vo, diff)
			}
		}
	})
}

// TestPostgresFailedWrite: a batch PostgreSQL refuses part way through
// its pipeline leaves nothing behind, and the store goes on writing.
func TestPostgresFailedWrite(t *testing.T) {
	s := openAt(t, pgSchema(t))
	ctx := context.Background()
	f := newFixture()
	// A trigger refuses VO "boom": the records upsert fails, after the
	// reads and before the rollups.
	pg := s.(*pgStore)
	for _, q := range []string{
		`CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'refused by the test'; END $$`,
		`CREATE TRIGGER refuse_boom BEFORE INSERT OR UPDATE ON records FOR EACH ROW WHEN (NEW.vo = 'boom') EXECUTE FUNCTION refuse_boom()`,
	} {
		if _, err := pg.pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	bad := vm{id: "vm-bad", site: "S1", vo: "boom", project: "pA", user: "uA", cpus: 1, start: at("2026-01-10T00:00:00Z")}
	for range 3 {
		if err := s.Write(ctx, []*tallyv1.Record{f.vmA1, f.acc1, bad.cloud(at("2026-01-01T00:00:00Z"), at("2026-02-01T00:00:00Z"))}); err == nil {
			t.Fatal("a record the trigger refuses was written")
		}
	}
	if _, err := s.Get(ctx, f.vmA1.GetKey()); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of a record of the failed batch: %v, want ErrNotFound", err)
	}
	f.write(t, s)
	sum, err := s.Summarize(ctx, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	fresh := openAt(t, pgSchema(t))
	f.write(t, fresh)
	want, err := fresh.Summarize(ctx, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, sum, protocmp.Transform()); diff != "" {
		t.Errorf("summary after the failed writes (-without them +with):\n%s", diff)
	}
}

// TestListPagesAcrossBuckets pages through records spread over two
// years, so that List's walks (SQLite's by bucket of start, PostgreSQL's
// per VO) cross many buckets, under filters of one VO, several, none,
// types and time ranges, and after updates that end VMs. Some records
// have no VO: a walk of every VO must find them too.
func TestListPagesAcrossBuckets(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	base := at("2025-01-01T00:00:00Z")
	vos := []string{"big", "big", "big", "mid", "mid", "rare", ""}
	var vms []vm
	for i := range 900 {
		v := vm{id: fmt.Sprintf("vm-%04d", rng.IntN(10000)*10000+i), site: "S1", vo: vos[rng.IntN(len(vos))],
			project: fmt.Sprintf("p%d", rng.IntN(3)), user: "u", cpus: 1}
		// A tenth share their start with the VM before, to need the
		// identity for order.
		if i > 0 && i%10 == 0 {
			v.start = vms[i-1].start
		} else {
			v.start = base.Add(time.Duration(rng.IntN(2*365*24)) * time.Hour)
		}
		vms = append(vms, v)
	}
	extract := base.Add(3 * 365 * 24 * time.Hour)
	latest := map[string]*tallyv1.Record{}
	var batches [][]*tallyv1.Record
	for lo := 0; lo < len(vms); lo += 200 {
		var b []*tallyv1.Record
		for i, v := range vms[lo:min(lo+200, len(vms))] {
			r := v.cloud(extract.Add(-time.Hour), extract)
			b = append(b, r)
			latest[r.GetKey()] = r
			// Accelerator records, which all start at their month's
			// first second, among them.
			if i%4 == 0 {
				y, m, _ := v.start.Date()
				a := accel(v.id, "S1", v.vo, v.project, int32(y), int32(m), 1, 3600, extract)
				b = append(b, a)
				latest[a.GetKey()] = a
			}
		}
		batches = append(batches, b)
	}
	// A later extraction ends a third of the VMs: their entries change.
	var ended []*tallyv1.Record
	for i := 0; i < len(vms); i += 3 {
		v := vms[i]
		v.end = v.start.Add(time.Duration(1+rng.IntN(60*24)) * time.Hour)
		r := v.cloud(extract, extract.Add(time.Hour))
		ended = append(ended, r)
		latest[r.GetKey()] = r
	}
	batches = append(batches, ended)
	month := func(y int, m time.Month) (*timestamppb.Timestamp, *timestamppb.Timestamp) {
		return ts(time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)), ts(time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC))
	}
	mayFrom, mayTo := month(2025, 5)
	filters := []*tallyv1.RecordFilter{
		nil,
		{Vos: []string{"big"}},
		{Vos: []string{"rare", "mid", "rare"}},
		{Vos: []string{"mid"}, ProjectIds: []string{"p1"}},
		{Vos: []string{"big"}, Start: mayFrom, End: mayTo},
		{Start: mayFrom, End: mayTo},
		{End: ts(base.Add(400*24*time.Hour + time.Second/2))},
		{Vos: []string{"rare", "big"}, Start: ts(base.Add(500 * 24 * time.Hour))},
		{Vos: []string{"nobody"}},
		{Types: []tallyv1.RecordType{tallyv1.RecordType_RECORD_TYPE_ACCELERATOR}, End: mayTo},
		{Vos: []string{"mid", "big"}, Types: []tallyv1.RecordType{tallyv1.RecordType_RECORD_TYPE_CLOUD, tallyv1.RecordType_RECORD_TYPE_ACCELERATOR}},
	}
	eachStore(t, func(t *testing.T, s Store) {
		for _, b := range batches {
			write(t, s, b...)
		}
		ctx := context.Background()
		for _, f := range filters {
			type entry struct {
				a attrs
				r *tallyv1.Record
			}
			var want []entry
			for _, r := range latest {
				a, err := attrsOf(r)
				if err != nil {
					t.Fatal(err)
				}
				if a.matches(f) {
					want = append(want, entry{a, r})
				}
			}
			slices.SortFunc(want, func(x, y entry) int {
				if x.a.start != y.a.start {
					return cmpInt(y.a.start, x.a.start)
				}
				return strings.Compare(y.a.ident, x.a.ident)
			})
			var wantKeys []string
			for _, e := range want {
				wantKeys = append(wantKeys, e.r.GetKey())
			}
			for _, size := range []int{7, 50} {
				var got []*tallyv1.Record
				var after *Cursor
				for pages := 0; ; pages++ {
					if pages > len(vms) {
						t.Fatal("paging does not end")
					}
					page, next, err := s.List(ctx, f, after, size)
					if err != nil {
						t.Fatal(err)
					}
					got = append(got, page...)
					if after = next; next == nil {
						break
					}
				}
				if diff := cmp.Diff(wantKeys, keys(got), cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("List(%v) in pages of %d (-want +got):\n%s", f, size, diff)
				}
			}
		}
	})
}
