package bus_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/bus/bustest"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/telemetry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSubjects(t *testing.T) {
	tests := []struct{ got, want string }{
		{bus.RawSubject("RegionOne", tallyv1.RecordType_RECORD_TYPE_CLOUD), "tally.records.raw.RegionOne.cloud"},
		{bus.RawSubject("eu.west *1", tallyv1.RecordType_RECORD_TYPE_IP), "tally.records.raw.eu_west__1.ip"},
		{bus.EnrichedSubject("", tallyv1.RecordType_RECORD_TYPE_STORAGE), "tally.records.enriched._.storage"},
		{bus.DeadLetterSubject("enricher"), "tally.deadletter.enricher"},
		{bus.NotificationSubject("nova", "compute.instance.exists"), "tally.notifications.nova.compute.instance.exists"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("subject = %q, want %q", tt.got, tt.want)
		}
	}
}

func TestPublishDropsDuplicateIDs(t *testing.T) {
	b, _ := bustest.Start(t, nil)
	batch := &tallyv1.RecordBatch{BatchId: "nova/p1/2026-11-01/2026-11-02/cloud/0"}
	subj := bus.RawSubject("r1", tallyv1.RecordType_RECORD_TYPE_CLOUD)
	dup, err := b.PublishBatch(t.Context(), subj, batch)
	if err != nil || dup {
		t.Fatalf("first publish: dup=%v err=%v", dup, err)
	}
	dup, err = b.PublishBatch(t.Context(), subj, batch)
	if err != nil || !dup {
		t.Fatalf("second publish: dup=%v err=%v, want a duplicate", dup, err)
	}
	info, err := b.JS.Stream(t.Context(), bus.RecordsStream)
	if err != nil {
		t.Fatal(err)
	}
	if n := info.CachedInfo().State.Msgs; n != 1 {
		t.Errorf("stream holds %d messages, want 1", n)
	}
	if _, err := b.PublishBatch(t.Context(), subj, &tallyv1.RecordBatch{}); err == nil {
		t.Error("publishing a batch without id: no error")
	}
}

func TestEnsureStreamsIsIdempotent(t *testing.T) {
	b, _ := bustest.Start(t, nil)
	for range 3 {
		if err := b.EnsureStreams(t.Context()); err != nil {
			t.Fatalf("EnsureStreams: %v", err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		mod  func(*bus.Config)
		want string // in the error; empty: valid
	}{
		"defaults": {mod: func(*bus.Config) {}},
		"notifications take the shared limits": {mod: func(c *bus.Config) {
			c.Notifications = bus.StreamLimits{}
		}},
		"notifications limits of their own": {mod: func(c *bus.Config) {
			c.Notifications = bus.StreamLimits{MaxAge: time.Hour, MaxBytes: 1 << 30, DuplicateWindow: time.Minute}
		}},
		"unlimited notifications": {mod: func(c *bus.Config) { c.Notifications.MaxBytes = -1 }},
		"negative notifications max_age": {
			mod:  func(c *bus.Config) { c.Notifications.MaxAge = -time.Hour },
			want: "notifications.max_age",
		},
		"notifications max_bytes below -1": {
			mod:  func(c *bus.Config) { c.Notifications.MaxBytes = -2 },
			want: "notifications.max_bytes",
		},
		"negative notifications duplicate_window": {
			mod:  func(c *bus.Config) { c.Notifications.DuplicateWindow = -time.Second },
			want: "notifications.duplicate_window",
		},
		"notifications window beyond their own max_age": {
			mod:  func(c *bus.Config) { c.Notifications.MaxAge = time.Minute },
			want: "notifications.duplicate_window: 2m0s exceeds the stream's max_age 1m0s",
		},
		"notifications window beyond the shared max_age": {
			mod:  func(c *bus.Config) { c.MaxAge, c.DuplicateWindow = time.Minute, 30*time.Second },
			want: "notifications.duplicate_window: 2m0s exceeds the stream's max_age 1m0s",
		},
		"shared window beyond max_age": {
			mod:  func(c *bus.Config) { c.MaxAge = 5 * time.Minute },
			want: "duplicate_window: must not exceed max_age",
		},
	} {
		t.Run(name, func(t *testing.T) {
			c := bus.DefaultConfig()
			tc.mod(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestStreamLimits: the notifications stream takes its own limits, the
// others the shared ones, and a changed configuration updates streams
// that exist.
func TestStreamLimits(t *testing.T) {
	_, emb := bustest.Start(t, nil)
	connect := func(cfg bus.Config) *bus.Bus {
		t.Helper()
		b, err := bus.Connect(t.Context(), cfg, emb, t.Name(), telemetry.WithSpanProcessors(nil), slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		t.Cleanup(func() { b.NC.Close() })
		return b
	}
	type limits struct {
		maxAge, window time.Duration
		maxBytes       int64
	}
	check := func(b *bus.Bus, want map[string]limits) {
		t.Helper()
		for name, w := range want {
			s, err := b.JS.Stream(t.Context(), name)
			if err != nil {
				t.Fatalf("stream %s: %v", name, err)
			}
			c := s.CachedInfo().Config
			if got := (limits{c.MaxAge, c.Duplicates, c.MaxBytes}); got != w {
				t.Errorf("stream %s: %+v, want %+v", name, got, w)
			}
		}
	}
	// bustest.Start created the streams with the defaults.
	def := bus.DefaultConfig()
	check(connect(def), map[string]limits{
		bus.RecordsStream:       {def.MaxAge, 10 * time.Minute, -1},
		bus.NotificationsStream: {def.MaxAge, 2 * time.Minute, -1},
	})
	cfg := def
	cfg.MaxAge, cfg.DuplicateWindow = 48*time.Hour, 5*time.Minute
	cfg.Notifications = bus.StreamLimits{MaxAge: 24 * time.Hour, MaxBytes: 1 << 30, DuplicateWindow: 30 * time.Second}
	check(connect(cfg), map[string]limits{
		bus.RecordsStream:       {48 * time.Hour, 5 * time.Minute, -1},
		bus.NotificationsStream: {24 * time.Hour, 30 * time.Second, 1 << 30},
	})
	cfg.Notifications = bus.StreamLimits{}
	check(connect(cfg), map[string]limits{
		bus.NotificationsStream: {48 * time.Hour, 5 * time.Minute, -1},
	})
}

// runConsumer runs c like the service manager does and returns a stop func.
func runConsumer(t *testing.T, c *bus.Consumer) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	if err := c.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer scancel()
			if err := c.Stop(sctx); err != nil {
				t.Errorf("Stop: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConsumerRetriesThenAcks(t *testing.T) {
	b, _ := bustest.Start(t, nil)
	var calls atomic.Int32
	var acked atomic.Int32
	c := b.NewConsumer(bus.ConsumerConfig{Stream: bus.RecordsStream, Durable: "retry", FilterSubjects: []string{bus.RawAll}, Stage: "test"},
		func(_ context.Context, m *bus.Message) error {
			if calls.Add(1) == 1 {
				return errors.New("messenger unavailable")
			}
			if m.Delivered != 2 {
				t.Errorf("Delivered = %d on the retry, want 2", m.Delivered)
			}
			acked.Add(1)
			return nil
		}, nil)
	runConsumer(t, c)
	if _, err := b.PublishBatch(t.Context(), bus.RawSubject("r", tallyv1.RecordType_RECORD_TYPE_CLOUD), &tallyv1.RecordBatch{BatchId: "b1"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the retried message to be acked", func() bool { return acked.Load() == 1 })
	cons, err := b.JS.Consumer(t.Context(), bus.RecordsStream, "retry")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "no ack pending", func() bool {
		info, err := cons.Info(t.Context())
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
}

func TestConsumerDeadLettersPermanentErrors(t *testing.T) {
	b, _ := bustest.Start(t, nil)
	c := b.NewConsumer(bus.ConsumerConfig{Stream: bus.RecordsStream, Durable: "dlq", FilterSubjects: []string{bus.RawAll}, Stage: "enricher"},
		func(_ context.Context, m *bus.Message) error {
			_, err := bus.DecodeBatch(m)
			return err
		}, nil)
	runConsumer(t, c)
	subj := bus.RawSubject("r", tallyv1.RecordType_RECORD_TYPE_CLOUD)
	if _, err := b.Publish(t.Context(), subj, "garbage-1", []byte("\xff\xffnot protobuf"), nil); err != nil {
		t.Fatal(err)
	}
	stream, err := b.JS.Stream(t.Context(), bus.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a dead letter", func() bool {
		info, err := stream.Info(t.Context())
		return err == nil && info.State.Msgs == 1
	})
	raw, err := stream.GetMsg(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := raw.Header.Get(bus.HeaderOriginalSubject); got != subj {
		t.Errorf("original subject header = %q, want %q", got, subj)
	}
	if got := raw.Header.Get(bus.HeaderReason); got == "" {
		t.Error("dead letter has no reason")
	}
	if string(raw.Data) != "\xff\xffnot protobuf" {
		t.Errorf("dead letter data changed: %q", raw.Data)
	}
}

func TestReplicasShareADurableConsumer(t *testing.T) {
	b, _ := bustest.Start(t, nil)
	const n = 60
	var mu sync.Mutex
	seen := map[string]int{}
	perReplica := [2]atomic.Int32{}
	for i := range 2 {
		c := b.NewConsumer(bus.ConsumerConfig{Stream: bus.RecordsStream, Durable: "shared", FilterSubjects: []string{bus.RawAll}, Workers: 2, Stage: "test"},
			func(_ context.Context, m *bus.Message) error {
				batch, err := bus.DecodeBatch(m)
				if err != nil {
					return err
				}
				mu.Lock()
				seen[batch.GetBatchId()]++
				mu.Unlock()
				perReplica[i].Add(1)
				time.Sleep(5 * time.Millisecond)
				return nil
			}, nil)
		runConsumer(t, c)
	}
	for i := range n {
		if _, err := b.PublishBatch(t.Context(), bus.RawSubject("r", tallyv1.RecordType_RECORD_TYPE_CLOUD), &tallyv1.RecordBatch{BatchId: fmt.Sprint("b", i)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "every message", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == n
	})
	for id, count := range seen {
		if count != 1 {
			t.Errorf("batch %s handled %d times", id, count)
		}
	}
	if perReplica[0].Load() == 0 || perReplica[1].Load() == 0 {
		t.Errorf("load not shared: replica counts %d and %d", perReplica[0].Load(), perReplica[1].Load())
	}
}

func TestStopDrainsInFlightWork(t *testing.T) {
	b, _ := bustest.Start(t, nil)
	started := make(chan struct{})
	release := make(chan struct{})
	var finished atomic.Bool
	c := b.NewConsumer(bus.ConsumerConfig{Stream: bus.RecordsStream, Durable: "drain", FilterSubjects: []string{bus.RawAll}, Stage: "test"},
		func(ctx context.Context, _ *bus.Message) error {
			close(started)
			<-release
			finished.Store(ctx.Err() == nil)
			return nil
		}, nil)
	stop := runConsumer(t, c)
	if _, err := b.PublishBatch(t.Context(), bus.RawSubject("r", tallyv1.RecordType_RECORD_TYPE_CLOUD), &tallyv1.RecordBatch{BatchId: "slow"}); err != nil {
		t.Fatal(err)
	}
	<-started
	go func() { time.Sleep(50 * time.Millisecond); close(release) }()
	stop()
	if !finished.Load() {
		t.Error("in-flight work was cancelled instead of drained")
	}
	cons, err := b.JS.Consumer(t.Context(), bus.RecordsStream, "drain")
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.AckFloor.Stream != 1 {
		t.Errorf("ack floor = %d, want 1: the drained message was not acked", info.AckFloor.Stream)
	}
}
