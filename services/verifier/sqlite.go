package verifier

import (
	"cmp"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // the pure-Go driver "sqlite": no cgo in tally's images
)

// SQLiteStore is the Store in one SQLite file. Times are unix microseconds,
// 0 for none.
//
// Every write goes through one committer goroutine that puts the writes
// waiting at that moment into one transaction (group commit): SQLite has one
// writer anyway, and a commit per notification capped ingest at about a
// thousand a second. Each caller still waits for its own commit, so the bus
// message is acked only once its effect is durable.
type SQLiteStore struct {
	db *sql.DB
	// wconn is the committer's own connection. SQLite drops a
	// connection's whole page cache when another one wrote since its last
	// transaction, so a committer taking whichever pooled connection was
	// free (often one a reader had just used) began a write with a cold
	// cache, and read every page of a large store's indexes again.
	wconn *sql.Conn
	// cconn is the checkpointer's connection, and ckpt tells it that a
	// commit grew the WAL (see checkpointer).
	cconn *sql.Conn
	ckpt  chan struct{}
	// walFrames is the WAL's length in frames at the last checkpoint;
	// restartFrames and ckptPause are restartAfter and checkpointPause
	// but in tests.
	walFrames     atomic.Int64
	restartFrames int64
	ckptPause     time.Duration
	// iids are the instances' numbers; newIIDs those the current group
	// transaction numbered (see instanceIDs).
	iids    *instanceIDs
	newIIDs txIIDs
	ops     chan writeOp
	quit    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
}

type writeOp struct {
	ctx  context.Context
	fn   func(context.Context, *sql.Tx) error
	done chan error
}

// maxGroup bounds the writes committed together.
const maxGroup = 512

var errClosed = errors.New("verifier store is closed")

// DefaultCacheMiB is store.cache_mib's default.
const DefaultCacheMiB = 64

// OpenSQLite opens (creating) the database at path, with a page cache of
// cacheMiB per connection (0: SQLite's default).
func OpenSQLite(ctx context.Context, path string, cacheMiB int) (*SQLiteStore, error) {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("store directory: %w", err)
		}
	}
	// A plain file name, not a file: URI, so that '#' or '%' in the path
	// are not read as URI syntax (a '#' cut the name short: two stores
	// shared one file). modernc splits its parameters at the first '?'.
	if strings.Contains(path, "?") {
		return nil, fmt.Errorf("store path %q: '?' is not allowed in a SQLite path", path)
	}
	// synchronous(FULL): in WAL mode, NORMAL survives a crash of the
	// process but may lose the last commits on power loss, and the bus
	// message of a lost commit is already acked, so its notification would
	// be gone for good. FULL fsyncs the WAL at every commit; batches and
	// the group commit below make that one fsync per hundreds of
	// notifications, not one each.
	// wal_autocheckpoint(0): the checkpointer copies the WAL, not the
	// commits (see checkpointer).
	dsn := path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)&_pragma=wal_autocheckpoint(0)"
	if cacheMiB > 0 {
		dsn += fmt.Sprintf("&_pragma=cache_size(-%d)", cacheMiB<<10) // negative: KiB
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// Readers run beside the committer (WAL); writes are all the
	// committer's, so read-modify-write merges need no locking and hit no
	// SQLITE_BUSY. Two of the five are the committer's (wconn) and the
	// checkpointer's (cconn).
	db.SetMaxOpenConns(5)
	if err := migrateSQLite(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	iids := newInstanceIDs()
	if err := iids.catchUp(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	wconn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	cconn, err := db.Conn(ctx)
	if err != nil {
		wconn.Close()
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	s := &SQLiteStore{db: db, wconn: wconn, cconn: cconn, iids: iids, ckpt: make(chan struct{}, 1), restartFrames: restartAfter, ckptPause: checkpointPause, ops: make(chan writeOp), quit: make(chan struct{})}
	s.wg.Go(s.committer)
	s.wg.Go(s.checkpointer)
	return s, nil
}

// Close implements Store: it stops the committer, then closes the database.
func (s *SQLiteStore) Close() error {
	s.once.Do(func() { close(s.quit) })
	s.wg.Wait()
	return errors.Join(s.wconn.Close(), s.cconn.Close(), s.db.Close())
}

// checkpoint runs a passive checkpoint on conn: busy when another
// checkpoint ran, the WAL's frames and those copied to the database.
func checkpoint(ctx context.Context, conn *sql.Conn) (busy bool, frames, copied int64, err error) {
	err = conn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &frames, &copied)
	return busy, frames, copied, err
}

// restartAfter is the WAL's length in frames (a page each, 4 KiB) past
// which the committer checkpoints too (see restartWAL).
const restartAfter = 4096

// restartWAL lets the WAL start again from its beginning. SQLite writes a
// transaction's pages at the WAL's start, rather than at its end, only
// when every frame was copied before the transaction began; the
// checkpointer copies them while the committer writes more, so that is
// never so by itself. Past restartFrames, the committer checkpoints after
// its commit: the few frames the checkpointer has not copied yet.
func (s *SQLiteStore) restartWAL(ctx context.Context) {
	if s.walFrames.Load() < s.restartFrames {
		return
	}
	if busy, frames, copied, err := checkpoint(ctx, s.wconn); err == nil && !busy && frames == copied {
		s.walFrames.Store(0)
	}
}

// checkpointPause is the least time between two checkpoints.
const checkpointPause = 200 * time.Millisecond

// checkpointer copies the WAL's committed pages back into the database
// file, on its own connection, after commits: SQLite's automatic
// checkpoint runs inside the commit that crosses its threshold, so the
// committer, the one goroutine every write waits for, spent a tenth of
// its time copying pages. A passive checkpoint takes no lock the
// committer needs, and the pause between two lets one copy serve the
// many commits that rewrote a page meanwhile.
func (s *SQLiteStore) checkpointer() {
	ctx := context.Background()
	for {
		select {
		case <-s.ckpt:
		case <-s.quit:
			return
		}
		// An error here (the file's disk full) shows at the commits too;
		// the WAL only grows until a checkpoint succeeds.
		if _, frames, _, err := checkpoint(ctx, s.cconn); err == nil {
			s.walFrames.Store(frames)
		}
		select {
		case <-time.After(s.ckptPause):
		case <-s.quit:
			return
		}
	}
}

// write runs fn in the next group transaction and waits for its commit.
func (s *SQLiteStore) write(ctx context.Context, fn func(context.Context, *sql.Tx) error) error {
	op := writeOp{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case s.ops <- op:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.quit:
		return errClosed
	}
	// Once handed over, the op is committed or fails: wait for which, so
	// that a caller never acks a write that was not made.
	return <-op.done
}

func (s *SQLiteStore) committer() {
	for {
		var group []writeOp
		select {
		case op := <-s.ops:
			group = append(group, op)
		case <-s.quit:
			return
		}
	gather:
		for len(group) < maxGroup {
			select {
			case op := <-s.ops:
				group = append(group, op)
			default:
				break gather
			}
		}
		s.commit(group)
	}
}

// commit runs a group in one transaction. Each op runs in a savepoint, so
// a failing op (a batch of many writes) is undone whole and fails only
// itself; a failed commit fails them all.
func (s *SQLiteStore) commit(group []writeOp) {
	ctx := context.Background()
	errs := make([]error, len(group))
	tx, err := s.wconn.BeginTx(ctx, nil)
	if errors.Is(err, driver.ErrBadConn) {
		// Not seen with a local file, but a broken connection must not
		// fail every later write: take a new one.
		if c, cerr := s.db.Conn(ctx); cerr == nil {
			_ = s.wconn.Close()
			s.wconn = c
			tx, err = c.BeginTx(ctx, nil)
		}
	}
	if err == nil {
		// Instances another process numbered since: before any op, so
		// that the transaction's rows are all committed ones.
		s.newIIDs = txIIDs{of: map[string]int64{}}
		if err = s.iids.catchUp(ctx, tx); err != nil {
			err = fmt.Errorf("%w: %v", errTxBroken, err)
		}
	}
	if err == nil {
		for i, op := range group {
			if errs[i] = op.ctx.Err(); errs[i] == nil {
				errs[i] = s.runOp(op, tx)
			}
			if errors.Is(errs[i], errTxBroken) {
				err = errs[i]
				break
			}
		}
		if err != nil {
			_ = tx.Rollback()
		} else if err = tx.Commit(); err != nil {
			err = fmt.Errorf("commit: %w", err)
		}
	} else {
		err = fmt.Errorf("begin: %w", err)
	}
	if err == nil {
		s.iids.put(s.newIIDs.added)
		s.restartWAL(ctx)
		select {
		case s.ckpt <- struct{}{}:
		default:
		}
	}
	for i, op := range group {
		if err != nil {
			errs[i] = err
		}
		op.done <- errs[i]
	}
}

// errTxBroken: a savepoint could not be rolled back, so the
// transaction may hold half an op; it must not commit.
var errTxBroken = errors.New("group transaction broken")

func (s *SQLiteStore) runOp(op writeOp, tx *sql.Tx) error {
	ctx := context.WithoutCancel(op.ctx)
	if _, err := tx.ExecContext(ctx, "SAVEPOINT op"); err != nil {
		return fmt.Errorf("%w: savepoint: %v", errTxBroken, err)
	}
	mark := len(s.newIIDs.added)
	err := op.fn(ctx, tx)
	if err != nil {
		if _, rerr := tx.ExecContext(ctx, "ROLLBACK TO op"); rerr != nil {
			return fmt.Errorf("%w: %v (rollback: %v)", errTxBroken, err, rerr)
		}
		s.newIIDs.undo(mark)
	}
	if _, rerr := tx.ExecContext(ctx, "RELEASE op"); rerr != nil {
		return fmt.Errorf("%w: release savepoint: %v", errTxBroken, rerr)
	}
	return err
}

func micro(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func fromMicro(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMicro(v).UTC()
}

func sec(t time.Time) int64 { return t.Unix() }

const usageCols = `instance, launched_at, tenant, instance_type_id, instance_flavor_id, flavor_name,
	os_architecture, os_distro, os_version, rax_options, image_type, updated`

type scanner interface{ Scan(...any) error }

func scanUsage(r scanner) (InstanceUsage, error) {
	var u InstanceUsage
	var launched, updated int64
	err := r.Scan(&u.Instance, &launched, &u.Tenant, &u.InstanceTypeID, &u.InstanceFlavorID, &u.FlavorName,
		&u.OSArchitecture, &u.OSDistro, &u.OSVersion, &u.RaxOptions, &u.ImageType, &updated)
	u.LaunchedAt, u.Updated = fromMicro(launched), fromMicro(updated)
	return u, err
}

// exec runs one statement in the next group transaction.
func (s *SQLiteStore) exec(ctx context.Context, query string, args ...any) error {
	return s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, query, args...)
		return err
	})
}

// Launches implements Store.
func (s *SQLiteStore) Launches(ctx context.Context, instance string) ([]InstanceUsage, error) {
	iid, ok, err := s.iidOf(ctx, instance)
	if err != nil || !ok {
		return nil, wrapErr("launches of "+instance, err)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+usageCols+` FROM instance_usage WHERE iid = ? ORDER BY launched_sec`, iid)
	if err != nil {
		return nil, fmt.Errorf("launches of %s: %w", instance, err)
	}
	defer rows.Close()
	var out []InstanceUsage
	for rows.Next() {
		u, err := scanUsage(rows)
		if err != nil {
			return nil, fmt.Errorf("launches of %s: %w", instance, err)
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// Deletes implements Store.
func (s *SQLiteStore) Deletes(ctx context.Context, instance string) ([]InstanceDelete, error) {
	iid, ok, err := s.iidOf(ctx, instance)
	if err != nil || !ok {
		return nil, wrapErr("deletes of "+instance, err)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT launched_at, deleted_at FROM instance_deletes WHERE iid = ?
		ORDER BY launched_sec`, iid)
	if err != nil {
		return nil, fmt.Errorf("deletes of %s: %w", instance, err)
	}
	defer rows.Close()
	var out []InstanceDelete
	for rows.Next() {
		var l, d int64
		if err := rows.Scan(&l, &d); err != nil {
			return nil, fmt.Errorf("deletes of %s: %w", instance, err)
		}
		out = append(out, InstanceDelete{Instance: instance, LaunchedAt: fromMicro(l), DeletedAt: fromMicro(d)})
	}
	return out, rows.Err()
}

// LaunchesOf implements Store.
func (s *SQLiteStore) LaunchesOf(ctx context.Context, instances []string) (map[string][]InstanceUsage, error) {
	iids, err := s.iidsOf(ctx, instances)
	if err != nil {
		return nil, fmt.Errorf("launches: %w", err)
	}
	us, err := queryRows(ctx, s, `SELECT `+usageCols+` FROM instance_usage
		WHERE iid IN (SELECT value FROM json_each(?)) ORDER BY iid, launched_sec`, scanUsage, iids)
	if err != nil {
		return nil, fmt.Errorf("launches: %w", err)
	}
	out := make(map[string][]InstanceUsage, len(instances))
	for _, u := range us {
		out[u.Instance] = append(out[u.Instance], u)
	}
	return out, nil
}

// DeletesOf implements Store.
func (s *SQLiteStore) DeletesOf(ctx context.Context, instances []string) (map[string][]InstanceDelete, error) {
	iids, err := s.iidsOf(ctx, instances)
	if err != nil {
		return nil, fmt.Errorf("deletes: %w", err)
	}
	ds, err := queryRows(ctx, s, `SELECT instance, launched_at, deleted_at FROM instance_deletes
		WHERE iid IN (SELECT value FROM json_each(?)) ORDER BY iid, launched_sec`, scanDelete, iids)
	if err != nil {
		return nil, fmt.Errorf("deletes: %w", err)
	}
	out := make(map[string][]InstanceDelete, len(instances))
	for _, d := range ds {
		out[d.Instance] = append(out[d.Instance], d)
	}
	return out, nil
}

// iidsOf is the numbers of those of instances that are known, committed,
// as one parameter for json_each: the statement is the same whatever the
// list's length.
func (s *SQLiteStore) iidsOf(ctx context.Context, instances []string) (string, error) {
	iids := make([]int64, 0, len(instances))
	for _, id := range instances {
		iid, ok, err := s.iidOf(ctx, id)
		if err != nil {
			return "", err
		}
		if ok {
			iids = append(iids, iid)
		}
	}
	b, err := json.Marshal(iids)
	return string(b), err
}

const (
	// sqliteExistsCols are an exists' columns, the body read where it is
	// (see existsRaw).
	sqliteExistsCols = existsColsButRaw + existsRaw
	existsColsButRaw = `id, msg_key, message_id, event_type, versioned, instance, launched_at, deleted_at, audit_begin, audit_end,
	tenant, instance_type_id, instance_flavor_id, flavor_name, os_architecture, os_distro, os_version, rax_options,
	image_type, bandwidth, invalid, received, status, fail_field, fail_expected, fail_actual, fail_reason, routing_key, `
)

// existsRaw reads an exists' notification body. Since the body (a
// kilobyte or more) moved to instance_exists_raw, the rows claimed and
// finished by every verification pass are a fifth of their former size:
// SQLite rewrites a whole row to change its status, body included, twice
// per exists. Rows written before keep their body in instance_exists.raw.
// PostgreSQL's store reads it the same way from its version 6 on.
const existsRaw = `COALESCE(raw, (SELECT r.raw FROM instance_exists_raw r WHERE r.id = instance_exists.id))`

func scanFailure(field, expected, actual, reason sql.NullString) *Failure {
	if !reason.Valid {
		return nil
	}
	return &Failure{Field: field.String, Expected: expected.String, Actual: actual.String, Reason: reason.String}
}

func scanExists(r scanner) (InstanceExists, error) {
	var e InstanceExists
	var launched, deleted, begin, end, received int64
	var ff, fe, fa, fr sql.NullString
	err := r.Scan(&e.ID, &e.Key, &e.MessageID, &e.EventType, &e.Versioned, &e.Usage.Instance, &launched, &deleted, &begin, &end,
		&e.Usage.Tenant, &e.Usage.InstanceTypeID, &e.Usage.InstanceFlavorID, &e.Usage.FlavorName, &e.Usage.OSArchitecture,
		&e.Usage.OSDistro, &e.Usage.OSVersion, &e.Usage.RaxOptions, &e.Usage.ImageType, &e.Bandwidth, &e.Invalid,
		&received, &e.Status, &ff, &fe, &fa, &fr, &e.RoutingKey, &e.Raw)
	e.Usage.LaunchedAt, e.DeletedAt, e.AuditBegin, e.AuditEnd, e.Received =
		fromMicro(launched), fromMicro(deleted), fromMicro(begin), fromMicro(end), fromMicro(received)
	e.Failure = scanFailure(ff, fe, fa, fr)
	return e, err
}

func collectRows[T any](rows *sql.Rows, scan func(scanner) (T, error)) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// The claims, oldest audit periods first, each after the last one of the
// pass: see ClaimInstanceExists. %[1]s is the body's column, %[2]s the
// position: the rest of the cursor's audit period, then the periods after
// it: SQLite searches a row value ((audit_end, id) > (?, ?)) on its first
// column only, so one such claim would read past every exists of its
// period claimed before (after an outage, a whole backlog shares one
// period), quadratic again.
const (
	sqliteClaimExists = `SELECT ` + existsColsButRaw + `%[1]s FROM instance_exists INDEXED BY instance_exists_waiting
		WHERE status = 'pending' AND audit_end <= ? AND %[2]s ORDER BY audit_end, id LIMIT ?`
	sqliteClaimImageExists = `SELECT ` + imageExistsColsButRaw + `%[1]s FROM image_exists INDEXED BY image_exists_waiting
		WHERE status = 'pending' AND audit_end <= ? AND %[2]s ORDER BY audit_end, id LIMIT ?`
	claimSamePeriod  = `audit_end = ? AND id > ?`
	claimLaterPeriod = `audit_end > ?`
)

// claimRows runs a claim's two parts (see sqliteClaimExists) until it has
// c.Limit rows, reading the body only if asked.
func claimRows[T any](ctx context.Context, s *SQLiteStore, query, raw string, c Claim, scan func(scanner) (T, error)) ([]T, error) {
	if !c.Raw {
		raw = "NULL"
	}
	end := micro(c.After.AuditEnd)
	out, err := queryRows(ctx, s, fmt.Sprintf(query, raw, claimSamePeriod), scan, micro(c.EndingMax), end, c.After.ID, c.Limit)
	if err != nil || len(out) == c.Limit {
		return out, err
	}
	rest, err := queryRows(ctx, s, fmt.Sprintf(query, raw, claimLaterPeriod), scan, micro(c.EndingMax), end, c.Limit-len(out))
	return append(out, rest...), err
}

// queryRows runs a query of the verification pass on the committer's
// connection, as an op of the next group transaction. SQLite drops a
// connection's page cache when another one committed since its last
// transaction, so on a pooled connection the pass's claims and reads,
// each after the commit of the last batch's outcomes, found a cold cache
// every time and read the indexes' pages again: at a million
// notifications a pass verified 16,000 exists a second this way against
// 28,000 on the committer's connection.
func queryRows[T any](ctx context.Context, s *SQLiteStore, q string, scan func(scanner) (T, error), args ...any) ([]T, error) {
	var out []T
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		out, err = collectRows(rows, scan)
		return err
	})
	return out, err
}

// ClaimInstanceExists implements Store. A SQLite store has one verifier,
// whose passes take turns, so a claim only reads: marking the rows
// verifying rewrote each exists once more, the dearest part of a pass. An
// exists claimed and never finished (a crash) is simply still pending.
// The claim walks the index of the pending exists in (audit_end, id)
// order from the pass's cursor, so it reads only the rows it takes:
// ordered by id alone, it sorted every settled exists at each claim, or
// walked past every one not settled yet, quadratic in a backlog either
// way. The index holds the pending exists alone (a finished one leaves
// it), so it stays the size of the backlog, not of the history.
func (s *SQLiteStore) ClaimInstanceExists(ctx context.Context, c Claim) ([]InstanceExists, error) {
	out, err := claimRows(ctx, s, sqliteClaimExists, existsRaw, c, scanExists)
	if err != nil {
		return nil, fmt.Errorf("claim exists: %w", err)
	}
	slices.SortFunc(out, func(a, b InstanceExists) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

func failArgs(f *Failure) []any {
	if f == nil {
		return []any{nil, nil, nil, nil}
	}
	reason := f.Reason
	if len(reason) > 1000 {
		reason = reason[:1000]
	}
	return []any{f.Field, f.Expected, f.Actual, reason}
}

// FinishInstanceExistsBatch implements Store.
func (s *SQLiteStore) FinishInstanceExistsBatch(ctx context.Context, fs []Finished) error {
	return s.finish(ctx, "instance_exists", fs)
}

func (s *SQLiteStore) finish(ctx context.Context, table string, fs []Finished) error {
	if len(fs) == 0 {
		return nil
	}
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx, `UPDATE `+table+` SET status = ?, fail_field = ?, fail_expected = ?,
			fail_actual = ?, fail_reason = ? WHERE id = ?`)
		if err != nil {
			return err
		}
		defer st.Close()
		for _, f := range fs {
			args := append(append([]any{f.Status}, failArgs(f.Failure)...), f.ID)
			if _, err := st.ExecContext(ctx, args...); err != nil {
				return fmt.Errorf("%d: %w", f.ID, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("finish %s: %w", table, err)
	}
	return nil
}

// filterSQL is f's WHERE clause; uuidMatch matches f.UUID, with uuidArg
// for its "?".
func filterSQL(f ExistsFilter, uuidMatch string, uuidArg any) (string, []any) {
	var where []string
	var args []any
	if f.Status != "" {
		where, args = append(where, "status = ?"), append(args, f.Status)
	}
	if f.UUID != "" {
		where, args = append(where, uuidMatch), append(args, uuidArg)
	}
	if len(where) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(where, " AND "), args
}

// InstanceExistsList implements Store.
func (s *SQLiteStore) InstanceExistsList(ctx context.Context, f ExistsFilter) ([]InstanceExists, error) {
	var iid int64 // 0, no instance's, when the UUID is unknown
	if f.UUID != "" {
		var err error
		if iid, _, err = s.iidOf(ctx, f.UUID); err != nil {
			return nil, fmt.Errorf("list exists: %w", err)
		}
	}
	where, args := filterSQL(f, "iid = ?", iid)
	rows, err := s.db.QueryContext(ctx, `SELECT `+sqliteExistsCols+` FROM instance_exists`+where+` ORDER BY id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list exists: %w", err)
	}
	return collectRows(rows, scanExists)
}

const imageCols = `uuid, owner, size, has_size, created_at, updated`

func scanImage(r scanner) (ImageUsage, error) {
	var u ImageUsage
	var created, updated int64
	err := r.Scan(&u.UUID, &u.Owner, &u.Size, &u.HasSize, &created, &updated)
	u.CreatedAt, u.Updated = fromMicro(created), fromMicro(updated)
	return u, err
}

// ImageUsage implements Store; nil when the image is unknown.
func (s *SQLiteStore) ImageUsage(ctx context.Context, uuid string) (*ImageUsage, error) {
	u, err := scanImage(s.db.QueryRowContext(ctx, `SELECT `+imageCols+` FROM image_usage WHERE uuid = ?`, uuid))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", uuid, err)
	}
	return &u, nil
}

// ImageDeletes implements Store.
func (s *SQLiteStore) ImageDeletes(ctx context.Context, uuid string) ([]ImageDelete, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT uuid, deleted_at FROM image_deletes WHERE uuid = ?`, uuid)
	if err != nil {
		return nil, fmt.Errorf("image deletes %s: %w", uuid, err)
	}
	return collectRows(rows, func(r scanner) (ImageDelete, error) {
		var d ImageDelete
		var at int64
		err := r.Scan(&d.UUID, &at)
		d.DeletedAt = fromMicro(at)
		return d, err
	})
}

const (
	imageExistsCols       = imageExistsColsButRaw + `raw`
	imageExistsColsButRaw = `id, msg_key, message_id, uuid, owner, size, has_size, created_at, deleted_at, audit_begin, audit_end,
	received, status, fail_field, fail_expected, fail_actual, fail_reason, routing_key, `
)

func scanImageExists(r scanner) (ImageExists, error) {
	var e ImageExists
	var created, deleted, begin, end, received int64
	var ff, fe, fa, fr sql.NullString
	err := r.Scan(&e.ID, &e.Key, &e.MessageID, &e.Image.UUID, &e.Image.Owner, &e.Image.Size, &e.Image.HasSize, &created, &deleted,
		&begin, &end, &received, &e.Status, &ff, &fe, &fa, &fr, &e.RoutingKey, &e.Raw)
	e.Image.CreatedAt, e.DeletedAt, e.AuditBegin, e.AuditEnd, e.Received =
		fromMicro(created), fromMicro(deleted), fromMicro(begin), fromMicro(end), fromMicro(received)
	e.Failure = scanFailure(ff, fe, fa, fr)
	return e, err
}

// ClaimImageExists implements Store, as ClaimInstanceExists.
func (s *SQLiteStore) ClaimImageExists(ctx context.Context, c Claim) ([]ImageExists, error) {
	out, err := claimRows(ctx, s, sqliteClaimImageExists, "raw", c, scanImageExists)
	if err != nil {
		return nil, fmt.Errorf("claim image exists: %w", err)
	}
	slices.SortFunc(out, func(a, b ImageExists) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// FinishImageExistsBatch implements Store.
func (s *SQLiteStore) FinishImageExistsBatch(ctx context.Context, fs []Finished) error {
	return s.finish(ctx, "image_exists", fs)
}

// ImageExistsList implements Store.
func (s *SQLiteStore) ImageExistsList(ctx context.Context, f ExistsFilter) ([]ImageExists, error) {
	where, args := filterSQL(f, "uuid = ?", f.UUID)
	rows, err := s.db.QueryContext(ctx, `SELECT `+imageExistsCols+` FROM image_exists`+where+` ORDER BY id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list image exists: %w", err)
	}
	return collectRows(rows, scanImageExists)
}

// ResetVerifying implements Store.
func (s *SQLiteStore) ResetVerifying(ctx context.Context) (int, error) {
	n := 0
	for _, table := range []string{"instance_exists", "image_exists"} {
		err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
			res, err := tx.ExecContext(ctx, `UPDATE `+table+` SET status = ? WHERE status = ?`, StatusPending, StatusVerifying)
			if err != nil {
				return err
			}
			c, _ := res.RowsAffected()
			n += int(c)
			return nil
		})
		if err != nil {
			return n, fmt.Errorf("reset %s: %w", table, err)
		}
	}
	return n, nil
}

// AllLaunches implements Store.
func (s *SQLiteStore) AllLaunches(ctx context.Context) ([]InstanceUsage, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+usageCols+` FROM instance_usage ORDER BY instance, launched_sec`)
	if err != nil {
		return nil, fmt.Errorf("launches: %w", err)
	}
	return collectRows(rows, scanUsage)
}

// AllDeletes implements Store.
func (s *SQLiteStore) AllDeletes(ctx context.Context) ([]InstanceDelete, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT instance, launched_at, deleted_at FROM instance_deletes ORDER BY instance, launched_sec`)
	if err != nil {
		return nil, fmt.Errorf("deletes: %w", err)
	}
	return collectRows(rows, func(r scanner) (InstanceDelete, error) {
		var d InstanceDelete
		var l, at int64
		err := r.Scan(&d.Instance, &l, &at)
		d.LaunchedAt, d.DeletedAt = fromMicro(l), fromMicro(at)
		return d, err
	})
}

// AllImages implements Store.
func (s *SQLiteStore) AllImages(ctx context.Context) ([]ImageUsage, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+imageCols+` FROM image_usage ORDER BY uuid`)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	return collectRows(rows, scanImage)
}

// CountExists implements Store.
func (s *SQLiteStore) CountExists(ctx context.Context) (instances, images map[Status]int, err error) {
	count := func(table string) (map[Status]int, error) {
		rows, err := s.db.QueryContext(ctx, `SELECT status, COUNT(*) FROM `+table+` GROUP BY status`)
		if err != nil {
			return nil, fmt.Errorf("count %s: %w", table, err)
		}
		out := map[Status]int{}
		_, err = collectRows(rows, func(r scanner) (struct{}, error) {
			var st Status
			var n int
			err := r.Scan(&st, &n)
			out[st] = n
			return struct{}{}, err
		})
		return out, err
	}
	if instances, err = count("instance_exists"); err != nil {
		return nil, nil, err
	}
	images, err = count("image_exists")
	return instances, images, err
}

var _ Store = (*SQLiteStore)(nil)

// The statements of ApplyBatch, prepared once per batch.
const (
	sqliteInsertIID    = `INSERT INTO instances (uuid) VALUES (?)`
	sqliteSelectLaunch = `SELECT ` + usageCols + ` FROM instance_usage WHERE iid = ? AND launched_sec = ?`
	sqliteUpsertLaunch = `INSERT OR REPLACE INTO instance_usage (iid, launched_sec, ` + usageCols + `)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	sqliteInsertDelete = `INSERT OR IGNORE INTO instance_deletes (iid, launched_sec, instance, launched_at, deleted_at)
		VALUES (?, ?, ?, ?, ?)`
	sqliteInsertExists = `INSERT OR IGNORE INTO instance_exists (msg_key, message_id, event_type, versioned, instance,
		launched_at, deleted_at, audit_begin, audit_end, tenant, instance_type_id, instance_flavor_id, flavor_name,
		os_architecture, os_distro, os_version, rax_options, image_type, bandwidth, invalid, received, status, routing_key, iid)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	sqliteInsertExistsRaw   = `INSERT INTO instance_exists_raw (id, raw) VALUES (?, ?)`
	sqliteSelectImage       = `SELECT ` + imageCols + ` FROM image_usage WHERE uuid = ?`
	sqliteUpsertImage       = `INSERT OR REPLACE INTO image_usage (` + imageCols + `) VALUES (?, ?, ?, ?, ?, ?)`
	sqliteInsertImageDelete = `INSERT OR IGNORE INTO image_deletes (uuid, deleted_at) VALUES (?, ?)`
	sqliteInsertImageExists = `INSERT OR IGNORE INTO image_exists (msg_key, message_id, uuid, owner, size, has_size,
		created_at, deleted_at, audit_begin, audit_end, received, status, routing_key, raw)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
)

// ApplyBatch implements Store: one op of the group commit, in its own
// savepoint, each statement prepared once for the whole batch.
func (s *SQLiteStore) ApplyBatch(ctx context.Context, b *Batch) error {
	if err := b.check(); err != nil {
		return err
	}
	if b.Len() == 0 {
		return nil
	}
	return s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		// each runs query once per item of a slice with one prepared statement.
		each := func(what, query string, n int, args func(i int) []any) error {
			if n == 0 {
				return nil
			}
			st, err := tx.PrepareContext(ctx, query)
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			defer st.Close()
			for i := range n {
				if _, err := st.ExecContext(ctx, args(i)...); err != nil {
					return fmt.Errorf("%s: %w", what, err)
				}
			}
			return nil
		}
		iids, err := s.instanceNumbers(ctx, tx, b)
		if err != nil {
			return fmt.Errorf("number instances: %w", err)
		}
		if len(b.Usage) > 0 {
			keys := launchKeys(b.Usage)
			old := make(map[launchKey]InstanceUsage, len(keys))
			// An instance numbered by this batch has no launch stored.
			stored := slices.DeleteFunc(slices.Clone(keys), func(k launchKey) bool { return iids.added[k.instance] })
			if err := lookup(ctx, tx, sqliteSelectLaunch, stored, func(k launchKey) []any { return []any{iids.of[k.instance], k.sec} }, scanUsage,
				func(k launchKey, u InstanceUsage) { old[k] = u }); err != nil {
				return fmt.Errorf("read launches: %w", err)
			}
			launches := foldUsage(b.Usage, keys, old)
			if err := each("write launch", sqliteUpsertLaunch, len(launches), func(i int) []any {
				u := launches[i]
				return []any{iids.of[u.Instance], sec(u.LaunchedAt), u.Instance, micro(u.LaunchedAt), u.Tenant, u.InstanceTypeID,
					u.InstanceFlavorID, u.FlavorName, u.OSArchitecture, u.OSDistro, u.OSVersion, u.RaxOptions, u.ImageType, micro(u.Updated)}
			}); err != nil {
				return err
			}
		}
		if err := each("add delete", sqliteInsertDelete, len(b.Deletes), func(i int) []any {
			d := b.Deletes[i]
			return []any{iids.of[d.Instance], sec(d.LaunchedAt), d.Instance, micro(d.LaunchedAt), micro(d.DeletedAt)}
		}); err != nil {
			return err
		}
		if err := s.insertExists(ctx, tx, b.Exists, iids.of); err != nil {
			return fmt.Errorf("add exists: %w", err)
		}
		if len(b.ImageUsage) > 0 {
			keys := imageKeys(b.ImageUsage)
			old := make(map[string]ImageUsage, len(keys))
			if err := lookup(ctx, tx, sqliteSelectImage, keys, func(k string) []any { return []any{k} }, scanImage,
				func(k string, u ImageUsage) { old[k] = u }); err != nil {
				return fmt.Errorf("read images: %w", err)
			}
			images := foldImages(b.ImageUsage, keys, old)
			if err := each("write image", sqliteUpsertImage, len(images), func(i int) []any {
				u := images[i]
				return []any{u.UUID, u.Owner, u.Size, u.HasSize, micro(u.CreatedAt), micro(u.Updated)}
			}); err != nil {
				return err
			}
		}
		if err := each("add image delete", sqliteInsertImageDelete, len(b.ImageDeletes), func(i int) []any {
			d := b.ImageDeletes[i]
			return []any{d.UUID, micro(d.DeletedAt)}
		}); err != nil {
			return err
		}
		return each("add image exists", sqliteInsertImageExists, len(b.ImageExists), func(i int) []any { return imageExistsArgs(b.ImageExists[i]) })
	})
}

// insertExists adds the exists not stored yet, each body beside its row
// (see existsRaw).
func (s *SQLiteStore) insertExists(ctx context.Context, tx *sql.Tx, es []InstanceExists, iids map[string]int64) error {
	if len(es) == 0 {
		return nil
	}
	ins, err := tx.PrepareContext(ctx, sqliteInsertExists)
	if err != nil {
		return err
	}
	defer ins.Close()
	raw, err := tx.PrepareContext(ctx, sqliteInsertExistsRaw)
	if err != nil {
		return err
	}
	defer raw.Close()
	for _, e := range es {
		args := existsArgs(e)
		args[len(args)-1] = iids[e.Usage.Instance] // the body goes beside the row
		res, err := ins.ExecContext(ctx, args...)
		if err != nil {
			return err
		}
		// Exec, not a query with RETURNING: the driver's result rows cost
		// more than the insert.
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			continue // stored before: a redelivery
		}
		id, err := res.LastInsertId()
		if err != nil {
			return err
		}
		if e.Raw != nil {
			if _, err := raw.ExecContext(ctx, id, e.Raw); err != nil {
				return err
			}
		}
	}
	return nil
}

// lookup reads the stored row of each key, if any, with one prepared
// statement.
func lookup[K, V any](ctx context.Context, tx *sql.Tx, query string, keys []K, args func(K) []any, scan func(scanner) (V, error), found func(K, V)) error {
	st, err := tx.PrepareContext(ctx, query)
	if err != nil {
		return err
	}
	defer st.Close()
	for _, k := range keys {
		v, err := scan(st.QueryRowContext(ctx, args(k)...))
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return err
		default:
			found(k, v)
		}
	}
	return nil
}

// existsArgs and imageExistsArgs are the values of an exists' insert, the
// same for both stores.
func existsArgs(e InstanceExists) []any {
	u := e.Usage
	return []any{e.Key, e.MessageID, e.EventType, e.Versioned, u.Instance, micro(u.LaunchedAt), micro(e.DeletedAt), micro(e.AuditBegin),
		micro(e.AuditEnd), u.Tenant, u.InstanceTypeID, u.InstanceFlavorID, u.FlavorName, u.OSArchitecture, u.OSDistro,
		u.OSVersion, u.RaxOptions, u.ImageType, e.Bandwidth, e.Invalid, micro(e.Received), string(StatusPending), e.RoutingKey, e.Raw}
}

func imageExistsArgs(e ImageExists) []any {
	return []any{e.Key, e.MessageID, e.Image.UUID, e.Image.Owner, e.Image.Size, e.Image.HasSize, micro(e.Image.CreatedAt),
		micro(e.DeletedAt), micro(e.AuditBegin), micro(e.AuditEnd), micro(e.Received), string(StatusPending), e.RoutingKey, e.Raw}
}
