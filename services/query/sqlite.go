package query

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, pure Go

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

var sqliteTypes = strings.NewReplacer("{int}", "INTEGER", "{real}", "REAL", "{blob}", "BLOB", "{norowid}", " WITHOUT ROWID")

// sqliteStore is the embedded store: one SQLite file in WAL mode, so
// readers never wait for the writer.
type sqliteStore struct {
	reader
	db, wdb *sql.DB
	// SQLite has one writer at a time; taking turns here is cheaper than
	// retrying on SQLITE_BUSY.
	writeMu sync.Mutex
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
	db, err := sql.Open("sqlite", dsn)
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
	s := &sqliteStore{db: db, wdb: wdb}
	s.reader = reader{d: dialect{real: "REAL"}, query: s.rows}
	if err := s.migrate(ctx, target); err != nil {
		s.Close()
		return nil, fmt.Errorf("%w (store %s)", err, path)
	}
	return s, nil
}

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

func (s *sqliteStore) Close() error { return errors.Join(s.wdb.Close(), s.db.Close()) }

// sqliteChunk is how many rows one INSERT carries: statements, not
// rows, dominate the cost of an upsert through database/sql, and 64 rows
// of the widest table stay far below SQLite's 32766 parameters.
const sqliteChunk = 64

func upsertRecords(rows int) string {
	return "INSERT INTO records (" + strings.Join(recordColumns, ", ") + ") VALUES " + tuples(rows, len(recordColumns)) +
		" ON CONFLICT (ident) DO UPDATE SET " + upsertSet(recordColumns, "ident") +
		" WHERE excluded.extracted_at >= records.extracted_at"
}

func upsertWindows(rows int) string {
	return "INSERT INTO record_windows (ident, window_from, window_to, extracted_at) VALUES " + tuples(rows, 4) +
		" ON CONFLICT (ident, window_from, window_to) DO UPDATE SET extracted_at = excluded.extracted_at" +
		" WHERE excluded.extracted_at > record_windows.extracted_at"
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

func (s *sqliteStore) Write(ctx context.Context, recs []*tallyv1.Record) error {
	if len(recs) == 0 {
		return nil
	}
	b, err := planBatch(recs)
	if err != nil {
		return err
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	tx, err := s.wdb.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("query: write: %w", err)
	}
	defer tx.Rollback()
	if err := s.write(ctx, tx, b); err != nil {
		return fmt.Errorf("query: write: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("query: write: commit: %w", err)
	}
	return nil
}

// chunked runs the statement built by stmt over rows, sqliteChunk rows a
// statement; full chunks share one prepared statement.
func chunked(ctx context.Context, tx *sql.Tx, rows [][]any, stmt func(rows int) string) error {
	var full *sql.Stmt
	defer func() {
		if full != nil {
			full.Close()
		}
	}()
	for len(rows) > 0 {
		n := min(len(rows), sqliteChunk)
		args := make([]any, 0, n*len(rows[0]))
		for _, r := range rows[:n] {
			args = append(args, r...)
		}
		var err error
		if n == sqliteChunk {
			if full == nil {
				if full, err = tx.PrepareContext(ctx, stmt(n)); err != nil {
					return err
				}
			}
			_, err = full.ExecContext(ctx, args...)
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

func (s *sqliteStore) write(ctx context.Context, tx *sql.Tx, b *batch) error {
	stored := map[vmKey][]monthRow{}
	for vms := b.vms; len(vms) > 0; {
		n := min(len(vms), 1000)
		args := make([]any, 0, 2*n)
		for _, k := range vms[:n] {
			args = append(args, k.site, k.vm)
		}
		rs, err := tx.QueryContext(ctx, selectMonths(n), args...)
		if err != nil {
			return err
		}
		for rs.Next() {
			var m monthRow
			if err := rs.Scan(m.pointers()...); err != nil {
				rs.Close()
				return err
			}
			k := vmKey{m.site, m.vm}
			stored[k] = append(stored[k], m)
		}
		if err := errors.Join(rs.Err(), rs.Close()); err != nil {
			return err
		}
		vms = vms[n:]
	}
	// The stored versions of records the usage rollup sums, to take them
	// out of it where the batch replaces them.
	prior := map[string]*attrs{}
	for ids := b.rolledIdents(); len(ids) > 0; {
		n := min(len(ids), 1000)
		rs, err := tx.QueryContext(ctx, "SELECT "+strings.Join(storedColumns, ", ")+" FROM records WHERE ident IN ("+placeholders(n)+")", anys(ids[:n])...)
		if err != nil {
			return err
		}
		for rs.Next() {
			a := &attrs{}
			if err := rs.Scan(storedAttrs(a)...); err != nil {
				rs.Close()
				return err
			}
			prior[a.ident] = a
		}
		if err := errors.Join(rs.Err(), rs.Close()); err != nil {
			return err
		}
		ids = ids[n:]
	}
	rows := make([][]any, len(b.recs))
	for i := range b.recs {
		rows[i] = recordValues(&b.recs[i])
	}
	if err := chunked(ctx, tx, rows, upsertRecords); err != nil {
		return fmt.Errorf("records: %w", err)
	}
	if err := chunked(ctx, tx, b.usage(prior).rows(), upsertUsage); err != nil {
		return fmt.Errorf("usage_rollup: %w", err)
	}
	rows = rows[:0]
	for _, a := range b.windows {
		rows = append(rows, []any{a.ident, a.windowFrom, a.windowTo, a.extractedAt})
	}
	if err := chunked(ctx, tx, rows, upsertWindows); err != nil {
		return fmt.Errorf("record_windows: %w", err)
	}
	rows = rows[:0]
	months, roll := b.months(stored)
	for _, m := range months {
		rows = append(rows, m.values())
	}
	if err := chunked(ctx, tx, rows, upsertMonths); err != nil {
		return fmt.Errorf("cloud_months: %w", err)
	}
	if err := chunked(ctx, tx, roll.rows(), upsertRollup); err != nil {
		return fmt.Errorf("cloud_rollup: %w", err)
	}
	return nil
}
