package query

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/pagetoken"
	"github.com/tally-accounting/tally/pkg/rpc"
)

// Limits on requests.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
	// MaxFilterValues bounds each list in a filter.
	MaxFilterValues = 100
	// MaxValueLength bounds each string in a filter or key (APEL's column
	// width is 255; keys carry a prefix and a month).
	MaxValueLength = 512
)

// Server implements tallyv1.RecordQueryServer over a Store.
type Server struct {
	tallyv1.UnimplementedRecordQueryServer
	store  Store
	hub    *hub
	logger *slog.Logger
}

// NewServer returns the RecordQuery API over store alone: it sees no
// writes, so WatchRecords is Unimplemented (Service has the full API).
func NewServer(store Store, logger *slog.Logger) *Server {
	return newServer(store, nil, logger)
}

// newServer feeds watchers from h.
func newServer(store Store, h *hub, logger *slog.Logger) *Server {
	return &Server{store: store, hub: h, logger: logger}
}

var invalid = rpc.InvalidArgument

func (s *Server) internal(ctx context.Context, method string, err error) error {
	return rpc.Internal(ctx, s.logger, "record query failed", method, err)
}

// validateFilter checks a filter; field prefixes error messages.
func validateFilter(f *tallyv1.RecordFilter, field string) error {
	for i, t := range f.GetTypes() {
		if _, ok := tallyv1.RecordType_name[int32(t)]; !ok || t == tallyv1.RecordType_RECORD_TYPE_UNSPECIFIED {
			return invalid(fmt.Sprintf("%s.types[%d]", field, i), "%v is not a record type", t)
		}
	}
	lists := []struct {
		name string
		vals []string
	}{
		{"regions", f.GetRegions()}, {"sites", f.GetSites()}, {"project_ids", f.GetProjectIds()},
		{"vos", f.GetVos()}, {"users", f.GetUsers()}, {"statuses", f.GetStatuses()},
	}
	if len(f.GetTypes()) > MaxFilterValues {
		return invalid(field+".types", "more than %d values", MaxFilterValues)
	}
	for _, l := range lists {
		if len(l.vals) > MaxFilterValues {
			return invalid(field+"."+l.name, "more than %d values", MaxFilterValues)
		}
		for i, v := range l.vals {
			if v == "" || len(v) > MaxValueLength {
				return invalid(fmt.Sprintf("%s.%s[%d]", field, l.name, i), "empty or longer than %d bytes", MaxValueLength)
			}
		}
	}
	if f.GetStart() != nil {
		if err := f.GetStart().CheckValid(); err != nil {
			return invalid(field+".start", "%v", err)
		}
	}
	if f.GetEnd() != nil {
		if err := f.GetEnd().CheckValid(); err != nil {
			return invalid(field+".end", "%v", err)
		}
		if f.GetStart() != nil && !f.GetStart().AsTime().Before(f.GetEnd().AsTime()) {
			return invalid(field+".end", "%s is not after start %s", f.GetEnd().AsTime(), f.GetStart().AsTime())
		}
	}
	return nil
}

// GetRecord implements tallyv1.RecordQueryServer.
func (s *Server) GetRecord(ctx context.Context, req *tallyv1.GetRecordRequest) (*tallyv1.GetRecordResponse, error) {
	if req.GetKey() == "" || len(req.GetKey()) > MaxValueLength {
		return nil, invalid("key", "empty or longer than %d bytes", MaxValueLength)
	}
	rec, err := s.store.Get(ctx, req.GetKey())
	if errors.Is(err, ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "no record with key %q", req.GetKey())
	}
	if err != nil {
		return nil, s.internal(ctx, "GetRecord", err)
	}
	return &tallyv1.GetRecordResponse{Record: rec}, nil
}

// ListRecords implements tallyv1.RecordQueryServer.
func (s *Server) ListRecords(ctx context.Context, req *tallyv1.ListRecordsRequest) (*tallyv1.ListRecordsResponse, error) {
	if err := validateFilter(req.GetFilter(), "filter"); err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0 || size > MaxPageSize:
		return nil, invalid("page_size", "%d is not between 0 and %d", size, MaxPageSize)
	case size == 0:
		size = DefaultPageSize
	}
	fp := pagetoken.Fingerprint(req.GetFilter())
	var after *Cursor
	if req.GetPageToken() != "" {
		after = new(Cursor)
		if err := pagetoken.Decode(req.GetPageToken(), fp, after); err != nil {
			return nil, invalid("page_token", "%v", err)
		}
	}
	recs, next, err := s.store.List(ctx, req.GetFilter(), after, size)
	if err != nil {
		return nil, s.internal(ctx, "ListRecords", err)
	}
	resp := &tallyv1.ListRecordsResponse{Records: recs}
	if next != nil {
		resp.NextPageToken = pagetoken.Encode(*next, fp)
	}
	return resp, nil
}

// SummarizeUsage implements tallyv1.RecordQueryServer.
func (s *Server) SummarizeUsage(ctx context.Context, req *tallyv1.SummarizeUsageRequest) (*tallyv1.SummarizeUsageResponse, error) {
	if err := validateFilter(req.GetFilter(), "filter"); err != nil {
		return nil, err
	}
	for i, g := range req.GetGroupBy() {
		if groupExprs(g) == nil {
			return nil, invalid(fmt.Sprintf("group_by[%d]", i), "%v is not a dimension", g)
		}
	}
	metrics := req.GetMetrics()
	for i, m := range metrics {
		if _, ok := tallyv1.UsageMetric_name[int32(m)]; !ok || m == tallyv1.UsageMetric_USAGE_METRIC_UNSPECIFIED {
			return nil, invalid(fmt.Sprintf("metrics[%d]", i), "%v is not a metric", m)
		}
	}
	groups, err := s.store.Summarize(ctx, req.GetFilter(), req.GetGroupBy())
	if err != nil {
		return nil, s.internal(ctx, "SummarizeUsage", err)
	}
	if len(metrics) > 0 {
		for _, g := range groups {
			keepMetrics(g.GetValues(), metrics)
		}
	}
	return &tallyv1.SummarizeUsageResponse{Groups: groups}, nil
}

// keepMetrics clears the values not asked for.
func keepMetrics(v *tallyv1.UsageValues, ms []tallyv1.UsageMetric) {
	has := func(m tallyv1.UsageMetric) bool { return slices.Contains(ms, m) }
	if !has(tallyv1.UsageMetric_USAGE_METRIC_RECORD_COUNT) {
		v.RecordCount = nil
	}
	if !has(tallyv1.UsageMetric_USAGE_METRIC_WALL_HOURS) {
		v.WallHours = nil
	}
	if !has(tallyv1.UsageMetric_USAGE_METRIC_CPU_HOURS) {
		v.CpuHours = nil
	}
	if !has(tallyv1.UsageMetric_USAGE_METRIC_NORMALISED_CPU_HOURS) {
		v.NormalisedCpuHours = nil
	}
	if !has(tallyv1.UsageMetric_USAGE_METRIC_GPU_HOURS) {
		v.GpuHours = nil
	}
	if !has(tallyv1.UsageMetric_USAGE_METRIC_STORAGE_GB_HOURS) {
		v.StorageGbHours = nil
	}
	if !has(tallyv1.UsageMetric_USAGE_METRIC_PUBLIC_IP_COUNT) {
		v.PublicIpCount = nil
	}
}

// WatchRecords implements tallyv1.RecordQueryServer.
func (s *Server) WatchRecords(req *tallyv1.WatchRecordsRequest, stream tallyv1.RecordQuery_WatchRecordsServer) error {
	if err := validateFilter(req.GetFilter(), "filter"); err != nil {
		return err
	}
	if s.hub == nil {
		return status.Error(codes.Unimplemented, "this server does not receive records")
	}
	w, err := s.hub.subscribe(req.GetFilter())
	if err != nil {
		return err
	}
	defer s.hub.unsubscribe(w)
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-w.dropped:
			return status.Errorf(codes.ResourceExhausted, "watcher fell more than %d records behind and was dropped; watch again", cap(w.ch))
		case <-s.hub.closed:
			return status.Error(codes.Unavailable, "the query service is stopping")
		case r := <-w.ch:
			if err := stream.Send(&tallyv1.WatchRecordsResponse{Record: r}); err != nil {
				return err
			}
		}
	}
}
