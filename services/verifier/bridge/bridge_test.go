package bridge

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/bus/bustest"
	"github.com/tally-accounting/tally/pkg/metrics"
	"github.com/tally-accounting/tally/services/verifier/internal/rabbittest"
	"github.com/tally-accounting/tally/services/verifier/oslo"
	"github.com/tally-accounting/tally/services/verifier/verifiertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantKey string
	}{
		{name: "default", mutate: func(*Config) {}},
		{name: "no host", mutate: func(c *Config) { c.RabbitHost = "" }, wantKey: "rabbit_host"},
		{name: "port", mutate: func(c *Config) { c.RabbitPort = 0 }, wantKey: "rabbit_port"},
		{name: "prefetch", mutate: func(c *Config) { c.Prefetch = 0 }, wantKey: "prefetch"},
		{name: "workers", mutate: func(c *Config) { c.Workers = 0 }, wantKey: "workers"},
		{name: "no topics", mutate: func(c *Config) { c.Topics = nil }, wantKey: "topics"},
		{name: "no queue", mutate: func(c *Config) { c.Topics = map[string][]Binding{"nova": {{RoutingKey: "x"}}} }, wantKey: "topics.nova[0].queue"},
		{name: "no key", mutate: func(c *Config) { c.Topics = map[string][]Binding{"nova": {{Queue: "q"}}} }, wantKey: "topics.nova[0].routing_key"},
		{name: "shared queue", mutate: func(c *Config) {
			c.Topics = map[string][]Binding{"a": {{Queue: "q", RoutingKey: "k"}}, "b": {{Queue: "q", RoutingKey: "k"}}}
		}, wantKey: "queue"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mutate(&c)
			err := c.Validate()
			if tt.wantKey == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantKey) {
				t.Fatalf("error %v, want one about %s", err, tt.wantKey)
			}
		})
	}
}

func TestURLKeepsPasswordOutOfLogs(t *testing.T) {
	c := DefaultConfig()
	c.RabbitPassword = "s3cret"
	c.RabbitVirtualHost = "openstack"
	if got := c.url(); got != "amqp://guest:s3cret@127.0.0.1:5672/openstack" {
		t.Errorf("url %q", got)
	}
	if strings.Contains(c.redactedURL(), "s3cret") {
		t.Errorf("redacted URL %q shows the password", c.redactedURL())
	}
}

// harness runs a bridge on a JetStream server against the real RabbitMQ,
// with exchanges and queues unique to the test.
type harness struct {
	t      *testing.T
	broker *rabbittest.Broker
	bus    *bus.Bus
	bridge *Bridge
	nova   string // exchange names
	glance string
	queues []string
	stop   func()
}

func newHarness(t *testing.T, port int, tweak func(*Config)) *harness {
	t.Helper()
	broker := rabbittest.Connect(t)
	b, _ := bustest.Start(t, nil)
	h := &harness{t: t, broker: broker, bus: b, nova: broker.Prefix + ".nova", glance: broker.Prefix + ".glance"}
	cfg := DefaultConfig()
	if port != 0 {
		cfg.RabbitPort = port
	}
	cfg.Topics = map[string][]Binding{
		h.nova: {
			{Queue: broker.Prefix + ".nova.info", RoutingKey: "notifications.info", Service: "nova"},
			{Queue: broker.Prefix + ".nova.versioned", RoutingKey: "versioned_notifications.info", Service: "nova"},
		},
		h.glance: {{Queue: broker.Prefix + ".glance.info", RoutingKey: "notifications.info", Service: "glance"}},
	}
	if tweak != nil {
		tweak(&cfg)
	}
	for _, bs := range cfg.Topics {
		for _, bd := range bs {
			h.queues = append(h.queues, bd.Queue)
		}
	}
	broker.Track([]string{h.nova, h.glance}, h.queues)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	h.bridge = New(cfg, func() *bus.Bus { return b }, metrics.New(), logger)
	ctx, cancel := context.WithCancel(context.Background())
	if err := h.bridge.Start(ctx); err != nil {
		cancel()
		t.Fatalf("start: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- h.bridge.Run(ctx) }()
	stopped := false
	h.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		if err := h.bridge.Stop(sctx); err != nil {
			t.Errorf("stop: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}
	t.Cleanup(h.stop)
	return h
}

// stored is one message read back from a stream.
type stored struct {
	Subject string
	ID      string
	OsloID  string
	Reason  string
	Body    string
}

// read returns every message of stream on subjects, waiting (bounded) until
// there are at least want.
func read(t *testing.T, b *bus.Bus, stream, filter string, want int) []stored {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []stored
	cons, err := b.JS.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		t.Fatal(err)
	}
	for len(out) < want {
		batch, err := cons.Fetch(want-len(out), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			out = append(out, stored{Subject: m.Subject(), ID: m.Headers().Get(nats.MsgIdHdr), OsloID: m.Headers().Get(HeaderMessageID),
				Reason: m.Headers().Get(bus.HeaderReason), Body: string(m.Data())})
		}
		if ctx.Err() != nil {
			t.Fatalf("%s: got %d messages on %s, want %d", stream, len(out), filter, want)
		}
	}
	return out
}

// count is the number of messages stored on filter.
func count(t *testing.T, b *bus.Bus, stream, filter string) int {
	t.Helper()
	s, err := b.JS.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(filter))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range info.State.Subjects {
		n += int(c)
	}
	return n
}

// eventually polls cond every 20 ms for at most d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestBridgeRepublishesRecordedNotifications sends every recorded Nova
// message through RabbitMQ and finds each, byte for byte, on its subject,
// with its message id; malformed bodies are dead-lettered with a reason.
func TestBridgeRepublishesRecordedNotifications(t *testing.T) {
	h := newHarness(t, 0, nil)
	var want []stored
	for _, f := range verifiertest.RecordedNotifications(t, "*_nova_*.json", 100) {
		body := f.Body
		m, err := oslo.Parse(body)
		if err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
		key := "notifications.info"
		if strings.Contains(f.Name, "_versioned_notifications.") {
			key = "versioned_notifications.info"
		}
		h.broker.Publish(h.nova, key, body)
		want = append(want, stored{Subject: "tally.notifications.nova." + m.EventType, ID: oslo.Key(m, body), OsloID: m.MessageID, Body: string(body)})
	}
	glance := `{"oslo.version": "2.0", "oslo.message": "{\"message_id\": \"g-1\", \"event_type\": \"image.activate\", \"payload\": {\"id\": \"x\"}}"}`
	h.broker.Publish(h.glance, "notifications.info", []byte(glance))
	gm, _ := oslo.Parse([]byte(glance))
	want = append(want, stored{Subject: "tally.notifications.glance.image.activate", ID: oslo.Key(gm, []byte(glance)), OsloID: "g-1", Body: glance})

	bad := map[string]string{
		"not json":      `<html>`,
		"no envelope":   `{"oslo.version": "2.0"}`,
		"no event_type": `{"oslo.version": "2.0", "oslo.message": "{\"message_id\": \"m\"}"}`,
		"wildcard":      `{"event_type": "compute.*", "message_id": "w"}`,
	}
	for _, body := range bad {
		h.broker.Publish(h.nova, "notifications.info", []byte(body))
	}

	got := read(t, h.bus, bus.NotificationsStream, bus.NotificationsAll, len(want))
	byID := func(s []stored) func(i, j int) bool { return func(i, j int) bool { return s[i].ID < s[j].ID } }
	sort.Slice(want, byID(want))
	sort.Slice(got, byID(got))
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("republished notifications (-want +got):\n%s", diff)
	}
	dead := read(t, h.bus, bus.DeadLetterStream, bus.DeadLetterSubject(Name), len(bad))
	var reasons []string
	for _, d := range dead {
		if d.Reason == "" {
			t.Errorf("dead letter %q has no reason", d.Body)
		}
		reasons = append(reasons, d.Reason)
	}
	for name, body := range bad {
		found := false
		for _, d := range dead {
			found = found || d.Body == body
		}
		if !found {
			t.Errorf("%s: %q not dead-lettered (reasons: %q)", name, body, reasons)
		}
	}
	eventually(t, 10*time.Second, "queues drained", func() bool { return h.drained() })
	if n := count(t, h.bus, bus.NotificationsStream, bus.NotificationsAll); n != len(want) {
		t.Errorf("%d messages on the bus, want %d", n, len(want))
	}
}

func (h *harness) drained() bool {
	for _, q := range h.queues {
		if n, err := h.broker.Ready(q); err != nil || n != 0 {
			return false
		}
	}
	return true
}

func synthetic(i int) []byte {
	inner, _ := json.Marshal(map[string]any{"message_id": fmt.Sprintf("msg-%04d", i), "event_type": "compute.instance.update",
		"publisher_id": "compute.host1", "priority": "INFO", "payload": map[string]any{"instance_id": "i", "n": i},
		"timestamp": "2026-11-23 12:00:00.000000"})
	b, _ := json.Marshal(map[string]string{"oslo.version": "2.0", "oslo.message": string(inner)})
	return b
}

// TestBridgeSurvivesConnectionLoss cuts the bridge's TCP connection to
// RabbitMQ mid-stream, twice: the bridge reconnects and every message ends
// on the bus exactly once, including the ones in flight when it was cut.
func TestBridgeSurvivesConnectionLoss(t *testing.T) {
	proxy := rabbittest.NewProxy(t)
	h := newHarness(t, proxy.Port(), func(c *Config) {
		// Few in flight, so that a cut catches some delivered but unacked.
		c.Prefetch, c.Workers, c.ReconnectDelay = 8, 2, 50*time.Millisecond
	})
	const total = 600
	sent := 0
	send := func(n int) {
		for ; n > 0; n-- {
			h.broker.Publish(h.nova, "notifications.info", synthetic(sent))
			if sent%50 == 0 {
				// A duplicate, as oslo.messaging retries produce.
				h.broker.Publish(h.nova, "notifications.info", synthetic(sent))
			}
			sent++
		}
	}
	onBus := func() int { return count(t, h.bus, bus.NotificationsStream, bus.NotificationsAll) }
	send(200)
	eventually(t, 10*time.Second, "first messages on the bus", func() bool { return onBus() >= 50 })
	proxy.Cut()
	send(200)
	eventually(t, 15*time.Second, "reconnect", func() bool { return h.bridge.Sessions() >= 2 && onBus() > 200 })
	proxy.Cut()
	send(total - 400)
	eventually(t, 20*time.Second, "every message on the bus", func() bool { return onBus() >= total })
	eventually(t, 10*time.Second, "queues drained", h.drained)
	h.stop()
	got := read(t, h.bus, bus.NotificationsStream, bus.NotificationsAll, total)
	seen := map[string]int{}
	for _, m := range got {
		seen[m.OsloID]++
	}
	for i := range total {
		if id := fmt.Sprintf("msg-%04d", i); seen[id] != 1 {
			t.Errorf("%s on the bus %d times, want once", id, seen[id])
		}
	}
	if n := onBus(); n != total {
		t.Errorf("%d messages on the bus, want %d", n, total)
	}
	if s := h.bridge.Sessions(); s < 3 {
		t.Errorf("%d sessions, want at least 3 (two cuts)", s)
	}
}
