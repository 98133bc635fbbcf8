package query

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, pure Go

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

var sqliteTypes = strings.NewReplacer("{int}", "INTEGER", "{real}", "REAL", "{blob}", "BLOB", "{norowid}", " WITHOUT ROWID", "{sqlite}", "")

// sqliteStore is the embedded store: one SQLite file in WAL mode, so
// readers never wait for the writer.
type sqliteStore struct {
	reader
	db, wdb *sql.DB
	// SQLite has one writer at a time; taking turns here is cheaper than
	// retrying on SQLITE_BUSY.
	writeMu sync.Mutex
	// stmts are the writer's prepared statements by SQL text: parsing
	// the multi-row upserts each batch was a twentieth of a write.
	stmts map[string]*sql.Stmt
	// seq is the last write's seq (writeMu), the insertion order the
	// bucket indexes append in; upsertRecords is the records upsert for
	// the store's version (seq is a column from version 6).
	seq           int64
	upsertRecords func(rows int) string
	// rids: windows and months are keyed by the record's rid (schema
	// version 7), and the statements that write them are these.
	rids          bool
	upsertWindows func(rows int) string
	upsertMonths  func(rows int) string
	// sites are those key_sites holds (schema version 8, derivedKeys).
	sites knownSites
	// hashed: records are found by identity through idents, not an
	// index in the file (schema version 11); tx holds what the open
	// transaction adds to it (writeMu).
	hashed bool
	idents *identIndex
	tx     txIdents
	// queue holds the batches waiting for a commit; leading: a writer is
	// committing them; enqueued counts batches ever queued (all qmu).
	qmu      sync.Mutex
	queue    []*queued
	leading  bool
	enqueued int
	// commits counts transactions (writeMu), checkpoint wakes the
	// checkpointer every checkpointEvery of them; stop ends it.
	commits          int
	checkpoint, stop chan struct{}
	stopOnce         sync.Once
	done             sync.WaitGroup
}

func openSQLite(ctx context.Context, path string, target, cacheMiB int) (*sqliteStore, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("query: sqlite store: %w", err)
	}
	q := url.Values{}
	for _, p := range pragmas {
		q.Add("_pragma", p)
	}
	// The page cache is per connection, outside the Go heap, and taken
	// only as pages are read: the indexes a batch touches stay in memory
	// instead of being reread from the file.
	q.Add("_pragma", fmt.Sprintf("cache_size(-%d)", cacheMiB*1024))
	q.Set("_txlock", "immediate")
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
	// Readers map the file: a page not in a connection's cache (every
	// page after another connection wrote) is then a memory read, not a
	// system call; Lists on a cold cache took a third to a half less.
	rdsn := dsn + "&" + url.Values{"_pragma": {fmt.Sprintf("mmap_size(%d)", readerMmap)}}.Encode()
	db, err := sql.Open("sqlite", rdsn)
	if err != nil {
		return nil, fmt.Errorf("query: sqlite store %s: %w", path, err)
	}
	// Writes go through one connection of their own: SQLite drops a
	// connection's page cache whenever another connection wrote, so a
	// writer that changed connections would reread its indexes each batch.
	wdb, err := sql.Open("sqlite", dsn)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("query: sqlite store %s: %w", path, err)
	}
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	wdb.SetConnMaxLifetime(0)
	wdb.SetConnMaxIdleTime(0)
	s := &sqliteStore{db: db, wdb: wdb, stmts: map[string]*sql.Stmt{}, checkpoint: make(chan struct{}, 1), stop: make(chan struct{})}
	s.reader = reader{d: dialect{real: "REAL"}, query: s.rows}
	s.done.Add(1)
	go s.checkpointer()
	// The writer checkpoints itself only if the checkpointer falls far
	// behind (the pragma is per connection, and wdb keeps its one).
	if _, err := wdb.ExecContext(ctx, "PRAGMA wal_autocheckpoint(65536)"); err != nil {
		s.Close()
		return nil, fmt.Errorf("query: sqlite store %s: %w", path, err)
	}
	if err := s.migrate(ctx, target); err != nil {
		s.Close()
		return nil, fmt.Errorf("%w (store %s)", err, path)
	}
	v, err := s.SchemaVersion(ctx)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("%w (store %s)", err, path)
	}
	s.buckets, s.rids, s.derivedKeys, s.hashed = v >= bucketsVersion, v >= ridsVersion, v >= derivedKeysVersion, v >= hashedVersion
	s.upsertRecords, s.upsertWindows, s.upsertMonths = upsertRecords(recordColumns, "ident"), upsertWindows, upsertMonths
	switch {
	case s.hashed:
		s.upsertRecords, s.upsertWindows, s.upsertMonths = upsertRecords(hashedColumns, "rid"), upsertRidWindows, upsertRidMonths
	case s.derivedKeys:
		s.upsertRecords, s.upsertWindows, s.upsertMonths = upsertRecords(derivedColumns, "ident"), upsertRidWindows, upsertRidMonths
	case s.rids:
		s.upsertRecords, s.upsertWindows, s.upsertMonths = upsertRecords(ridColumns, "ident"), upsertRidWindows, upsertRidMonths
	case s.buckets:
		s.upsertRecords = upsertRecords(seqColumns, "ident")
	}
	if s.hashed {
		s.idents = newIdentIndex()
		s.reader.identRids = s.readerRids
		if err := s.catchUp(ctx, s.db); err != nil {
			s.Close()
			return nil, fmt.Errorf("query: sqlite store %s: loading the identities: %w", path, err)
		}
	}
	// A store held at an older version (tests build those) lacks tables
	// the statements name; its writes prepare each time.
	if target < len(migrations) {
		return s, nil
	}
	if err := s.prepare(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("query: sqlite store %s: %w", path, err)
	}
	return s, nil
}

// checkpointEvery is how many commits the WAL gathers between
// checkpoints: a page written by several of them is copied into the
// database file once (checkpointing after every commit cost a tenth more
// CPU at a million records).
const checkpointEvery = 8

// checkpointer copies committed WAL frames into the database file, on a
// reader connection, while the writer goes on with the next batch: done by
// the committing writer (autocheckpoint) it was a tenth of a write's time.
// A PASSIVE checkpoint never blocks the writer or readers. The WAL starts
// over only at a write that finds every frame copied, and under a steady
// stream of batches one always commits while a checkpoint runs: the WAL
// then grows to the writer's autocheckpoint (65536 pages, 256 MiB) and
// the commit that crossed it, whose checkpoint copies the rest, and the
// file is reused from its start. So a busy store has about 256 MiB of WAL
// beside it (BenchmarkStore's walMiB: 257 to 276 after 100k records).
func (s *sqliteStore) checkpointer() {
	defer s.done.Done()
	for {
		select {
		case <-s.stop:
			return
		case <-s.checkpoint:
		}
		var busy, log, done int
		// An error (the store closing, a full disk) leaves the frames in
		// the WAL, where they are as durable; the next commit retries,
		// and the writer's autocheckpoint is the backstop.
		_ = s.db.QueryRowContext(context.Background(), "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &log, &done)
	}
}

// readerMmap is how much of the file a reader connection maps (SQLite
// caps it at 2 GiB); pages beyond are read as without it.
const readerMmap = 1 << 30

// pragmas configure every connection.
var pragmas = []string{
	"journal_mode(WAL)",
	// A batch is durable when Write returns, as the messenger contract
	// requires, even across a power cut.
	"synchronous(FULL)",
	"busy_timeout(10000)",
	// Statement journals (every multi-row upsert has one) in memory, not
	// in temporary files.
	"temp_store(MEMORY)",
	// Checkpoint every 64 MiB of WAL rather than every 4 MiB: a batch
	// dirties thousands of index pages, and the default would copy them
	// into the database file (and fsync it) after nearly every commit.
	// The writer's own connection raises it further: the checkpointer
	// does that work.
	"wal_autocheckpoint(16384)",
}

type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { r.Rows.Close() }

func (s *sqliteStore) rows(ctx context.Context, q string, args ...any) (rows, error) {
	rs, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rs}, nil
}

func (s *sqliteStore) migrate(ctx context.Context, target int) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if _, err := s.wdb.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS tally_schema (version INTEGER NOT NULL)"); err != nil {
		return fmt.Errorf("query: sqlite store: %w", err)
	}
	var v int
	err := s.wdb.QueryRowContext(ctx, "SELECT version FROM tally_schema").Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		_, err = s.wdb.ExecContext(ctx, "INSERT INTO tally_schema (version) VALUES (0)")
	}
	if err != nil {
		return fmt.Errorf("query: sqlite store: schema version: %w", err)
	}
	return migrate(ctx, v, target, sqliteTypes, func(ctx context.Context, run func(execer) error) error {
		tx, err := s.wdb.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if err := run(func(ctx context.Context, q string, args ...any) error {
			_, err := tx.ExecContext(ctx, q, args...)
			return err
		}); err != nil {
			return err
		}
		return tx.Commit()
	})
}

func (s *sqliteStore) Close() error {
	s.stopOnce.Do(func() { close(s.stop) })
	s.done.Wait()
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	var errs []error
	for _, st := range s.stmts {
		errs = append(errs, st.Close())
	}
	clear(s.stmts)
	return errors.Join(append(errs, s.wdb.Close(), s.db.Close())...)
}

// prepare readies the statements of full chunks on the writer
// connection, once: wdb has one connection, so it must be free of a
// transaction here, and transactions then reuse them (StmtContext).
func (s *sqliteStore) prepare(ctx context.Context) error {
	for _, f := range []func(int) string{s.upsertRecords, s.upsertWindows, s.upsertMonths, upsertRollup, upsertUsage} {
		q := f(sqliteChunk)
		st, err := s.wdb.PrepareContext(ctx, q)
		if err != nil {
			return err
		}
		s.stmts[q] = st
	}
	return nil
}

// maxStmts bounds the statements prepared for batches of other sizes
// (remainders, the reads), so odd sizes are parsed each time instead of
// held forever.
const maxStmts = 64

// warm prepares the statements the batch's reads and remainder chunks
// will use, before its transaction takes wdb's one connection. A failure
// only leaves a statement to be prepared in the transaction.
func (s *sqliteStore) warm(ctx context.Context, b *batch) {
	var qs []string
	if n := len(b.recs) % sqliteChunk; n > 0 {
		qs = append(qs, s.upsertRecords(n))
	}
	if n := len(b.windows) % sqliteChunk; n > 0 {
		qs = append(qs, s.upsertWindows(n))
	}
	if n := min(len(b.vms), 1000); n > 0 && !s.rids {
		qs = append(qs, selectMonths(n))
	}
	// The months read by rid are those of the VMs stored before, a
	// number known only in the transaction: that statement is parsed there.
	if n := min(len(b.recs), 1000); n > 0 && s.rids && !s.hashed {
		qs = append(qs, selectRids(n))
	}
	// From hashedVersion the reads go by rid, as many as are stored
	// before, again a number known only in the transaction.
	if n := min(len(b.rolledIdents()), 1000); n > 0 && !s.hashed {
		qs = append(qs, selectStored(n))
	}
	for _, q := range qs {
		if _, ok := s.stmts[q]; ok || len(s.stmts) >= maxStmts {
			continue
		}
		if st, err := s.wdb.PrepareContext(ctx, q); err == nil {
			s.stmts[q] = st
		}
	}
}

// cached is q's prepared statement for use in tx, nil if there is none.
func (s *sqliteStore) cached(ctx context.Context, tx *sql.Tx, q string) *sql.Stmt {
	if st, ok := s.stmts[q]; ok {
		// wdb has one connection, the transaction's, where st is prepared
		// already: StmtContext reuses it.
		return tx.StmtContext(ctx, st)
	}
	return nil
}

func (s *sqliteStore) query(ctx context.Context, tx *sql.Tx, q string, args ...any) (*sql.Rows, error) {
	if st := s.cached(ctx, tx, q); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return tx.QueryContext(ctx, q, args...)
}

func selectStored(n int) string {
	return "SELECT " + strings.Join(storedColumns, ", ") + " FROM records WHERE ident IN (" + placeholders(n) + ")"
}

// selectStoredRids reads the same by rid (from hashedVersion).
func selectStoredRids(n int) string {
	return "SELECT " + strings.Join(storedColumns, ", ") + " FROM records WHERE rid IN (" + placeholders(n) + ")"
}

// sqliteChunk is how many rows one INSERT carries: statements, not
// rows, dominate the cost of an upsert through database/sql, and 64 rows
// of the widest table stay far below SQLite's 32766 parameters.
const sqliteChunk = 64

// bucketsVersion is the schema version that gave SQLite's records seq
// and the bucket indexes List walks.
const bucketsVersion = 6

// seqColumns are the columns of SQLite's records from bucketsVersion.
var seqColumns = append(slices.Clone(recordColumns), "seq")

// ridsVersion is the schema version that keyed SQLite's record_windows
// and cloud_months by the record's rid.
const ridsVersion = 7

// ridColumns are the columns of SQLite's records from ridsVersion.
var ridColumns = append(slices.Clone(seqColumns), "rid")

// derivedKeysVersion is the schema version that gave records
// key_derived, and left derived keys out of the key index.
const derivedKeysVersion = 8

// derivedColumns are the columns of SQLite's records from
// derivedKeysVersion.
var derivedColumns = append(slices.Clone(ridColumns), "key_derived")

// hashedVersion is the schema version that numbered SQLite's records
// by rid (its rowid) and keeps their identities' hashes instead of an
// index of identities (identIndex).
const hashedVersion = 11

// hashedColumns are the columns of SQLite's records from hashedVersion.
var hashedColumns = append(slices.Clone(derivedColumns), "ident_h")

// upsertRecords builds the records upsert of cols, on a conflict of key
// (the identity, or from hashedVersion the rid). An update keeps the
// row's seq: its bucket index entries stay where they are unless their
// columns change.
func upsertRecords(cols []string, key string) func(rows int) string {
	return func(rows int) string {
		return "INSERT INTO records (" + strings.Join(cols, ", ") + ") VALUES " + tuples(rows, len(cols)) +
			" ON CONFLICT (" + key + ") DO UPDATE SET " + upsertSet(cols, "ident", "seq", "rid", "ident_h") +
			" WHERE excluded.extracted_at >= records.extracted_at"
	}
}

func upsertWindows(rows int) string {
	return "INSERT INTO record_windows (ident, window_from, window_to, extracted_at) VALUES " + tuples(rows, 4) +
		" ON CONFLICT (ident, window_from, window_to) DO UPDATE SET extracted_at = excluded.extracted_at" +
		" WHERE excluded.extracted_at > record_windows.extracted_at"
}

func upsertRidWindows(rows int) string {
	return "INSERT INTO record_windows (rid, window_from, window_to, extracted_at) VALUES " + tuples(rows, 4) +
		" ON CONFLICT (rid, window_from, window_to) DO UPDATE SET extracted_at = excluded.extracted_at" +
		" WHERE excluded.extracted_at > record_windows.extracted_at"
}

var ridMonthColumns = append([]string{"rid"}, monthColumns...)

func upsertRidMonths(rows int) string {
	return "INSERT INTO cloud_months (" + strings.Join(ridMonthColumns, ", ") + ") VALUES " + tuples(rows, len(ridMonthColumns)) +
		" ON CONFLICT (rid, year, month) DO UPDATE SET " + upsertSet(ridMonthColumns, "rid", "year", "month")
}

// selectIdents reads the identities of stored records by rid.
func selectIdents(n int) string {
	return "SELECT ident, rid FROM records WHERE rid IN (" + placeholders(n) + ")"
}

// identRids scans the rows of selectIdents and selectRids into add.
func identRids(add func(ident string, rid int64)) func(rs *sql.Rows) error {
	return func(rs *sql.Rows) error {
		var ident string
		var rid int64
		if err := rs.Scan(&ident, &rid); err != nil {
			return err
		}
		add(ident, rid)
		return nil
	}
}

// selectRids reads the rids of stored records by identity.
func selectRids(n int) string {
	return "SELECT ident, rid FROM records WHERE ident IN (" + placeholders(n) + ")"
}

func selectRidMonths(n int) string {
	return "SELECT " + strings.Join(monthColumns, ", ") + " FROM cloud_months WHERE rid IN (" + placeholders(n) + ")"
}

func upsertMonths(rows int) string {
	return "INSERT INTO cloud_months (" + strings.Join(monthColumns, ", ") + ") VALUES " + tuples(rows, len(monthColumns)) +
		" ON CONFLICT (site, vm_uuid, year, month) DO UPDATE SET " + upsertSet(monthColumns, "site", "vm_uuid", "year", "month")
}

func upsertRollup(rows int) string {
	return "INSERT INTO cloud_rollup (" + strings.Join(rollupColumns, ", ") + ") VALUES " + tuples(rows, len(rollupColumns)) + upsertRollupSet
}

func upsertUsage(rows int) string {
	return "INSERT INTO usage_rollup (" + strings.Join(usageColumns, ", ") + ") VALUES " + tuples(rows, len(usageColumns)) + upsertUsageSet
}

func selectMonths(vms int) string {
	return "SELECT " + strings.Join(monthColumns, ", ") + " FROM cloud_months WHERE (site, vm_uuid) IN (VALUES " + tuples(vms, 2) + ")"
}

func placeholders(n int) string { return strings.TrimSuffix(strings.Repeat("?, ", n), ", ") }

// tuples is "(?, ?), (?, ?)" for rows rows of n values.
func tuples(rows, n int) string {
	one := "(" + placeholders(n) + ")"
	return strings.TrimSuffix(strings.Repeat(one+", ", rows), ", ")
}

// Write stores a batch; the batches of concurrent Writes are committed
// together (commitGroup).
func (s *sqliteStore) Write(ctx context.Context, recs []*tallyv1.Record) error {
	if len(recs) == 0 {
		return nil
	}
	b, err := planBatch(recs)
	if err != nil {
		return err
	}
	q := &queued{b: b, done: make(chan groupResult, 1)}
	s.qmu.Lock()
	s.queue = append(s.queue, q)
	s.enqueued++
	lead := !s.leading
	s.leading = true
	s.qmu.Unlock()
	if !lead {
		// A batch once queued is committed whatever becomes of ctx:
		// its writer waits for the commit, which is soon.
		if r := <-q.done; !r.lead {
			return r.err
		}
	}
	// This writer commits the queue's groups until its own batch is
	// done, then hands the lead to the next writer waiting.
	for {
		s.qmu.Lock()
		n := min(len(s.queue), maxGroup)
		group := slices.Clone(s.queue[:n])
		s.queue = slices.Delete(s.queue, 0, n)
		s.qmu.Unlock()
		s.commitGroup(context.WithoutCancel(ctx), group)
		select {
		case r := <-q.done:
			s.qmu.Lock()
			if len(s.queue) > 0 {
				s.queue[0].done <- groupResult{lead: true}
			} else {
				s.leading = false
			}
			s.qmu.Unlock()
			return r.err
		default: // more batches were ahead of this one
		}
	}
}

// maxGroup is the most batches one transaction commits. Every commit
// writes each page its batches dirtied to the WAL and syncs it: batches
// committed together write a page they share once (the rollups', the
// last page of each appending index), and sync once.
const maxGroup = 8

// queued is a batch waiting for its group's commit. done receives its
// result; or, while its writer waits, the lead: it commits the next
// groups.
type queued struct {
	b    *batch
	done chan groupResult
}

type groupResult struct {
	err  error
	lead bool
}

// commitGroup commits the batches of group in one transaction and
// answers each. If that fails, it commits each batch alone, so that a
// batch the store refuses fails only its own Write.
func (s *sqliteStore) commitGroup(ctx context.Context, group []*queued) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	err := s.commit(ctx, group)
	if err != nil && len(group) > 1 {
		for _, q := range group {
			q.done <- groupResult{err: s.commit(ctx, []*queued{q})}
		}
		return
	}
	for _, q := range group {
		q.done <- groupResult{err: err}
	}
}

// commit writes the batches of group in one transaction (writeMu held).
func (s *sqliteStore) commit(ctx context.Context, group []*queued) error {
	bs := make([]*batch, len(group))
	for i, q := range group {
		s.warm(ctx, q.b)
		bs[i] = q.b
	}
	var sites []string
	if s.derivedKeys {
		sites = s.sites.missing(bs...)
	}
	tx, err := s.wdb.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("query: write: %w", err)
	}
	defer tx.Rollback()
	if s.hashed {
		// The transaction holds the write lock: rows another process
		// wrote since are all there is to catch up on, and no one else
		// takes a rid until it ends.
		if err := s.catchUp(ctx, tx); err != nil {
			return fmt.Errorf("query: write: %w", err)
		}
		s.idents.mu.RLock()
		s.tx = txIdents{last: s.idents.last}
		s.idents.mu.RUnlock()
	}
	for _, q := range group {
		// A clock set back only costs appends, never order: seq orders
		// no read.
		s.seq = max(s.seq+1, time.Now().UnixMicro())
		if err := s.write(ctx, tx, q.b); err != nil {
			return fmt.Errorf("query: write: %w", err)
		}
	}
	if len(sites) > 0 {
		q := "INSERT INTO key_sites (site) VALUES " + tuples(len(sites), 1) + " ON CONFLICT DO NOTHING"
		if _, err := tx.ExecContext(ctx, q, anys(sites)...); err != nil {
			return fmt.Errorf("query: write: key_sites: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("query: write: commit: %w", err)
	}
	if s.hashed {
		s.idents.publish(s.tx.rows)
	}
	s.sites.add(sites)
	if s.commits++; s.commits%checkpointEvery == 0 {
		select {
		case s.checkpoint <- struct{}{}:
		default: // one is pending already
		}
	}
	return nil
}

// chunked runs the statement built by stmt over rows, sqliteChunk rows a
// statement; full chunks use the statement prepare readied.
func (s *sqliteStore) chunked(ctx context.Context, tx *sql.Tx, rows [][]any, stmt func(rows int) string) error {
	for len(rows) > 0 {
		n := min(len(rows), sqliteChunk)
		args := make([]any, 0, n*len(rows[0]))
		for _, r := range rows[:n] {
			args = append(args, r...)
		}
		var err error
		if st := s.cached(ctx, tx, stmt(n)); st != nil {
			_, err = st.ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, stmt(n), args...)
		}
		if err != nil {
			return err
		}
		rows = rows[n:]
	}
	return nil
}

// scanAll runs q and calls row for each of its rows.
func (s *sqliteStore) scanAll(ctx context.Context, tx *sql.Tx, q string, args []any, row func(rs *sql.Rows) error) error {
	rs, err := s.query(ctx, tx, q, args...)
	if err != nil {
		return err
	}
	for rs.Next() {
		if err := row(rs); err != nil {
			rs.Close()
			return err
		}
	}
	return errors.Join(rs.Err(), rs.Close())
}

// scanIn runs the query stmt builds for n keys over args, keys of per
// values each, at most 1000 keys a statement, and calls row for each row.
func (s *sqliteStore) scanIn(ctx context.Context, tx *sql.Tx, args []any, per int, stmt func(n int) string, row func(rs *sql.Rows) error) error {
	for len(args) > 0 {
		n := min(len(args)/per, 1000)
		if err := s.scanAll(ctx, tx, stmt(n), args[:n*per], row); err != nil {
			return err
		}
		args = args[n*per:]
	}
	return nil
}

// txIdents are the records an open transaction numbered (writeMu):
// later batches of its group find them here, and its commit publishes
// them to the identIndex.
type txIdents struct {
	rows   []identRow
	byHash map[int64][]int64
	// last is the greatest rid taken, stored or in the transaction.
	last int64
}

// catchUp brings the identIndex up to the rows db (or tx) sees.
func (s *sqliteStore) catchUp(ctx context.Context, db interface {
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
}) error {
	return s.idents.catchUp(ctx, func(ctx context.Context) (int64, error) {
		var top int64
		err := db.QueryRowContext(ctx, "SELECT COALESCE(MAX(rid), 0) FROM records").Scan(&top)
		return top, err
	}, func(ctx context.Context, after int64, add func(h, rid int64)) error {
		// records_hashes is in rid order: the rows after a rid are a
		// run at its end, read without the rows themselves.
		rs, err := db.QueryContext(ctx, "SELECT ident_h, rid FROM records INDEXED BY records_hashes WHERE rid > ?", after)
		if err != nil {
			return err
		}
		for rs.Next() {
			var h, rid int64
			if err := rs.Scan(&h, &rid); err != nil {
				rs.Close()
				return err
			}
			add(h, rid)
		}
		return errors.Join(rs.Err(), rs.Close())
	})
}

// readerRids is the reader's lookup of stored records by identity: the
// rids whose hash matches one of ids (the query then compares the
// identities), after catching up on rows another process wrote (one
// seek to the greatest rid, when there are none).
func (s *sqliteStore) readerRids(ctx context.Context, ids []string) ([]int64, error) {
	if err := s.catchUp(ctx, s.db); err != nil {
		return nil, err
	}
	var out []int64
	for _, id := range ids {
		out = s.idents.lookup(out, identHash(id))
	}
	return out, nil
}

// hashedRids is ridsOf from hashedVersion: a record's rid is that of the
// stored row (or one the transaction numbered) whose hash and identity
// are its own.
func (s *sqliteStore) hashedRids(ctx context.Context, tx *sql.Tx, b *batch) (map[string]int64, int64, error) {
	rids := make(map[string]int64, len(b.recs))
	hashes := make([]int64, len(b.recs))
	// The candidates of record i are cands[ends[i-1]:ends[i]].
	var cands []int64
	ends := make([]int, len(b.recs))
	for i := range b.recs {
		hashes[i] = identHash(b.recs[i].ident)
		cands = append(s.idents.lookup(cands, hashes[i]), s.tx.byHash[hashes[i]]...)
		ends[i] = len(cands)
	}
	// A hash names rows of any identity that shares it: the rows' own
	// identities say which is the record's.
	identOf := make(map[int64]string, len(cands))
	err := s.scanIn(ctx, tx, anys(cands), 1, selectIdents, identRids(func(ident string, rid int64) { identOf[rid] = ident }))
	if err != nil {
		return nil, 0, err
	}
	before := s.tx.last
	for i := range b.recs {
		ident, h := b.recs[i].ident, hashes[i]
		from := 0
		if i > 0 {
			from = ends[i-1]
		}
		found := false
		for _, rid := range cands[from:ends[i]] {
			if identOf[rid] == ident {
				rids[ident], found = rid, true
				break
			}
		}
		if found {
			continue
		}
		s.tx.last++
		rids[ident] = s.tx.last
		s.tx.rows = append(s.tx.rows, identRow{h, s.tx.last})
		if s.tx.byHash == nil {
			s.tx.byHash = map[int64][]int64{}
		}
		s.tx.byHash[h] = append(s.tx.byHash[h], s.tx.last)
	}
	return rids, before, nil
}

// ridsOf returns the rid of each of the batch's records: the stored one,
// or, for a record not stored yet, one after the greatest so far; and
// the greatest before the batch.
func (s *sqliteStore) ridsOf(ctx context.Context, tx *sql.Tx, b *batch) (map[string]int64, int64, error) {
	if s.hashed {
		return s.hashedRids(ctx, tx, b)
	}
	rids := make(map[string]int64, len(b.recs))
	args := make([]any, len(b.recs))
	for i := range b.recs {
		args[i] = b.recs[i].ident
	}
	err := s.scanIn(ctx, tx, args, 1, selectRids, identRids(func(ident string, rid int64) { rids[ident] = rid }))
	if err != nil {
		return nil, 0, err
	}
	// The transaction holds the write lock: no other writer takes these.
	var last int64
	if err := tx.QueryRowContext(ctx, "SELECT COALESCE(MAX(rid), 0) FROM records").Scan(&last); err != nil {
		return nil, 0, err
	}
	before := last
	for i := range b.recs {
		if _, ok := rids[b.recs[i].ident]; !ok {
			last++
			rids[b.recs[i].ident] = last
		}
	}
	return rids, before, nil
}

func boolInt(v bool) int64 {
	if v {
		return 1
	}
	return 0
}

func cloudIdent(k vmKey) string { return "cloud" + sep + k.site + sep + k.vm }

// storedMonths reads the stored months of the batch's VMs.
func (s *sqliteStore) storedMonths(ctx context.Context, tx *sql.Tx, b *batch, rids map[string]int64, before int64) (map[vmKey][]monthRow, error) {
	stored := map[vmKey][]monthRow{}
	row := func(rs *sql.Rows) error {
		var m monthRow
		if err := rs.Scan(m.pointers()...); err != nil {
			return err
		}
		k := vmKey{m.site, m.vm}
		stored[k] = append(stored[k], m)
		return nil
	}
	if s.rids {
		// Only VMs stored before have months.
		var args []any
		for _, k := range b.vms {
			if rid := rids[cloudIdent(k)]; rid <= before {
				args = append(args, rid)
			}
		}
		return stored, s.scanIn(ctx, tx, args, 1, selectRidMonths, row)
	}
	args := make([]any, 0, 2*len(b.vms))
	for _, k := range b.vms {
		args = append(args, k.site, k.vm)
	}
	return stored, s.scanIn(ctx, tx, args, 2, selectMonths, row)
}

func (s *sqliteStore) write(ctx context.Context, tx *sql.Tx, b *batch) error {
	var rids map[string]int64
	var before int64
	if s.rids {
		var err error
		if rids, before, err = s.ridsOf(ctx, tx, b); err != nil {
			return err
		}
	}
	stored, err := s.storedMonths(ctx, tx, b, rids, before)
	if err != nil {
		return err
	}
	// The stored versions of records the usage rollup sums, to take them
	// out of it where the batch replaces them.
	prior := map[string]*attrs{}
	keys, stmt := anys(b.rolledIdents()), selectStored
	if s.hashed {
		keys, stmt = nil, selectStoredRids
		for _, id := range b.rolledIdents() {
			if rid := rids[id]; rid <= before {
				keys = append(keys, rid)
			}
		}
	}
	err = s.scanIn(ctx, tx, keys, 1, stmt, func(rs *sql.Rows) error {
		a := &attrs{}
		if err := rs.Scan(storedAttrs(a)...); err != nil {
			return err
		}
		prior[a.ident] = a
		return nil
	})
	if err != nil {
		return err
	}
	rows := make([][]any, len(b.recs))
	for i := range b.recs {
		rows[i] = recordValues(&b.recs[i])
		if s.buckets {
			rows[i] = append(rows[i], s.seq)
		}
		if s.rids {
			rows[i] = append(rows[i], rids[b.recs[i].ident])
		}
		if s.derivedKeys {
			rows[i] = append(rows[i], boolInt(b.recs[i].keyDerived))
		}
		if s.hashed {
			rows[i] = append(rows[i], identHash(b.recs[i].ident))
		}
	}
	if err := s.chunked(ctx, tx, rows, s.upsertRecords); err != nil {
		return fmt.Errorf("records: %w", err)
	}
	if err := s.chunked(ctx, tx, b.usage(prior).rows(), upsertUsage); err != nil {
		return fmt.Errorf("usage_rollup: %w", err)
	}
	rows = rows[:0]
	for _, a := range b.windows {
		var key any = a.ident
		if s.rids {
			key = rids[a.ident]
		}
		rows = append(rows, []any{key, a.from, a.to, a.extractedAt})
	}
	if err := s.chunked(ctx, tx, rows, s.upsertWindows); err != nil {
		return fmt.Errorf("record_windows: %w", err)
	}
	rows = rows[:0]
	months, roll := b.months(stored)
	for _, m := range months {
		if s.rids {
			rows = append(rows, append([]any{rids[cloudIdent(vmKey{m.site, m.vm})]}, m.values()...))
		} else {
			rows = append(rows, m.values())
		}
	}
	if err := s.chunked(ctx, tx, rows, s.upsertMonths); err != nil {
		return fmt.Errorf("cloud_months: %w", err)
	}
	if err := s.chunked(ctx, tx, roll.rows(), upsertRollup); err != nil {
		return fmt.Errorf("cloud_rollup: %w", err)
	}
	return nil
}
