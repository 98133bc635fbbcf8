package verifier

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// reportMigrations are the versions of the report tables of a SQLite
// store: reportMigrations[i] brings them from version i to i+1. Released
// steps are never edited, only appended to. They have their own version
// table, so the tables of Store (sqlite.go) and these evolve apart.
var reportMigrations = []string{
	// 1: stored audits (StackTach's JsonReport: the report as JSON with
	// its period), and the failed exists indexed for ListFailures.
	`CREATE TABLE audit_reports (
		id INTEGER PRIMARY KEY,
		service TEXT NOT NULL,
		period TEXT NOT NULL,
		period_begin INTEGER NOT NULL,
		period_end INTEGER NOT NULL,
		created INTEGER NOT NULL,
		body BLOB NOT NULL);
	CREATE INDEX audit_reports_service ON audit_reports (service, id);
	CREATE INDEX instance_exists_failed ON instance_exists (audit_begin, id) WHERE status = 'failed';
	CREATE INDEX image_exists_failed ON image_exists (audit_begin, id) WHERE status = 'failed'`,
}

// errReportsTooNew is returned for report tables written by a newer tally.
var errReportsTooNew = errors.New("verifier: the store's report tables are newer than this tally")

// SQLiteReports is the ReportStore of a SQLiteStore, in the same file.
type SQLiteReports struct{ s *SQLiteStore }

// NewSQLiteReports creates or upgrades the report tables of s.
func NewSQLiteReports(ctx context.Context, s *SQLiteStore) (*SQLiteReports, error) {
	err := s.exec(ctx, `CREATE TABLE IF NOT EXISTS verifier_reports_schema (version INTEGER NOT NULL)`)
	if err != nil {
		return nil, fmt.Errorf("verifier: report tables: %w", err)
	}
	for {
		var done bool
		// One transaction per step, which also records the version: a
		// failed step leaves the tables at the previous version.
		err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
			var v int
			err := tx.QueryRowContext(ctx, `SELECT version FROM verifier_reports_schema`).Scan(&v)
			if errors.Is(err, sql.ErrNoRows) {
				_, err = tx.ExecContext(ctx, `INSERT INTO verifier_reports_schema (version) VALUES (0)`)
			}
			if err != nil {
				return fmt.Errorf("version: %w", err)
			}
			switch {
			case v > len(reportMigrations):
				return fmt.Errorf("%w: they are at version %d, this tally knows up to %d", errReportsTooNew, v, len(reportMigrations))
			case v == len(reportMigrations):
				done = true
				return nil
			}
			for stmt := range strings.SplitSeq(reportMigrations[v], ";\n") {
				if _, err := tx.ExecContext(ctx, stmt); err != nil {
					return fmt.Errorf("to version %d: %w", v+1, err)
				}
			}
			_, err = tx.ExecContext(ctx, `UPDATE verifier_reports_schema SET version = ?`, v+1)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("verifier: migrate the report tables: %w", err)
		}
		if done {
			return &SQLiteReports{s: s}, nil
		}
	}
}

// SaveAudit implements ReportStore.
func (r *SQLiteReports) SaveAudit(ctx context.Context, a StoredAudit) (int64, error) {
	if a.Report == nil {
		return 0, errors.New("save audit: no report")
	}
	body, err := json.Marshal(a.Report)
	if err != nil {
		return 0, fmt.Errorf("save audit: %w", err)
	}
	var id int64
	err = r.s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO audit_reports (service, period, period_begin, period_end, created, body)
			VALUES (?, ?, ?, ?, ?, ?)`, a.Report.Service, a.Period, micro(a.Report.PeriodBegin), micro(a.Report.PeriodEnd), micro(a.Created), body)
		if err != nil {
			return err
		}
		id, err = res.LastInsertId()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("save audit: %w", err)
	}
	return id, nil
}

func scanAudit(r scanner) (StoredAudit, error) {
	var a StoredAudit
	var created int64
	var body []byte
	if err := r.Scan(&a.ID, &a.Period, &created, &body); err != nil {
		return a, err
	}
	a.Created = fromMicro(created)
	a.Report = &AuditReport{}
	if err := json.Unmarshal(body, a.Report); err != nil {
		return a, fmt.Errorf("report %d: %w", a.ID, err)
	}
	return a, nil
}

// GetAudit implements ReportStore.
func (r *SQLiteReports) GetAudit(ctx context.Context, id int64) (*StoredAudit, error) {
	a, err := scanAudit(r.s.db.QueryRowContext(ctx, `SELECT id, period, created, body FROM audit_reports WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrReportNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get audit %d: %w", id, err)
	}
	return &a, nil
}

// ListAudits implements ReportStore.
func (r *SQLiteReports) ListAudits(ctx context.Context, f AuditListFilter) ([]StoredAudit, error) {
	q := `SELECT id, period, created, body FROM audit_reports WHERE 1 = 1`
	var args []any
	if f.Service != "" {
		q, args = q+` AND service = ?`, append(args, f.Service)
	}
	if f.BeforeID > 0 {
		q, args = q+` AND id < ?`, append(args, f.BeforeID)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = -1 // SQLite: no limit
	}
	rows, err := r.s.db.QueryContext(ctx, q+` ORDER BY id DESC LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, fmt.Errorf("list audits: %w", err)
	}
	out, err := collectRows(rows, scanAudit)
	if err != nil {
		return nil, fmt.Errorf("list audits: %w", err)
	}
	return out, nil
}

// ListFailures implements ReportStore.
func (r *SQLiteReports) ListFailures(ctx context.Context, f FailureFilter, after *FailureCursor, limit int) ([]FailedExists, error) {
	d := failureDialect{placeholder: func(int) string { return "?" }, contains: "instr(lower(fail_reason), %s) > 0"}
	return listFailures(ctx, d, f, after, limit, func(ctx context.Context, q string, args []any, scan func(scanner) (FailedExists, error)) ([]FailedExists, error) {
		rows, err := r.s.db.QueryContext(ctx, q, args...)
		if err != nil {
			return nil, err
		}
		return collectRows(rows, scan)
	})
}

var _ ReportStore = (*SQLiteReports)(nil)
