package nova

import (
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/bus/bustest"
	"github.com/tally-accounting/tally/pkg/extract"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/openstack"
	"github.com/tally-accounting/tally/services/sim"
	"github.com/tally-accounting/tally/services/sim/simtest"
)

// slowEnricher stands for the enricher and its messengers: it settles each
// raw batch after a delay, and counts what it saw.
type slowEnricher struct {
	mu               sync.Mutex
	received, outMax int
	settled          int
	records          int
	batches          map[string]int
}

func startSlowEnricher(t *testing.T, b *bus.Bus, delay time.Duration) *slowEnricher {
	t.Helper()
	e := &slowEnricher{batches: map[string]int{}}
	// Counted on arrival, worked on one at a time after.
	type raw struct {
		subject string
		batch   *tallyv1.RecordBatch
	}
	work := make(chan raw, 1024)
	sub, err := b.NC.Subscribe(bus.RawAll, func(m *nats.Msg) {
		var batch tallyv1.RecordBatch
		if err := proto.Unmarshal(m.Data, &batch); err != nil {
			t.Errorf("raw message: %v", err)
			return
		}
		e.mu.Lock()
		e.received++
		e.outMax = max(e.outMax, e.received-e.settled)
		e.batches[batch.GetBatchId()]++
		e.records += len(batch.GetRecords())
		e.mu.Unlock()
		work <- raw{m.Subject, &batch}
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for w := range work {
			time.Sleep(delay)
			out := nats.NewMsg(bus.EnrichedFromRaw(w.subject))
			out.Header.Set(bus.HeaderBatchID, w.batch.GetBatchId())
			e.mu.Lock()
			e.settled++
			e.mu.Unlock()
			if err := b.NC.PublishMsg(out); err != nil {
				t.Errorf("enriched: %v", err)
			}
		}
	}()
	t.Cleanup(func() {
		_ = sub.Unsubscribe()
		close(work)
		<-done
	})
	return e
}

// TestSlowPipelineHoldsThePublisher: with a pipeline slower than the
// listing, the extractor has at most max_pending_batches batches on the
// bus at once, and every record still arrives, once.
func TestSlowPipelineHoldsThePublisher(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	scfg := sim.DefaultConfig()
	scfg.Now = now
	cloud := simtest.Start(t, scfg)
	b, _ := bustest.Start(t, nil)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	deps, err := extract.OpenDeps(t.Context(), b, nil, logger)
	if err != nil {
		t.Fatal(err)
	}
	e := startSlowEnricher(t, b, 20*time.Millisecond)

	env := cloud.Env(t, "admin")
	auth := openstack.FromEnv(func(k string) string { return env[k] })
	ncfg := DefaultConfig()
	ncfg.AccessMode = extract.AccessAllTenants
	ncfg.BatchSize = 2
	ncfg.MaxPendingBatches = 3
	r := extract.NewRunner(NewSource(ncfg, "tally/test", logger), ncfg.Config, auth, deps)
	sum, err := r.Run(t.Context(), extract.Options{From: now.Add(-30 * 24 * time.Hour), To: now})
	if err != nil {
		t.Fatalf("run: %v (failed: %v)", err, sum.SortedFailures())
	}
	records := 0
	for _, n := range sum.Records {
		records += n
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if sum.Batches < 4*ncfg.MaxPendingBatches {
		t.Fatalf("%d batches: too few to test a bound of %d", sum.Batches, ncfg.MaxPendingBatches)
	}
	if e.outMax > ncfg.MaxPendingBatches {
		t.Errorf("%d batches on the bus at once, want at most %d", e.outMax, ncfg.MaxPendingBatches)
	}
	if e.received != sum.Batches || len(e.batches) != sum.Batches || e.records != records {
		t.Errorf("the pipeline saw %d batches (%d distinct) with %d records; the run published %d batches with %d records",
			e.received, len(e.batches), e.records, sum.Batches, records)
	}
	if len(sum.Warnings) > 0 {
		t.Errorf("warnings: %q", sum.Warnings)
	}
}

// TestStuckPipelineDoesNotHoldTheRunForever: with nothing settling the
// batches, the run waits delivery_timeout for a free slot once, publishes
// the rest anyway (the stream keeps them for a later enricher) and keeps
// every window.
func TestStuckPipelineDoesNotHoldTheRunForever(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	scfg := sim.DefaultConfig()
	scfg.Now = now
	cloud := simtest.Start(t, scfg)
	b, _ := bustest.Start(t, nil)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	deps, err := extract.OpenDeps(t.Context(), b, nil, logger)
	if err != nil {
		t.Fatal(err)
	}
	env := cloud.Env(t, "admin")
	auth := openstack.FromEnv(func(k string) string { return env[k] })
	ncfg := DefaultConfig()
	ncfg.AccessMode = extract.AccessAllTenants
	ncfg.BatchSize = 2
	ncfg.MaxPendingBatches = 2
	ncfg.DeliveryTimeout = time.Second
	r := extract.NewRunner(NewSource(ncfg, "tally/test", logger), ncfg.Config, auth, deps)
	began := time.Now()
	sum, err := r.Run(t.Context(), extract.Options{From: now.Add(-30 * 24 * time.Hour), To: now})
	if err == nil {
		t.Fatal("run succeeded with nothing delivered")
	}
	if took := time.Since(began); took > 20*time.Second {
		t.Errorf("run took %v: it waited per batch", took)
	}
	if len(sum.Failed) != sum.Projects {
		t.Errorf("%d of %d projects failed, want all", len(sum.Failed), sum.Projects)
	}
	info, err := b.JS.Stream(t.Context(), bus.RecordsStream)
	if err != nil {
		t.Fatal(err)
	}
	if n := info.CachedInfo().State.Msgs; n != uint64(sum.Batches) {
		t.Errorf("the stream holds %d batches, the run published %d", n, sum.Batches)
	}
}
