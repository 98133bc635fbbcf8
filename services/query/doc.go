// Package query is tally's record store and the RecordQuery gRPC API over
// it: a messenger (Service.Sink) that upserts every delivered record, and
// GetRecord, ListRecords, SummarizeUsage and WatchRecords for grpcurl and
// "tally query".
//
// # Store
//
// Two implementations of Store share one schema and its migrations
// (schema.go): SQLite through modernc.org/sqlite (pure Go, WAL, one file,
// <data_dir>/query.db by default) and PostgreSQL through a pgx pool
// (store: postgres://...). A store at an older schema version is migrated
// at open, one transaction per version; one written by a newer tally is
// refused (ErrSchemaTooNew), never recreated.
//
// Records are upserted by identity, so redelivery and re-extraction never
// double-count; of two versions the later extraction wins (APEL keeps the
// last loaded, which is the same when extractions arrive in order):
//
//   - cloud: one row per (site, VMUUID) in records, and, as APEL's
//     CloudRecords, one row per (site, VMUUID, MeasurementTime month) in
//     cloud_months;
//   - accelerator: per (VM, year, month);
//   - storage: per (volume, measurement time);
//   - IP: per (project, user, IP version, measurement time);
//   - energy: per (site, VM, measurement time).
//
// Every extraction window a record came from is kept in record_windows.
// Rows hold the record's protobuf bytes and indexed columns to filter on.
// record_windows and cloud_months are keyed by the record's rid, its
// number in the order records were first stored, so that a new record's
// rows append instead of landing at the random place its VM's UUID would
// give them (schema version 7 in SQLite, 9 in PostgreSQL).
//
// SQLite's file has no index of identities (schema version 11): an
// index keyed by the cloud's UUIDs took each new record's entry at a
// random page, the largest cost of a write at a million records. Its
// records are numbered by rid (the rowid) and keep their identity's
// 64-bit hash in ident_h, indexed in rid order (records_hashes, which
// appends). The store loads the hashes at open and finds a record's rid
// in memory (identIndex, about 40 bytes a record); the rows a hash names
// are read and their identities compared, so a hash two identities share
// costs a read, never a record. Writers and GetRecord first catch up on
// rows another process wrote to the file.
//
// GetRecord finds a record by its key. The extractors derive a record's
// key from its identity ("cloud/<vm uuid>", "storage/<volume>/<unix
// time>": the identity's parts without the site, joined by "/"); such a
// record has no key index entry, and GetRecord turns the key back into
// the identities it may stand for, one per site in key_sites, and reads
// them through the identity's index (SQLite: the identIndex). A key
// given otherwise is indexed
// (records_key_given). A key as random as a UUID took a random index
// page per record at every write (schema version 8).
//
// # Concurrent writers
//
// The messenger writes batches from concurrent pushes, one per enricher
// worker. A record's rollup deltas depend on its stored row and months,
// so two writers of one record must take turns. SQLite has one writer:
// batches that arrive while it writes wait, and are committed together.
// PostgreSQL writers share the store's advisory lock (a migration takes
// it alone), then lock each identity of their batch (a transaction
// advisory lock on its hash, in ascending order) and update the rollup
// rows in key order: writers of different records write at once, and
// none waits for another in a circle. A batch of more than 1,000
// records, or one aborted by a deadlock with another session or a full
// lock table, is written under the store's lock alone.
//
// # Monthly cloud usage, as APEL's summariser computes it
//
// APEL's SummariseVMs (schemas/cloud.sql) sums, per month, each
// CloudRecords row's duration minus that of the same VM's row with the
// greatest earlier MeasurementTime (month-0 rows ignored), because cloud
// durations are cumulative. cloud_months keeps that delta up to date at
// write time (mergeMonths; an out-of-order arrival also fixes the next
// month's delta), so a summary by month is a plain sum and equals APEL's.
// cloud_rollup holds those sums per month, VO, project, user, region,
// site, status and CPU count, also kept at write time, so a summary
// without a time range reads a few rows per group rather than one per VM
// and month; with a time range it sums cloud_months.
// MeasurementTime follows ReplaceCloudRecord: EndTime for completed VMs,
// otherwise StartTime + SuspendDuration + WallDuration.
//
// # Summaries
//
// record_count counts cloud rows of cloud_months (APEL's NumberOfVMs: a VM
// counts once per month it was measured in) and other records one each;
// wall and CPU hours are the cloud deltas; normalised CPU hours are CPU
// hours times the flavor benchmark, and zero where no benchmark is set
// (HEPSPEC06-hours are not mixed with raw hours); GPU hours are accelerator
// Count × AvailableDuration; storage GB-hours are capacity in GiB × the
// active duration (EndTime − StartTime unless ActiveDuration is set);
// public_ip_count is a level, the latest measurement of each project, user
// and IP version in the group. A time filter selects cloud usage by the
// span of each monthly delta (previous measurement to this one), other
// records by their [start, end].
//
// # Calling it
//
//	grpcurl -plaintext 127.0.0.1:50051 describe tally.v1.RecordQuery
//	grpcurl -plaintext -d '{"key": "cloud/3f2a..."}' 127.0.0.1:50051 tally.v1.RecordQuery/GetRecord
//	grpcurl -plaintext -d '{"filter": {"vos": ["atlas"], "start": "2026-10-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"}, "page_size": 50}' \
//	    127.0.0.1:50051 tally.v1.RecordQuery/ListRecords
//	grpcurl -plaintext -d '{"group_by": ["USAGE_GROUP_BY_MONTH", "USAGE_GROUP_BY_VO"], "metrics": ["USAGE_METRIC_CPU_HOURS"]}' \
//	    127.0.0.1:50051 tally.v1.RecordQuery/SummarizeUsage
//	grpcurl -plaintext -d '{"filter": {"types": ["RECORD_TYPE_CLOUD"]}}' 127.0.0.1:50051 tally.v1.RecordQuery/WatchRecords
//
// With a token: -H "authorization: Bearer $TOKEN"; with mutual TLS:
// -cacert, -cert and -key instead of -plaintext.
package query
