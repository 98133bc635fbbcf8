package verifier

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/bus/bustest"
	"github.com/tally-accounting/tally/pkg/config"
	"github.com/tally-accounting/tally/services/verifier/internal/rabbittest"
	"github.com/tally-accounting/tally/services/verifier/oslo"

	"github.com/tally-accounting/tally/services/verifier/verifiertest"
)

// TestVerifiedNotifications checks enable_notifications: each verified
// exists is re-emitted as compute.instance.exists.verified, once per
// configured routing key on the exchange named after the service, and on
// the bus; a failed one is not.
func TestVerifiedNotifications(t *testing.T) {
	broker := rabbittest.Connect(t)
	b, _ := bustest.Start(t, nil)
	exchange := broker.Prefix + ".nova"
	queue := broker.Prefix + ".verified"
	broker.Track([]string{exchange}, []string{queue})

	cfg := DefaultConfig()
	cfg.EnableNotifications = true
	cfg.NovaEventType = "compute.instance.exists.verified.old"
	cfg.Rabbit.Topics = map[string][]string{exchange: {"notifications.info", "monitor.info"}}
	cfg.Rabbit.NovaExchange = exchange
	cfg.Store.Path = filepath.Join(t.TempDir(), "v.db")
	uri, err := amqpURI()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Rabbit.Host, cfg.Rabbit.Port, cfg.Rabbit.UserID, cfg.Rabbit.Password, cfg.Rabbit.VirtualHost = uri.Host, uri.Port, uri.Username, secret(uri.Password), uri.Vhost
	v := New(cfg, func() *bus.Bus { return b }, nil, slog.New(slog.NewTextHandler(io.Discard, nil)),
		WithClock(func() time.Time { return time.Date(2026, 11, 23, 13, 0, 0, 0, time.UTC) }))
	ctx := context.Background()
	if err := v.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := v.Stop(ctx); err != nil {
			t.Error(err)
		}
	})
	// The exchange exists now (the notifier declared it).
	if _, err := broker.Ch.QueueDeclare(queue, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"notifications.info", "monitor.info"} {
		if err := broker.Ch.QueueBind(queue, k, exchange, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	// vm-atlas-1's launch and its forced-audit exists, plus vm-cms-1's
	// exists without its launch (fails: nothing emitted).
	for _, f := range []string{"0075_nova_notifications.info_compute.instance.create.end.json",
		"0327_nova_notifications.info_compute.instance.exists.json", "0319_nova_notifications.info_compute.instance.exists.json"} {
		body, err := os.ReadFile(filepath.Join(verifiertest.RecordedDir(), f))
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Ingest(ctx, body, "notifications.info"); err != nil {
			t.Fatal(err)
		}
	}
	res, err := v.VerifyPending(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(PassResult{Verified: 1, Failed: 1}, res); diff != "" {
		t.Fatalf("pass (-want +got):\n%s", diff)
	}
	var keys []string
	deliveries, err := broker.Ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	timeout := time.After(10 * time.Second)
	for len(keys) < 2 {
		select {
		case d := <-deliveries:
			keys = append(keys, d.RoutingKey)
			m, err := oslo.Parse(d.Body)
			if err != nil {
				t.Fatal(err)
			}
			var inner map[string]any
			var env map[string]string
			_ = json.Unmarshal(d.Body, &env)
			_ = json.Unmarshal([]byte(env["oslo.message"]), &inner)
			if m.EventType != cfg.NovaEventType || inner["original_message_id"] != "11954260-b157-4871-96e7-689740a74fe6" ||
				m.MessageID == "11954260-b157-4871-96e7-689740a74fe6" {
				t.Errorf("verified notification: event_type %q, message_id %q, original_message_id %v", m.EventType, m.MessageID, inner["original_message_id"])
			}
		case <-timeout:
			t.Fatalf("got %d verified notifications on RabbitMQ, want 2", len(keys))
		}
	}
	if diff := cmp.Diff([]string{"notifications.info", "monitor.info"}, keys); diff != "" {
		t.Errorf("routing keys (-want +got):\n%s", diff)
	}
	subject := bus.NotificationSubject(exchange, cfg.NovaEventType)
	s, err := b.JS.Stream(ctx, bus.NotificationsStream)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := s.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatalf("no verified notification on %s: %v", subject, err)
	}
	if m, err := oslo.Parse(msg.Data); err != nil || m.EventType != cfg.NovaEventType {
		t.Errorf("bus copy: %v %v", m, err)
	}
}

func amqpURI() (amqp.URI, error) { return amqp.ParseURI(rabbittest.URL()) }

func secret(s string) config.Secret { return config.Secret(s) }
