package sim

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	amqp "github.com/rabbitmq/amqp091-go"
)

// decodeEnvelope returns the inner message of an oslo.messaging v2 body.
func decodeEnvelope(t *testing.T, body []byte) map[string]any {
	t.Helper()
	var env map[string]string
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatalf("envelope: %v", err)
	}
	if env["oslo.version"] != "2.0" {
		t.Fatalf("oslo.version %q", env["oslo.version"])
	}
	var msg map[string]any
	if err := json.Unmarshal([]byte(env["oslo.message"]), &msg); err != nil {
		t.Fatalf("oslo.message: %v", err)
	}
	return msg
}

// TestNotificationsMatchRecording compares the hourly audit of the recorded
// cloud (12:00:16, period 11:00-12:00) with what the simulator emits.
func TestNotificationsMatchRecording(t *testing.T) {
	dir := filepath.Join(fixtureDir, "notifications")
	all, err := filepath.Glob(filepath.Join(dir, "02*_nova_*exists.json"))
	var files []string
	for _, f := range all {
		if n := filepath.Base(f)[:4]; n >= "0209" && n <= "0222" {
			files = append(files, f)
		}
	}
	if err != nil || len(files) == 0 {
		t.Fatalf("notification fixtures not available (shared/ must sit beside the repository): %v", err)
	}
	w, err := LoadScenario("testdata/zed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	from := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	msgs := w.Notifications(from, from.Add(20*time.Second), "http://127.0.0.1:9292")
	got := map[string]map[string]any{}
	for _, m := range msgs {
		b, err := m.Envelope()
		if err != nil {
			t.Fatal(err)
		}
		got[m.EventType+"/"+m.ServerID] = decodeEnvelope(t, b)
	}
	seen := 0
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		want := decodeEnvelope(t, raw)
		payload := want["payload"].(map[string]any)
		id, _ := payload["instance_id"].(string)
		if id == "" {
			id = payload["nova_object.data"].(map[string]any)["uuid"].(string)
		}
		g := got[want["event_type"].(string)+"/"+id]
		if g == nil {
			t.Errorf("%s: no %s for %s", filepath.Base(f), want["event_type"], id)
			continue
		}
		seen++
		var diffs []string
		compareJSON("payload", payload, g["payload"], &diffs)
		if g["publisher_id"] != want["publisher_id"] || g["priority"] != want["priority"] {
			diffs = append(diffs, "publisher or priority differ")
		}
		if len(diffs) > 0 {
			t.Errorf("%s:\n%s", filepath.Base(f), strings.Join(diffs, "\n"))
		}
	}
	if seen != 14 {
		t.Errorf("matched %d recorded exists messages, want 14", seen)
	}
}

// TestNotificationsAMQP consumes the stream of a scripted scenario from the
// real RabbitMQ and checks it against the ground truth.
func TestNotificationsAMQP(t *testing.T) {
	url := os.Getenv("SIM_TEST_AMQP")
	if url == "" {
		url = "amqp://guest:guest@127.0.0.1:5672/"
	}
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("no RabbitMQ at %s (.ci/run starts it): %v", redactURL(url), err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare("nova", "topic", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"notifications.info", "versioned_notifications.info"} {
		if err := ch.QueueBind(q.Name, key, "nova", false, nil); err != nil {
			t.Fatal(err)
		}
	}
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 11, 23, 11, 56, 0, 0, time.UTC)
	cfg := scenarioConfig("testdata/zed.yaml", start)
	cfg.NotifyAMQP = url
	s := startSim(t, cfg)
	s.clock.Set(time.Date(2026, 11, 23, 12, 5, 0, 0, time.UTC))

	// What the ground truth says must be announced between start and 12:05.
	truth := s.currentWorld().Truth(s.Now())
	var want []string
	for _, sv := range truth.Servers {
		for _, e := range sv.Events {
			if kinds, ok := notifyEvents[e.Kind]; ok && e.At.After(start) {
				want = append(want, kinds[0]+"/"+sv.ID, kinds[1]+"/"+sv.ID)
			}
			if kinds, ok := notifyStartEvents[e.Kind]; ok && e.At.After(start) {
				want = append(want, kinds[0]+"/"+sv.ID, kinds[1]+"/"+sv.ID)
			}
		}
		// Every server was launched before 12:00: one audit each.
		want = append(want, "compute.instance.exists/"+sv.ID, "instance.exists/"+sv.ID)
		for _, e := range sv.Events {
			if e.Kind == EvResize {
				want = append(want, "compute.instance.exists/"+sv.ID, "instance.exists/"+sv.ID)
			}
			if e.Kind == EvDelete {
				want = append(want, "compute.instance.shutdown.end/"+sv.ID, "instance.shutdown.end/"+sv.ID)
			}
		}
	}
	sort.Strings(want)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []string
	for len(got) < len(want) {
		select {
		case d := <-deliveries:
			msg := decodeEnvelope(t, d.Body)
			p := msg["payload"].(map[string]any)
			id, _ := p["instance_id"].(string)
			if id == "" {
				id = p["nova_object.data"].(map[string]any)["uuid"].(string)
			}
			got = append(got, msg["event_type"].(string)+"/"+id)
		case <-ctx.Done():
			t.Fatalf("got %d of %d messages", len(got), len(want))
		}
	}
	sort.Strings(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("notifications (-want +got):\n%s", diff)
	}
}

func TestNotificationKinds(t *testing.T) {
	w, err := Generate(scaleConfig(4, 10, 2), testNow)
	if err != nil {
		t.Fatal(err)
	}
	from := testNow.AddDate(0, -4, 0)
	counts := map[string]int{}
	for _, m := range w.notifications(from, testNow, "http://img", 24*time.Hour) {
		counts[m.EventType]++
		if m.Exchange == "glance" && !strings.HasPrefix(m.EventType, "image.") {
			t.Errorf("%s on the glance exchange", m.EventType)
		}
	}
	for _, typ := range []string{"compute.instance.create.start", "compute.instance.create.end", "instance.create.end",
		"compute.instance.delete.end", "compute.instance.exists", "instance.exists", "compute.instance.power_off.end",
		"compute.instance.finish_resize.end", "image.create", "image.delete", "image.exists"} {
		if counts[typ] == 0 {
			t.Errorf("no %s in four months: %v", typ, counts)
		}
	}
	// Daily audits: one exists per live instance per day, far fewer than hourly.
	hourly := 0
	for _, m := range w.notifications(from, testNow, "http://img", time.Hour) {
		if m.EventType == "compute.instance.exists" {
			hourly++
		}
	}
	if hourly < 20*counts["compute.instance.exists"] {
		t.Errorf("hourly audits %d, daily %d: want about 24 times more", hourly, counts["compute.instance.exists"])
	}
}

// TestMessageIDsAreUnique: a real cloud's message ids are random uuids;
// consumers deduplicate on them, so distinct messages must not share one.
func TestMessageIDsAreUnique(t *testing.T) {
	w, err := LoadScenario("testdata/zed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	from := time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC)
	msgs := w.Notifications(from, from.Add(2*time.Hour), "http://127.0.0.1/image")
	if len(msgs) < 20 {
		t.Fatalf("only %d notifications: the test would prove little", len(msgs))
	}
	seen := map[string]string{}
	for _, n := range msgs {
		body, err := n.Envelope()
		if err != nil {
			t.Fatal(err)
		}
		var env struct {
			Msg string `json:"oslo.message"`
		}
		var inner struct {
			ID string `json:"message_id"`
		}
		if err := json.Unmarshal(body, &env); err != nil || json.Unmarshal([]byte(env.Msg), &inner) != nil {
			t.Fatalf("envelope %s: %v", body, err)
		}
		if prev, ok := seen[inner.ID]; ok && prev != env.Msg {
			t.Fatalf("message id %s shared by two different messages", inner.ID)
		}
		seen[inner.ID] = env.Msg
	}
}
