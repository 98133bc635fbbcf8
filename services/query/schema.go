package query

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// migrations are the schema's versions, in order: migrations[i] brings a
// store from version i to i+1. They are never edited once released, only
// appended to. {int}, {real} and {blob} become each database's types;
// {norowid} makes SQLite keep a table in its primary key's b-tree alone;
// {pg} starts a statement only PostgreSQL runs, {sqlite} one only SQLite
// runs.
var migrations = []string{
	// 1: records (the latest of each identity) and cloud_months (APEL's
	// CloudRecords: one row per VM and MeasurementTime month, with deltas).
	`CREATE TABLE records (
		ident TEXT PRIMARY KEY,
		key TEXT NOT NULL,
		rtype {int} NOT NULL,
		region TEXT NOT NULL,
		site TEXT NOT NULL,
		project_id TEXT NOT NULL,
		vo TEXT NOT NULL,
		local_user TEXT NOT NULL,
		global_user TEXT NOT NULL,
		status TEXT NOT NULL,
		cpu_count {int} NOT NULL,
		start_ts {int} NOT NULL,
		end_ts {int},
		year {int} NOT NULL,
		month {int} NOT NULL,
		extracted_at {int} NOT NULL,
		window_from {int} NOT NULL,
		window_to {int} NOT NULL,
		wall_s {int} NOT NULL,
		cpu_s {int} NOT NULL,
		norm_s {real} NOT NULL,
		gpu_s {real} NOT NULL,
		gb_s {real} NOT NULL,
		ip_version {int} NOT NULL,
		ip_count {int} NOT NULL,
		data {blob} NOT NULL
	);
	CREATE INDEX records_order ON records (start_ts, ident);
	CREATE INDEX records_key ON records (key);
	CREATE TABLE cloud_months (
		site TEXT NOT NULL,
		vm_uuid TEXT NOT NULL,
		year {int} NOT NULL,
		month {int} NOT NULL,
		measure_ts {int} NOT NULL,
		span_from {int} NOT NULL,
		span_to {int} NOT NULL,
		region TEXT NOT NULL,
		project_id TEXT NOT NULL,
		vo TEXT NOT NULL,
		local_user TEXT NOT NULL,
		global_user TEXT NOT NULL,
		status TEXT NOT NULL,
		image_id TEXT NOT NULL,
		benchmark_type TEXT NOT NULL,
		service TEXT NOT NULL,
		cpu_count {int} NOT NULL,
		benchmark {real} NOT NULL,
		memory {int} NOT NULL,
		disk {int} NOT NULL,
		start_ts {int} NOT NULL,
		end_ts {int},
		wall_cum {int} NOT NULL,
		cpu_cum {int} NOT NULL,
		wall_d {int} NOT NULL,
		cpu_d {int} NOT NULL,
		norm_d {real} NOT NULL,
		extracted_at {int} NOT NULL,
		window_from {int} NOT NULL,
		window_to {int} NOT NULL,
		PRIMARY KEY (site, vm_uuid, year, month)
	){norowid}`,

	// 2: every extraction window a record came from (provenance), filled
	// from the windows version 1 kept, and indexes for the common filters.
	// records_usage covers the usual summaries of records other than cloud
	// ones (those come from cloud_months, or cloud_rollup since version 3),
	// so they never read the stored records themselves.
	`CREATE TABLE record_windows (
		ident TEXT NOT NULL,
		window_from {int} NOT NULL,
		window_to {int} NOT NULL,
		extracted_at {int} NOT NULL,
		PRIMARY KEY (ident, window_from, window_to)
	){norowid};
	INSERT INTO record_windows (ident, window_from, window_to, extracted_at)
		SELECT ident, window_from, window_to, extracted_at FROM records;
	CREATE INDEX records_vo ON records (vo, start_ts, ident);
	CREATE INDEX records_project ON records (project_id, start_ts, ident);
	CREATE INDEX records_usage ON records (rtype, year, month, vo, project_id, gpu_s, gb_s) WHERE rtype <> 1`,

	// 3: cloud_rollup, the sums of cloud_months per summary dimension, and
	// usage_rollup, those of accelerator, storage and energy records (2, 4
	// and 5), kept up to date by every write; filled here.
	`CREATE TABLE cloud_rollup (
		year {int} NOT NULL,
		month {int} NOT NULL,
		vo TEXT NOT NULL,
		project_id TEXT NOT NULL,
		local_user TEXT NOT NULL,
		global_user TEXT NOT NULL,
		region TEXT NOT NULL,
		site TEXT NOT NULL,
		status TEXT NOT NULL,
		cpu_count {int} NOT NULL,
		n {int} NOT NULL,
		wall {int} NOT NULL,
		cpu {int} NOT NULL,
		norm {real} NOT NULL,
		PRIMARY KEY (year, month, vo, project_id, local_user, global_user, region, site, status, cpu_count)
	){norowid};
	INSERT INTO cloud_rollup
		SELECT year, month, vo, project_id, local_user, global_user, region, site, status, cpu_count,
			COUNT(*), SUM(wall_d), SUM(cpu_d), SUM(norm_d)
		FROM cloud_months
		GROUP BY year, month, vo, project_id, local_user, global_user, region, site, status, cpu_count;
	CREATE TABLE usage_rollup (
		rtype {int} NOT NULL,
		year {int} NOT NULL,
		month {int} NOT NULL,
		vo TEXT NOT NULL,
		project_id TEXT NOT NULL,
		local_user TEXT NOT NULL,
		global_user TEXT NOT NULL,
		region TEXT NOT NULL,
		site TEXT NOT NULL,
		status TEXT NOT NULL,
		cpu_count {int} NOT NULL,
		n {int} NOT NULL,
		gpu_s {real} NOT NULL,
		gb_s {real} NOT NULL,
		PRIMARY KEY (rtype, year, month, vo, project_id, local_user, global_user, region, site, status, cpu_count)
	){norowid};
	INSERT INTO usage_rollup
		SELECT rtype, year, month, vo, project_id, local_user, global_user, region, site, status, cpu_count,
			COUNT(*), SUM(gpu_s), SUM(gb_s)
		FROM records
		WHERE rtype IN (2, 4, 5)
		GROUP BY rtype, year, month, vo, project_id, local_user, global_user, region, site, status, cpu_count`,

	// 4: one index fewer to maintain per record. Each index ordered by
	// start time takes its entry at a random place in a large store (a
	// batch's records start at all times), so every record dirtied a page
	// of each: most of the cost of a write. records_list, in List's order,
	// carries the type, VO and project, so a List filtered by project (or
	// type) tests them in the index and reads only the rows it returns;
	// records_project, which did only that, goes. records_vo stays: a VO
	// is the usual filter, and a rare VO would otherwise scan the store.
	`CREATE INDEX records_list ON records (start_ts, ident, rtype, vo, project_id);
	DROP INDEX records_order;
	DROP INDEX records_project`,

	// 5: in PostgreSQL the text of keys compares as bytes (collation "C"),
	// as SQLite's always has: under the database's collation each
	// comparison went through strcoll, a tenth of the server's time in a
	// write. Both orders are the same for every key tally writes in a
	// C.UTF-8 database; elsewhere, List's order among records of the same
	// start becomes SQLite's.
	`{pg}ALTER TABLE records ALTER COLUMN ident TYPE TEXT COLLATE "C", ALTER COLUMN key TYPE TEXT COLLATE "C",
		ALTER COLUMN vo TYPE TEXT COLLATE "C", ALTER COLUMN project_id TYPE TEXT COLLATE "C";
	{pg}ALTER TABLE record_windows ALTER COLUMN ident TYPE TEXT COLLATE "C";
	{pg}ALTER TABLE cloud_months ALTER COLUMN site TYPE TEXT COLLATE "C", ALTER COLUMN vm_uuid TYPE TEXT COLLATE "C";
	{pg}ALTER TABLE cloud_rollup ALTER COLUMN vo TYPE TEXT COLLATE "C", ALTER COLUMN project_id TYPE TEXT COLLATE "C",
		ALTER COLUMN local_user TYPE TEXT COLLATE "C", ALTER COLUMN global_user TYPE TEXT COLLATE "C",
		ALTER COLUMN region TYPE TEXT COLLATE "C", ALTER COLUMN site TYPE TEXT COLLATE "C", ALTER COLUMN status TYPE TEXT COLLATE "C";
	{pg}ALTER TABLE usage_rollup ALTER COLUMN vo TYPE TEXT COLLATE "C", ALTER COLUMN project_id TYPE TEXT COLLATE "C",
		ALTER COLUMN local_user TYPE TEXT COLLATE "C", ALTER COLUMN global_user TYPE TEXT COLLATE "C",
		ALTER COLUMN region TYPE TEXT COLLATE "C", ALTER COLUMN site TYPE TEXT COLLATE "C", ALTER COLUMN status TYPE TEXT COLLATE "C"`,

	// 6: in SQLite, the indexes List walks append instead of taking a
	// random page per record. A batch's records start at all times, so
	// records_vo and records_list, ordered by start, each dirtied a page
	// per record: most of a write. The entries of cloud records (VMs
	// start at any time) now lead with a bucket of start times, then
	// seq, the write that inserted the row (rising, kept on update), so
	// a batch adds to the end of a few runs, one per (VO and) bucket it
	// touches. Within a bucket the order by start is lost: List sorts a
	// bucket's entries, which the trailing columns let it do from the
	// index alone (end_ts for a time range's other end, the VO and
	// project for their filters). Buckets are 2^18 s (3 days) per VO,
	// 2^15 s (9 hours) for all: at a million records a year, about a
	// thousand entries, what List sorts in a millisecond or two, and a
	// batch of records starting over six weeks appends to a few hundred
	// pages instead of thousands. The other types keep their entries in
	// List's order: their records share starts (an accelerator's is its
	// month's first second), where a bucket would hold them all and List
	// sort them all; they are the fewer, and sharing starts, often
	// append as they are. records_usage,
	// ordered by month, VO and project, no longer covers a query (those
	// without a time range read usage_rollup) and only found the records
	// of other types, a random page each: records_other, in start order,
	// finds them and seeks a time range's end; records_type, in
	// insertion order, finds those of one type (the summaries of IP
	// records, the only type summed from records without a time range).
	// PostgreSQL, already fast enough, keeps its indexes (and List its
	// query).
	`{sqlite}ALTER TABLE records ADD COLUMN seq {int} NOT NULL DEFAULT 0;
	{sqlite}CREATE INDEX records_vo_seq ON records (vo, start_ts >> 18, seq, start_ts, ident, end_ts) WHERE rtype = 1;
	{sqlite}CREATE INDEX records_seq ON records (start_ts >> 15, seq, start_ts, ident, vo, project_id, end_ts) WHERE rtype = 1;
	{sqlite}CREATE INDEX records_vo_other ON records (vo, start_ts, ident, rtype, end_ts) WHERE rtype <> 1;
	{sqlite}CREATE INDEX records_other ON records (start_ts, ident, rtype, vo, project_id, end_ts) WHERE rtype <> 1;
	{sqlite}CREATE INDEX records_type ON records (rtype) WHERE rtype <> 1;
	{sqlite}DROP INDEX records_vo;
	{sqlite}DROP INDEX records_list;
	{sqlite}DROP INDEX records_usage`,

	// 7: in SQLite, a new record's windows and months append. They were
	// keyed by the record's identity, which for a cloud record holds the
	// VM's UUID: random, so each record dirtied a page of record_windows
	// and one of cloud_months (the widest rows), and every dirtied page is
	// a WAL frame at commit and a page copied at checkpoint. With the
	// UUIDs clouds give their VMs, that made a million-record backfill
	// three times slower than with ordered ids. rid numbers records in the
	// order they were first stored (kept on update, a column of its own:
	// VACUUM may renumber a rowid), and keys both tables. A window or month
	// without its record cannot be keyed: its NULL rid fails the upgrade
	// rather than losing the row.
	`{sqlite}ALTER TABLE records ADD COLUMN rid {int};
	{sqlite}UPDATE records SET rid = rowid;
	{sqlite}CREATE UNIQUE INDEX records_rid ON records (rid);
	{sqlite}CREATE TABLE record_windows_rid (
		rid {int} NOT NULL,
		window_from {int} NOT NULL,
		window_to {int} NOT NULL,
		extracted_at {int} NOT NULL,
		PRIMARY KEY (rid, window_from, window_to)
	){norowid};
	{sqlite}INSERT INTO record_windows_rid (rid, window_from, window_to, extracted_at)
		SELECT r.rid, w.window_from, w.window_to, w.extracted_at FROM record_windows w LEFT JOIN records r ON r.ident = w.ident;
	{sqlite}DROP TABLE record_windows;
	{sqlite}ALTER TABLE record_windows_rid RENAME TO record_windows;
	{sqlite}CREATE TABLE cloud_months_rid (
		rid {int} NOT NULL,
		site TEXT NOT NULL,
		vm_uuid TEXT NOT NULL,
		year {int} NOT NULL,
		month {int} NOT NULL,
		measure_ts {int} NOT NULL,
		span_from {int} NOT NULL,
		span_to {int} NOT NULL,
		region TEXT NOT NULL,
		project_id TEXT NOT NULL,
		vo TEXT NOT NULL,
		local_user TEXT NOT NULL,
		global_user TEXT NOT NULL,
		status TEXT NOT NULL,
		image_id TEXT NOT NULL,
		benchmark_type TEXT NOT NULL,
		service TEXT NOT NULL,
		cpu_count {int} NOT NULL,
		benchmark {real} NOT NULL,
		memory {int} NOT NULL,
		disk {int} NOT NULL,
		start_ts {int} NOT NULL,
		end_ts {int},
		wall_cum {int} NOT NULL,
		cpu_cum {int} NOT NULL,
		wall_d {int} NOT NULL,
		cpu_d {int} NOT NULL,
		norm_d {real} NOT NULL,
		extracted_at {int} NOT NULL,
		window_from {int} NOT NULL,
		window_to {int} NOT NULL,
		PRIMARY KEY (rid, year, month)
	){norowid};
	{sqlite}INSERT INTO cloud_months_rid SELECT r.rid, m.* FROM cloud_months m
		LEFT JOIN records r ON r.ident = 'cloud' || char(31) || m.site || char(31) || m.vm_uuid;
	{sqlite}DROP TABLE cloud_months;
	{sqlite}ALTER TABLE cloud_months_rid RENAME TO cloud_months`,

	// 8: a record whose key the extractors derived from its
	// identity ("cloud/<vm uuid>") has no entry in a key index: GetRecord
	// turns such a key back into the identities it may stand for and
	// reads them through the identity's index. A key is as random as the
	// UUID in it, so records_key took a random page per record, a WAL
	// frame at commit and a page copied at checkpoint: at a million
	// records, a quarter of a SQLite write (PostgreSQL's index is a b-tree
	// too). Keys given otherwise keep their
	// entries (records_key_given). key_sites holds the sites of the
	// records with derived keys whose identity holds the site (cloud,
	// energy), the identities GetRecord tries. Rows stored before keep
	// key_derived 0, and their entries, until they are next written.
	`ALTER TABLE records ADD COLUMN key_derived {int} NOT NULL DEFAULT 0;
	CREATE INDEX records_key_given ON records (key) WHERE key_derived = 0;
	DROP INDEX records_key;
	CREATE TABLE key_sites (site TEXT PRIMARY KEY){norowid}`,

	// 9: in PostgreSQL, as in SQLite since version 7, a new record's
	// windows and months append: both tables are keyed by the record's
	// rid (a sequence's number, kept on update) instead of its identity
	// or its VM's UUID. With the default 128 MiB of shared buffers, each
	// random key was a page evicted dirty and, after every checkpoint, a
	// full page image in the WAL, which itself brought the next
	// checkpoint on: at a million records with UUIDs, ingest ran at two
	// thirds of the rate with ordered ids. A window or month without its
	// record fails the upgrade on its NULL rid rather than losing the row.
	// Unlike SQLite's, records has no index on rid: nothing reads a
	// record by it, and the sequence alone hands the numbers out. The
	// column's volatile default rewrites the table once, numbering the
	// rows as it goes (an UPDATE left a dead version of every row and its
	// index entries), and the new tables get their keys after they are
	// filled: an upgrade of a million records took 73 s the first way.
	`{pg}CREATE SEQUENCE records_rid_seq;
	{pg}ALTER TABLE records ADD COLUMN rid {int} NOT NULL DEFAULT nextval('records_rid_seq');
	{pg}ALTER SEQUENCE records_rid_seq OWNED BY records.rid;
	{pg}CREATE TABLE record_windows_rid (
		rid {int} NOT NULL,
		window_from {int} NOT NULL,
		window_to {int} NOT NULL,
		extracted_at {int} NOT NULL
	);
	{pg}INSERT INTO record_windows_rid (rid, window_from, window_to, extracted_at)
		SELECT r.rid, w.window_from, w.window_to, w.extracted_at FROM record_windows w LEFT JOIN records r ON r.ident = w.ident;
	{pg}DROP TABLE record_windows;
	{pg}ALTER TABLE record_windows_rid RENAME TO record_windows;
	{pg}ALTER TABLE record_windows ADD CONSTRAINT record_windows_pkey PRIMARY KEY (rid, window_from, window_to);
	{pg}CREATE TABLE cloud_months_rid (rid {int} NOT NULL, LIKE cloud_months);
	{pg}INSERT INTO cloud_months_rid SELECT r.rid, m.* FROM cloud_months m
		LEFT JOIN records r ON r.ident = 'cloud' || chr(31) || m.site || chr(31) || m.vm_uuid;
	{pg}DROP TABLE cloud_months;
	{pg}ALTER TABLE cloud_months_rid RENAME TO cloud_months;
	{pg}ALTER TABLE cloud_months ADD CONSTRAINT cloud_months_pkey PRIMARY KEY (rid, year, month)`,

	// 10: in PostgreSQL, one index for List instead of two. records_vo
	// and records_list each took an entry per record at a random place
	// (a batch's records start at all times). records_vo_list serves a
	// List with VOs, a walk per VO in List's order, and one without, a
	// walk per VO of the store (found by skipping through the index),
	// merged; it carries the type, project and end, so those filters and
	// a time range's start are tested in the index. In interleaved runs
	// of one morning, a million-record ingest from four writers went from
	// 14,100-16,100/s to 20,100-22,600/s, from one writer from
	// 13,900-14,700/s to 14,600-15,200/s (without end_ts; with it, within
	// the noise of those). The price is a List without VOs at a site of
	// many: it reads up to a page per VO. With 500 VOs in 200,000
	// records, a month's first page takes 21-26 ms at worst
	// (BenchmarkListManyVOs); without end_ts in the index, each walk read
	// rows for a time range's start, and it took 58-89 ms.
	`{pg}CREATE INDEX records_vo_list ON records (vo, start_ts, ident, rtype, project_id, end_ts);
	{pg}DROP INDEX records_vo;
	{pg}DROP INDEX records_list`,

	// 11: in SQLite, no index of identities. Identities hold the cloud's
	// UUIDs, so the table's own (ident was its PRIMARY KEY) took each new
	// record's entry at a random place: a page dirtied per record, a WAL
	// frame at commit and a page copied at checkpoint, the last index
	// that did since version 8. With ordered ids, a million-record ingest
	// ran half as fast again. The table is rebuilt with rid as its rowid
	// (an INTEGER PRIMARY KEY, which VACUUM keeps; records_rid goes with
	// the old table) and ident_h, the identity's
	// hash (identHash, tally_ident_hash here), indexed in rid order:
	// records_hashes appends, and the store loads it at open into the
	// identIndex it finds records through. The other indexes are made
	// again as they were.
	`{sqlite}CREATE TABLE records_hashed (
		rid INTEGER PRIMARY KEY,
		ident TEXT NOT NULL,
		ident_h INTEGER NOT NULL,
		key TEXT NOT NULL,
		rtype INTEGER NOT NULL,
		region TEXT NOT NULL,
		site TEXT NOT NULL,
		project_id TEXT NOT NULL,
		vo TEXT NOT NULL,
		local_user TEXT NOT NULL,
		global_user TEXT NOT NULL,
		status TEXT NOT NULL,
		cpu_count INTEGER NOT NULL,
		start_ts INTEGER NOT NULL,
		end_ts INTEGER,
		year INTEGER NOT NULL,
		month INTEGER NOT NULL,
		extracted_at INTEGER NOT NULL,
		window_from INTEGER NOT NULL,
		window_to INTEGER NOT NULL,
		wall_s INTEGER NOT NULL,
		cpu_s INTEGER NOT NULL,
		norm_s REAL NOT NULL,
		gpu_s REAL NOT NULL,
		gb_s REAL NOT NULL,
		ip_version INTEGER NOT NULL,
		ip_count INTEGER NOT NULL,
		data BLOB NOT NULL,
		seq INTEGER NOT NULL DEFAULT 0,
		key_derived INTEGER NOT NULL DEFAULT 0
	);
	{sqlite}INSERT INTO records_hashed (rid, ident, ident_h, key, rtype, region, site, project_id, vo, local_user, global_user,
			status, cpu_count, start_ts, end_ts, year, month, extracted_at, window_from, window_to, wall_s, cpu_s, norm_s,
			gpu_s, gb_s, ip_version, ip_count, data, seq, key_derived)
		SELECT rid, ident, tally_ident_hash(ident), key, rtype, region, site, project_id, vo, local_user, global_user,
			status, cpu_count, start_ts, end_ts, year, month, extracted_at, window_from, window_to, wall_s, cpu_s, norm_s,
			gpu_s, gb_s, ip_version, ip_count, data, seq, key_derived
		FROM records ORDER BY rid;
	{sqlite}DROP TABLE records;
	{sqlite}ALTER TABLE records_hashed RENAME TO records;
	{sqlite}CREATE INDEX records_hashes ON records (rid, ident_h);
	{sqlite}CREATE INDEX records_vo_seq ON records (vo, start_ts >> 18, seq, start_ts, ident, end_ts) WHERE rtype = 1;
	{sqlite}CREATE INDEX records_seq ON records (start_ts >> 15, seq, start_ts, ident, vo, project_id, end_ts) WHERE rtype = 1;
	{sqlite}CREATE INDEX records_vo_other ON records (vo, start_ts, ident, rtype, end_ts) WHERE rtype <> 1;
	{sqlite}CREATE INDEX records_other ON records (start_ts, ident, rtype, vo, project_id, end_ts) WHERE rtype <> 1;
	{sqlite}CREATE INDEX records_type ON records (rtype) WHERE rtype <> 1;
	{sqlite}CREATE INDEX records_key_given ON records (key) WHERE key_derived = 0`,
}

// ErrSchemaTooNew is returned when a store was written by a newer tally.
var ErrSchemaTooNew = errors.New("query: store schema is newer than this tally")

// execer runs statements inside a migration's transaction.
type execer func(ctx context.Context, q string, args ...any) error

// migrate brings a store at version from up to version to, one
// transaction per step (each step also records its version), so a failed
// step leaves the store at the previous version, never half-migrated.
func migrate(ctx context.Context, from, to int, types *strings.Replacer, step func(ctx context.Context, run func(exec execer) error) error) error {
	if from > len(migrations) {
		return fmt.Errorf("%w: the store is at schema version %d, this tally knows versions up to %d; run a newer tally (or restore a backup)",
			ErrSchemaTooNew, from, len(migrations))
	}
	for v := from; v < to; v++ {
		err := step(ctx, func(exec execer) error {
			for stmt := range strings.SplitSeq(types.Replace(migrations[v]), ";\n") {
				// A statement marked {pg} is PostgreSQL's alone, one marked
				// {sqlite} SQLite's: each replacer drops its own mark, so
				// a mark left is the other database's.
				if stmt = strings.TrimSpace(stmt); stmt == "" || strings.HasPrefix(stmt, "{pg}") || strings.HasPrefix(stmt, "{sqlite}") {
					continue
				}
				if err := exec(ctx, stmt); err != nil {
					return err
				}
			}
			return exec(ctx, "UPDATE tally_schema SET version = ?", v+1)
		})
		if err != nil {
			return fmt.Errorf("query: migrate the store from schema version %d to %d: %w", v, v+1, err)
		}
	}
	return nil
}
