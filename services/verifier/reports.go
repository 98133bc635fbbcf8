package verifier

import (
	"context"
	"errors"
	"fmt"
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
