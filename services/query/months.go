package query

import (
	"cmp"
	"maps"
	"slices"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// monthRow is one row of cloud_months: APEL's CloudRecords row for a VM
// and a MeasurementTime month, plus the delta to the VM's previous row
// that APEL's SummariseVMs computes on every run. tally keeps the deltas
// up to date at write time instead, so a monthly summary is a plain sum.
type monthRow struct {
	site, vm    string
	year, month int64
	measure     int64
	// The usage in the deltas happened in (spanFrom, spanTo]: from the
	// previous row's measurement (or the VM's start) to this one's.
	spanFrom, spanTo int64

	region, project, vo, localUser, globalUser, status string
	image, benchmarkType, service                      string
	cpuCount                                           int64
	benchmark                                          float64
	memory, disk                                       int64
	start                                              int64
	end                                                *int64

	wallCum, cpuCum int64
	wallD, cpuD     int64
	normD           float64

	extractedAt, windowFrom, windowTo int64
}

// monthColumns are the columns of cloud_months, in monthRow.values order.
var monthColumns = []string{
	"site", "vm_uuid", "year", "month", "measure_ts", "span_from", "span_to",
	"region", "project_id", "vo", "local_user", "global_user", "status",
	"image_id", "benchmark_type", "service", "cpu_count", "benchmark", "memory", "disk", "start_ts", "end_ts",
	"wall_cum", "cpu_cum", "wall_d", "cpu_d", "norm_d", "extracted_at", "window_from", "window_to",
}

func (m *monthRow) values() []any {
	return []any{
		m.site, m.vm, m.year, m.month, m.measure, m.spanFrom, m.spanTo,
		m.region, m.project, m.vo, m.localUser, m.globalUser, m.status,
		m.image, m.benchmarkType, m.service, m.cpuCount, m.benchmark, m.memory, m.disk, m.start, m.end,
		m.wallCum, m.cpuCum, m.wallD, m.cpuD, m.normD, m.extractedAt, m.windowFrom, m.windowTo,
	}
}

func (m *monthRow) pointers() []any {
	return []any{
		&m.site, &m.vm, &m.year, &m.month, &m.measure, &m.spanFrom, &m.spanTo,
		&m.region, &m.project, &m.vo, &m.localUser, &m.globalUser, &m.status,
		&m.image, &m.benchmarkType, &m.service, &m.cpuCount, &m.benchmark, &m.memory, &m.disk, &m.start, &m.end,
		&m.wallCum, &m.cpuCum, &m.wallD, &m.cpuD, &m.normD, &m.extractedAt, &m.windowFrom, &m.windowTo,
	}
}

func newMonthRow(a *attrs, c *tallyv1.CloudRecord) monthRow {
	ms := measurement(c)
	return monthRow{
		site: a.site, vm: c.GetVmUuid(), year: ms.year, month: ms.month, measure: ms.ts,
		region: a.region, project: a.project, vo: a.vo, localUser: a.localUser, globalUser: a.globalUser, status: a.status,
		image: c.GetImageId(), benchmarkType: c.GetBenchmarkType(), service: c.GetCloudComputeService(),
		cpuCount: a.cpuCount, benchmark: c.GetBenchmark(), memory: c.GetMemory(), disk: c.GetDisk(), start: a.start, end: a.end,
		wallCum: a.wall, cpuCum: a.cpu, extractedAt: a.extractedAt, windowFrom: a.windowFrom, windowTo: a.windowTo,
	}
}

type vmKey struct{ site, vm string }

// mergeMonths applies new rows to one VM's stored rows and recomputes the
// deltas the way SummariseVMs does: for each row R, P is the row with the
// greatest MeasurementTime below R's, ignoring month-0 rows; the deltas are
// R − P, or R itself without a P. A row replaces the stored row of its
// month unless the stored one comes from a later extraction. It returns
// the rows to write (the new ones and those whose delta changed) and the
// stored versions they replace, for the rollup.
func mergeMonths(stored, incoming []monthRow) (write, replaced []monthRow) {
	type slot struct {
		row   monthRow
		was   *monthRow // the stored version, if any
		dirty bool
	}
	rows := make([]*slot, 0, len(stored)+len(incoming))
	for i := range stored {
		rows = append(rows, &slot{row: stored[i], was: &stored[i]})
	}
	for _, r := range incoming {
		i := slices.IndexFunc(rows, func(s *slot) bool { return s.row.year == r.year && s.row.month == r.month })
		switch {
		case i < 0:
			rows = append(rows, &slot{row: r, dirty: true})
		case r.extractedAt >= rows[i].row.extractedAt:
			rows[i].row, rows[i].dirty = r, true
		}
	}
	slices.SortFunc(rows, func(a, b *slot) int {
		return cmpInt(a.row.measure, b.row.measure)
	})
	var prev *monthRow
	for _, s := range rows {
		r := &s.row
		wallD, cpuD, from := r.wallCum, r.cpuCum, r.start
		if r.month != 0 {
			if prev != nil {
				wallD, cpuD, from = r.wallCum-prev.wallCum, r.cpuCum-prev.cpuCum, prev.measure
			}
		} else {
			from = 0
		}
		normD := float64(cpuD) * r.benchmark
		if s.dirty || wallD != r.wallD || cpuD != r.cpuD || normD != r.normD || from != r.spanFrom || r.spanTo != r.measure {
			r.wallD, r.cpuD, r.normD, r.spanFrom, r.spanTo = wallD, cpuD, normD, from, r.measure
			s.dirty = true
		}
		if r.month != 0 {
			prev = r
		}
		if s.dirty {
			write = append(write, *r)
			if s.was != nil {
				replaced = append(replaced, *s.was)
			}
		}
	}
	return write, replaced
}

// rollKey is a cloud_rollup row's dimensions: everything a summary of
// cloud usage without a time range groups or filters by.
type rollKey struct {
	year, month                                              int64
	vo, project, localUser, globalUser, region, site, status string
	cpuCount                                                 int64
}

// rollup is a change to cloud_rollup, which holds the sums of
// cloud_months per rollKey so that summaries over a whole store read a
// few rows per group instead of one per VM and month.
type rollup map[rollKey]*rollSums

type rollSums struct {
	n, wall, cpu int64
	norm         float64
}

func (r rollup) add(m *monthRow, sign int64) {
	k := rollKey{m.year, m.month, m.vo, m.project, m.localUser, m.globalUser, m.region, m.site, m.status, m.cpuCount}
	s := r[k]
	if s == nil {
		s = &rollSums{}
		r[k] = s
	}
	s.n += sign
	s.wall += sign * m.wallD
	s.cpu += sign * m.cpuD
	s.norm += float64(sign) * m.normD
}

// rollupColumns are the columns of cloud_rollup, in rollValues order.
var rollupColumns = []string{"year", "month", "vo", "project_id", "local_user", "global_user", "region", "site", "status", "cpu_count",
	"n", "wall", "cpu", "norm"}

// compare orders rollup rows: concurrent PostgreSQL writers update
// them in this order, so that none waits for another in a circle.
func (k rollKey) compare(o rollKey) int {
	return cmp.Or(cmp.Compare(k.year, o.year), cmp.Compare(k.month, o.month), cmp.Compare(k.vo, o.vo),
		cmp.Compare(k.project, o.project), cmp.Compare(k.localUser, o.localUser), cmp.Compare(k.globalUser, o.globalUser),
		cmp.Compare(k.region, o.region), cmp.Compare(k.site, o.site), cmp.Compare(k.status, o.status), cmp.Compare(k.cpuCount, o.cpuCount))
}

// rows returns the changes that are not nothing, as rollupColumns rows,
// in key order (rollKey.compare).
func (r rollup) rows() [][]any {
	out := make([][]any, 0, len(r))
	for _, k := range slices.SortedFunc(maps.Keys(r), rollKey.compare) {
		s := r[k]
		if s.n == 0 && s.wall == 0 && s.cpu == 0 && s.norm == 0 {
			continue
		}
		out = append(out, []any{k.year, k.month, k.vo, k.project, k.localUser, k.globalUser, k.region, k.site, k.status, k.cpuCount,
			s.n, s.wall, s.cpu, s.norm})
	}
	return out
}

// upsertRollupSet adds a change to the stored sums.
const upsertRollupSet = " ON CONFLICT (year, month, vo, project_id, local_user, global_user, region, site, status, cpu_count) DO UPDATE SET " +
	"n = cloud_rollup.n + excluded.n, wall = cloud_rollup.wall + excluded.wall, cpu = cloud_rollup.cpu + excluded.cpu, " +
	"norm = cloud_rollup.norm + excluded.norm"

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// usageKey is a usage_rollup row's dimensions: cloud_rollup's and the
// record type.
type usageKey struct {
	rtype int64
	rollKey
}

// usageRollup is a change to usage_rollup, the sums of accelerator,
// storage and energy records per dimension. (Cloud usage has
// cloud_rollup; public IP counts are levels, not sums.)
type usageRollup map[usageKey]*usageSums

type usageSums struct {
	n       int64
	gpu, gb float64
}

// rolledUp says whether usage_rollup sums records of type t.
func rolledUp(t tallyv1.RecordType) bool {
	return t == tallyv1.RecordType_RECORD_TYPE_ACCELERATOR || t == tallyv1.RecordType_RECORD_TYPE_STORAGE ||
		t == tallyv1.RecordType_RECORD_TYPE_ENERGY
}

func (u usageRollup) add(a *attrs, sign int64) {
	k := usageKey{int64(a.typ), rollKey{a.year, a.month, a.vo, a.project, a.localUser, a.globalUser, a.region, a.site, a.status, a.cpuCount}}
	s := u[k]
	if s == nil {
		s = &usageSums{}
		u[k] = s
	}
	s.n += sign
	s.gpu += float64(sign) * a.gpu
	s.gb += float64(sign) * a.gbSeconds
}

// usageColumns are the columns of usage_rollup, in rows order.
var usageColumns = []string{"rtype", "year", "month", "vo", "project_id", "local_user", "global_user", "region", "site", "status", "cpu_count",
	"n", "gpu_s", "gb_s"}

// rows returns the changes that are not nothing, as usageColumns rows, in
// key order (by type, then rollKey.compare).
func (u usageRollup) rows() [][]any {
	out := make([][]any, 0, len(u))
	order := func(a, b usageKey) int { return cmp.Or(cmp.Compare(a.rtype, b.rtype), a.rollKey.compare(b.rollKey)) }
	for _, k := range slices.SortedFunc(maps.Keys(u), order) {
		s := u[k]
		if s.n == 0 && s.gpu == 0 && s.gb == 0 {
			continue
		}
		out = append(out, []any{k.rtype, k.year, k.month, k.vo, k.project, k.localUser, k.globalUser, k.region, k.site, k.status, k.cpuCount,
			s.n, s.gpu, s.gb})
	}
	return out
}

const upsertUsageSet = " ON CONFLICT (rtype, year, month, vo, project_id, local_user, global_user, region, site, status, cpu_count) DO UPDATE SET " +
	"n = usage_rollup.n + excluded.n, gpu_s = usage_rollup.gpu_s + excluded.gpu_s, gb_s = usage_rollup.gb_s + excluded.gb_s"

// storedColumns are the columns of a stored record the usage rollup needs
// to take it out again, in storedAttrs order.
var storedColumns = []string{"ident", "rtype", "year", "month", "vo", "project_id", "local_user", "global_user", "region", "site", "status",
	"cpu_count", "gpu_s", "gb_s", "extracted_at"}

func storedAttrs(a *attrs) []any {
	return []any{&a.ident, &a.typ, &a.year, &a.month, &a.vo, &a.project, &a.localUser, &a.globalUser, &a.region, &a.site, &a.status,
		&a.cpuCount, &a.gpu, &a.gbSeconds, &a.extractedAt}
}

// usage computes the change to usage_rollup of writing the batch over the
// stored versions of its records (by identity).
func (b *batch) usage(stored map[string]*attrs) usageRollup {
	u := usageRollup{}
	for i := range b.recs {
		a := &b.recs[i]
		if !rolledUp(a.typ) {
			continue
		}
		if old := stored[a.ident]; old != nil {
			if a.extractedAt < old.extractedAt {
				continue // the stored version stays (see the records upsert)
			}
			u.add(old, -1)
		}
		u.add(a, 1)
	}
	return u
}

// rolledIdents lists the identities of the batch's records that
// usage_rollup sums.
func (b *batch) rolledIdents() []string {
	var out []string
	for i := range b.recs {
		if rolledUp(b.recs[i].typ) {
			out = append(out, b.recs[i].ident)
		}
	}
	return out
}
