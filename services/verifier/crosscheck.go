package verifier

import (
	"context"
	"fmt"
	"math"
	"sort"
	"time"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// The cross-check, beyond StackTach: the usage the verified exists prove
// (an instance, its tenant, launched_at, deleted_at, over its audit
// periods) against the cloud records the Nova extractor produced from the
// APIs. Either source can be wrong: a lost notification, a VM the API no
// longer lists, a clock or a window bug. Two sources that agree are the
// accounting's evidence.

// CloudUsage is what one cloud record claims of a VM.
type CloudUsage struct {
	VM      string
	Project string
	Start   time.Time
	// End is zero while the VM ran at the end of the record's window.
	End time.Time
	// Wall is the record's WallDuration: from Start to End, or to the
	// window's end while the VM runs.
	Wall time.Duration
	// Until is the end of the extraction window the record came from.
	Until time.Time
}

// CloudUsageOf reads a cloud record; ok is false for other records.
func CloudUsageOf(r *tallyv1.Record) (u CloudUsage, ok bool) {
	c := r.GetCloud()
	if c == nil || c.GetVmUuid() == "" {
		return u, false
	}
	u = CloudUsage{VM: c.GetVmUuid(), Project: c.GetLocalGroupId(), Wall: time.Duration(c.GetWallDuration()) * time.Second}
	if u.Project == "" {
		u.Project = r.GetProvenance().GetProjectId()
	}
	if c.GetStartTime() != nil {
		u.Start = c.GetStartTime().AsTime()
	}
	if c.GetEndTime() != nil {
		u.End = c.GetEndTime().AsTime()
	}
	if w := r.GetProvenance().GetWindowTo(); w != nil {
		u.Until = w.AsTime()
	}
	return u, true
}

// RecordSource reads the record store's cloud records.
//
// It is an interface of the verifier's own, not the query service's Store
// or its RecordQuery client, so that the verifier's module does not depend
// on the query service; tally serve and tally audit back it with the
// record store's read interface (query.Store): in one process the store is
// at hand, and in the split deployment the record store is a PostgreSQL
// database the verifier's process opens as the query service does, where a
// RecordQuery client would need the API's address and a token of its own.
type RecordSource interface {
	// CloudUsage returns the cloud records overlapping [from, to) of one
	// project (every project if empty).
	CloudUsage(ctx context.Context, from, to time.Time, project string) ([]CloudUsage, error)
}

// Mismatch kinds of the cross-check.
const (
	OnlyInNotifications = "only_in_notifications"
	OnlyInRecords       = "only_in_records"
	WallTimeDiffers     = "wall_time"
)

// CrossCheckOptions tune the cross-check.
type CrossCheckOptions struct {
	// Project limits it to one project.
	Project string
	// A wall-time difference is reported when it exceeds both Threshold
	// and ThresholdPercent of the larger wall time: an absolute bound
	// alone flags long-running VMs for the extraction's lag, a relative
	// one alone flags short VMs for seconds.
	Threshold        time.Duration
	ThresholdPercent float64
}

// DefaultCrossCheckOptions are 1 h and 5 %.
func DefaultCrossCheckOptions() CrossCheckOptions {
	return CrossCheckOptions{Threshold: time.Hour, ThresholdPercent: 5}
}

// CrossCheckReport is the cross-check, ready for JSON. Durations are whole
// seconds.
type CrossCheckReport struct {
	PeriodBegin time.Time `json:"period_begin"`
	PeriodEnd   time.Time `json:"period_end"`
	// ComparedUntil is where the comparison stopped: the end of the
	// period, or earlier where either source does not reach it yet (the
	// last extraction window, the last settled audit period).
	ComparedUntil    time.Time           `json:"compared_until"`
	ThresholdSeconds int64               `json:"threshold_seconds"`
	ThresholdPercent float64             `json:"threshold_percent"`
	Projects         []CrossCheckProject `json:"projects"`
	Mismatches       int                 `json:"mismatch_count"`
}

// CrossCheckProject is one project's comparison.
type CrossCheckProject struct {
	Project       string               `json:"project_id"`
	NotifiedVMs   int                  `json:"notified_vms"`
	RecordedVMs   int                  `json:"recorded_vms"`
	NotifiedHours float64              `json:"notified_hours"`
	RecordedHours float64              `json:"recorded_hours"`
	Mismatches    []CrossCheckMismatch `json:"mismatches"`
}

// CrossCheckMismatch is one VM the sources disagree about.
type CrossCheckMismatch struct {
	Kind            string `json:"kind"`
	VM              string `json:"vm_uuid"`
	NotifiedSeconds int64  `json:"notified_seconds"`
	RecordedSeconds int64  `json:"recorded_seconds"`
	// DifferenceSeconds is recorded minus notified.
	DifferenceSeconds int64  `json:"difference_seconds"`
	Reason            string `json:"reason"`
}

type span struct{ from, to time.Time }

// spans is a set of time intervals; length counts overlaps once (the
// legacy and versioned copies of an exists prove the same hour).
type spans []span

func (s spans) clip(from, to time.Time) spans {
	var out spans
	for _, x := range s {
		if x.from.Before(from) {
			x.from = from
		}
		if x.to.After(to) {
			x.to = to
		}
		if x.to.After(x.from) {
			out = append(out, x)
		}
	}
	return out
}

func (s spans) length() time.Duration {
	sorted := append(spans(nil), s...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].from.Before(sorted[j].from) })
	var total time.Duration
	var cur span
	for i, x := range sorted {
		switch {
		case i == 0:
			cur = x
		case !x.from.After(cur.to):
			if x.to.After(cur.to) {
				cur.to = x.to
			}
		default:
			total += cur.to.Sub(cur.from)
			cur = x
		}
	}
	if len(sorted) > 0 {
		total += cur.to.Sub(cur.from)
	}
	return total
}

type vmUsage struct {
	project string
	spans   spans
}

// CrossCheck compares, per project, [begin, end) of the verified exists in
// s with the cloud records of src.
func CrossCheck(ctx context.Context, s Store, src RecordSource, begin, end time.Time, opt CrossCheckOptions) (*CrossCheckReport, error) {
	if !begin.Before(end) {
		return nil, fmt.Errorf("cross-check: period end %s is not after its beginning %s", end, begin)
	}
	if opt.Threshold < 0 || opt.ThresholdPercent < 0 {
		return nil, fmt.Errorf("cross-check: negative threshold %s or %g%%", opt.Threshold, opt.ThresholdPercent)
	}
	verified, err := s.InstanceExistsList(ctx, ExistsFilter{Status: StatusVerified})
	if err != nil {
		return nil, err
	}
	notified := map[string]*vmUsage{}
	var provenUntil time.Time
	for _, e := range verified {
		if !e.AuditBegin.Before(end) || !e.AuditEnd.After(begin) || (opt.Project != "" && e.Usage.Tenant != opt.Project) {
			continue
		}
		if e.AuditEnd.After(provenUntil) {
			provenUntil = e.AuditEnd
		}
		x := span{e.AuditBegin, e.AuditEnd}
		if e.Usage.LaunchedAt.After(x.from) {
			x.from = e.Usage.LaunchedAt
		}
		if !e.DeletedAt.IsZero() && e.DeletedAt.Before(x.to) {
			x.to = e.DeletedAt
		}
		u := notified[e.Usage.Instance]
		if u == nil {
			u = &vmUsage{project: e.Usage.Tenant}
			notified[e.Usage.Instance] = u
		}
		u.spans = append(u.spans, x)
	}
	records, err := src.CloudUsage(ctx, begin, end, opt.Project)
	if err != nil {
		return nil, fmt.Errorf("cross-check: read the record store: %w", err)
	}
	recorded := map[string]*vmUsage{}
	var extractedUntil time.Time
	for _, r := range records {
		if opt.Project != "" && r.Project != opt.Project {
			continue
		}
		if r.Until.After(extractedUntil) {
			extractedUntil = r.Until
		}
		x := span{r.Start, r.End}
		if r.End.IsZero() {
			x.to = r.Start.Add(r.Wall)
		}
		u := recorded[r.VM]
		if u == nil {
			u = &vmUsage{project: r.Project}
			recorded[r.VM] = u
		}
		u.spans = append(u.spans, x)
	}
	// Each source is compared only as far as both reach: past the last
	// extraction window or the last settled audit period, one of them
	// cannot know yet.
	until := end
	for _, t := range []time.Time{provenUntil, extractedUntil} {
		if t.After(begin) && t.Before(until) {
			until = t
		}
	}
	rep := &CrossCheckReport{PeriodBegin: begin, PeriodEnd: end, ComparedUntil: until,
		ThresholdSeconds: int64(opt.Threshold / time.Second), ThresholdPercent: opt.ThresholdPercent, Projects: []CrossCheckProject{}}
	projects := map[string]*CrossCheckProject{}
	project := func(id string) *CrossCheckProject {
		p := projects[id]
		if p == nil {
			p = &CrossCheckProject{Project: id, Mismatches: []CrossCheckMismatch{}}
			projects[id] = p
		}
		return p
	}
	vms := map[string]bool{}
	for vm := range notified {
		vms[vm] = true
	}
	for vm := range recorded {
		vms[vm] = true
	}
	for vm := range vms {
		var n, r time.Duration
		var owner string
		if u := recorded[vm]; u != nil {
			r, owner = u.spans.clip(begin, until).length(), u.project
		}
		if u := notified[vm]; u != nil {
			// The tenant the verified exists name is the project of record.
			n, owner = u.spans.clip(begin, until).length(), u.project
		}
		if n == 0 && r == 0 {
			continue // outside the compared part of the period
		}
		p := project(owner)
		if n > 0 {
			p.NotifiedVMs++
			p.NotifiedHours += n.Hours()
		}
		if r > 0 {
			p.RecordedVMs++
			p.RecordedHours += r.Hours()
		}
		m := CrossCheckMismatch{VM: vm, NotifiedSeconds: int64(n / time.Second), RecordedSeconds: int64(r / time.Second),
			DifferenceSeconds: int64((r - n) / time.Second)}
		window := fmt.Sprintf("%s - %s", fmtTime(begin), fmtTime(until))
		switch {
		case r == 0:
			m.Kind = OnlyInNotifications
			m.Reason = fmt.Sprintf("%s: verified exists prove %s of use in %s; the record store has no cloud record of it", vm, n, window)
		case n == 0:
			m.Kind = OnlyInRecords
			m.Reason = fmt.Sprintf("%s: a cloud record claims %s of use in %s; no verified exists proves it", vm, r, window)
		default:
			diff := (r - n).Abs()
			tolerance := max(opt.Threshold, time.Duration(math.Round(opt.ThresholdPercent/100*float64(max(r, n)))))
			if diff <= tolerance {
				continue
			}
			m.Kind = WallTimeDiffers
			m.Reason = fmt.Sprintf("%s: the cloud records claim %s of use in %s, the verified exists prove %s: %s apart, more than %s",
				vm, r, window, n, diff, tolerance)
			if o := recorded[vm].project; o != owner {
				m.Reason += fmt.Sprintf(" (the record names project %s)", o)
			}
		}
		p.Mismatches = append(p.Mismatches, m)
		rep.Mismatches++
	}
	for _, p := range projects {
		sort.Slice(p.Mismatches, func(i, j int) bool { return p.Mismatches[i].VM < p.Mismatches[j].VM })
		rep.Projects = append(rep.Projects, *p)
	}
	sort.Slice(rep.Projects, func(i, j int) bool { return rep.Projects[i].Project < rep.Projects[j].Project })
	return rep, nil
}
