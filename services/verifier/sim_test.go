package verifier

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/bus/bustest"
	"github.com/tally-accounting/tally/pkg/metrics"
	"github.com/tally-accounting/tally/services/sim"
	"github.com/tally-accounting/tally/services/verifier/bridge"
	"github.com/tally-accounting/tally/services/verifier/internal/rabbittest"
	"github.com/tally-accounting/tally/services/verifier/oslo"
)

const scenarioFile = "testdata/lifecycle.yaml"

var (
	scenarioStart = time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)
	scenarioEnd   = time.Date(2026, 11, 20, 16, 30, 0, 0, time.UTC)
)

// runService runs a lifecycle service until the test ends.
func runService(t *testing.T, name string, start func(context.Context) error, run func(context.Context) error, stop func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if err := start(ctx); err != nil {
		cancel()
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		if err := stop(sctx); err != nil {
			t.Errorf("stop %s: %v", name, err)
		}
		if err := <-done; err != nil {
			t.Errorf("run %s: %v", name, err)
		}
	})
}

// key names one exists message: event type, instance or image, time.
func key(eventType, id string, at time.Time) string {
	return eventType + " " + id + " " + at.UTC().Truncate(time.Microsecond).Format(time.RFC3339Nano)
}

// expectation is what the ground truth says of one exists: verified, or
// failed on one of the fields.
type expectation struct {
	Status Status
	Fields string // the fields a failure may name, "|"-separated
}

// TestSimulatorStream runs the simulator's notification stream, with every
// fault it can inject, through the real RabbitMQ, notify-bridge, JetStream
// and the verifier, and compares the verified and failed exists with the
// simulator's ground truth.
func TestSimulatorStream(t *testing.T) {
	broker := rabbittest.Connect(t)
	b, _ := bustest.Start(t, nil)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	m := metrics.New()

	// The simulator publishes on the shared exchanges nova and glance;
	// the queues are this test's own.
	bcfg := bridge.DefaultConfig()
	bcfg.Topics = map[string][]bridge.Binding{
		"nova": {
			{Queue: broker.Prefix + ".nova.info", RoutingKey: "notifications.info"},
			{Queue: broker.Prefix + ".nova.versioned", RoutingKey: "versioned_notifications.info"},
			{Queue: broker.Prefix + ".nova.error", RoutingKey: "notifications.error"},
			{Queue: broker.Prefix + ".nova.versioned.error", RoutingKey: "versioned_notifications.error"},
		},
		"glance": {{Queue: broker.Prefix + ".glance.info", RoutingKey: "notifications.info"}},
	}
	var queues []string
	for _, bs := range bcfg.Topics {
		for _, bd := range bs {
			queues = append(queues, bd.Queue)
		}
	}
	broker.Track(nil, queues)
	br := bridge.New(bcfg, func() *bus.Bus { return b }, m, logger)
	runService(t, "bridge", br.Start, br.Run, br.Stop)

	var clock atomic.Int64 // the verifier's now, moved by the test
	clock.Store(scenarioStart.UnixNano())
	vcfg := DefaultConfig()
	vcfg.TickTime, vcfg.PoolSize, vcfg.BatchSize = 0.05, 4, 50
	vcfg.Store.Path = t.TempDir() + "/verifier.db"
	v := New(vcfg, func() *bus.Bus { return b }, m, logger, WithClock(func() time.Time { return time.Unix(0, clock.Load()) }))
	runService(t, "verifier", v.Start, v.Run, v.Stop)

	scfg := sim.DefaultConfig()
	scfg.Listen, scfg.Scenario, scfg.Now, scfg.AuditPeriod = "127.0.0.1:0", scenarioFile, scenarioStart, "hour"
	scfg.NotifyAMQP = rabbittest.URL()
	scfg.Seed = 7
	scfg.NotifyFaults = sim.NotifyFaults{DropExists: 0.08, CorruptExists: 0.15, Duplicate: 0.06, Reorder: 0.06}
	s, err := sim.New(scfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	runService(t, "sim", s.Start, s.Run, s.Stop)
	base := "http://" + s.Addr()
	t.Cleanup(http.DefaultClient.CloseIdleConnections)

	post(t, base+"/sim/clock", fmt.Sprintf(`{"set": %q}`, scenarioEnd.Format(time.RFC3339)))

	// Every message the simulator sends for the scenario, from the same
	// world, to know when the stream has been consumed and what each exists is.
	world, err := sim.LoadScenario(scenarioFile)
	if err != nil {
		t.Fatal(err)
	}
	msgs := world.Notifications(scenarioStart, scenarioEnd, base+"/image")
	ids := map[string]bool{}
	var exists []sim.Notification
	for _, n := range msgs {
		body, err := n.Envelope()
		if err != nil {
			t.Fatal(err)
		}
		om, err := oslo.Parse(body)
		if err != nil {
			t.Fatal(err)
		}
		ids[oslo.Key(om, body)] = true
		if strings.HasSuffix(n.EventType, "exists") {
			exists = append(exists, n)
		}
	}

	// The faults, once the simulator has sent everything.
	var truth sim.Truth
	eventually(t, 20*time.Second, "the simulator's faults", func() bool {
		truth = getTruth(t, base)
		return truth.Now.Equal(scenarioEnd) && len(truth.NotificationFaults) > 0
	})
	faults := map[string][]string{}
	kinds := map[string]int{}
	for _, f := range truth.NotificationFaults {
		k := key(f.EventType, f.ServerID, f.At)
		faults[k] = append(faults[k], f.Kind)
		kinds[f.Kind]++
	}
	for _, k := range []string{"dropped", "corrupted_launched_at", "corrupted_flavor", "duplicated", "reordered"} {
		if kinds[k] == 0 {
			t.Fatalf("the simulator injected no %s fault (%v): choose another seed", k, kinds)
		}
	}
	want := map[string]expectation{}
	dropped := 0
	for _, n := range exists {
		k := key(n.EventType, n.ServerID, n.Timestamp)
		e := expectation{Status: StatusVerified}
		for _, kind := range faults[k] {
			switch {
			case kind == "dropped":
				e.Status = ""
			case n.EventType == "image.exists":
				// The simulator's corruptions set launched_at and the flavor,
				// which an image payload does not have: nothing changes.
			case kind == "corrupted_launched_at":
				e = expectation{Status: StatusFailed, Fields: "launched_at"}
			case kind == "corrupted_flavor":
				// Legacy: instance_type renamed; versioned: flavor null.
				e = expectation{Status: StatusFailed, Fields: "instance_type|instance_flavor_id"}
			}
		}
		if e.Status == "" {
			dropped++
			delete(ids, msgKey(t, n))
			continue
		}
		want[k] = e
	}

	// Wait for the whole stream: every message on the bus (duplicates
	// dropped by Nats-Msg-Id), the queues empty, the verifier caught up.
	stream, err := b.JS.Stream(context.Background(), bus.NotificationsStream)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, fmt.Sprintf("%d notifications consumed", len(ids)), func() bool {
		info, err := stream.Info(context.Background())
		if err != nil || info.State.Msgs < uint64(len(ids)) {
			return false
		}
		for _, q := range queues {
			if n, err := broker.Ready(q); err != nil || n != 0 {
				return false
			}
		}
		c, err := b.JS.Consumer(context.Background(), bus.NotificationsStream, Durable)
		if err != nil {
			return false
		}
		ci, err := c.Info(context.Background())
		return err == nil && ci.NumPending == 0 && ci.NumAckPending == 0
	})

	// Now let the audits settle: the verifier verifies everything.
	clock.Store(scenarioEnd.Add(time.Hour).UnixNano())
	store := v.Store()
	var got map[string]expectation
	var reasons []string
	poll(20*time.Second, func() bool {
		got, reasons = map[string]expectation{}, nil
		inst, err := store.InstanceExistsList(context.Background(), ExistsFilter{})
		if err != nil {
			t.Fatal(err)
		}
		imgs, err := store.ImageExistsList(context.Background(), ExistsFilter{})
		if err != nil {
			t.Fatal(err)
		}
		done := true
		add := func(k string, st Status, f *Failure) {
			e := expectation{Status: st}
			if f != nil {
				if w, ok := want[k]; ok && strings.Contains("|"+w.Fields+"|", "|"+f.Field+"|") {
					e.Fields = w.Fields
				} else {
					e.Fields = f.Field
				}
				reasons = append(reasons, fmt.Sprintf("%s: %s (expected %q, actual %q)", k, f.Reason, f.Expected, f.Actual))
			}
			done = done && (st == StatusVerified || st == StatusFailed)
			got[k] = e
		}
		for _, e := range inst {
			if strings.HasPrefix(e.Usage.Instance, "9c000001-") { // not another run's
				add(key(e.EventType, e.Usage.Instance, e.Received), e.Status, e.Failure)
			}
		}
		for _, e := range imgs {
			if strings.HasPrefix(e.Image.UUID, "9b000001-") {
				add(key("image.exists", e.Image.UUID, e.Received), e.Status, e.Failure)
			}
		}
		return done && len(got) >= len(want)
	})
	if info, err := stream.Info(context.Background()); err == nil {
		t.Logf("stream: %d notifications (%d expected); bridge republished %d (duplicates included)", info.State.Msgs, len(ids), br.Published())
	}
	if dl, err := b.JS.Stream(context.Background(), bus.DeadLetterStream); err == nil {
		if info, err := dl.Info(context.Background()); err == nil && info.State.Msgs > 0 {
			msg, _ := dl.GetMsg(context.Background(), info.State.FirstSeq)
			t.Errorf("%d dead letters, first: %s %s", info.State.Msgs, msg.Subject, msg.Header.Get(bus.HeaderReason))
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("exists outcomes (-ground truth +verifier):\n%s", diff)
	}
	// The dropped exists: the audits must name every periodic one of an
	// instance or image still in use (an instantaneous exists, sent by a
	// resize, cannot be missed by anyone: nothing says it should exist).
	deletedAt := map[string]time.Time{}
	for _, sv := range truth.Servers {
		if sv.DeletedAt != nil {
			deletedAt[sv.ID] = *sv.DeletedAt
		}
	}
	wantMissing, gotMissing := []string{}, []string{}
	for _, n := range exists {
		since := n.Timestamp.Sub(n.Timestamp.Truncate(time.Hour))
		if !slices.Contains(faults[key(n.EventType, n.ServerID, n.Timestamp)], "dropped") || since < 16*time.Second || since > 17*time.Second {
			continue
		}
		begin := n.Timestamp.Truncate(time.Hour).Add(-time.Hour)
		if d, ok := deletedAt[n.ServerID]; ok && d.Before(begin) {
			continue // the simulator still sends exists for instances deleted without terminated_at
		}
		wantMissing = append(wantMissing, n.EventType+" "+n.ServerID+" "+begin.Format(time.RFC3339))
	}
	for h := scenarioStart; h.Add(time.Hour + 16*time.Second).Before(scenarioEnd); h = h.Add(time.Hour) {
		for _, svc := range []string{"nova", "glance"} {
			r, err := Audit(context.Background(), store, svc, h, h.Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range r.MissingExists {
				gotMissing = append(gotMissing, m.EventType+" "+m.UUID+" "+h.Format(time.RFC3339))
			}
		}
	}
	sort.Strings(wantMissing)
	sort.Strings(gotMissing)
	if diff := cmp.Diff(wantMissing, gotMissing); diff != "" {
		t.Errorf("missing exists (-dropped by the simulator +found by the audits):\n%s", diff)
	}

	sort.Strings(reasons)
	for _, r := range reasons {
		t.Log(r)
	}
	verified := 0
	for _, e := range want {
		if e.Status == StatusVerified {
			verified++
		}
	}
	t.Logf("%d exists sent, %d dropped (%d found missing by the audits), %d verified, %d failed; faults %v", len(exists), dropped,
		len(gotMissing), verified, len(want)-verified, kinds)
}

func msgKey(t *testing.T, n sim.Notification) string {
	t.Helper()
	body, err := n.Envelope()
	if err != nil {
		t.Fatal(err)
	}
	m, err := oslo.Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	return oslo.Key(m, body)
}

func post(t *testing.T, url, body string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST %s: %d %s", url, resp.StatusCode, b)
	}
}

func getTruth(t *testing.T, base string) sim.Truth {
	t.Helper()
	resp, err := http.Get(base + "/sim/truth")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tr sim.Truth
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil {
		t.Fatal(err)
	}
	return tr
}

// eventually polls cond every 20 ms for at most d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(d, cond) {
		t.Fatalf("timed out after %s waiting for %s", d, what)
	}
}

// poll reports whether cond became true within d.
func poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}
