package verifier

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sync/errgroup"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/bus/bustest"
	"github.com/tally-accounting/tally/pkg/telemetry"
	"github.com/tally-accounting/tally/services/verifier/bridge"
	"github.com/tally-accounting/tally/services/verifier/internal/rabbittest"
	"github.com/tally-accounting/tally/services/verifier/oslo"
)

// benchNotification is a legacy Nova notification in the v2 envelope, the
// size of the recorded ones.
func benchNotification(i int, eventType string, launched time.Time) []byte {
	id := benchInstanceID(i / 2)
	payload := map[string]any{"tenant_id": "c9a9ee822ef148159e0fc394466a970e", "instance_id": id,
		"instance_type": "m1.plain", "instance_type_id": 1, "instance_flavor_id": "1ccc9366-063c-4f4f-b477-a794abc91618",
		"launched_at": launched.Format("2006-01-02T15:04:05.000000"), "deleted_at": "", "terminated_at": "",
		"memory_mb": 512, "vcpus": 1, "root_gb": 1, "host": "compute1", "state": "active", "display_name": "vm-" + id,
		"image_meta": map[string]string{"base_image_ref": "ded715ba-9c11-4878-97fc-1e833382c15b", "min_disk": "1"},
		"metadata":   map[string]string{"purpose": "bench"}}
	if eventType == "compute.instance.exists" {
		payload["audit_period_beginning"] = "2026-11-23 11:00:00"
		payload["audit_period_ending"] = "2026-11-23 12:00:00"
	}
	inner, _ := json.Marshal(map[string]any{"message_id": benchMessageID(i), "publisher_id": "compute.compute1",
		"event_type": eventType, "priority": "INFO", "payload": payload, "timestamp": "2026-11-23 12:00:16.000000",
		"_context_request_id": "req-" + id, "_context_project_id": "c9a9ee822ef148159e0fc394466a970e"})
	b, _ := json.Marshal(map[string]string{"oslo.version": "2.0", "oslo.message": string(inner)})
	return b
}

// benchInstanceID is the k-th instance's id: a UUID from a hash of k, as
// random as the ones Nova gives, so that every table and index keyed by
// the instance takes a new instance at a random place, as in production.
// TALLY_BENCH_IDS=sequential gives ids in order ("0000002a-0000-4000-
// 8000-00000000002a"), as the figures before 2026-11-25 did.
func benchInstanceID(k int) string {
	if benchSequentialIDs {
		return fmt.Sprintf("%08x-0000-4000-8000-%012x", k, k)
	}
	return benchUUID("instance" + strconv.Itoa(k))
}

// benchMessageID is the i-th notification's message_id: a UUID, as
// oslo.messaging gives every notification (the recorded ones have them),
// so that the exists' dedup key lands at a random place too.
// TALLY_BENCH_IDS=sequential gives "bench-<i>", as before 2026-11-25.
func benchMessageID(i int) string {
	if benchSequentialIDs {
		return "bench-" + strconv.Itoa(i)
	}
	return benchUUID("message" + strconv.Itoa(i))
}

func benchUUID(seed string) string {
	h := sha256.Sum256([]byte(seed))
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

var benchSequentialIDs = os.Getenv("TALLY_BENCH_IDS") == "sequential"

// benchNotifications is TALLY_BENCH_NOTIFICATIONS, 20000 when unset.
func benchNotifications() int {
	if s := os.Getenv("TALLY_BENCH_NOTIFICATIONS"); s != "" {
		n, _ := strconv.Atoi(s)
		return n
	}
	return 20000
}

// benchClock is the verifier's clock in the benchmarks: inside the
// exists' audit period until settled, then past its settle time, so that
// verification waits until everything is ingested, as settle_time makes
// it wait in production.
func benchClock(settled *atomic.Bool) func() time.Time {
	return func() time.Time {
		if settled.Load() {
			return time.Date(2026, 11, 23, 13, 0, 0, 0, time.UTC)
		}
		return time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC)
	}
}

// benchBodies makes benchNotification's bodies from two templates, byte
// for byte the same, at a fraction of the cost: at a million
// notifications, marshalling each one would take a good part of the CPU
// the benchmark means to measure.
type benchBodies struct{ create, exists [][]byte }

// Placeholders benchNotification's output cannot otherwise contain.
const benchID = 0x7edcba98

func newBenchBodies(launched time.Time) *benchBodies {
	split := func(ev string) [][]byte {
		b := benchNotification(2*benchID+1, ev, launched)
		b = bytes.ReplaceAll(b, []byte(benchMessageID(2*benchID+1)), []byte("\x00m"))
		b = bytes.ReplaceAll(b, []byte(benchInstanceID(benchID)), []byte("\x00i"))
		return bytes.Split(b, []byte("\x00"))
	}
	return &benchBodies{create: split("compute.instance.create.end"), exists: split("compute.instance.exists")}
}

// body is benchNotification(i, ...), create.end for even i, exists for odd.
func (t *benchBodies) body(i int) []byte {
	parts := t.create
	if i%2 == 1 {
		parts = t.exists
	}
	id := benchInstanceID(i / 2)
	out := make([]byte, 0, 1400)
	out = append(out, parts[0]...)
	for _, p := range parts[1:] {
		switch p[0] {
		case 'm':
			out = append(out, benchMessageID(i)...)
		case 'i':
			out = append(out, id...)
		}
		out = append(out, p[1:]...)
	}
	return out
}

// BenchmarkBridgeToVerifier sends TALLY_BENCH_NOTIFICATIONS (default
// 20000) notifications, half create.end and half exists, through RabbitMQ,
// notify-bridge, JetStream and the verifier, and reports notifications per
// second until the last exists is verified, with the memory and CPU it
// took. Issue #7's target is measured at a million (about 4 GB of disk
// under $TMPDIR and a few minutes):
//
//	TALLY_BENCH_NOTIFICATIONS=1000000 go test -run '^$' -bench BenchmarkBridgeToVerifier -benchtime 1x ./services/verifier/
//
// TALLY_BENCH_MODE chooses what the clock covers:
//
//   - backlog (the default): the notifications wait in RabbitMQ's queue
//     before the bridge and the verifier start, as after an outage or at a
//     first start; the clock runs from the bridge's start. It measures
//     bridge → verifier alone: on a 2-core machine, publishing a million
//     notifications while they are consumed takes RabbitMQ and this process
//     about a core of their own, which in production is spent on the
//     OpenStack services' and RabbitMQ's machines.
//   - live: the clock runs from the first publish, publishing and
//     consuming at once.
//
// cpu-µs/notification counts this process only (bridge, embedded
// JetStream, verifier, and in live mode the publishing); RabbitMQ's is its
// own, reported as rabbitmq-cpu-µs/notification when the broker runs on
// this machine (one process named beam.smp), since both share its cores.
// TALLY_BENCH_HEAP=<file> writes a heap profile once everything is in the
// verifier's store, to see what the memory holds at its largest.
// TALLY_BENCH_DUPLICATE_WINDOW (nats.notifications.duplicate_window, 2m by
// default, which holds every id of a run) set to a few seconds shows what
// JetStream's remembered ids cost the collector.
func BenchmarkBridgeToVerifier(b *testing.B) {
	n, backlog := benchNotifications(), benchBacklog(b)
	for b.Loop() {
		runBench(b, n, backlog, throughVerifier)
	}
}

// BenchmarkBridge is BenchmarkBridgeToVerifier without the verifier:
// RabbitMQ → notify-bridge → JetStream alone, the clock stopped once the
// stream holds every notification. Its CPU and RabbitMQ's are the share of
// the whole run that the verifier's store and pass do not change.
//
//	TALLY_BENCH_NOTIFICATIONS=1000000 go test -run '^$' -bench 'BenchmarkBridge$' -benchtime 1x ./services/verifier/
func BenchmarkBridge(b *testing.B) {
	n, backlog := benchNotifications(), benchBacklog(b)
	for b.Loop() {
		runBench(b, n, backlog, toBus)
	}
}

// BenchmarkBridgeToReader is BenchmarkBridgeToVerifier with a store that
// keeps nothing: the verifier consumes each notification from JetStream,
// reads it into its batch and acks it, but writes nothing and has nothing
// to verify. It is the floor under the store: what the transport the issue
// prescribes, and the reading, cost before a single row is written, the
// clock stopped once the verifier acked every notification.
//
//	TALLY_BENCH_NOTIFICATIONS=1000000 go test -run '^$' -bench 'BenchmarkBridgeToReader$' -benchtime 1x ./services/verifier/
func BenchmarkBridgeToReader(b *testing.B) {
	n, backlog := benchNotifications(), benchBacklog(b)
	for b.Loop() {
		runBench(b, n, backlog, toReader)
	}
}

// benchStage is how far a benchmark's notifications go.
type benchStage int

const (
	toBus           benchStage = iota // stored in JetStream
	toReader                          // read by the verifier, nothing stored
	throughVerifier                   // stored by the verifier and verified
)

// discardWrites is a store that applies no batch, for BenchmarkBridgeToReader.
type discardWrites struct{ Store }

func (discardWrites) ApplyBatch(context.Context, *Batch) error { return nil }

// benchBacklog is TALLY_BENCH_MODE: true for backlog (the default).
func benchBacklog(b *testing.B) bool {
	switch m := os.Getenv("TALLY_BENCH_MODE"); m {
	case "", "backlog":
		return true
	case "live":
		return false
	default:
		b.Fatalf("TALLY_BENCH_MODE=%q: want backlog or live", m)
		return false
	}
}

// runBench runs one benchmark of n notifications through the bridge, and
// as far as stage says.
func runBench(b *testing.B, n int, backlog bool, stage benchStage) {
	verify := stage != toBus
	broker := rabbittest.Connect(b)
	bs, emb := bustest.Start(b, nil)
	if w := os.Getenv("TALLY_BENCH_DUPLICATE_WINDOW"); w != "" {
		benchDuplicateWindow(b, emb, w)
	}
	// Warnings show, so that a stall (a redelivery, a retried publish) is seen.
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	exchange, queue := broker.Prefix+".nova", broker.Prefix+".q"
	bcfg := bridge.DefaultConfig()
	bcfg.Topics = map[string][]bridge.Binding{exchange: {{Queue: queue, RoutingKey: "notifications.info", Service: "nova"}}}
	broker.Track([]string{exchange}, []string{queue})
	launched := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	bodies := newBenchBodies(launched)
	publish := func() {
		for i := range n {
			broker.Publish(exchange, "notifications.info", bodies.body(i))
		}
	}
	var published time.Duration
	if backlog {
		// Declared as the bridge declares them, so that the queue holds
		// what is published before the bridge starts.
		if err := broker.Ch.ExchangeDeclare(exchange, "topic", bcfg.DurableExchanges, false, false, false, nil); err != nil {
			b.Fatal(err)
		}
		if _, err := broker.Ch.QueueDeclare(queue, bcfg.DurableQueue, false, false, false, nil); err != nil {
			b.Fatal(err)
		}
		if err := broker.Ch.QueueBind(queue, "notifications.info", exchange, false, nil); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		publish()
		for {
			ready, err := broker.Ready(queue)
			if err != nil {
				b.Fatal(err)
			}
			if ready == n {
				break
			}
			if time.Since(t0) > 10*time.Minute {
				b.Fatalf("%d of %d notifications in RabbitMQ's queue", ready, n)
			}
			time.Sleep(100 * time.Millisecond)
		}
		published = time.Since(t0)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	cpuBefore := cpuTime()
	brokerBefore, brokerLocal := brokerCPU()
	start := time.Now()

	br := bridge.New(bcfg, func() *bus.Bus { return bs }, nil, logger)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := br.Start(ctx); err != nil {
		b.Fatal(err)
	}
	bdone := make(chan error, 1)
	go func() { bdone <- br.Run(ctx) }()

	var v *Verifier
	var settled atomic.Bool
	vdone := make(chan error, 1)
	if verify {
		vcfg := DefaultConfig()
		vcfg.TickTime, vcfg.PoolSize = 0.2, 4
		vcfg.Store.Path = b.TempDir() + "/bench.db"
		var opts []Option
		if stage == toReader {
			s, err := OpenStore(ctx, vcfg.Store)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			opts = append(opts, WithStore(discardWrites{s}))
		}
		v = New(vcfg, func() *bus.Bus { return bs }, nil, logger, append(opts, WithClock(benchClock(&settled)))...)
		if err := v.Start(ctx); err != nil {
			b.Fatal(err)
		}
		go func() { vdone <- v.Run(ctx) }()
	} else {
		vdone <- nil
	}
	defer func() {
		cancel()
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = br.Stop(sctx)
		if v != nil {
			_ = v.Stop(sctx)
		}
		<-bdone
		<-vdone
	}()

	if !backlog {
		publish()
		published = time.Since(start)
	}
	// Generous: on a loaded machine a million take many minutes.
	deadline := time.Now().Add(5*time.Minute + time.Duration(n)*time.Millisecond)
	// TALLY_BENCH_PROGRESS=1 shows where notifications wait, to find the
	// slowest stage.
	progress := os.Getenv("TALLY_BENCH_PROGRESS") != ""
	stream, err := bs.JS.Stream(ctx, bus.NotificationsStream)
	if err != nil {
		b.Fatal(err)
	}
	for {
		info, err := stream.Info(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if info.State.Msgs == uint64(n) {
			if !verify {
				break
			}
			c, err := bs.JS.Consumer(ctx, bus.NotificationsStream, Durable)
			if err != nil {
				b.Fatal(err)
			}
			ci, err := c.Info(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if ci.NumPending == 0 && ci.NumAckPending == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d notifications on the bus", info.State.Msgs, n)
		}
		if progress {
			ready, _ := broker.Ready(queue)
			fmt.Fprintf(os.Stderr, "%6.2fs: %d in RabbitMQ, %d on the bus", time.Since(start).Seconds(), ready, info.State.Msgs)
			if verify {
				c, _ := bs.JS.Consumer(ctx, bus.NotificationsStream, Durable)
				ci, _ := c.Info(ctx)
				fmt.Fprintf(os.Stderr, ", %d not yet in the verifier's store", ci.NumPending+uint64(ci.NumAckPending))
			}
			fmt.Fprintln(os.Stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ingested := time.Since(start)
	mode := "live: publishing as they are consumed"
	if backlog {
		mode = "backlog: all in RabbitMQ's queue before the bridge started"
	}
	// report reports the run, took from the start to the end.
	report := func(took time.Duration) {
		cpu := cpuTime() - cpuBefore
		brokerAfter, brokerStill := brokerCPU()
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(n)/took.Seconds(), "notifications/s")
		b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/notification")
		if brokerLocal && brokerStill {
			b.ReportMetric(float64((brokerAfter-brokerBefore).Microseconds())/float64(n), "rabbitmq-cpu-µs/notification")
		}
		b.ReportMetric(float64(ms.TotalAlloc-before)/float64(n), "B/notification")
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heapMiB")
		b.ReportMetric(float64(ms.Sys)/(1<<20), "goSysMiB")
		b.ReportMetric(float64(peakRSS())/(1<<20), "peakRSS-MiB")
	}
	switch stage {
	case toBus:
		report(ingested)
		b.Logf("%d notifications (%s): published to RabbitMQ in %s; from the start, all on the bus after %s",
			n, mode, published.Round(time.Millisecond), ingested.Round(time.Millisecond))
		return
	case toReader:
		report(ingested)
		b.Logf("%d notifications (%s): published to RabbitMQ in %s; from the start, all read and acked by the verifier after %s",
			n, mode, published.Round(time.Millisecond), ingested.Round(time.Millisecond))
		return
	}
	if path := os.Getenv("TALLY_BENCH_HEAP"); path != "" {
		writeHeapProfile(b, path)
	}
	settled.Store(true)
	// Whether any exists is left, from the pending index: CountExists
	// reads every exists, 3% of the run's CPU at a million when polled.
	db := v.Store().(*SQLiteStore).db
	for {
		var left bool
		if err := db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM instance_exists INDEXED BY instance_exists_waiting
			WHERE status = 'pending')`).Scan(&left); err != nil {
			b.Fatal(err)
		}
		if !left {
			break
		}
		if time.Now().After(deadline) {
			counts, _, err := v.Store().CountExists(ctx)
			b.Fatalf("exists still pending: %v %v", counts, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(start)
	report(took)
	// As BenchmarkStore reports them: the ingest, and the pass after it.
	b.ReportMetric(float64(n)/ingested.Seconds(), "ingested/s")
	b.ReportMetric(float64(n/2)/(took-ingested).Seconds(), "verified/s")
	counts, _, err := v.Store().CountExists(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if counts[StatusVerified] != n/2 {
		b.Errorf("%d of %d exists verified: %v", counts[StatusVerified], n/2, counts)
	}
	b.Logf("%d notifications (%s): published to RabbitMQ in %s; from the start, all in the verifier's store after %s (%.0f/s), %d exists verified after %s",
		n, mode, published.Round(time.Millisecond), ingested.Round(time.Millisecond), float64(n)/ingested.Seconds(), counts[StatusVerified], took.Round(time.Millisecond))
}

// benchDuplicateWindow sets the notifications stream's duplicate window
// to w, as nats.notifications.duplicate_window does: a bus connected with
// that configuration updates the stream.
func benchDuplicateWindow(b *testing.B, emb *bus.Embedded, w string) {
	d, err := time.ParseDuration(w)
	if err != nil {
		b.Fatalf("TALLY_BENCH_DUPLICATE_WINDOW=%q: %v", w, err)
	}
	cfg := bus.DefaultConfig()
	cfg.Notifications.DuplicateWindow = d
	if err := cfg.Validate(); err != nil {
		b.Fatalf("TALLY_BENCH_DUPLICATE_WINDOW=%q: %v", w, err)
	}
	c, err := bus.Connect(b.Context(), cfg, emb, b.Name(), telemetry.WithSpanProcessors(nil), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	c.NC.Close()
}

// cpuTime is the user and system CPU time this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// brokerCPU is the CPU time used so far by the local RabbitMQ, the one
// process named beam.smp; false when there is none, or several, or no
// /proc.
func brokerCPU() (time.Duration, bool) {
	procs, err := procfs.AllProcs()
	if err != nil {
		return 0, false
	}
	var broker *procfs.Proc
	for _, p := range procs {
		if comm, err := p.Comm(); err != nil || comm != "beam.smp" {
			continue
		}
		if broker != nil {
			return 0, false
		}
		broker = &p
	}
	if broker == nil {
		return 0, false
	}
	stat, err := broker.Stat()
	if err != nil {
		return 0, false
	}
	return time.Duration(stat.CPUTime() * float64(time.Second)), true
}

func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		b.Fatal(err)
	}
}

// peakRSS is the most resident memory this process had, in bytes.
func peakRSS() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Maxrss << 10 // kilobytes on Linux
}

func TestBenchBodies(t *testing.T) {
	launched := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	bodies := newBenchBodies(launched)
	for _, i := range []int{0, 1, 2, 7, 12345, 999999} {
		ev := "compute.instance.create.end"
		if i%2 == 1 {
			ev = "compute.instance.exists"
		}
		if got, want := bodies.body(i), benchNotification(i, ev, launched); !bytes.Equal(got, want) {
			t.Errorf("body %d:\n got %s\nwant %s", i, got, want)
		}
	}
}

// BenchmarkParse reads notifications as notify-bridge (the header) and
// the verifier (the typed payload) do: 4,096 of BenchmarkBridgeToVerifier's
// bodies in turn, half create.end and half exists. Distinct bodies, since
// the JSON decoder keeps the strings it read last and reading one body
// over and over found every string kept (no allocation), as traffic does
// not.
func BenchmarkParse(b *testing.B) {
	gen := newBenchBodies(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC))
	bodies := make([][]byte, 4096)
	for i := range bodies {
		bodies[i] = gen.body(i)
	}
	b.Run("header", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := oslo.ParseHeader(bodies[i%len(bodies)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("typed", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, _, err := oslo.ParseTyped[payload](bodies[i%len(bodies)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkStore times the verifier's ingest and verification without
// RabbitMQ and the bus: TALLY_BENCH_NOTIFICATIONS notifications (default
// 20000), BenchmarkBridgeToVerifier's bodies, read and applied in batches
// of ingest_batch by `workers` writers as the bus consumer does, then one
// verification pass over the exists. On two cores the end-to-end figure
// also carries RabbitMQ's, JetStream's and the bridge's share of the CPU,
// and moves by a tenth from run to run; this one shows a change to the
// store.
//
//	TALLY_BENCH_NOTIFICATIONS=1000000 go test -run '^$' -bench 'BenchmarkStore/sqlite' -benchtime 1x ./services/verifier/
func BenchmarkStore(b *testing.B) {
	n := benchNotifications()
	for _, be := range storeBackends {
		b.Run(be.name, func(b *testing.B) {
			for b.Loop() {
				runStoreBench(b, be, n)
			}
		})
	}
}

func runStoreBench(b *testing.B, be storeBackend, n int) {
	ctx := context.Background()
	cfg := DefaultConfig()
	cfg.PoolSize = 4
	cfg.Store = be.config(b)
	if cfg.Store.Driver == "sqlite" {
		cfg.Store.CacheMiB = DefaultCacheMiB
	}
	s := openConfigured(b, cfg.Store)
	var settled atomic.Bool
	v := New(cfg, nil, nil, nil, WithStore(s), WithClock(benchClock(&settled)))
	bodies := newBenchBodies(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC))
	cpuBefore := cpuTime()
	start := time.Now()
	if err := ingestBodies(ctx, v, s, bodies, n, cfg.IngestBatch, cfg.Workers); err != nil {
		b.Fatal(err)
	}
	ingested := time.Since(start)
	settled.Store(true)
	res, err := v.VerifyPending(ctx)
	if err != nil {
		b.Fatal(err)
	}
	took := time.Since(start)
	cpu := cpuTime() - cpuBefore
	if res.Verified != n/2 || res.Failed != 0 {
		b.Fatalf("%d verified and %d failed of %d exists", res.Verified, res.Failed, n/2)
	}
	b.ReportMetric(float64(n)/ingested.Seconds(), "ingested/s")
	b.ReportMetric(float64(n/2)/(took-ingested).Seconds(), "verified/s")
	b.ReportMetric(float64(n)/took.Seconds(), "notifications/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/notification")
	if cfg.Store.Driver == "sqlite" {
		// The WAL's size at the end: checkpoints keep it short.
		if fi, err := os.Stat(cfg.Store.Path + "-wal"); err == nil {
			b.ReportMetric(float64(fi.Size())/(1<<20), "walMiB")
		}
	}
}

// ingestBodies applies bodies 0..n-1 to s, read by v, in batches of per
// by writers concurrent writers, as the bus consumer does.
func ingestBodies(ctx context.Context, v *Verifier, s Store, bodies *benchBodies, n, per, writers int) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(writers)
	for start := 0; start < n; start += per {
		g.Go(func() error {
			var batch Batch
			for i := start; i < min(n, start+per); i++ {
				if err := v.collect(&batch, bodies.body(i), "notifications.info"); err != nil {
					return err
				}
			}
			return s.ApplyBatch(ctx, &batch)
		})
	}
	return g.Wait()
}

// BenchmarkUpgradeNumberInstances times the open of a version-1 store
// (before instances were numbered) holding TALLY_BENCH_NOTIFICATIONS
// notifications' worth of rows (default 20000): half of them launches of
// as many instances with random UUIDs, half exists with a body beside
// them. The open upgrades it (numberInstances), and the verifier starts
// only after.
//
//	TALLY_BENCH_NOTIFICATIONS=1000000 go test -run '^$' -bench BenchmarkUpgradeNumberInstances -benchtime 1x ./services/verifier/
func BenchmarkUpgradeNumberInstances(b *testing.B) {
	n := benchNotifications()
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		path := b.TempDir() + "/v1.db"
		db, err := sql.Open("sqlite", path+"?_pragma=journal_mode(WAL)")
		if err != nil {
			b.Fatal(err)
		}
		_, err = db.ExecContext(ctx, schemaV1+`;
			CREATE TEMP TABLE seq AS WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?)
				SELECT i, lower(hex(randomblob(16))) AS uuid FROM k;
			INSERT INTO instance_usage (launched_sec, instance, launched_at, tenant, instance_type_id, instance_flavor_id,
				flavor_name, os_architecture, os_distro, os_version, rax_options, image_type, updated)
				SELECT 1795428000, uuid, 1795428000123456, 't', '1', 'f', 'm1.plain', '', '', '', '', '', 1795428000123456 FROM seq;
			INSERT INTO instance_exists (id, msg_key, message_id, event_type, versioned, instance, launched_at, deleted_at,
				audit_begin, audit_end, tenant, instance_type_id, instance_flavor_id, flavor_name, os_architecture, os_distro,
				os_version, rax_options, image_type, bandwidth, invalid, received, status, routing_key)
				SELECT i, lower(hex(randomblob(16))) || '.0123456789abcdef', 'm', 'compute.instance.exists', 0, uuid,
				1795428000000000, 0, 1795431600000000, 1795435200000000, 't', '1', 'f', 'm1.plain', '', '', '', '', '', 0, '',
				1795435216000000, 'verified', 'notifications.info' FROM seq;
			INSERT INTO instance_exists_raw (id, raw) SELECT i, randomblob(1400) FROM seq;`, n/2)
		if err != nil {
			b.Fatal(err)
		}
		if err := db.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		s, err := OpenSQLite(ctx, path, DefaultCacheMiB)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		var launches, exists int
		if err := errors.Join(s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM instance_usage`).Scan(&launches),
			s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM instance_exists`).Scan(&exists)); err != nil {
			b.Fatal(err)
		}
		if launches != n/2 || exists != n/2 {
			b.Fatalf("%d launches and %d exists after the upgrade, want %d of each", launches, exists, n/2)
		}
		s.Close()
		b.StartTimer()
	}
}
