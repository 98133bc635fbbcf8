package verifier

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// sqliteMigrations bring a SQLite store's tables from version i to i+1
// (the report tables have their own, in sqlite_reports.go). Released steps
// are never edited, only appended to.
var sqliteMigrations = []func(context.Context, sqlConn) error{
	func(ctx context.Context, c sqlConn) error {
		_, err := c.ExecContext(ctx, schemaV1)
		return err
	},
	numberInstances,
	// Version 3: the instances' UUIDs leave their index for memory (see
	// instanceIDs); the table keeps them, in the order they were numbered.
	func(ctx context.Context, c sqlConn) error {
		_, err := c.ExecContext(ctx, `
CREATE TABLE instances_v3 (iid INTEGER PRIMARY KEY, uuid TEXT NOT NULL);
INSERT INTO instances_v3 (iid, uuid) SELECT iid, uuid FROM instances ORDER BY iid;
DROP TABLE instances;
ALTER TABLE instances_v3 RENAME TO instances;`)
		return err
	},
}

// sqlConn is what a migration step runs on: one connection, inside the
// step's transaction.
type sqlConn interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// errStoreTooNew is returned for a store written by a newer tally.
var errStoreTooNew = errors.New("verifier: the store is newer than this tally")

// migrateSQLite brings the store to the last version, one step per
// transaction: a failed step leaves the store at the version before it,
// with every row it had. A store is upgraded, never recreated.
func migrateSQLite(ctx context.Context, db *sql.DB) error {
	c, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS verifier_schema (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("schema version: %w", err)
	}
	for {
		done, err := migrateStep(ctx, c)
		if err != nil || done {
			return err
		}
	}
}

func migrateStep(ctx context.Context, c *sql.Conn) (done bool, err error) {
	// IMMEDIATE: a second process opening the store at the same moment
	// waits here (busy_timeout), then finds the step made.
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return false, fmt.Errorf("schema version: %w", err)
	}
	defer func() {
		if err != nil || done {
			_, _ = c.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
		}
	}()
	var v int
	err = c.QueryRowContext(ctx, `SELECT version FROM verifier_schema`).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		_, err = c.ExecContext(ctx, `INSERT INTO verifier_schema (version) VALUES (0)`)
	}
	if err != nil {
		return false, fmt.Errorf("schema version: %w", err)
	}
	switch {
	case v > len(sqliteMigrations):
		return false, fmt.Errorf("%w: it is at version %d, this tally knows up to %d", errStoreTooNew, v, len(sqliteMigrations))
	case v == len(sqliteMigrations):
		return true, nil
	}
	if err := sqliteMigrations[v](ctx, c); err != nil {
		return false, fmt.Errorf("upgrade the store to version %d: %w", v+1, err)
	}
	if _, err := c.ExecContext(ctx, `UPDATE verifier_schema SET version = ?`, v+1); err != nil {
		return false, fmt.Errorf("upgrade the store to version %d: %w", v+1, err)
	}
	if _, err := c.ExecContext(ctx, "COMMIT"); err != nil {
		return false, fmt.Errorf("upgrade the store to version %d: commit: %w", v+1, err)
	}
	return false, nil
}

// schemaV1 is the store as tally created it before the store had a
// version (sqliteMigrations' first step): every statement is IF [NOT]
// EXISTS, so that such a store comes through it unchanged.
const schemaV1 = `
CREATE TABLE IF NOT EXISTS instance_usage (
	instance TEXT NOT NULL, launched_sec INTEGER NOT NULL, launched_at INTEGER NOT NULL,
	tenant TEXT NOT NULL, instance_type_id TEXT NOT NULL, instance_flavor_id TEXT NOT NULL, flavor_name TEXT NOT NULL,
	os_architecture TEXT NOT NULL, os_distro TEXT NOT NULL, os_version TEXT NOT NULL, rax_options TEXT NOT NULL,
	image_type TEXT NOT NULL, updated INTEGER NOT NULL,
	PRIMARY KEY (instance, launched_sec));
CREATE TABLE IF NOT EXISTS instance_deletes (
	instance TEXT NOT NULL, launched_sec INTEGER NOT NULL, launched_at INTEGER NOT NULL, deleted_at INTEGER NOT NULL,
	PRIMARY KEY (instance, launched_sec));
CREATE TABLE IF NOT EXISTS instance_exists (
	id INTEGER PRIMARY KEY, msg_key TEXT NOT NULL UNIQUE, message_id TEXT NOT NULL, event_type TEXT NOT NULL, versioned INTEGER NOT NULL,
	instance TEXT NOT NULL, launched_at INTEGER NOT NULL, deleted_at INTEGER NOT NULL,
	audit_begin INTEGER NOT NULL, audit_end INTEGER NOT NULL,
	tenant TEXT NOT NULL, instance_type_id TEXT NOT NULL, instance_flavor_id TEXT NOT NULL, flavor_name TEXT NOT NULL,
	os_architecture TEXT NOT NULL, os_distro TEXT NOT NULL, os_version TEXT NOT NULL, rax_options TEXT NOT NULL,
	image_type TEXT NOT NULL, bandwidth INTEGER NOT NULL, invalid TEXT NOT NULL, received INTEGER NOT NULL,
	status TEXT NOT NULL, fail_field TEXT, fail_expected TEXT, fail_actual TEXT, fail_reason TEXT,
	routing_key TEXT NOT NULL, raw BLOB);
CREATE TABLE IF NOT EXISTS instance_exists_raw (id INTEGER PRIMARY KEY, raw BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS instance_exists_waiting ON instance_exists (audit_end, id) WHERE status = 'pending';
DROP INDEX IF EXISTS instance_exists_pending;
CREATE INDEX IF NOT EXISTS instance_exists_instance ON instance_exists (instance);
CREATE TABLE IF NOT EXISTS image_usage (
	uuid TEXT PRIMARY KEY, owner TEXT NOT NULL, size INTEGER NOT NULL, has_size INTEGER NOT NULL,
	created_at INTEGER NOT NULL, updated INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS image_deletes (uuid TEXT PRIMARY KEY, deleted_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS image_exists (
	id INTEGER PRIMARY KEY, msg_key TEXT NOT NULL, message_id TEXT NOT NULL, uuid TEXT NOT NULL, owner TEXT NOT NULL,
	size INTEGER NOT NULL, has_size INTEGER NOT NULL, created_at INTEGER NOT NULL, deleted_at INTEGER NOT NULL,
	audit_begin INTEGER NOT NULL, audit_end INTEGER NOT NULL, received INTEGER NOT NULL,
	status TEXT NOT NULL, fail_field TEXT, fail_expected TEXT, fail_actual TEXT, fail_reason TEXT,
	routing_key TEXT NOT NULL, raw BLOB, UNIQUE (msg_key, uuid));
CREATE INDEX IF NOT EXISTS image_exists_waiting ON image_exists (audit_end, id) WHERE status = 'pending';
DROP INDEX IF EXISTS image_exists_pending;
CREATE TABLE IF NOT EXISTS instance_reconcile (
	instance TEXT NOT NULL, launched_sec INTEGER NOT NULL, launched_at INTEGER NOT NULL, deleted_at INTEGER NOT NULL,
	tenant TEXT NOT NULL, instance_type_id TEXT NOT NULL, instance_flavor_id TEXT NOT NULL, flavor_name TEXT NOT NULL,
	os_architecture TEXT NOT NULL, os_distro TEXT NOT NULL, os_version TEXT NOT NULL, rax_options TEXT NOT NULL,
	image_type TEXT NOT NULL, source TEXT NOT NULL, nova_status TEXT NOT NULL, reconciled INTEGER NOT NULL,
	PRIMARY KEY (instance, launched_sec));
`

// numberInstances (version 2) numbers the instances (see
// instanceNumbers) and keys the launches, deletes and exists by that
// number: launches and deletes by (iid, launched_sec), exists by
// (iid, msg_key), which also dedups them and serves the lookups by
// instance that the index on instance_exists (instance) did. Each table
// is built anew; an exists keeps its id, which its body's row in
// instance_exists_raw is keyed by. A row whose instance got no number
// would fail the step on its NOT NULL iid, rather than be dropped.
func numberInstances(ctx context.Context, c sqlConn) error {
	// Indexes made on instance_exists by others (the report tables'),
	// to make again on the new table.
	rows, err := c.QueryContext(ctx, `SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'instance_exists'
		AND sql IS NOT NULL AND name NOT IN ('instance_exists_waiting', 'instance_exists_instance')`)
	if err != nil {
		return err
	}
	others, err := collectRows(rows, func(r scanner) (string, error) {
		var q string
		err := r.Scan(&q)
		return q, err
	})
	if err != nil {
		return err
	}
	if _, err := c.ExecContext(ctx, schemaV2); err != nil {
		return err
	}
	for _, q := range others {
		if _, err := c.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// existsV1Cols are instance_exists' columns at version 1 but id, written
// out: a released step does not change with the code's column lists.
const existsV1Cols = `msg_key, message_id, event_type, versioned, instance, launched_at, deleted_at, audit_begin, audit_end,
	tenant, instance_type_id, instance_flavor_id, flavor_name, os_architecture, os_distro, os_version, rax_options,
	image_type, bandwidth, invalid, received, status, fail_field, fail_expected, fail_actual, fail_reason, routing_key, raw`

const iidOf = `(SELECT iid FROM instances WHERE uuid = t.instance)`

const schemaV2 = `
CREATE TABLE instances (iid INTEGER PRIMARY KEY, uuid TEXT NOT NULL UNIQUE);
INSERT INTO instances (uuid)
	SELECT instance FROM instance_usage UNION SELECT instance FROM instance_deletes UNION SELECT instance FROM instance_exists;

CREATE TABLE instance_usage_v2 (
	iid INTEGER NOT NULL, launched_sec INTEGER NOT NULL, instance TEXT NOT NULL, launched_at INTEGER NOT NULL,
	tenant TEXT NOT NULL, instance_type_id TEXT NOT NULL, instance_flavor_id TEXT NOT NULL, flavor_name TEXT NOT NULL,
	os_architecture TEXT NOT NULL, os_distro TEXT NOT NULL, os_version TEXT NOT NULL, rax_options TEXT NOT NULL,
	image_type TEXT NOT NULL, updated INTEGER NOT NULL,
	PRIMARY KEY (iid, launched_sec)) WITHOUT ROWID;
INSERT INTO instance_usage_v2 SELECT ` + iidOf + `, launched_sec, instance, launched_at, tenant, instance_type_id,
	instance_flavor_id, flavor_name, os_architecture, os_distro, os_version, rax_options, image_type, updated
	FROM instance_usage t;
DROP TABLE instance_usage;
ALTER TABLE instance_usage_v2 RENAME TO instance_usage;

CREATE TABLE instance_deletes_v2 (
	iid INTEGER NOT NULL, launched_sec INTEGER NOT NULL, instance TEXT NOT NULL, launched_at INTEGER NOT NULL,
	deleted_at INTEGER NOT NULL,
	PRIMARY KEY (iid, launched_sec)) WITHOUT ROWID;
INSERT INTO instance_deletes_v2 SELECT ` + iidOf + `, launched_sec, instance, launched_at, deleted_at FROM instance_deletes t;
DROP TABLE instance_deletes;
ALTER TABLE instance_deletes_v2 RENAME TO instance_deletes;

CREATE TABLE instance_exists_v2 (
	id INTEGER PRIMARY KEY, iid INTEGER NOT NULL, msg_key TEXT NOT NULL, message_id TEXT NOT NULL, event_type TEXT NOT NULL,
	versioned INTEGER NOT NULL, instance TEXT NOT NULL, launched_at INTEGER NOT NULL, deleted_at INTEGER NOT NULL,
	audit_begin INTEGER NOT NULL, audit_end INTEGER NOT NULL,
	tenant TEXT NOT NULL, instance_type_id TEXT NOT NULL, instance_flavor_id TEXT NOT NULL, flavor_name TEXT NOT NULL,
	os_architecture TEXT NOT NULL, os_distro TEXT NOT NULL, os_version TEXT NOT NULL, rax_options TEXT NOT NULL,
	image_type TEXT NOT NULL, bandwidth INTEGER NOT NULL, invalid TEXT NOT NULL, received INTEGER NOT NULL,
	status TEXT NOT NULL, fail_field TEXT, fail_expected TEXT, fail_actual TEXT, fail_reason TEXT,
	routing_key TEXT NOT NULL, raw BLOB);
INSERT INTO instance_exists_v2 (id, iid, ` + existsV1Cols + `)
	SELECT id, ` + iidOf + `, ` + existsV1Cols + ` FROM instance_exists t ORDER BY id;
DROP TABLE instance_exists;
ALTER TABLE instance_exists_v2 RENAME TO instance_exists;
CREATE UNIQUE INDEX instance_exists_key ON instance_exists (iid, msg_key);
CREATE INDEX instance_exists_waiting ON instance_exists (audit_end, id) WHERE status = 'pending';
`
