package enricher_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/bus/bustest"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/messenger"
	"github.com/tally-accounting/tally/pkg/metrics"
	"github.com/tally-accounting/tally/pkg/record"
	"github.com/tally-accounting/tally/pkg/rpc"
	"github.com/tally-accounting/tally/pkg/service"
	"github.com/tally-accounting/tally/pkg/telemetry"
	"github.com/tally-accounting/tally/services/enricher"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sink records what a messenger was asked to write.
type sink struct {
	mu      sync.Mutex
	records map[string]int
	failFor int // fail this many writes first
}

func (s *sink) Write(_ context.Context, batchID string, rs []*tallyv1.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if strings.HasPrefix(batchID, "reject") {
		return fmt.Errorf("record 1: %w", messenger.ErrRejected)
	}
	if s.failFor > 0 {
		s.failFor--
		return io.ErrUnexpectedEOF
	}
	for _, r := range rs {
		s.records[r.GetKey()]++
	}
	return nil
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.records)
}

type pipeline struct {
	bus   *bus.Bus
	sinks []*sink
	spans *tracetest.InMemoryExporter
	tel   *telemetry.Telemetry
}

// startPipeline runs, over real transports, the enricher and n messengers on
// loopback gRPC servers, with an embedded JetStream server.
func startPipeline(t *testing.T, n int, failFirst int) *pipeline {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	spans := tracetest.NewInMemoryExporter()
	tel := telemetry.WithSpanProcessors(nil, sdktrace.WithSyncer(spans))
	b, _ := bustest.Start(t, tel)
	m := metrics.New()
	var services []service.Service
	var targets []enricher.Target
	p := &pipeline{bus: b, spans: spans, tel: tel}
	for i := range n {
		sk := &sink{records: map[string]int{}, failFor: failFirst}
		p.sinks = append(p.sinks, sk)
		ledger, err := messenger.OpenLedger(filepath.Join(t.TempDir(), "ledger"), 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ledger.Close() })
		types, _ := record.ParseTypes(nil)
		srv := rpc.NewServer("messenger", "127.0.0.1:0", tel, logger)
		tallyv1.RegisterMessengerServer(srv.GRPC, messenger.NewServer("m", sk, ledger, types, m, logger))
		services = append(services, srv)
		targets = append(targets, enricher.Target{Name: "m" + string(rune('0'+i)), Addr: srv.Addr})
	}
	services = append(services, enricher.New(enricher.Config{Workers: 2, SiteName: "SITE", VOProperty: "VO", DefaultVO: "vo.test"}, targets,
		enricher.Deps{Bus: func() *bus.Bus { return b }, Telemetry: tel, Metrics: m, Logger: logger}))
	mgr := service.NewManager(logger, 5*time.Second, services...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	return p
}

func cloudRecord(key string) *tallyv1.Record {
	return &tallyv1.Record{
		Key:        key,
		Provenance: &tallyv1.Provenance{Region: "RegionOne", Extractor: "extractor-nova"},
		Payload: &tallyv1.Record_Cloud{Cloud: &tallyv1.CloudRecord{VmUuid: key, SiteName: "SITE", Status: "started",
			StartTime: timestamppb.New(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)), WallDuration: 1, CpuDuration: 1}},
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOneTraceAcrossThePipeline follows one extraction from the extractor's
// span through the bus, the enricher and the gRPC call into the messenger.
func TestOneTraceAcrossThePipeline(t *testing.T) {
	p := startPipeline(t, 1, 0)
	ctx, root := p.tel.Tracer("extractor-nova").Start(t.Context(), "extract RegionOne")
	batch := &tallyv1.RecordBatch{BatchId: "trace-1", Records: []*tallyv1.Record{cloudRecord("vm-1"), cloudRecord("vm-2")}}
	if _, err := p.bus.PublishBatch(ctx, bus.RawSubject("RegionOne", tallyv1.RecordType_RECORD_TYPE_CLOUD), batch); err != nil {
		t.Fatal(err)
	}
	root.End()
	waitFor(t, "the messenger to get both records", func() bool { return p.sinks[0].count() == 2 })

	want := map[string]trace.SpanKind{
		"extract RegionOne":                              trace.SpanKindInternal,
		"publish tally.records.raw.RegionOne.cloud":      trace.SpanKindProducer,
		"process tally.records.raw.RegionOne.cloud":      trace.SpanKindConsumer,
		"tally.v1.Messenger/Push":                        trace.SpanKindClient,
		"publish tally.records.enriched.RegionOne.cloud": trace.SpanKindProducer,
	}
	traceID := root.SpanContext().TraceID()
	var serverPush bool
	waitFor(t, "every span to end", func() bool {
		found := map[string]bool{}
		serverPush = false
		for _, s := range p.spans.GetSpans() {
			if s.SpanContext.TraceID() != traceID {
				continue
			}
			if kind, ok := want[s.Name]; ok && kind == s.SpanKind {
				found[s.Name] = true
			}
			if s.Name == "tally.v1.Messenger/Push" && s.SpanKind == trace.SpanKindServer {
				serverPush = true
			}
		}
		return len(found) == len(want) && serverPush
	})
	for _, s := range p.spans.GetSpans() {
		if _, ok := want[s.Name]; ok && s.SpanContext.TraceID() != traceID {
			t.Errorf("span %q is in trace %s, want %s", s.Name, s.SpanContext.TraceID(), traceID)
		}
	}
}

func TestEveryMessengerGetsEveryRecordOnce(t *testing.T) {
	// The first write of each messenger fails: the batch is retried and a
	// messenger that already took it must not take it twice.
	p := startPipeline(t, 2, 1)
	for i := range 5 {
		batch := &tallyv1.RecordBatch{BatchId: "b" + string(rune('0'+i)), Records: []*tallyv1.Record{cloudRecord("vm-" + string(rune('a'+i)))}}
		if _, err := p.bus.PublishBatch(t.Context(), bus.RawSubject("RegionOne", tallyv1.RecordType_RECORD_TYPE_CLOUD), batch); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range p.sinks {
		waitFor(t, "all records at a messenger", func() bool { return s.count() == 5 })
		s.mu.Lock()
		for k, n := range s.records {
			if n != 1 {
				t.Errorf("messenger %d got %s %d times", i, k, n)
			}
		}
		s.mu.Unlock()
	}
}

func TestInvalidRecordsAreDeadLetteredNotDropped(t *testing.T) {
	p := startPipeline(t, 1, 0)
	bad := &tallyv1.Record{Key: "no-payload"}
	batch := &tallyv1.RecordBatch{BatchId: "mixed", Records: []*tallyv1.Record{cloudRecord("good"), bad}}
	if _, err := p.bus.PublishBatch(t.Context(), bus.RawSubject("RegionOne", tallyv1.RecordType_RECORD_TYPE_CLOUD), batch); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the valid record", func() bool { return p.sinks[0].count() == 1 })
	stream, err := p.bus.JS.Stream(t.Context(), bus.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the dead letter", func() bool {
		info, err := stream.Info(t.Context())
		return err == nil && info.State.Msgs == 1
	})
	msg, err := stream.GetMsg(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if reason := msg.Header.Get(bus.HeaderReason); reason != "record no-payload has no payload" {
		t.Errorf("reason = %q", reason)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  enricher.Config
		ok   bool
	}{
		{"default", enricher.DefaultConfig(), true},
		{"zero workers", enricher.Config{Workers: 0}, false},
		{"messenger without address", enricher.Config{Workers: 1, VOProperty: "VO", Messengers: []enricher.MessengerTarget{{Name: "ssm"}}}, false},
		{"messenger twice", enricher.Config{Workers: 1, VOProperty: "VO", Messengers: []enricher.MessengerTarget{{Name: "ssm", Address: "a:1"}, {Name: "ssm", Address: "b:1"}}}, false},
		{"no vo property", enricher.Config{Workers: 1}, false},
		{"messengers", enricher.Config{Workers: 1, VOProperty: "VO", Messengers: []enricher.MessengerTarget{{Name: "ssm", Address: "a:1"}}}, true},
	}
	for _, tt := range tests {
		if err := tt.cfg.Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v", tt.name, err)
		}
	}
}

// TestTrackerSeesEveryOutcome is how an extractor learns that its batches
// were delivered before it moves its window.
func TestTrackerSeesEveryOutcome(t *testing.T) {
	p := startPipeline(t, 1, 0)
	tr, err := p.bus.NewTracker("RegionOne")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	batches := map[string][]*tallyv1.Record{
		"ok":          {cloudRecord("vm-ok")},
		"invalid-one": {cloudRecord("vm-x"), {Key: "empty"}},
		"reject-all":  {cloudRecord("vm-r")},
		"all-invalid": {{Key: "empty2"}},
		"mixed-projects": {withProject(cloudRecord("vm-p1"), "p1"), withProject(&tallyv1.Record{Key: "bad-p2"}, "p2"),
			withProject(cloudRecord("vm-p3"), "p3")},
	}
	var ids []string
	for id, rs := range batches {
		ids = append(ids, id)
		if _, err := p.bus.PublishBatch(t.Context(), bus.RawSubject("RegionOne", tallyv1.RecordType_RECORD_TYPE_CLOUD), &tallyv1.RecordBatch{BatchId: id, Records: rs}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	got, reasons := tr.Wait(ctx, ids)
	want := map[string]bus.Outcome{"ok": bus.Delivered, "invalid-one": bus.Failed, "reject-all": bus.Failed, "all-invalid": bus.Failed,
		"mixed-projects": bus.Failed}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("batch %s: %v, want %v (reason %q)", id, got[id], w, reasons[id])
		}
		if w == bus.Failed && reasons[id] == "" {
			t.Errorf("batch %s failed without a reason", id)
		}
	}
	// A batch shared by projects names the ones whose records were held,
	// so the others' windows can move.
	if got := tr.FailedProjects("mixed-projects"); !slices.Equal(got, []string{"p2"}) {
		t.Errorf("held projects = %q, want [p2]", got)
	}
	if got := tr.FailedProjects("reject-all"); len(got) != 0 {
		t.Errorf("a batch refused whole names projects %q", got)
	}
}

func withProject(r *tallyv1.Record, project string) *tallyv1.Record {
	if r.Provenance == nil {
		r.Provenance = &tallyv1.Provenance{}
	}
	r.Provenance.ProjectId = project
	return r
}

// TestEnrichedBatchesAreStored: the enriched twin shares the stream with
// its raw batch, so it must not reuse the raw message id.
func TestEnrichedBatchesAreStored(t *testing.T) {
	p := startPipeline(t, 1, 0)
	batch := &tallyv1.RecordBatch{BatchId: "stored", Records: []*tallyv1.Record{cloudRecord("vm-s")}}
	if _, err := p.bus.PublishBatch(t.Context(), bus.RawSubject("RegionOne", tallyv1.RecordType_RECORD_TYPE_CLOUD), batch); err != nil {
		t.Fatal(err)
	}
	stream, err := p.bus.JS.Stream(t.Context(), bus.RecordsStream)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the enriched batch in the stream", func() bool {
		info, err := stream.Info(t.Context(), jetstream.WithSubjectFilter(bus.EnrichedAll))
		return err == nil && info.State.Subjects["tally.records.enriched.RegionOne.cloud"] == 1
	})
}
