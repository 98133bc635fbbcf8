// Package enricher is the mapping/enrichment service: it consumes raw record
// batches from the bus, completes and validates each record, pushes the
// batch to every messenger over gRPC, publishes it as enriched, and only
// then acks the bus message.
package enricher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tally-accounting/tally/pkg/apel"
	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/directory"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/metrics"
	"github.com/tally-accounting/tally/pkg/record"
	"github.com/tally-accounting/tally/pkg/rpc"
	"github.com/tally-accounting/tally/pkg/telemetry"
)

// Name is the service's name, its --target and its bus stage.
const Name = "enricher"

// Durable is the bus consumer every enricher replica shares.
const Durable = "enricher"

// Target is a messenger to push to. Addr is resolved at Start, so the
// all-in-one mode can point at a messenger bound to a random port.
type Target struct {
	Name string
	Addr func() string
}

// Deps are what the enricher is built from.
type Deps struct {
	Bus       func() *bus.Bus
	Telemetry *telemetry.Telemetry
	Metrics   *metrics.Metrics
	Logger    *slog.Logger
}

// Service is the enricher with the service lifecycle.
type Service struct {
	cfg     Config
	targets []Target
	deps    Deps
	logger  *slog.Logger

	bus      *bus.Bus
	consumer *bus.Consumer
	clients  []messengerClient
	mapper   *mapper
}

type messengerClient struct {
	name string
	conn *grpc.ClientConn
}

// New returns the enricher service.
func New(cfg Config, targets []Target, deps Deps) *Service {
	return &Service{cfg: cfg, targets: targets, deps: deps, logger: deps.Logger.With("service", Name)}
}

// Name implements service.Service.
func (s *Service) Name() string { return Name }

// Start dials the messengers and creates the bus consumer.
func (s *Service) Start(ctx context.Context) error {
	if len(s.targets) == 0 {
		return errors.New("no messengers configured: records would have nowhere to go (set enricher.messengers)")
	}
	if s.cfg.SiteName == "" {
		return errors.New("enricher.site_name is empty: APEL requires a SiteName on every record (set it, TALLY_ENRICHER_SITE_NAME or --site-name)")
	}
	s.bus = s.deps.Bus()
	dir, err := directory.Open(ctx, s.bus.JS)
	if err != nil {
		return err
	}
	var mapping map[string]string
	if s.cfg.MappingFile != "" {
		if mapping, err = LoadMappingFile(s.cfg.MappingFile); err != nil {
			return err
		}
		s.logger.Warn("mapping_file (voms.json) is deprecated: set the VO as the Keystone project property instead",
			"mapping_file", s.cfg.MappingFile, "vo_property", s.cfg.VOProperty)
	}
	mcfg := s.cfg
	mcfg.ServiceName = s.cfg.Service()
	s.mapper = &mapper{cfg: mcfg, dir: dir, mapping: mapping, logger: s.logger, unmapped: map[string]bool{}}
	for _, t := range s.targets {
		addr := t.Addr()
		conn, err := rpc.Dial(addr, s.deps.Telemetry)
		if err != nil {
			s.closeClients()
			return fmt.Errorf("messenger %s: %w", t.Name, err)
		}
		s.clients = append(s.clients, messengerClient{name: t.Name, conn: conn})
		s.logger.Info("pushing to messenger", "messenger", t.Name, "addr", addr)
	}
	s.consumer = s.bus.NewConsumer(bus.ConsumerConfig{
		Stream:         bus.RecordsStream,
		Durable:        Durable,
		FilterSubjects: []string{bus.RawAll},
		Workers:        s.cfg.Workers,
		Stage:          Name,
	}, s.handle, s.deps.Metrics)
	if err := s.consumer.Start(ctx); err != nil {
		s.closeClients()
		return err
	}
	return nil
}

// Run consumes until ctx ends.
func (s *Service) Run(ctx context.Context) error { return s.consumer.Run(ctx) }

// Stop drains in-flight batches, then closes the messenger connections.
func (s *Service) Stop(ctx context.Context) error {
	var err error
	if s.consumer != nil {
		err = s.consumer.Stop(ctx)
	}
	s.closeClients()
	return err
}

func (s *Service) closeClients() {
	for _, c := range s.clients {
		c.conn.Close()
	}
	s.clients = nil
}

// handle processes one raw batch. Returning nil acks it.
func (s *Service) handle(ctx context.Context, m *bus.Message) error {
	batch, err := bus.DecodeBatch(m)
	if err != nil {
		return err
	}
	valid := make([]*tallyv1.Record, 0, len(batch.GetRecords()))
	var firstReason error
	var held []string // projects of the dead-lettered records
	look := s.mapper.batch()
	for i, r := range batch.GetRecords() {
		s.deps.Metrics.RecordsIn.WithLabelValues(Name, record.TypeName(record.TypeOf(r))).Inc()
		err := Validate(r)
		if err == nil {
			err = look.enrich(ctx, r)
		}
		if err == nil {
			// What APEL would reject is caught here, with the field named,
			// not in a message the loader throws away whole.
			if verr := apel.Validate(r); verr != nil {
				err = &invalidError{msg: fmt.Sprintf("record %s: %v", r.GetKey(), verr)}
			}
		}
		var perm *bus.PermanentError
		if err != nil && !errors.As(err, &perm) && !isInvalid(err) {
			return err // the directory is unreachable: retry the batch
		}
		if err != nil {
			if err := s.deadLetterRecord(ctx, batch.GetBatchId(), i, r, err); err != nil {
				return err // retry the whole batch; nothing was pushed yet
			}
			if firstReason == nil {
				firstReason = err
			}
			if p := r.GetProvenance().GetProjectId(); !slices.Contains(held, p) {
				held = append(held, p)
			}
			continue
		}
		valid = append(valid, r)
	}
	if n := len(batch.GetRecords()) - len(valid); n > 0 {
		s.logger.Warn("records dead-lettered", "batch_id", batch.GetBatchId(), "count", n, "first_reason", firstReason)
	}
	// Marshalled once: the same bytes are the push to every messenger and
	// the enriched batch.
	data, err := proto.Marshal(&tallyv1.RecordBatch{BatchId: batch.GetBatchId(), Records: valid})
	if err != nil {
		return fmt.Errorf("marshal enriched batch %s: %w", batch.GetBatchId(), err)
	}
	if len(valid) > 0 {
		if err := s.pushAll(ctx, batch.GetBatchId(), encodedPush(data)); err != nil {
			return err
		}
	}
	// Published even when empty: the extractor waits for it to know the
	// batch is settled.
	return s.publishEnriched(ctx, bus.EnrichedFromRaw(m.Subject), batch.GetBatchId(), data, firstReason, held)
}

// publishEnriched publishes the enriched twin of a batch. When some records
// were dead-lettered it says so itself, with the reason: the extractor's
// tracker hears dead letters and enriched batches on two subscriptions,
// each dispatched by its own goroutine, so a record's dead letter can reach
// it after this message and the project's window would move past held
// records. Its message id differs from the raw batch's, which shares the
// stream and its duplicate window.
func (s *Service) publishEnriched(ctx context.Context, subject, batchID string, data []byte, reason error, held []string) error {
	h := nats.Header{}
	h.Set(bus.HeaderBatchID, batchID)
	if reason != nil {
		// Records of several projects share a batch: name the projects
		// held, so only their windows stay put.
		h.Set(bus.HeaderReason, "a record was dead-lettered: "+reason.Error())
		slices.Sort(held)
		h.Set(bus.HeaderHeldProjects, strings.Join(held, ","))
	}
	if _, err := s.bus.Publish(ctx, subject, "enriched/"+batchID, data, h); err != nil {
		return fmt.Errorf("publish enriched batch %s: %w", batchID, err)
	}
	return nil
}

// pushAll pushes req to every messenger at once; the batch is done only when
// all of them accepted it. A messenger that already has it answers
// "duplicate", so retrying after a partial failure is safe.
func (s *Service) pushAll(ctx context.Context, batchID string, req encodedPush) error {
	errs := make([]error, len(s.clients))
	var wg sync.WaitGroup
	for i, c := range s.clients {
		wg.Go(func() {
			resp := new(tallyv1.PushResponse)
			err := c.conn.Invoke(ctx, tallyv1.Messenger_Push_FullMethodName, req, resp, grpc.ForceCodecV2(pushCodec{}))
			if err != nil {
				s.deps.Metrics.Errors.WithLabelValues(Name, "push_"+c.name).Inc()
				if status.Code(err) == codes.InvalidArgument {
					err = bus.Permanent(err)
				}
				errs[i] = fmt.Errorf("push batch %s to %s: %w", batchID, c.name, err)
				return
			}
			if !resp.GetDuplicate() {
				s.logger.Debug("batch delivered", "batch_id", batchID, "messenger", c.name,
					"accepted", resp.GetAccepted(), "filtered", resp.GetFiltered())
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// encodedPush is a tallyv1.PushRequest already in wire form. PushRequest
// and RecordBatch have the same fields (TestPushRequestIsARecordBatch), so
// an enriched batch's bytes are its push.
type encodedPush []byte

// pushCodec sends an encodedPush as it is and anything else as the proto
// codec would.
type pushCodec struct{}

var protoCodec = encoding.GetCodecV2(grpcproto.Name)

func (pushCodec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.(encodedPush); ok {
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	return protoCodec.Marshal(v)
}

func (pushCodec) Unmarshal(data mem.BufferSlice, v any) error { return protoCodec.Unmarshal(data, v) }

// Name is the proto codec's, so the content type stays application/grpc+proto.
func (pushCodec) Name() string { return grpcproto.Name }

// deadLetterRecord sets one invalid record aside with the reason, so the
// rest of its batch can go on and nothing vanishes silently.
func (s *Service) deadLetterRecord(ctx context.Context, batchID string, i int, r *tallyv1.Record, reason error) error {
	data, err := proto.Marshal(&tallyv1.RecordBatch{BatchId: batchID, Records: []*tallyv1.Record{r}})
	if err != nil {
		return err
	}
	h := nats.Header{}
	h.Set(bus.HeaderReason, reason.Error())
	h.Set(bus.HeaderStage, Name)
	h.Set(bus.HeaderBatchID, batchID)
	h.Set(bus.HeaderRecordIndex, strconv.Itoa(i))
	if _, err := s.bus.Publish(ctx, bus.DeadLetterSubject(Name), fmt.Sprintf("%s/invalid/%d", batchID, i), data, h); err != nil {
		return fmt.Errorf("dead-letter record %d of %s: %w", i, batchID, err)
	}
	s.deps.Metrics.DeadLetters.WithLabelValues(Name).Inc()
	s.logger.Debug("invalid record dead-lettered", "batch_id", batchID, "record_key", r.GetKey(), "reason", reason)
	return nil
}
