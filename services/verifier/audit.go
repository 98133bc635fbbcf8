package verifier

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// Usage audits (StackTach's nova_usage_audit / glance_usage_audit, §1.10):
// per period, the exists by status and kind, the failed ones with their
// reason, and what should have had an exists and had none.

// AuditReport is one audit, ready for JSON.
type AuditReport struct {
	Service     string    `json:"service"` // nova or glance
	PeriodBegin time.Time `json:"period_begin"`
	PeriodEnd   time.Time `json:"period_end"`
	// Summary counts exists whose audit period begins at PeriodBegin,
	// "periodic" (the whole period) and "instantaneous" (sent by a resize
	// or a delete for part of it).
	Summary       map[string]StatusCounts `json:"summary"`
	ExistFails    []ExistFail             `json:"exist_fails"`
	MissingExists []MissingExists         `json:"missing_exists"`
}

// StatusCounts counts exists by status.
type StatusCounts struct {
	Count     int `json:"count"`
	Verified  int `json:"verified"`
	Failed    int `json:"failed"`
	Pending   int `json:"pending"`
	Verifying int `json:"verifying"`
}

func (c *StatusCounts) add(s Status) {
	c.Count++
	switch s {
	case StatusVerified:
		c.Verified++
	case StatusFailed:
		c.Failed++
	case StatusPending:
		c.Pending++
	case StatusVerifying:
		c.Verifying++
	}
}

// ExistFail is one failed exists.
type ExistFail struct {
	ID        int64  `json:"id"`
	MessageID string `json:"message_id"`
	EventType string `json:"event_type"`
	UUID      string `json:"uuid"`
	Field     string `json:"field"`
	Expected  string `json:"expected"`
	Actual    string `json:"actual"`
	Reason    string `json:"reason"`
}

// MissingExists is an instance (per notification format) or image that
// was in use during the period and has no periodic exists for it.
type MissingExists struct {
	UUID       string    `json:"uuid"`
	EventType  string    `json:"event_type"`
	LaunchedAt time.Time `json:"launched_at,omitzero"`
	Reason     string    `json:"reason"`
}

// PreviousPeriod is the last whole UTC period before now: hour, day, month
// or year (StackTach documented day|year and accepted hour|day).
func PreviousPeriod(now time.Time, period string) (begin, end time.Time, err error) {
	now = now.UTC()
	switch period {
	case "hour":
		end = now.Truncate(time.Hour)
		return end.Add(-time.Hour), end, nil
	case "day":
		end = time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
		return end.AddDate(0, 0, -1), end, nil
	case "month":
		end = time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
		return end.AddDate(0, -1, 0), end, nil
	case "year":
		end = time.Date(now.Year(), 1, 1, 0, 0, 0, 0, time.UTC)
		return end.AddDate(-1, 0, 0), end, nil
	}
	return time.Time{}, time.Time{}, fmt.Errorf("period %q: want hour, day, month or year", period)
}

// Audit reports on service ("nova" or "glance") for [begin, end).
func Audit(ctx context.Context, s Store, service string, begin, end time.Time) (*AuditReport, error) {
	r := &AuditReport{Service: service, PeriodBegin: begin, PeriodEnd: end,
		Summary: map[string]StatusCounts{"periodic": {}, "instantaneous": {}}, ExistFails: []ExistFail{}, MissingExists: []MissingExists{}}
	kind := func(apb, ape time.Time) string {
		if ape.Sub(apb) >= end.Sub(begin) {
			return "periodic"
		}
		return "instantaneous"
	}
	count := func(k string, st Status) {
		c := r.Summary[k]
		c.add(st)
		r.Summary[k] = c
	}
	switch service {
	case "nova":
		all, err := s.InstanceExistsList(ctx, ExistsFilter{})
		if err != nil {
			return nil, err
		}
		// covered[format][instance]: a periodic exists was sent.
		covered := map[string]map[string]bool{}
		for _, e := range all {
			if !e.AuditBegin.Equal(begin) || e.AuditEnd.After(end) {
				continue
			}
			k := kind(e.AuditBegin, e.AuditEnd)
			count(k, e.Status)
			if e.Failure != nil {
				r.ExistFails = append(r.ExistFails, ExistFail{ID: e.ID, MessageID: e.MessageID, EventType: e.EventType,
					UUID: e.Usage.Instance, Field: e.Failure.Field, Expected: e.Failure.Expected, Actual: e.Failure.Actual, Reason: e.Failure.Reason})
			}
			if k == "periodic" {
				if covered[e.EventType] == nil {
					covered[e.EventType] = map[string]bool{}
				}
				covered[e.EventType][e.Usage.Instance] = true
			}
		}
		if len(covered) == 0 {
			covered["compute.instance.exists"] = map[string]bool{}
		}
		live, err := liveInstances(ctx, s, begin, end)
		if err != nil {
			return nil, err
		}
		for format, have := range covered {
			for _, l := range live {
				if !have[l.Instance] {
					r.MissingExists = append(r.MissingExists, MissingExists{UUID: l.Instance, EventType: format, LaunchedAt: l.LaunchedAt,
						Reason: fmt.Sprintf("no %s for instance %s (launched at %s) for %s - %s", format, l.Instance,
							fmtTime(l.LaunchedAt), fmtTime(begin), fmtTime(end))})
				}
			}
		}
	case "glance":
		all, err := s.ImageExistsList(ctx, ExistsFilter{})
		if err != nil {
			return nil, err
		}
		have := map[string]bool{}
		for _, e := range all {
			if !e.AuditBegin.Equal(begin) || e.AuditEnd.After(end) {
				continue
			}
			k := kind(e.AuditBegin, e.AuditEnd)
			count(k, e.Status)
			if e.Failure != nil {
				r.ExistFails = append(r.ExistFails, ExistFail{ID: e.ID, MessageID: e.MessageID, EventType: "image.exists",
					UUID: e.Image.UUID, Field: e.Failure.Field, Expected: e.Failure.Expected, Actual: e.Failure.Actual, Reason: e.Failure.Reason})
			}
			if k == "periodic" {
				have[e.Image.UUID] = true
			}
		}
		images, err := s.AllImages(ctx)
		if err != nil {
			return nil, err
		}
		for _, im := range images {
			if im.CreatedAt.IsZero() || !im.CreatedAt.Before(end) || have[im.UUID] {
				continue
			}
			dels, err := s.ImageDeletes(ctx, im.UUID)
			if err != nil {
				return nil, err
			}
			if len(dels) > 0 && dels[0].DeletedAt.Before(begin) {
				continue
			}
			r.MissingExists = append(r.MissingExists, MissingExists{UUID: im.UUID, EventType: "image.exists",
				Reason: fmt.Sprintf("no image.exists for image %s for %s - %s", im.UUID, fmtTime(begin), fmtTime(end))})
		}
	default:
		return nil, fmt.Errorf("audit: service %q: want nova or glance", service)
	}
	sort.Slice(r.MissingExists, func(i, j int) bool {
		a, b := r.MissingExists[i], r.MissingExists[j]
		return a.EventType+a.UUID < b.EventType+b.UUID
	})
	return r, nil
}

// liveInstances returns, per instance in use during [begin, end), its
// latest launch before end: launched before end and not deleted before
// begin.
func liveInstances(ctx context.Context, s Store, begin, end time.Time) ([]InstanceUsage, error) {
	launches, err := s.AllLaunches(ctx)
	if err != nil {
		return nil, err
	}
	deletes, err := s.AllDeletes(ctx)
	if err != nil {
		return nil, err
	}
	deletedAt := map[string]time.Time{} // instance/launch second -> deleted_at
	for _, d := range deletes {
		deletedAt[fmt.Sprintf("%s/%d", d.Instance, d.LaunchedAt.Unix())] = d.DeletedAt
	}
	latest := map[string]InstanceUsage{}
	var order []string
	for _, l := range launches {
		if !l.LaunchedAt.Before(end) {
			continue
		}
		if _, ok := latest[l.Instance]; !ok {
			order = append(order, l.Instance)
		}
		if cur, ok := latest[l.Instance]; !ok || l.LaunchedAt.After(cur.LaunchedAt) {
			latest[l.Instance] = l
		}
	}
	var out []InstanceUsage
	for _, id := range order {
		l := latest[id]
		if d, ok := deletedAt[fmt.Sprintf("%s/%d", id, l.LaunchedAt.Unix())]; ok && d.Before(begin) {
			continue
		}
		out = append(out, l)
	}
	return out, nil
}
