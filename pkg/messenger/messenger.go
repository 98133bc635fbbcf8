// Package messenger is the server side of the Messenger gRPC service that
// every destination (SSM spool, Logstash, record store, noop) implements:
// batch-id idempotency, the record type filter and metrics live here, so a
// destination only writes records.
package messenger

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/metrics"
	"github.com/tally-accounting/tally/pkg/record"
)

// Sink writes records to one destination. Write returns only when the
// records are durable (written, or durably buffered).
type Sink interface {
	Write(ctx context.Context, batchID string, records []*tallyv1.Record) error
}

// ErrRejected marks records a sink can never accept (a bad record, not an
// unavailable destination); the enricher dead-letters the batch.
var ErrRejected = errors.New("rejected")

// Discard is the noop sink: it accepts and forgets.
type Discard struct{}

// Write implements Sink.
func (Discard) Write(context.Context, string, []*tallyv1.Record) error { return nil }

// Server implements tallyv1.MessengerServer over a Sink.
type Server struct {
	tallyv1.UnimplementedMessengerServer
	name    string
	sink    Sink
	ledger  *Ledger
	types   map[tallyv1.RecordType]bool
	metrics *metrics.Metrics
	logger  *slog.Logger

	locksMu sync.Mutex
	locks   map[string]*batchLock
}

type batchLock struct {
	sync.Mutex
	refs int
}

// NewServer returns a messenger called name (e.g. "ssm") that writes the
// record types in types to sink.
func NewServer(name string, sink Sink, ledger *Ledger, types map[tallyv1.RecordType]bool, m *metrics.Metrics, logger *slog.Logger) *Server {
	return &Server{name: name, sink: sink, ledger: ledger, types: types, metrics: m, logger: logger.With("messenger", name), locks: map[string]*batchLock{}}
}

// Push implements tallyv1.MessengerServer.
func (s *Server) Push(ctx context.Context, req *tallyv1.PushRequest) (*tallyv1.PushResponse, error) {
	id := req.GetBatchId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "batch_id is empty")
	}
	// Two pushes of one batch at once (a redelivery racing a slow first
	// attempt) must not both write.
	unlock := s.lock(id)
	defer unlock()
	if s.ledger.Seen(id) {
		return &tallyv1.PushResponse{Duplicate: true}, nil
	}
	keep := make([]*tallyv1.Record, 0, len(req.GetRecords()))
	for _, r := range req.GetRecords() {
		if s.types[record.TypeOf(r)] {
			keep = append(keep, r)
		}
	}
	if len(keep) > 0 {
		if err := s.sink.Write(ctx, id, keep); err != nil {
			s.metrics.Errors.WithLabelValues("messenger-"+s.name, "write").Inc()
			if errors.Is(err, ErrRejected) {
				return nil, status.Errorf(codes.InvalidArgument, "%s: %v", s.name, err)
			}
			return nil, status.Errorf(codes.Unavailable, "%s: %v", s.name, err)
		}
	}
	if err := s.ledger.Record(id); err != nil {
		// The records are written but not noted: a redelivery would write
		// them again, so report failure loudly.
		s.logger.Error("batch written but not recorded in the ledger", "batch_id", id, "error", err)
		return nil, status.Errorf(codes.Internal, "%s: %v", s.name, err)
	}
	for _, r := range keep {
		s.metrics.RecordsOut.WithLabelValues("messenger-"+s.name, s.name, record.TypeName(record.TypeOf(r))).Inc()
	}
	return &tallyv1.PushResponse{Accepted: int32(len(keep)), Filtered: int32(len(req.GetRecords()) - len(keep))}, nil
}

func (s *Server) lock(id string) func() {
	s.locksMu.Lock()
	l, ok := s.locks[id]
	if !ok {
		l = &batchLock{}
		s.locks[id] = l
	}
	l.refs++
	s.locksMu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		s.locksMu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(s.locks, id)
		}
		s.locksMu.Unlock()
	}
}

// String names the messenger in logs.
func (s *Server) String() string { return fmt.Sprintf("messenger %s", s.name) }
