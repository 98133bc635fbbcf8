package verifier

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/pagetoken"
	"github.com/tally-accounting/tally/pkg/rpc"
)

// Limits on Verification requests.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
	maxValueLength  = 512
)

// API implements tallyv1.VerificationServer. It is registered on the
// public listener before the verifier has opened its store, so it answers
// Unavailable until Attach and again after Detach.
type API struct {
	tallyv1.UnimplementedVerificationServer
	logger *slog.Logger
	now    func() time.Time

	// mu is held for reading through every call, so Detach waits for the
	// calls using the stores before they are closed.
	mu      sync.RWMutex
	store   Store
	reports ReportStore
	records RecordSource
}

// NewAPI returns the API with nothing attached.
func NewAPI(logger *slog.Logger) *API {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &API{logger: logger.With("service", Name), now: time.Now}
}

// Attach makes the API answer from the stores; records may be nil (the
// cross-check then answers FailedPrecondition).
func (a *API) Attach(store Store, reports ReportStore, records RecordSource) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.store, a.reports, a.records = store, reports, records
}

// Detach waits for the calls in flight and makes the API Unavailable.
func (a *API) Detach() { a.Attach(nil, nil, nil) }

type stores struct {
	store   Store
	reports ReportStore
	records RecordSource
}

// acquire returns the attached stores with the read lock held; release it
// with a.mu.RUnlock.
func (a *API) acquire() (stores, error) {
	a.mu.RLock()
	if a.store == nil || a.reports == nil {
		a.mu.RUnlock()
		return stores{}, status.Error(codes.Unavailable, "the verifier's store is not open (the verifier is starting or stopping)")
	}
	return stores{a.store, a.reports, a.records}, nil
}

var invalid = rpc.InvalidArgument

func (a *API) internal(ctx context.Context, method string, err error) error {
	return rpc.Internal(ctx, a.logger, "verification API call failed", method, err)
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func checkTime(field string, t *timestamppb.Timestamp) (time.Time, error) {
	if t == nil {
		return time.Time{}, nil
	}
	if err := t.CheckValid(); err != nil {
		return time.Time{}, invalid(field, "%v", err)
	}
	return t.AsTime(), nil
}

func checkPageSize(n int32) (int, error) {
	switch {
	case n < 0 || n > MaxPageSize:
		return 0, invalid("page_size", "%d is not between 0 and %d", n, MaxPageSize)
	case n == 0:
		return DefaultPageSize, nil
	}
	return int(n), nil
}

var statusProto = map[Status]tallyv1.ExistsStatus{
	StatusPending: tallyv1.ExistsStatus_EXISTS_STATUS_PENDING, StatusVerifying: tallyv1.ExistsStatus_EXISTS_STATUS_VERIFYING,
	StatusVerified: tallyv1.ExistsStatus_EXISTS_STATUS_VERIFIED, StatusFailed: tallyv1.ExistsStatus_EXISTS_STATUS_FAILED,
}

var kindNames = map[tallyv1.ExistsKind]string{tallyv1.ExistsKind_EXISTS_KIND_NOVA: "nova", tallyv1.ExistsKind_EXISTS_KIND_GLANCE: "glance"}

func kindOf(service string) tallyv1.ExistsKind {
	for k, n := range kindNames {
		if n == service {
			return k
		}
	}
	return tallyv1.ExistsKind_EXISTS_KIND_UNSPECIFIED
}

// checkKind returns the service a kind names, "" for unspecified.
func checkKind(k tallyv1.ExistsKind) (string, error) {
	if k == tallyv1.ExistsKind_EXISTS_KIND_UNSPECIFIED {
		return "", nil
	}
	if n, ok := kindNames[k]; ok {
		return n, nil
	}
	return "", invalid("kind", "%v is not EXISTS_KIND_NOVA or EXISTS_KIND_GLANCE", k)
}

var periodNames = map[tallyv1.AuditPeriod]string{
	tallyv1.AuditPeriod_AUDIT_PERIOD_HOUR: "hour", tallyv1.AuditPeriod_AUDIT_PERIOD_DAY: "day",
	tallyv1.AuditPeriod_AUDIT_PERIOD_MONTH: "month", tallyv1.AuditPeriod_AUDIT_PERIOD_YEAR: "year",
	tallyv1.AuditPeriod_AUDIT_PERIOD_CUSTOM: "custom",
}

func periodOf(name string) tallyv1.AuditPeriod {
	for p, n := range periodNames {
		if n == name {
			return p
		}
	}
	return tallyv1.AuditPeriod_AUDIT_PERIOD_UNSPECIFIED
}

// resolvePeriod turns a request's period fields into [begin, end).
func resolvePeriod(p tallyv1.AuditPeriod, at, start, end *timestamppb.Timestamp, now time.Time) (name string, b, e time.Time, err error) {
	if p == tallyv1.AuditPeriod_AUDIT_PERIOD_UNSPECIFIED {
		p = tallyv1.AuditPeriod_AUDIT_PERIOD_DAY
	}
	name, ok := periodNames[p]
	if !ok {
		return "", b, e, invalid("period", "%v is not a period", p)
	}
	if name == "custom" {
		if at != nil {
			return "", b, e, invalid("at", "is not used with AUDIT_PERIOD_CUSTOM: give start and end")
		}
		if start == nil || end == nil {
			field := "start"
			if start != nil {
				field = "end"
			}
			return "", b, e, invalid(field, "is required with AUDIT_PERIOD_CUSTOM")
		}
		if b, err = checkTime("start", start); err != nil {
			return "", b, e, err
		}
		if e, err = checkTime("end", end); err != nil {
			return "", b, e, err
		}
		if !b.Before(e) {
			return "", b, e, invalid("end", "%s is not after start %s", e.Format(time.RFC3339), b.Format(time.RFC3339))
		}
		return name, b, e, nil
	}
	if start != nil || end != nil {
		field := "start"
		if start == nil {
			field = "end"
		}
		return "", b, e, invalid(field, "is only used with AUDIT_PERIOD_CUSTOM; %s periods are chosen with at", name)
	}
	if at != nil {
		if now, err = checkTime("at", at); err != nil {
			return "", b, e, err
		}
	}
	b, e, err = PreviousPeriod(now, name)
	if err != nil {
		return "", b, e, invalid("period", "%v", err)
	}
	return name, b, e, nil
}

// ---- page tokens (pkg/pagetoken) ----

// fingerprint digests a request without its paging fields.
func fingerprint(m proto.Message, clear func(proto.Message)) uint64 {
	c := proto.Clone(m)
	clear(c)
	return pagetoken.Fingerprint(c)
}

func decodeToken(s string, fp uint64, pos any) error {
	if err := pagetoken.Decode(s, fp, pos); err != nil {
		return invalid("page_token", "%v", err)
	}
	return nil
}

// ---- RPCs ----

func failureProto(f *Failure) *tallyv1.VerificationFailure {
	if f == nil {
		return nil
	}
	return &tallyv1.VerificationFailure{Field: f.Field, Expected: f.Expected, Actual: f.Actual, Reason: f.Reason}
}

// GetInstanceStatus implements tallyv1.VerificationServer.
func (a *API) GetInstanceStatus(ctx context.Context, req *tallyv1.GetInstanceStatusRequest) (*tallyv1.GetInstanceStatusResponse, error) {
	id := req.GetInstance()
	if id == "" || len(id) > maxValueLength {
		return nil, invalid("instance", "empty or longer than %d bytes", maxValueLength)
	}
	s, err := a.acquire()
	if err != nil {
		return nil, err
	}
	defer a.mu.RUnlock()
	launches, err := s.store.Launches(ctx, id)
	if err != nil {
		return nil, a.internal(ctx, "GetInstanceStatus", err)
	}
	deletes, err := s.store.Deletes(ctx, id)
	if err != nil {
		return nil, a.internal(ctx, "GetInstanceStatus", err)
	}
	exists, err := s.store.InstanceExistsList(ctx, ExistsFilter{UUID: id})
	if err != nil {
		return nil, a.internal(ctx, "GetInstanceStatus", err)
	}
	if len(launches) == 0 && len(exists) == 0 {
		return nil, status.Errorf(codes.NotFound, "instance %q: no launch and no exists notification seen", id)
	}
	resp := &tallyv1.GetInstanceStatusResponse{Instance: id}
	for _, l := range launches {
		pl := &tallyv1.InstanceLaunch{LaunchedAt: ts(l.LaunchedAt), Tenant: l.Tenant, FlavorId: l.InstanceFlavorID, FlavorName: l.FlavorName}
		for _, d := range deletes {
			if sameSecond(d.LaunchedAt, l.LaunchedAt) {
				pl.DeletedAt = ts(d.DeletedAt)
			}
		}
		resp.Launches = append(resp.Launches, pl)
	}
	for _, e := range exists {
		resp.Exists = append(resp.Exists, &tallyv1.InstanceExistsStatus{Id: e.ID, MessageId: e.MessageID, EventType: e.EventType,
			Tenant: e.Usage.Tenant, FlavorId: e.Usage.InstanceFlavorID, FlavorName: e.Usage.FlavorName,
			LaunchedAt: ts(e.Usage.LaunchedAt), DeletedAt: ts(e.DeletedAt), AuditPeriodBeginning: ts(e.AuditBegin),
			AuditPeriodEnding: ts(e.AuditEnd), Received: ts(e.Received), Status: statusProto[e.Status], Failure: failureProto(e.Failure)})
	}
	return resp, nil
}

// ListFailures implements tallyv1.VerificationServer.
func (a *API) ListFailures(ctx context.Context, req *tallyv1.ListFailuresRequest) (*tallyv1.ListFailuresResponse, error) {
	svc, err := checkKind(req.GetKind())
	if err != nil {
		return nil, err
	}
	f := FailureFilter{Service: svc, Field: req.GetField(), Reason: req.GetReason()}
	if f.Begin, err = checkTime("start", req.GetStart()); err != nil {
		return nil, err
	}
	if f.End, err = checkTime("end", req.GetEnd()); err != nil {
		return nil, err
	}
	if !f.Begin.IsZero() && !f.End.IsZero() && !f.Begin.Before(f.End) {
		return nil, invalid("end", "%s is not after start %s", f.End.Format(time.RFC3339), f.Begin.Format(time.RFC3339))
	}
	if len(f.Field) > maxValueLength {
		return nil, invalid("field", "longer than %d bytes", maxValueLength)
	}
	if len(f.Reason) > maxValueLength {
		return nil, invalid("reason", "longer than %d bytes", maxValueLength)
	}
	size, err := checkPageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	fp := fingerprint(req, func(m proto.Message) {
		r := m.(*tallyv1.ListFailuresRequest)
		r.PageSize, r.PageToken = 0, ""
	})
	var after *FailureCursor
	if req.GetPageToken() != "" {
		after = &FailureCursor{}
		if err := decodeToken(req.GetPageToken(), fp, after); err != nil {
			return nil, err
		}
	}
	s, err := a.acquire()
	if err != nil {
		return nil, err
	}
	defer a.mu.RUnlock()
	list, err := s.reports.ListFailures(ctx, f, after, size+1)
	if err != nil {
		return nil, a.internal(ctx, "ListFailures", err)
	}
	resp := &tallyv1.ListFailuresResponse{}
	if len(list) > size {
		list = list[:size]
		last := list[size-1]
		resp.NextPageToken = pagetoken.Encode(FailureCursor{Service: last.Service, ID: last.ID}, fp)
	}
	for _, e := range list {
		resp.Failures = append(resp.Failures, &tallyv1.FailedExists{Kind: kindOf(e.Service), Id: e.ID, MessageId: e.MessageID,
			EventType: e.EventType, Uuid: e.UUID, Tenant: e.Tenant, AuditPeriodBeginning: ts(e.AuditBegin),
			AuditPeriodEnding: ts(e.AuditEnd), Received: ts(e.Received), Failure: failureProto(&e.Failure)})
	}
	return resp, nil
}

func countsProto(c StatusCounts) *tallyv1.ExistsCounts {
	return &tallyv1.ExistsCounts{Count: int32(c.Count), Verified: int32(c.Verified), Failed: int32(c.Failed),
		Pending: int32(c.Pending), Verifying: int32(c.Verifying)}
}

// AuditProto converts a report; id 0 and a zero created for one computed
// for the caller.
func AuditProto(id int64, period string, created time.Time, r *AuditReport) *tallyv1.AuditReport {
	kind := kindOf(r.Service)
	out := &tallyv1.AuditReport{Id: id, Kind: kind, Period: periodOf(period), PeriodBeginning: ts(r.PeriodBegin),
		PeriodEnding: ts(r.PeriodEnd), Created: ts(created), Periodic: countsProto(r.Summary["periodic"]),
		Instantaneous: countsProto(r.Summary["instantaneous"])}
	for _, f := range r.ExistFails {
		out.ExistFails = append(out.ExistFails, &tallyv1.FailedExists{Kind: kind, Id: f.ID, MessageId: f.MessageID, EventType: f.EventType,
			Uuid: f.UUID, Failure: &tallyv1.VerificationFailure{Field: f.Field, Expected: f.Expected, Actual: f.Actual, Reason: f.Reason}})
	}
	for _, m := range r.MissingExists {
		out.MissingExists = append(out.MissingExists, &tallyv1.MissingExists{Uuid: m.UUID, EventType: m.EventType,
			LaunchedAt: ts(m.LaunchedAt), Reason: m.Reason})
	}
	return out
}

// GetAudit implements tallyv1.VerificationServer.
func (a *API) GetAudit(ctx context.Context, req *tallyv1.GetAuditRequest) (*tallyv1.GetAuditResponse, error) {
	if req.GetId() < 0 {
		return nil, invalid("id", "%d is not a report id", req.GetId())
	}
	if req.GetId() > 0 {
		if req.GetKind() != 0 || req.GetPeriod() != 0 || req.GetAt() != nil || req.GetStart() != nil || req.GetEnd() != nil {
			return nil, invalid("id", "a stored report is chosen by id alone: leave kind, period, at, start and end unset")
		}
		s, err := a.acquire()
		if err != nil {
			return nil, err
		}
		defer a.mu.RUnlock()
		st, err := s.reports.GetAudit(ctx, req.GetId())
		if errors.Is(err, ErrReportNotFound) {
			return nil, status.Errorf(codes.NotFound, "no stored audit with id %d", req.GetId())
		}
		if err != nil {
			return nil, a.internal(ctx, "GetAudit", err)
		}
		return &tallyv1.GetAuditResponse{Report: AuditProto(st.ID, st.Period, st.Created, st.Report)}, nil
	}
	svc, err := checkKind(req.GetKind())
	if err != nil {
		return nil, err
	}
	if svc == "" {
		return nil, invalid("kind", "is required (EXISTS_KIND_NOVA or EXISTS_KIND_GLANCE) unless id is given")
	}
	now := a.now()
	period, begin, end, err := resolvePeriod(req.GetPeriod(), req.GetAt(), req.GetStart(), req.GetEnd(), now)
	if err != nil {
		return nil, err
	}
	s, err := a.acquire()
	if err != nil {
		return nil, err
	}
	defer a.mu.RUnlock()
	r, err := Audit(ctx, s.store, svc, begin, end)
	if err != nil {
		return nil, a.internal(ctx, "GetAudit", err)
	}
	return &tallyv1.GetAuditResponse{Report: AuditProto(0, period, now, r)}, nil
}

// ListAudits implements tallyv1.VerificationServer.
func (a *API) ListAudits(ctx context.Context, req *tallyv1.ListAuditsRequest) (*tallyv1.ListAuditsResponse, error) {
	svc, err := checkKind(req.GetKind())
	if err != nil {
		return nil, err
	}
	size, err := checkPageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	fp := fingerprint(req, func(m proto.Message) {
		r := m.(*tallyv1.ListAuditsRequest)
		r.PageSize, r.PageToken = 0, ""
	})
	var before int64
	if req.GetPageToken() != "" {
		if err := decodeToken(req.GetPageToken(), fp, &before); err != nil {
			return nil, err
		}
	}
	s, err := a.acquire()
	if err != nil {
		return nil, err
	}
	defer a.mu.RUnlock()
	list, err := s.reports.ListAudits(ctx, AuditListFilter{Service: svc, BeforeID: before, Limit: size + 1})
	if err != nil {
		return nil, a.internal(ctx, "ListAudits", err)
	}
	resp := &tallyv1.ListAuditsResponse{}
	if len(list) > size {
		list = list[:size]
		resp.NextPageToken = pagetoken.Encode(list[size-1].ID, fp)
	}
	for _, st := range list {
		r := st.Report
		resp.Audits = append(resp.Audits, &tallyv1.AuditSummary{Id: st.ID, Kind: kindOf(r.Service), Period: periodOf(st.Period),
			PeriodBeginning: ts(r.PeriodBegin), PeriodEnding: ts(r.PeriodEnd), Created: ts(st.Created),
			Periodic: countsProto(r.Summary["periodic"]), Instantaneous: countsProto(r.Summary["instantaneous"]),
			ExistFailCount: int32(len(r.ExistFails)), MissingExistsCount: int32(len(r.MissingExists))})
	}
	return resp, nil
}

// InstanceHours implements tallyv1.VerificationServer.
func (a *API) InstanceHours(ctx context.Context, req *tallyv1.InstanceHoursRequest) (*tallyv1.InstanceHoursResponse, error) {
	_, begin, end, err := resolvePeriod(req.GetPeriod(), req.GetAt(), req.GetStart(), req.GetEnd(), a.now())
	if err != nil {
		return nil, err
	}
	s, err := a.acquire()
	if err != nil {
		return nil, err
	}
	defer a.mu.RUnlock()
	r, err := InstanceHours(ctx, s.store, begin, end)
	if err != nil {
		return nil, a.internal(ctx, "InstanceHours", err)
	}
	resp := &tallyv1.InstanceHoursResponse{PeriodBeginning: ts(r.PeriodBegin), PeriodEnding: ts(r.PeriodEnd),
		TotalInstanceCount: int32(r.TotalInstances), TotalHours: r.TotalHours, TotalUnitHours: r.TotalUnitHours}
	for _, g := range r.Groups {
		resp.Groups = append(resp.Groups, &tallyv1.InstanceHoursGroup{Tenant: g.Tenant, FlavorId: g.FlavorID, FlavorName: g.FlavorName,
			InstanceCount: int32(g.Instances), Hours: g.Hours, UnitHours: g.UnitHours, PercentHours: g.PercentHours})
	}
	return resp, nil
}

// crossCheckOptions reads a request's threshold and project.
func crossCheckOptions(req *tallyv1.CrossCheckRequest) (CrossCheckOptions, error) {
	opt := DefaultCrossCheckOptions()
	opt.Project = req.GetProjectId()
	if len(opt.Project) > maxValueLength {
		return opt, invalid("project_id", "longer than %d bytes", maxValueLength)
	}
	if d := req.GetThreshold(); d != nil {
		if err := d.CheckValid(); err != nil {
			return opt, invalid("threshold", "%v", err)
		}
		if opt.Threshold = d.AsDuration(); opt.Threshold < 0 {
			return opt, invalid("threshold", "%s is negative", opt.Threshold)
		}
	}
	if req.ThresholdPercent != nil {
		p := req.GetThresholdPercent()
		if math.IsNaN(p) || p < 0 || p > 100 {
			return opt, invalid("threshold_percent", "%g is not between 0 and 100", p)
		}
		opt.ThresholdPercent = p
	}
	return opt, nil
}

// CrossCheckProto converts a cross-check report.
func CrossCheckProto(r *CrossCheckReport) *tallyv1.CrossCheckResponse {
	sec := func(s int64) *durationpb.Duration { return durationpb.New(time.Duration(s) * time.Second) }
	kinds := map[string]tallyv1.CrossCheckMismatchKind{
		OnlyInNotifications: tallyv1.CrossCheckMismatchKind_CROSS_CHECK_MISMATCH_KIND_ONLY_IN_NOTIFICATIONS,
		OnlyInRecords:       tallyv1.CrossCheckMismatchKind_CROSS_CHECK_MISMATCH_KIND_ONLY_IN_RECORDS,
		WallTimeDiffers:     tallyv1.CrossCheckMismatchKind_CROSS_CHECK_MISMATCH_KIND_WALL_TIME,
	}
	out := &tallyv1.CrossCheckResponse{PeriodBeginning: ts(r.PeriodBegin), ComparedUntil: ts(r.ComparedUntil),
		Threshold: sec(r.ThresholdSeconds), ThresholdPercent: r.ThresholdPercent, MismatchCount: int32(r.Mismatches)}
	for _, p := range r.Projects {
		pp := &tallyv1.CrossCheckProject{ProjectId: p.Project, NotifiedVms: int32(p.NotifiedVMs), RecordedVms: int32(p.RecordedVMs),
			NotifiedHours: p.NotifiedHours, RecordedHours: p.RecordedHours}
		for _, m := range p.Mismatches {
			pp.Mismatches = append(pp.Mismatches, &tallyv1.CrossCheckMismatch{Kind: kinds[m.Kind], VmUuid: m.VM,
				NotifiedWall: sec(m.NotifiedSeconds), RecordedWall: sec(m.RecordedSeconds), Difference: sec(m.DifferenceSeconds), Reason: m.Reason})
		}
		out.Projects = append(out.Projects, pp)
	}
	sort.Slice(out.Projects, func(i, j int) bool { return out.Projects[i].ProjectId < out.Projects[j].ProjectId })
	return out
}

// CrossCheck implements tallyv1.VerificationServer.
func (a *API) CrossCheck(ctx context.Context, req *tallyv1.CrossCheckRequest) (*tallyv1.CrossCheckResponse, error) {
	if req.GetStart() == nil {
		return nil, invalid("start", "is required")
	}
	if req.GetEnd() == nil {
		return nil, invalid("end", "is required")
	}
	begin, err := checkTime("start", req.GetStart())
	if err != nil {
		return nil, err
	}
	end, err := checkTime("end", req.GetEnd())
	if err != nil {
		return nil, err
	}
	if !begin.Before(end) {
		return nil, invalid("end", "%s is not after start %s", end.Format(time.RFC3339), begin.Format(time.RFC3339))
	}
	opt, err := crossCheckOptions(req)
	if err != nil {
		return nil, err
	}
	s, err := a.acquire()
	if err != nil {
		return nil, err
	}
	defer a.mu.RUnlock()
	if s.records == nil {
		return nil, status.Error(codes.FailedPrecondition,
			"no record store in this process: the cross-check reads the query service's record store (enable query, or set query.store)")
	}
	r, err := CrossCheck(ctx, s.store, s.records, begin, end, opt)
	if err != nil {
		return nil, a.internal(ctx, "CrossCheck", err)
	}
	return CrossCheckProto(r), nil
}

var _ tallyv1.VerificationServer = (*API)(nil)
