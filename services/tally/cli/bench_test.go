package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tally-accounting/tally/pkg/bus"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/metrics"
	"github.com/tally-accounting/tally/pkg/service"
	"github.com/tally-accounting/tally/pkg/telemetry"
)

// benchRecords makes n mixed records (cloud, accelerator, storage, ip) of
// a few projects.
func benchRecords(n int) []*tallyv1.Record {
	start := timestamppb.New(time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC))
	out := make([]*tallyv1.Record, 0, n)
	for i := range n {
		prov := &tallyv1.Provenance{Region: "RegionOne", ProjectId: fmt.Sprintf("p%02d", i%20), OwnerUserId: "u1"}
		vm := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
		var r *tallyv1.Record
		switch i % 4 {
		case 0, 1:
			r = &tallyv1.Record{Key: "cloud/" + vm, Payload: &tallyv1.Record_Cloud{Cloud: &tallyv1.CloudRecord{
				VmUuid: vm, MachineName: "vm", LocalUserId: "u1", LocalGroupId: prov.ProjectId, Status: "started",
				StartTime: start, WallDuration: 3600, CpuDuration: 7200, CpuCount: 2, Memory: 2048, Disk: 20}}}
		case 2:
			model := "NVIDIA A100"
			r = &tallyv1.Record{Key: "accelerator/" + vm + "/2026-10", Payload: &tallyv1.Record_Accelerator{Accelerator: &tallyv1.AcceleratorRecord{
				AssociatedRecord: vm, AssociatedRecordType: "cloud", Count: 1, AvailableDuration: 3600,
				MeasurementMonth: 10, MeasurementYear: 2026, Type: "GPU", Model: &model}}}
		default:
			r = &tallyv1.Record{Key: "storage/" + vm, Payload: &tallyv1.Record_Storage{Storage: &tallyv1.StorageRecord{
				RecordId: vm, CreateTime: start, StartTime: start, EndTime: start, ResourceCapacityUsed: 1 << 30}}}
		}
		r.Provenance = prov
		out = append(out, r)
	}
	return out
}

// BenchmarkEnricherToMessengers pushes mixed records through the bus, the
// enricher and both the SSM spool and Logstash (a local TCP sink), wired as
// tally serve wires them, and reports records per second once every batch
// reached both messengers.
func BenchmarkEnricherToMessengers(b *testing.B) {
	records := benchRecords(100_000)
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	var lines atomic.Int64
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() {
				sc := bufio.NewScanner(c)
				sc.Buffer(make([]byte, 1<<20), 1<<20)
				for sc.Scan() {
					lines.Add(1)
				}
			}()
		}
	}()
	// Every run's data stays until the end: freeing thousands of inodes
	// makes the next run's file creations slower for half a minute (ext4
	// skips recently freed inodes), which would be measured as its own.
	data := b.TempDir()
	for _, withLogstash := range []bool{false, true} {
		name := "ssm"
		if withLogstash {
			name = "ssm+logstash"
		}
		b.Run(name, func(b *testing.B) { benchPipeline(b, data, records, sink, &lines, withLogstash) })
	}
	runtime.KeepAlive(records)
}

// cpuTime is the user and system CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchPipeline(b *testing.B, data string, records []*tallyv1.Record, sink net.Listener, lines *atomic.Int64, withLogstash bool) {
	n := len(records)
	targets := []string{TargetMessengerSSM, TargetEnricher}
	if withLogstash {
		targets = []string{TargetMessengerSSM, TargetMessengerLogstash, TargetEnricher}
	}
	for b.Loop() {
		dir, err := os.MkdirTemp(data, "run")
		if err != nil {
			b.Fatal(err)
		}
		cfg := DefaultConfig()
		cfg.DataDir, cfg.MetricsListen = dir, ""
		cfg.Enricher.SiteName, cfg.Enricher.DefaultVO = "BENCH", "ops"
		cfg.Messengers.SSM.Listen, cfg.Messengers.Logstash.Listen = "127.0.0.1:0", "127.0.0.1:0"
		cfg.Messengers.Logstash.Enabled = withLogstash
		cfg.Messengers.Logstash.Host = "127.0.0.1"
		cfg.Messengers.Logstash.Port = sink.Addr().(*net.TCPAddr).Port
		cfg.Query.Enabled = false
		if err := cfg.Validate(); err != nil {
			b.Fatal(err)
		}
		lines.Store(0)
		logger := slog.New(slog.NewTextHandler(io.Discard, nil))
		p, err := newProcess(&cfg, targets, Env{},
			telemetry.WithSpanProcessors(nil), metrics.New(), logger)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		running := make(chan struct{})
		p.manager.OnStateChange(func(name string, s service.State) {
			if name == "enricher" && s == service.Running {
				close(running)
			}
		})
		done := make(chan error, 1)
		go func() { done <- p.manager.Run(ctx) }()
		<-running
		bb := p.busSvc.Bus()
		tr, err := bb.NewTracker("RegionOne")
		if err != nil {
			b.Fatal(err)
		}
		began, cpuBegan := time.Now(), cpuTime()
		var ids []string
		for i := 0; i < n; i += 500 {
			batch := &tallyv1.RecordBatch{BatchId: fmt.Sprintf("bench-%d", i), Records: records[i:min(i+500, n)]}
			ids = append(ids, batch.BatchId)
			if _, err := bb.PublishBatch(ctx, bus.RawSubject("RegionOne", tallyv1.RecordType_RECORD_TYPE_CLOUD), batch); err != nil {
				b.Fatal(err)
			}
		}
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Minute)
		outcomes, reasons := tr.Wait(wctx, ids)
		wcancel()
		for _, id := range ids {
			if outcomes[id] != bus.Delivered {
				b.Fatalf("batch %s: %v %s", id, outcomes[id], reasons[id])
			}
		}
		elapsed, cpu := time.Since(began), cpuTime()-cpuBegan
		for deadline := time.Now().Add(time.Minute); withLogstash && lines.Load() < int64(n) && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		tr.Close()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		if got := lines.Load(); withLogstash && got != int64(n) {
			b.Fatalf("logstash sink got %d lines, want %d", got, n)
		}
		b.ReportMetric(float64(n)/elapsed.Seconds(), "records/s")
		// The whole process's CPU (publisher, NATS, enricher, messengers),
		// which depends less than records/s on what else the machine runs.
		b.ReportMetric(cpu.Seconds()*100_000/float64(n), "cpu-s/100k")
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		b.ReportMetric(float64(ru.Maxrss)/1024, "peak-rss-MiB")
	}
}
