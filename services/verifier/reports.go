package verifier

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrReportNotFound is returned by ReportStore.GetAudit for an unknown id.
var ErrReportNotFound = errors.New("verifier: no stored report with this id")

// StoredAudit is an audit kept by `tally audit --store` (StackTach's
// JsonReport).
type StoredAudit struct {
	ID      int64
	Created time.Time
	// Period is hour, day, month, year or custom.
	Period string
	Report *AuditReport
}

// AuditListFilter selects stored audits, newest first.
type AuditListFilter struct {
	// Service is nova or glance; empty for both.
	Service string
	// BeforeID pages: only ids below it (0: from the newest).
	BeforeID int64
	Limit    int
}

// FailureFilter selects failed exists.
type FailureFilter struct {
	// Service is nova or glance; empty for both.
	Service string
	// Audit periods beginning in [Begin, End); zero bounds are open.
	Begin, End time.Time
	// Field is the failure's field, exactly; Reason a case-insensitive
	// substring of its reason.
	Field, Reason string
}

// FailureCursor is the position after the last failure returned: nova's
// come first, then glance's, each by id.
type FailureCursor struct {
	Service string `json:"k"`
	ID      int64  `json:"i"`
}

// FailedExists is one failed exists of either kind.
type FailedExists struct {
	Service    string
	ID         int64
	MessageID  string
	EventType  string
	UUID       string
	Tenant     string
	AuditBegin time.Time
	AuditEnd   time.Time
	Received   time.Time
	Failure    Failure
}

// ReportStore keeps stored audits and answers the reads over exists the
// API needs beyond Store. It is its own interface so that a Store
// implementation need not grow for it; OpenReports finds one for a Store.
type ReportStore interface {
	// SaveAudit stores a report and returns its id.
	SaveAudit(ctx context.Context, a StoredAudit) (int64, error)
	// GetAudit returns ErrReportNotFound for an unknown id.
	GetAudit(ctx context.Context, id int64) (*StoredAudit, error)
	ListAudits(ctx context.Context, f AuditListFilter) ([]StoredAudit, error)
	// ListFailures returns up to limit failures matching f after the cursor
	// (nil: from the first).
	ListFailures(ctx context.Context, f FailureFilter, after *FailureCursor, limit int) ([]FailedExists, error)
}

// OpenReports returns the ReportStore that goes with s, migrating its
// tables: s itself when it is one, the SQLite report tables for a
// SQLiteStore.
func OpenReports(ctx context.Context, s Store) (ReportStore, error) {
	switch st := s.(type) {
	case ReportStore:
		return st, nil
	case *SQLiteStore:
		return NewSQLiteReports(ctx, st)
	}
	return nil, fmt.Errorf("verifier: the %T store keeps no reports", s)
}

// failureDialect is what the stores' SQL differs in for ListFailures.
type failureDialect struct {
	// placeholder is the n-th (from 1) query parameter.
	placeholder func(n int) string
	// contains is a condition: the text in %s (a placeholder) occurs in
	// the lower-cased reason.
	contains string
}

// listFailures is ListFailures over either store: the failed instance
// exists, then the image ones, after the cursor, filtered; query runs one
// service's statement.
func listFailures(ctx context.Context, d failureDialect, f FailureFilter, after *FailureCursor, limit int,
	query func(ctx context.Context, q string, args []any, scan func(scanner) (FailedExists, error)) ([]FailedExists, error)) ([]FailedExists, error) {
	var out []FailedExists
	for _, svc := range []string{"nova", "glance"} {
		if f.Service != "" && f.Service != svc {
			continue
		}
		var from int64
		if after != nil {
			if after.Service == "glance" && svc == "nova" {
				continue // nova's were all returned before
			}
			if after.Service == svc {
				from = after.ID
			}
		}
		q := `SELECT id, message_id, event_type, instance, tenant, audit_begin, audit_end, received,
			fail_field, fail_expected, fail_actual, fail_reason FROM instance_exists`
		if svc == "glance" {
			q = `SELECT id, message_id, 'image.exists', uuid, owner, audit_begin, audit_end, received,
				fail_field, fail_expected, fail_actual, fail_reason FROM image_exists`
		}
		var args []any
		add := func(cond string, v any) {
			args = append(args, v)
			q += strings.Replace(cond, "%s", d.placeholder(len(args)), 1)
		}
		add(` WHERE status = 'failed' AND id > %s`, from)
		if !f.Begin.IsZero() {
			add(` AND audit_begin >= %s`, micro(f.Begin))
		}
		if !f.End.IsZero() {
			add(` AND audit_begin < %s`, micro(f.End))
		}
		if f.Field != "" {
			add(` AND fail_field = %s`, f.Field)
		}
		if f.Reason != "" {
			add(` AND `+d.contains, strings.ToLower(f.Reason))
		}
		add(` ORDER BY id LIMIT %s`, max(limit-len(out), 0))
		page, err := query(ctx, q, args, func(r scanner) (FailedExists, error) {
			e := FailedExists{Service: svc}
			var begin, end, received int64
			var ff, fe, fa, fr sql.NullString
			err := r.Scan(&e.ID, &e.MessageID, &e.EventType, &e.UUID, &e.Tenant, &begin, &end, &received, &ff, &fe, &fa, &fr)
			e.AuditBegin, e.AuditEnd, e.Received = fromMicro(begin), fromMicro(end), fromMicro(received)
			e.Failure = Failure{Field: ff.String, Expected: fe.String, Actual: fa.String, Reason: fr.String}
			return e, err
		})
		if err != nil {
			return nil, fmt.Errorf("list %s failures: %w", svc, err)
		}
		out = append(out, page...)
		if len(out) >= limit {
			break
		}
	}
	return out, nil
}
