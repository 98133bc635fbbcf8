package query

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// rows is what both database/sql and pgx give back from a query.
type rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

type querier func(ctx context.Context, q string, args ...any) (rows, error)

// reader implements the read half of Store over either database.
type reader struct {
	d     dialect
	query querier
	// buckets: List walks SQLite's bucket indexes (schema version 6).
	buckets bool
	// voWalks: List walks PostgreSQL's records_vo_list per VO (schema
	// version 10).
	voWalks bool
	// derivedKeys: a derived key is found through the identity's index
	// (schema version 8).
	derivedKeys bool
	// identRids, where set, finds the records of identities instead of
	// an index of them (SQLite's identIndex, schema version 11): the rows
	// of the rids it gives whose identity is one of ids.
	identRids func(ctx context.Context, ids []string) ([]int64, error)
}

// cond is a WHERE clause under construction.
type cond struct {
	parts []string
	args  []any
}

func (c *cond) add(part string, args ...any) {
	c.parts = append(c.parts, part)
	c.args = append(c.args, args...)
}

func (c *cond) in(col string, vals []string) {
	if len(vals) == 0 {
		return
	}
	c.add(col+" IN ("+strings.TrimSuffix(strings.Repeat("?, ", len(vals)), ", ")+")", anys(vals)...)
}

func (c *cond) sql() string {
	if len(c.parts) == 0 {
		return "TRUE"
	}
	return strings.Join(c.parts, " AND ")
}

func anys[T any](vals []T) []any {
	out := make([]any, len(vals))
	for i, v := range vals {
		out[i] = v
	}
	return out
}

// filterEnd is the filter's exclusive end in whole seconds, rounded up so
// a record starting in the last partial second is kept.
func filterEnd(f *tallyv1.RecordFilter) int64 {
	e := f.GetEnd()
	if e.GetNanos() > 0 {
		return e.GetSeconds() + 1
	}
	return e.GetSeconds()
}

// where builds the filter over a table with the records columns; start and
// end name the columns bounding a row in time.
func where(f *tallyv1.RecordFilter, types []tallyv1.RecordType, start, end string) *cond {
	c := &cond{}
	if len(types) > 0 {
		ts := make([]int64, len(types))
		for i, t := range types {
			ts[i] = int64(t)
		}
		c.add("rtype IN ("+strings.TrimSuffix(strings.Repeat("?, ", len(ts)), ", ")+")", anys(ts)...)
	}
	c.in("region", f.GetRegions())
	c.in("site", f.GetSites())
	c.in("project_id", f.GetProjectIds())
	c.in("vo", f.GetVos())
	c.in("status", f.GetStatuses())
	if us := f.GetUsers(); len(us) > 0 {
		ph := strings.TrimSuffix(strings.Repeat("?, ", len(us)), ", ")
		c.add("(local_user IN ("+ph+") OR (global_user <> '' AND global_user IN ("+ph+")))", append(anys(us), anys(us)...)...)
	}
	if f.GetEnd() != nil {
		c.add(start+" < ?", filterEnd(f))
	}
	if f.GetStart() != nil {
		c.add("("+end+" IS NULL OR "+end+" >= ?)", f.GetStart().GetSeconds())
	}
	return c
}

func (r *reader) Get(ctx context.Context, key string) (*tallyv1.Record, error) {
	q, args := "SELECT data FROM records WHERE key = ? ORDER BY extracted_at DESC, ident LIMIT 1", []any{key}
	if r.derivedKeys {
		var err error
		if q, args, err = r.getDerived(ctx, key); err != nil {
			return nil, fmt.Errorf("query: get %q: %w", key, err)
		}
	}
	rs, err := r.query(ctx, r.d.bind(q), args...)
	if err != nil {
		return nil, fmt.Errorf("query: get %q: %w", key, err)
	}
	defer rs.Close()
	if !rs.Next() {
		if err := rs.Err(); err != nil {
			return nil, fmt.Errorf("query: get %q: %w", key, err)
		}
		return nil, ErrNotFound
	}
	var data []byte
	if err := rs.Scan(&data); err != nil {
		return nil, fmt.Errorf("query: get %q: %w", key, err)
	}
	return decode(data)
}

// getDerived is Get's query where a derived key has no entry in the key
// index: the records whose key was given (records_key_given), and those
// of the identities the key may have been derived from.
func (r *reader) getDerived(ctx context.Context, key string) (string, []any, error) {
	var sites []string
	if kind, _, _ := strings.Cut(key, "/"); identKinds[kind] {
		rs, err := r.query(ctx, "SELECT site FROM key_sites")
		if err != nil {
			return "", nil, err
		}
		defer rs.Close()
		for rs.Next() {
			var site string
			if err := rs.Scan(&site); err != nil {
				return "", nil, err
			}
			sites = append(sites, site)
		}
		if err := rs.Err(); err != nil {
			return "", nil, err
		}
	}
	q := "SELECT data, extracted_at, ident FROM records WHERE key = ? AND key_derived = 0"
	args := []any{key}
	ids := keyIdents(key, sites)
	switch {
	case len(ids) == 0:
	case r.identRids != nil:
		rids, err := r.identRids(ctx, ids)
		if err != nil {
			return "", nil, err
		}
		if len(rids) > 0 {
			q += " UNION ALL SELECT data, extracted_at, ident FROM records WHERE rid IN (" + placeholders(len(rids)) +
				") AND ident IN (" + placeholders(len(ids)) + ") AND key = ? AND key_derived = 1"
			args = append(append(append(args, anys(rids)...), anys(ids)...), key)
		}
	default:
		q += " UNION ALL SELECT data, extracted_at, ident FROM records WHERE ident IN (" + placeholders(len(ids)) +
			") AND key = ? AND key_derived = 1"
		args = append(append(args, anys(ids)...), key)
	}
	return "SELECT data FROM (" + q + ") AS r ORDER BY extracted_at DESC, ident LIMIT 1", args, nil
}

func decode(data []byte) (*tallyv1.Record, error) {
	rec := &tallyv1.Record{}
	if err := proto.Unmarshal(data, rec); err != nil {
		return nil, fmt.Errorf("query: stored record: %w", err)
	}
	return rec, nil
}

func (r *reader) List(ctx context.Context, f *tallyv1.RecordFilter, after *Cursor, limit int) ([]*tallyv1.Record, *Cursor, error) {
	var q string
	var args []any
	switch {
	case r.buckets:
		q, args = bucketedList(f, after, limit+1)
	case r.voWalks:
		q, args = voWalkList(f, after, limit+1)
	default:
		c := where(f, f.GetTypes(), "start_ts", "end_ts")
		if after != nil {
			c.add("(start_ts < ? OR (start_ts = ? AND ident < ?))", after.Start, after.Start, after.Ident)
		}
		q = "SELECT start_ts, ident, data FROM records WHERE " + c.sql() + " ORDER BY start_ts DESC, ident DESC LIMIT ?"
		args = append(c.args, limit+1)
	}
	rs, err := r.query(ctx, r.d.bind(q), args...)
	if err != nil {
		return nil, nil, fmt.Errorf("query: list: %w", err)
	}
	defer rs.Close()
	var (
		out  []*tallyv1.Record
		last Cursor
		next *Cursor
	)
	for rs.Next() {
		if len(out) == limit {
			next = &last
			break
		}
		var data []byte
		if err := rs.Scan(&last.Start, &last.Ident, &data); err != nil {
			return nil, nil, fmt.Errorf("query: list: %w", err)
		}
		rec, err := decode(data)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, rec)
	}
	if err := rs.Err(); err != nil {
		return nil, nil, fmt.Errorf("query: list: %w", err)
	}
	return out, next, nil
}

// voWalkList is List's query over PostgreSQL's records_vo_list, for n
// rows: a walk per VO in List's order (the filter's VOs, or every VO in
// the store, which a recursive query finds with one index descent each),
// merged by ORDER BY; only the page's rows are read.
func voWalkList(f *tallyv1.RecordFilter, after *Cursor, n int) (string, []any) {
	g := &tallyv1.RecordFilter{}
	if f != nil {
		g = proto.CloneOf(f)
	}
	g.Vos = nil
	c := where(g, g.GetTypes(), "start_ts", "end_ts")
	c.add("vo = vos.vo")
	if after != nil {
		// A row comparison, which PostgreSQL can take as the index
		// scan's bound (the OR form only as a filter).
		c.add("(start_ts, ident) < (?, ?)", after.Start, after.Ident)
	}
	var args []any
	vos := "WITH RECURSIVE v(vo) AS (SELECT min(vo) FROM records UNION ALL " +
		"SELECT (SELECT min(r.vo) FROM records r WHERE r.vo > v.vo) FROM v WHERE v.vo IS NOT NULL) SELECT vo FROM v WHERE vo IS NOT NULL"
	if len(f.GetVos()) > 0 {
		vos = "SELECT DISTINCT vo FROM unnest(?::text[]) AS v(vo)"
		args = append(args, f.GetVos())
	}
	q := "SELECT start_ts, ident, data FROM records WHERE ident IN (SELECT w.ident FROM (" + vos + ") AS vos, " +
		"LATERAL (SELECT start_ts, ident FROM records WHERE " + c.sql() + " ORDER BY start_ts DESC, ident DESC LIMIT ?) AS w " +
		"ORDER BY w.start_ts DESC, w.ident DESC LIMIT ?) ORDER BY start_ts DESC, ident DESC"
	args = append(append(args, c.args...), n, n)
	return q, args
}

// The indexes SQLite's List walks (migration 6). A cloud record's entry
// goes by bucket of start time (start_ts >> shift), then insertion; the
// other types' entries are in List's order. shift 0: no buckets.
type listIndex struct {
	name  string
	shift int
	// cond is the index's WHERE, as the query must spell it for SQLite
	// to use the partial index.
	cond string
}

var (
	voClouds  = listIndex{"records_vo_seq", 18, "rtype = 1"}
	allClouds = listIndex{"records_seq", 15, "rtype = 1"}
	voOthers  = listIndex{"records_vo_other", 0, "rtype <> 1"}
	allOthers = listIndex{"records_other", 0, "rtype <> 1"}
)

// bucket is the expression of a start's bucket, spelled as in the index
// definition, which SQLite's planner matches textually.
func (ix listIndex) bucket() string { return fmt.Sprintf("(start_ts >> %d)", ix.shift) }

// walk is the subquery of the rowids of the first n records of ix, in
// List's order, that match f, come after the cursor and, if bounded,
// start at top or before.
func (ix listIndex) walk(f *tallyv1.RecordFilter, after *Cursor, top int64, bounded bool, n int) (string, []any) {
	types := f.GetTypes()
	if ix.shift > 0 {
		types = nil // cloud, which cond says
	}
	c := where(f, types, "start_ts", "end_ts")
	c.add(ix.cond)
	order := "start_ts DESC, ident DESC"
	if ix.shift > 0 {
		// A record of an earlier bucket starts earlier, so ordering by
		// bucket first is List's order: SQLite walks the buckets down
		// and sorts one bucket's entries at a time (in the index, reading
		// no row), stopping at the bucket that completes the n.
		order = ix.bucket() + " DESC, " + order
		if bounded {
			c.add(ix.bucket()+" <= ?", top>>ix.shift)
		}
	} else if bounded {
		c.add("start_ts <= ?", top)
	}
	if after != nil {
		c.add("(start_ts < ? OR (start_ts = ? AND ident < ?))", after.Start, after.Start, after.Ident)
	}
	return "SELECT id FROM (SELECT rowid AS id FROM records INDEXED BY " + ix.name + " WHERE " + c.sql() +
		" ORDER BY " + order + " LIMIT ?)", append(c.args, n)
}

// bucketedList is List's query over SQLite's list indexes, for n rows:
// a walk of cloud records and one of the others, each per VO (an IN over
// the VOs would sort all of their entries), merged by the outer ORDER
// BY; only the page's rows are read.
func bucketedList(f *tallyv1.RecordFilter, after *Cursor, n int) (string, []any) {
	clouds, others := allClouds, allOthers
	vos := [][]string{nil}
	if len(f.GetVos()) > 0 {
		clouds, others = voClouds, voOthers
		vos = nil
		for _, vo := range f.GetVos() {
			if !slices.ContainsFunc(vos, func(v []string) bool { return v[0] == vo }) {
				vos = append(vos, []string{vo})
			}
		}
	}
	var ixs []listIndex
	types := f.GetTypes()
	if len(types) == 0 || slices.Contains(types, tallyv1.RecordType_RECORD_TYPE_CLOUD) {
		ixs = append(ixs, clouds)
	}
	if len(types) == 0 || slices.ContainsFunc(types, func(t tallyv1.RecordType) bool { return t != tallyv1.RecordType_RECORD_TYPE_CLOUD }) {
		ixs = append(ixs, others)
	}
	// The latest start that can match bounds each walk's range: SQLite
	// does not derive a bucket's bound from one on start_ts, nor a
	// range from the cursor's OR.
	top, bounded := int64(0), false
	if f.GetEnd() != nil {
		top, bounded = filterEnd(f)-1, true
	}
	if after != nil && (!bounded || after.Start < top) {
		top, bounded = after.Start, true
	}
	var walks []string
	var args []any
	for _, vo := range vos {
		g := &tallyv1.RecordFilter{}
		if f != nil {
			g = proto.CloneOf(f)
		}
		g.Vos = vo
		for _, ix := range ixs {
			q, a := ix.walk(g, after, top, bounded, n)
			walks = append(walks, q)
			args = append(args, a...)
		}
	}
	q := "SELECT start_ts, ident, data FROM records WHERE rowid IN (" + strings.Join(walks, " UNION ALL ") +
		") ORDER BY start_ts DESC, ident DESC LIMIT ?"
	return q, append(args, n)
}

// groupExprs maps a group-by dimension to its SQL expressions (columns
// common to records and cloud_months).
func groupExprs(g tallyv1.UsageGroupBy) []string {
	switch g {
	case tallyv1.UsageGroupBy_USAGE_GROUP_BY_MONTH:
		return []string{"year", "month"}
	case tallyv1.UsageGroupBy_USAGE_GROUP_BY_VO:
		return []string{"vo"}
	case tallyv1.UsageGroupBy_USAGE_GROUP_BY_PROJECT:
		return []string{"project_id"}
	case tallyv1.UsageGroupBy_USAGE_GROUP_BY_USER:
		return []string{"CASE WHEN global_user <> '' THEN global_user ELSE local_user END"}
	case tallyv1.UsageGroupBy_USAGE_GROUP_BY_REGION:
		return []string{"region"}
	case tallyv1.UsageGroupBy_USAGE_GROUP_BY_SITE:
		return []string{"site"}
	case tallyv1.UsageGroupBy_USAGE_GROUP_BY_CPU_COUNT:
		return []string{"cpu_count"}
	}
	return nil
}

// sums accumulates one group's metrics.
type sums struct {
	count                           int64
	wall, cpu, norm, gpu, gbSeconds float64
	ips                             int64
}

func (r *reader) Summarize(ctx context.Context, f *tallyv1.RecordFilter, groupBy []tallyv1.UsageGroupBy) ([]*tallyv1.UsageGroup, error) {
	var exprs []string
	for _, g := range groupBy {
		for _, e := range groupExprs(g) {
			if !slices.Contains(exprs, e) {
				exprs = append(exprs, e)
			}
		}
	}
	types := f.GetTypes()
	if len(types) == 0 {
		types = []tallyv1.RecordType{
			tallyv1.RecordType_RECORD_TYPE_CLOUD, tallyv1.RecordType_RECORD_TYPE_ACCELERATOR, tallyv1.RecordType_RECORD_TYPE_IP,
			tallyv1.RecordType_RECORD_TYPE_STORAGE, tallyv1.RecordType_RECORD_TYPE_ENERGY,
		}
	}
	sel, grp := "", ""
	if len(exprs) > 0 {
		sel = strings.Join(exprs, ", ") + ", "
		grp = " GROUP BY " + strings.Join(exprs, ", ")
	}
	// COALESCE: without GROUP BY, no rows still make one row, of NULLs.
	sum := func(x string) string { return "COALESCE(SUM(CAST(" + x + " AS " + r.d.real + ")), 0)" }
	groups := map[string]*groupAcc{}
	var order []string
	run := func(q string, args []any, scan func(s *sums) []any) error {
		rs, err := r.query(ctx, r.d.bind(q), args...)
		if err != nil {
			return fmt.Errorf("query: summarize: %w", err)
		}
		defer rs.Close()
		for rs.Next() {
			keys := make([]any, len(exprs))
			vals := make([]any, len(exprs))
			for i, e := range exprs {
				switch e {
				case "year", "month", "cpu_count":
					vals[i] = new(int64)
				default:
					vals[i] = new(string)
				}
				keys[i] = vals[i]
			}
			var s sums
			if err := rs.Scan(append(keys, scan(&s)...)...); err != nil {
				return fmt.Errorf("query: summarize: %w", err)
			}
			if s.count == 0 {
				continue
			}
			k := groupKey(exprs, vals)
			id := proto.MarshalOptions{Deterministic: true}
			b, _ := id.Marshal(k)
			g, ok := groups[string(b)]
			if !ok {
				g = &groupAcc{key: k}
				groups[string(b)] = g
				order = append(order, string(b))
			}
			g.add(s)
		}
		return rs.Err()
	}
	if slices.Contains(types, tallyv1.RecordType_RECORD_TYPE_CLOUD) {
		c := where(f, nil, "span_from", "span_to")
		// The months of a VM's life are rows with their own time span, not
		// the VM's [start, end]: a month's delta belongs to its span.
		q := "SELECT " + sel + "COUNT(*), " + sum("wall_d") + ", " + sum("cpu_d") + ", " + sum("norm_d") +
			" FROM cloud_months WHERE " + c.sql() + grp
		if f.GetStart() == nil && f.GetEnd() == nil {
			// Without a time range every filter and dimension is one of
			// cloud_rollup's: the same sums, from far fewer rows.
			c.add("n <> 0")
			q = "SELECT " + sel + "COALESCE(CAST(SUM(n) AS BIGINT), 0), " + sum("wall") + ", " + sum("cpu") + ", " + sum("norm") +
				" FROM cloud_rollup WHERE " + c.sql() + grp
		}
		if err := run(q, c.args, func(s *sums) []any { return []any{&s.count, &s.wall, &s.cpu, &s.norm} }); err != nil {
			return nil, err
		}
	}
	var others []tallyv1.RecordType
	for _, t := range types {
		if t != tallyv1.RecordType_RECORD_TYPE_CLOUD && t != tallyv1.RecordType_RECORD_TYPE_IP {
			others = append(others, t)
		}
	}
	if len(others) > 0 {
		c := where(f, others, "start_ts", "end_ts")
		var q string
		if f.GetStart() == nil && f.GetEnd() == nil {
			c.add("n <> 0")
			q = "SELECT " + sel + "COALESCE(CAST(SUM(n) AS BIGINT), 0), " + sum("gpu_s") + ", " + sum("gb_s") + " FROM usage_rollup WHERE " + c.sql() + grp
		} else {
			// Literally the condition of the partial index records_usage
			// (records_other in SQLite from version 6), so SQLite's
			// planner can use it.
			c.add("rtype <> 1")
			q = "SELECT " + sel + "COUNT(*), " + sum("gpu_s") + ", " + sum("gb_s") + " FROM records WHERE " + c.sql() + grp
		}
		if err := run(q, c.args, func(s *sums) []any { return []any{&s.count, &s.gpu, &s.gbSeconds} }); err != nil {
			return nil, err
		}
	}
	if slices.Contains(types, tallyv1.RecordType_RECORD_TYPE_IP) {
		// A public IP count is a level, not a flow: per project, user and IP
		// version only the group's latest measurement counts.
		c := where(f, []tallyv1.RecordType{tallyv1.RecordType_RECORD_TYPE_IP}, "start_ts", "end_ts")
		c.add("rtype <> 1") // for the partial index, as above
		part := append(slices.Clone(exprs), "project_id", "local_user", "global_user", "ip_version")
		q := "SELECT " + sel + "COUNT(*), COALESCE(CAST(SUM(CASE WHEN rn = 1 THEN ip_count ELSE 0 END) AS BIGINT), 0) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY " +
			strings.Join(part, ", ") + " ORDER BY start_ts DESC) AS rn FROM records WHERE " + c.sql() + ") AS latest" + grp
		if err := run(q, c.args, func(s *sums) []any { return []any{&s.count, &s.ips} }); err != nil {
			return nil, err
		}
	}
	out := make([]*tallyv1.UsageGroup, 0, len(order))
	for _, id := range order {
		out = append(out, groups[id].group())
	}
	slices.SortFunc(out, func(a, b *tallyv1.UsageGroup) int { return compareKeys(a.GetKey(), b.GetKey()) })
	return out, nil
}

type groupAcc struct {
	key *tallyv1.UsageKey
	s   sums
}

func (g *groupAcc) add(s sums) {
	g.s.count += s.count
	g.s.wall += s.wall
	g.s.cpu += s.cpu
	g.s.norm += s.norm
	g.s.gpu += s.gpu
	g.s.gbSeconds += s.gbSeconds
	g.s.ips += s.ips
}

func (g *groupAcc) group() *tallyv1.UsageGroup {
	h := func(sec float64) *float64 { v := sec / 3600; return &v }
	return &tallyv1.UsageGroup{Key: g.key, Values: &tallyv1.UsageValues{
		RecordCount: &g.s.count, WallHours: h(g.s.wall), CpuHours: h(g.s.cpu), NormalisedCpuHours: h(g.s.norm),
		GpuHours: h(g.s.gpu), StorageGbHours: h(g.s.gbSeconds), PublicIpCount: &g.s.ips,
	}}
}

func groupKey(exprs []string, vals []any) *tallyv1.UsageKey {
	k := &tallyv1.UsageKey{}
	for i, e := range exprs {
		switch e {
		case "year":
			k.Year = int32(*vals[i].(*int64))
		case "month":
			k.Month = int32(*vals[i].(*int64))
		case "cpu_count":
			k.CpuCount = int32(*vals[i].(*int64))
		case "vo":
			k.Vo = *vals[i].(*string)
		case "project_id":
			k.ProjectId = *vals[i].(*string)
		case "region":
			k.Region = *vals[i].(*string)
		case "site":
			k.Site = *vals[i].(*string)
		default:
			k.User = *vals[i].(*string)
		}
	}
	return k
}

func compareKeys(a, b *tallyv1.UsageKey) int {
	if c := cmpInt(int64(a.GetYear()), int64(b.GetYear())); c != 0 {
		return c
	}
	if c := cmpInt(int64(a.GetMonth()), int64(b.GetMonth())); c != 0 {
		return c
	}
	for _, p := range [][2]string{{a.GetVo(), b.GetVo()}, {a.GetProjectId(), b.GetProjectId()}, {a.GetUser(), b.GetUser()},
		{a.GetRegion(), b.GetRegion()}, {a.GetSite(), b.GetSite()}} {
		if c := strings.Compare(p[0], p[1]); c != 0 {
			return c
		}
	}
	return cmpInt(int64(a.GetCpuCount()), int64(b.GetCpuCount()))
}

func (r *reader) SchemaVersion(ctx context.Context) (int, error) {
	rs, err := r.query(ctx, "SELECT version FROM tally_schema")
	if err != nil {
		return 0, fmt.Errorf("query: schema version: %w", err)
	}
	defer rs.Close()
	if !rs.Next() {
		return 0, errors.Join(errors.New("query: schema version: no row"), rs.Err())
	}
	var v int
	if err := rs.Scan(&v); err != nil {
		return 0, fmt.Errorf("query: schema version: %w", err)
	}
	return v, nil
}
