package query

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

var pgTypes = strings.NewReplacer("{int}", "BIGINT", "{real}", "DOUBLE PRECISION", "{blob}", "BYTEA", "{norowid}", "", "{pg}", "")

// writeLock is the advisory lock a migration of a PostgreSQL store holds
// for its transaction, and every writer shares: a writer waits for a
// migration, across processes too.
const writeLock = 0x7461_6c6c_7971 // "tallyq"

// recordLockClass is the first key of the transaction advisory locks a
// writer takes on its batch's identities, the second a hash of each:
// the rollup deltas of a record depend on its stored row and months, so
// two writers of one record take turns, while writers of different
// records write at once. With one lock on the whole store, four writers
// were no faster than one. Every writer takes its locks in ascending
// order, and its rollup rows and sites in key order, so that two writers
// never wait for each other in a circle.
const recordLockClass = 0x7461_6c6c // "tall"

// pgMaxRecordLocks is the most identities a batch locks one by one; a
// larger batch takes writeLock alone, as every writer did before. With
// pgLockingWriters, it bounds the advisory locks one process holds at
// 4,000: PostgreSQL's lock table has room for 64 per connection, 6,400
// with the default 100 connections, and a write that found it full would
// fail with "out of shared memory" (it is then retried alone).
const (
	pgMaxRecordLocks = 1000
	pgLockingWriters = 4
)

// pgStore is the scale-out store: PostgreSQL through a pgx pool. A write
// is a handful of set-based statements whatever the batch size.
type pgStore struct {
	reader
	pool *pgxpool.Pool
	// upsertRecord is the records upsert for the store's version, and
	// these the statements of cloud months and windows (keyed by the
	// record's rid from pgRidsVersion).
	upsertRecord, selectMonths, upsertMonth, upsertWindow string

	sites knownSites
	// lockers holds a slot per writer holding record locks.
	lockers chan struct{}
}

func openPostgres(ctx context.Context, dsn string, target int) (*pgStore, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors can quote the whole DSN, password included.
		return nil, errors.New("query: postgres store: cannot parse the URL")
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("query: postgres store: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("query: postgres store %s:%d: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, err)
	}
	s := &pgStore{pool: pool, lockers: make(chan struct{}, pgLockingWriters)}
	s.reader = reader{d: dialect{real: "DOUBLE PRECISION", dollar: true}, query: s.rows}
	if err := s.migrate(ctx, target); err != nil {
		pool.Close()
		return nil, err
	}
	v, err := s.SchemaVersion(ctx)
	if err != nil {
		pool.Close()
		return nil, err
	}
	s.derivedKeys, s.voWalks = v >= derivedKeysVersion, v >= pgVOListVersion
	s.upsertRecord = pgUpsertRecords(recordColumns)
	s.selectMonths, s.upsertMonth, s.upsertWindow = pgSelectMonths, pgUpsertMonth, pgUpsertWindow
	if v >= pgRidsVersion {
		s.selectMonths, s.upsertMonth, s.upsertWindow = pgSelectRidMonths, pgUpsertRidMonth, pgUpsertRidWindow
	}
	if s.derivedKeys {
		s.upsertRecord = pgUpsertRecords(append(slices.Clone(recordColumns), "key_derived"))
	}
	return s, nil
}

type pgRows struct{ pgx.Rows }

func (r pgRows) Close() { r.Rows.Close() }

func (s *pgStore) rows(ctx context.Context, q string, args ...any) (rows, error) {
	rs, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return pgRows{rs}, nil
}

func (s *pgStore) Close() error {
	s.pool.Close()
	return nil
}

// tx runs fn in a transaction holding the store's write lock.
func (s *pgStore) tx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, pgLockStore, int64(writeLock)); err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

func (s *pgStore) migrate(ctx context.Context, target int) error {
	d := s.reader.d
	var from int
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "CREATE TABLE IF NOT EXISTS tally_schema (version BIGINT NOT NULL)"); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, "SELECT version FROM tally_schema").Scan(&from)
		if errors.Is(err, pgx.ErrNoRows) {
			_, err = tx.Exec(ctx, "INSERT INTO tally_schema (version) VALUES (0)")
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("query: postgres store: schema version: %w", err)
	}
	return migrate(ctx, from, target, pgTypes, func(ctx context.Context, run func(execer) error) error {
		return s.tx(ctx, func(tx pgx.Tx) error {
			// Another process may have migrated while this one waited for
			// the lock: only step from the version really there.
			var now int
			if err := tx.QueryRow(ctx, "SELECT version FROM tally_schema").Scan(&now); err != nil {
				return err
			}
			if now != from {
				return nil
			}
			from++
			return run(func(ctx context.Context, q string, args ...any) error {
				_, err := tx.Exec(ctx, d.bind(q), args...)
				return err
			})
		})
	})
}

var (
	pgUpsertSites  = "INSERT INTO key_sites (site) SELECT * FROM unnest($1::text[]) ON CONFLICT DO NOTHING"
	pgUpsertWindow = "INSERT INTO record_windows (ident, window_from, window_to, extracted_at) " +
		"SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[]) " +
		"ON CONFLICT (ident, window_from, window_to) DO UPDATE SET extracted_at = excluded.extracted_at " +
		"WHERE excluded.extracted_at > record_windows.extracted_at"
	monthUnnest = unnestArgs(monthColumns, map[int]string{0: "text", 1: "text", 7: "text", 8: "text", 9: "text", 10: "text", 11: "text", 12: "text",
		13: "text", 14: "text", 15: "text", 17: "float8", 26: "float8"})
	pgUpsertMonth = "INSERT INTO cloud_months (" + strings.Join(monthColumns, ", ") + ") SELECT * FROM unnest(" + monthUnnest +
		") ON CONFLICT (site, vm_uuid, year, month) DO UPDATE SET " + upsertSet(monthColumns, "site", "vm_uuid", "year", "month")
	pgUpsertRollup = "INSERT INTO cloud_rollup (" + strings.Join(rollupColumns, ", ") + ") SELECT * FROM unnest(" +
		unnestArgs(rollupColumns, map[int]string{2: "text", 3: "text", 4: "text", 5: "text", 6: "text", 7: "text", 8: "text", 13: "float8"}) +
		")" + upsertRollupSet
	pgUpsertUsage = "INSERT INTO usage_rollup (" + strings.Join(usageColumns, ", ") + ") SELECT * FROM unnest(" +
		unnestArgs(usageColumns, map[int]string{3: "text", 4: "text", 5: "text", 6: "text", 7: "text", 8: "text", 9: "text", 12: "float8", 13: "float8"}) +
		")" + upsertUsageSet
	pgSelectMonths = "SELECT " + strings.Join(prefixed("m.", monthColumns), ", ") +
		" FROM cloud_months m JOIN unnest($1::text[], $2::text[]) AS k(site, vm) ON m.site = k.site AND m.vm_uuid = k.vm"
)

// The statements of pgRidsVersion: windows and months take the rid of
// their record, which the batch's records upsert, sent before them in the
// same transaction, has stored; their arguments are those of the
// statements before (pgUpsertWindow, pgUpsertMonth, pgSelectMonths).
var (
	pgUpsertRidWindow = "INSERT INTO record_windows (rid, window_from, window_to, extracted_at) " +
		"SELECT r.rid, u.window_from, u.window_to, u.extracted_at " +
		"FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[]) AS u(ident, window_from, window_to, extracted_at) " +
		"JOIN records r ON r.ident = u.ident " +
		"ON CONFLICT (rid, window_from, window_to) DO UPDATE SET extracted_at = excluded.extracted_at " +
		"WHERE excluded.extracted_at > record_windows.extracted_at"
	pgUpsertRidMonth = "INSERT INTO cloud_months (" + strings.Join(ridMonthColumns, ", ") + ") SELECT r.rid, " +
		strings.Join(prefixed("u.", monthColumns), ", ") + " FROM unnest(" + monthUnnest + ") AS u(" + strings.Join(monthColumns, ", ") + ")" +
		" JOIN records r ON r.ident = " + pgCloudIdent("u.site", "u.vm_uuid") +
		" ON CONFLICT (rid, year, month) DO UPDATE SET " + upsertSet(ridMonthColumns, "rid", "year", "month")
	pgSelectRidMonths = "SELECT " + strings.Join(prefixed("m.", monthColumns), ", ") +
		" FROM unnest($1::text[], $2::text[]) AS k(site, vm) JOIN records r ON r.ident = " + pgCloudIdent("k.site", "k.vm") +
		" JOIN cloud_months m ON m.rid = r.rid"
)

// pgRidsVersion is the schema version that keyed PostgreSQL's
// record_windows and cloud_months by the record's rid.
const pgRidsVersion = 9

// pgVOListVersion is the schema version that gave PostgreSQL's List one
// index, records_vo_list.
const pgVOListVersion = 10

// pgCloudIdent is cloudIdent in SQL.
func pgCloudIdent(site, vm string) string {
	return "'cloud' || chr(31) || " + site + " || chr(31) || " + vm
}

// pgUpsertRecords is the records upsert of cols: recordColumns, then
// key_derived from derivedKeysVersion.
func pgUpsertRecords(cols []string) string {
	return "INSERT INTO records (" + strings.Join(cols, ", ") + ") SELECT * FROM unnest(" +
		unnestArgs(cols, map[int]string{0: "text", 1: "text", 3: "text", 4: "text", 5: "text", 6: "text", 7: "text", 8: "text", 9: "text",
			20: "float8", 21: "float8", 22: "float8", 25: "bytea"}) +
		") ON CONFLICT (ident) DO UPDATE SET " + upsertSet(cols, "ident") +
		" WHERE excluded.extracted_at >= records.extracted_at"
}

// unnestArgs lists $n::type[] for each column; types not given are int8.
func unnestArgs(cols []string, types map[int]string) string {
	parts := make([]string, len(cols))
	for i := range cols {
		t, ok := types[i]
		if !ok {
			t = "int8"
		}
		parts[i] = fmt.Sprintf("$%d::%s[]", i+1, t)
	}
	return strings.Join(parts, ", ")
}

func prefixed(p string, cols []string) []string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = p + c
	}
	return out
}

// columns turns rows of values into one array per column, for unnest.
func columns(n int, rows [][]any) []any {
	cols := make([][]any, n)
	for i := range cols {
		cols[i] = make([]any, 0, len(rows))
	}
	for _, r := range rows {
		for i, v := range r {
			cols[i] = append(cols[i], v)
		}
	}
	out := make([]any, n)
	for i, c := range cols {
		out[i] = typedSlice(c)
	}
	return out
}

// typedSlice converts []any to the typed slice pgx encodes as an array.
func typedSlice(vals []any) any {
	if len(vals) == 0 {
		return []any{}
	}
	switch vals[0].(type) {
	case string:
		return convert[string](vals)
	case int64:
		return convert[int64](vals)
	case *int64:
		return convert[*int64](vals)
	case float64:
		return convert[float64](vals)
	case []byte:
		return convert[[]byte](vals)
	}
	return vals
}

func convert[T any](vals []any) []T {
	out := make([]T, len(vals))
	for i, v := range vals {
		out[i] = v.(T)
	}
	return out
}

// recordArrays is b.recs as one typed array per column of recordColumns,
// and of key_derived if derived: built directly, not through columns,
// because a batch's records are most of what a write sends.
func recordArrays(recs []attrs, derived bool) []any {
	n := len(recs)
	str := func(f func(a *attrs) string) []string {
		out := make([]string, n)
		for i := range recs {
			out[i] = f(&recs[i])
		}
		return out
	}
	num := func(f func(a *attrs) int64) []int64 {
		out := make([]int64, n)
		for i := range recs {
			out[i] = f(&recs[i])
		}
		return out
	}
	flt := func(f func(a *attrs) float64) []float64 {
		out := make([]float64, n)
		for i := range recs {
			out[i] = f(&recs[i])
		}
		return out
	}
	ends := make([]*int64, n)
	data := make([][]byte, n)
	for i := range recs {
		ends[i], data[i] = recs[i].end, recs[i].data
	}
	out := []any{
		str(func(a *attrs) string { return a.ident }), str(func(a *attrs) string { return a.key }),
		num(func(a *attrs) int64 { return int64(a.typ) }), str(func(a *attrs) string { return a.region }),
		str(func(a *attrs) string { return a.site }), str(func(a *attrs) string { return a.project }),
		str(func(a *attrs) string { return a.vo }), str(func(a *attrs) string { return a.localUser }),
		str(func(a *attrs) string { return a.globalUser }), str(func(a *attrs) string { return a.status }),
		num(func(a *attrs) int64 { return a.cpuCount }), num(func(a *attrs) int64 { return a.start }), ends,
		num(func(a *attrs) int64 { return a.year }), num(func(a *attrs) int64 { return a.month }),
		num(func(a *attrs) int64 { return a.extractedAt }), num(func(a *attrs) int64 { return a.windowFrom }),
		num(func(a *attrs) int64 { return a.windowTo }), num(func(a *attrs) int64 { return a.wall }),
		num(func(a *attrs) int64 { return a.cpu }), flt(func(a *attrs) float64 { return a.norm }),
		flt(func(a *attrs) float64 { return a.gpu }), flt(func(a *attrs) float64 { return a.gbSeconds }),
		num(func(a *attrs) int64 { return a.ipVersion }), num(func(a *attrs) int64 { return a.ipCount }), data,
	}
	if derived {
		out = append(out, num(func(a *attrs) int64 { return boolInt(a.keyDerived) }))
	}
	return out
}

func (s *pgStore) Write(ctx context.Context, recs []*tallyv1.Record) error {
	if len(recs) == 0 {
		return nil
	}
	b, err := planBatch(recs)
	if err != nil {
		return err
	}
	var sites []string
	if s.derivedKeys {
		sites = s.sites.missing(b)
	}
	keys := recordLockKeys(b)
	err = s.writeTx(ctx, b, sites, keys)
	if keys != nil && lockFailed(err) {
		// The server aborted the write on a lock: a deadlock (the order
		// writers lock in rules one out among them, not with a session
		// outside tally holding rows they need) or a full lock table.
		// The store's lock alone takes no record locks.
		err = s.writeTx(ctx, b, sites, nil)
	}
	if err != nil {
		return fmt.Errorf("query: write: %w", err)
	}
	s.sites.add(sites)
	return nil
}

// writeTx writes the batch in a transaction of its own, holding the
// locks of keys, or the store's write lock alone if keys is nil.
func (s *pgStore) writeTx(ctx context.Context, b *batch, sites []string, keys []int32) error {
	if keys != nil {
		select {
		case s.lockers <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		defer func() { <-s.lockers }()
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if err := s.write(ctx, tx.Conn(), b, sites, keys); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// recordLockKeys are the keys of the batch's record locks, ascending and
// each once, or nil for a batch too large to lock record by record. Two
// identities with one hash share a lock: their writers take turns.
func recordLockKeys(b *batch) []int32 {
	if len(b.recs) > pgMaxRecordLocks {
		return nil
	}
	keys := make([]int32, len(b.recs))
	h := fnv.New32a()
	for i := range b.recs {
		h.Reset()
		h.Write([]byte(b.recs[i].ident))
		keys[i] = int32(h.Sum32())
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// lockFailed says whether a write failed on a lock: a deadlock, or a
// full lock table ("out of shared memory").
func lockFailed(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "53200")
}

var (
	pgLockStore   = "SELECT pg_advisory_xact_lock($1::int8)"
	pgShareStore  = "SELECT pg_advisory_xact_lock_shared($1::int8)"
	pgLockRecords = "SELECT count(pg_advisory_xact_lock($1::int4, k)) FROM unnest($2::int4[]) AS k"
)

// pgChunk is how many records one upsert carries. Sent as one statement,
// a batch's records kept the server idle while the client encoded them
// and the client idle while the server stored them; in chunks on a
// pipeline, the server stores one while the client encodes the next.
const pgChunk = 250

var pgSelectStored = "SELECT " + strings.Join(storedColumns, ", ") + " FROM records WHERE ident = ANY($1::text[])"

// write writes the batch in the transaction on conn, as one pipeline:
// the reads of the stored rows the rollups depend on, then the records
// (which do not depend on them), and only then, computed while the
// server stores the records, the rollups and cloud months; and sites in
// key_sites.
func (s *pgStore) write(ctx context.Context, conn *pgx.Conn, b *batch, sites []string, keys []int32) error {
	ids := b.rolledIdents()
	sds := map[string]*pgconn.StatementDescription{}
	locks := []string{pgLockStore}
	if keys != nil {
		locks = []string{pgShareStore, pgLockRecords}
	}
	qs := append(slices.Clone(locks), s.selectMonths, pgSelectStored, s.upsertRecord, s.upsertWindow, pgUpsertUsage, s.upsertMonth, pgUpsertRollup)
	if len(sites) > 0 {
		qs = append(qs, pgUpsertSites)
	}
	for _, q := range qs {
		// Prepared once per connection: pgx keeps them by name.
		sd, err := conn.Prepare(ctx, q, q)
		if err != nil {
			return err
		}
		sds[q] = sd
	}
	tm := conn.TypeMap()
	p := conn.PgConn().StartPipeline(ctx)
	// Closing a pipeline with requests not yet synced closes the
	// connection; that happens only on an error, which the pool then
	// replaces.
	defer p.Close()
	pending := 0 // statements whose results are unread
	send := func(q string, args ...any) error {
		sd := sds[q]
		params := make([][]byte, len(args))
		for i, a := range args {
			v, err := tm.Encode(sd.ParamOIDs[i], pgtype.BinaryFormatCode, a, nil)
			if err != nil {
				return fmt.Errorf("%.40s...: parameter %d: %w", q, i+1, err)
			}
			params[i] = v
		}
		p.SendQueryStatement(sd, params, []int16{pgtype.BinaryFormatCode}, []int16{pgtype.BinaryFormatCode})
		pending++
		return p.Flush()
	}
	// read consumes the next result, each row decoded by row.
	read := func(row func(decode func(dst ...any) error) error) error {
		res, err := p.GetResults()
		if err != nil {
			return err
		}
		pending--
		rr, ok := res.(*pgconn.ResultReader)
		if !ok {
			return fmt.Errorf("pipeline: unexpected %T", res)
		}
		fields := rr.FieldDescriptions()
		decode := func(dst ...any) error {
			for i, v := range rr.Values() {
				if err := tm.Scan(fields[i].DataTypeOID, pgtype.BinaryFormatCode, v, dst[i]); err != nil {
					return fmt.Errorf("column %s: %w", fields[i].Name, err)
				}
			}
			return nil
		}
		for row != nil && rr.NextRow() {
			if err := row(decode); err != nil {
				rr.Close()
				return err
			}
		}
		_, err = rr.Close()
		return err
	}

	// The locks first, in the same round trip: the server runs the
	// reads after them.
	if keys == nil {
		if err := send(pgLockStore, int64(writeLock)); err != nil {
			return err
		}
	} else {
		if err := send(pgShareStore, int64(writeLock)); err != nil {
			return err
		}
		if err := send(pgLockRecords, int32(recordLockClass), keys); err != nil {
			return err
		}
	}
	if len(b.vms) > 0 {
		sites, vms := make([]string, len(b.vms)), make([]string, len(b.vms))
		for i, k := range b.vms {
			sites[i], vms[i] = k.site, k.vm
		}
		if err := send(s.selectMonths, sites, vms); err != nil {
			return err
		}
	}
	// The stored versions of records the usage rollup sums, to take them
	// out of it where the batch replaces them.
	if len(ids) > 0 {
		if err := send(pgSelectStored, ids); err != nil {
			return err
		}
	}
	// Without this the server holds the rows read until the pipeline's
	// sync, after every write.
	p.SendFlushRequest()
	for recs := b.recs; len(recs) > 0; {
		n := min(len(recs), pgChunk)
		if err := send(s.upsertRecord, recordArrays(recs[:n], s.derivedKeys)...); err != nil {
			return err
		}
		recs = recs[n:]
	}
	if len(sites) > 0 {
		if err := send(pgUpsertSites, sites); err != nil {
			return err
		}
	}
	winRows := make([][]any, len(b.windows))
	for i, a := range b.windows {
		winRows[i] = []any{a.ident, a.from, a.to, a.extractedAt}
	}
	// After the records: with rids, the windows and months read theirs.
	if err := send(s.upsertWindow, columns(4, winRows)...); err != nil {
		return err
	}

	for range locks {
		if err := read(nil); err != nil {
			return err
		}
	}
	stored := map[vmKey][]monthRow{}
	if len(b.vms) > 0 {
		err := read(func(decode func(...any) error) error {
			var m monthRow
			if err := decode(m.pointers()...); err != nil {
				return err
			}
			k := vmKey{m.site, m.vm}
			stored[k] = append(stored[k], m)
			return nil
		})
		if err != nil {
			return err
		}
	}
	prior := map[string]*attrs{}
	if len(ids) > 0 {
		err := read(func(decode func(...any) error) error {
			a := &attrs{}
			if err := decode(storedAttrs(a)...); err != nil {
				return err
			}
			prior[a.ident] = a
			return nil
		})
		if err != nil {
			return err
		}
	}
	if rows := b.usage(prior).rows(); len(rows) > 0 {
		if err := send(pgUpsertUsage, columns(len(usageColumns), rows)...); err != nil {
			return err
		}
	}
	if months, roll := b.months(stored); len(months) > 0 {
		monRows := make([][]any, len(months))
		for i := range months {
			monRows[i] = months[i].values()
		}
		if err := send(s.upsertMonth, columns(len(monthColumns), monRows)...); err != nil {
			return err
		}
		if rows := roll.rows(); len(rows) > 0 {
			if err := send(pgUpsertRollup, columns(len(rollupColumns), rows)...); err != nil {
				return err
			}
		}
	}
	if err := p.Sync(); err != nil {
		return err
	}
	for pending > 0 {
		if err := read(nil); err != nil {
			return err
		}
	}
	if res, err := p.GetResults(); err != nil {
		return err
	} else if _, ok := res.(*pgconn.PipelineSync); !ok {
		return fmt.Errorf("pipeline: unexpected %T at its end", res)
	}
	return p.Close()
}
