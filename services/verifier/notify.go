package verifier

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/tally-accounting/tally/pkg/bus"
)

// notifier emits the verified notifications of enable_notifications
// (§1.8): the exists body unchanged except event_type, message_id (new) and
// original_message_id (the old one), to the exchange named after the
// service with every routing key configured for it, and to the bus.
type notifier struct {
	cfg    Config
	bus    *bus.Bus
	logger *slog.Logger

	mu   sync.Mutex
	conn *amqp.Connection
	ch   *amqp.Channel
}

func newNotifier(ctx context.Context, cfg Config, b *bus.Bus, logger *slog.Logger) (*notifier, error) {
	n := &notifier{cfg: cfg, bus: b, logger: logger}
	if err := n.connect(ctx); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *notifier) url() string {
	r := n.cfg.Rabbit
	vhost := r.VirtualHost
	if vhost == "" {
		vhost = "/"
	}
	return "amqp://" + url.UserPassword(r.UserID, r.Password.Reveal()).String() + "@" +
		fmt.Sprintf("%s:%d", r.Host, r.Port) + "/" + url.PathEscape(vhost)
}

// connect (re)dials; n.mu is held or n is not shared yet.
func (n *notifier) connect(ctx context.Context) error {
	if n.conn != nil {
		n.conn.Close()
	}
	conn, err := amqp.DialConfig(n.url(), amqp.Config{Dial: amqp.DefaultDial(10 * time.Second)})
	if err != nil {
		return fmt.Errorf("verified notifications: connect to %s:%d: %w", n.cfg.Rabbit.Host, n.cfg.Rabbit.Port, err)
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return fmt.Errorf("verified notifications: channel: %w", err)
	}
	for ex := range n.cfg.Rabbit.Topics {
		if err := ch.ExchangeDeclare(ex, "topic", n.cfg.Rabbit.DurableQueue, false, false, false, nil); err != nil {
			conn.Close()
			return fmt.Errorf("verified notifications: declare exchange %s: %w", ex, err)
		}
	}
	n.conn, n.ch = conn, ch
	return ctx.Err()
}

func (n *notifier) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conn != nil {
		n.conn.Close()
	}
}

// verifiedBody rewrites an exists body as its verified notification. The
// new message id is derived from the old one, so a re-send after a crash
// carries the same id and deduplicates.
func verifiedBody(raw []byte, eventType string) (body []byte, id string, err error) {
	var env map[string]json.RawMessage
	if err := json.Unmarshal(raw, &env); err != nil {
		return nil, "", fmt.Errorf("stored exists: %w", err)
	}
	inner := env
	var wrapped string
	if m, ok := env["oslo.message"]; ok {
		if err := json.Unmarshal(m, &wrapped); err != nil {
			return nil, "", fmt.Errorf("stored exists oslo.message: %w", err)
		}
		inner = nil
		if err := json.Unmarshal([]byte(wrapped), &inner); err != nil {
			return nil, "", fmt.Errorf("stored exists oslo.message: %w", err)
		}
	}
	var old string
	_ = json.Unmarshal(inner["message_id"], &old)
	sum := sha256.Sum256([]byte(eventType + "/" + old))
	id = fmt.Sprintf("%x-%x-4%x-8%x-%x", sum[0:4], sum[4:6], sum[6:8], sum[8:10], sum[10:16])
	set := func(k, v string) { b, _ := json.Marshal(v); inner[k] = b }
	set("event_type", eventType)
	set("original_message_id", old)
	set("message_id", id)
	out, err := json.Marshal(inner)
	if err != nil {
		return nil, "", err
	}
	if wrapped != "" {
		b, _ := json.Marshal(string(out))
		env["oslo.message"] = b
		out, err = json.Marshal(env)
	}
	return out, id, err
}

// verified publishes the verified notification of one exists.
func (n *notifier) verified(ctx context.Context, exchange, eventType, routingKey string, raw []byte) error {
	body, id, err := verifiedBody(raw, eventType)
	if err != nil {
		return err
	}
	keys := n.cfg.Rabbit.Topics[exchange]
	if len(keys) == 0 {
		keys = []string{routingKey}
	}
	for _, key := range keys {
		if err := n.publish(ctx, exchange, key, body); err != nil {
			return err
		}
	}
	if _, err := n.bus.Publish(ctx, bus.NotificationSubject(exchange, eventType), id, body, nil); err != nil {
		return err
	}
	return nil
}

// publish retries exponential_backoff_limit times, StackTach's
// 2^attempt ms + up to 1 s of jitter apart, reconnecting in between.
func (n *notifier) publish(ctx context.Context, exchange, key string, body []byte) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	var err error
	for attempt := 0; attempt <= n.cfg.ExponentialBackoffLimit; attempt++ {
		if attempt > 0 {
			d := time.Duration(1<<min(attempt, 16))*time.Millisecond + rand.N(time.Second)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(d):
			}
			if cerr := n.connect(ctx); cerr != nil {
				err = cerr
				continue
			}
		}
		err = n.ch.PublishWithContext(ctx, exchange, key, false, false, amqp.Publishing{ContentType: "application/json",
			ContentEncoding: "utf-8", DeliveryMode: amqp.Persistent, Body: body})
		if err == nil {
			return nil
		}
		n.logger.Warn("publish verified notification failed", "exchange", exchange, "routing_key", key, "attempt", attempt, "error", err)
	}
	return fmt.Errorf("publish verified notification to %s/%s: %w", exchange, key, err)
}
