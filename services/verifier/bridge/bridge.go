// Package bridge is notify-bridge: it consumes OpenStack notifications from
// RabbitMQ and republishes each one, byte for byte, to JetStream on
// tally.notifications.<service>.<event_type>, with the oslo message_id
// (plus a digest of the body, see oslo.Key) as Nats-Msg-Id. A delivery is acked on RabbitMQ only once JetStream has
// acked the copy, so a crash or a lost connection redelivers it, and
// JetStream's duplicate window drops the second copy: nothing lost, nothing
// doubled. StackTach acked before processing; this is the fix.
package bridge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/metrics"
	"github.com/tally-accounting/tally/services/verifier/oslo"
)

// Name is the service's name, its --target and its dead-letter stage.
const Name = "notify-bridge"

// Headers set on every republished notification, so a consumer can re-emit
// a message where it came from (StackTach kept [routing_key, body]).
const (
	HeaderExchange   = "Tally-Amqp-Exchange"
	HeaderRoutingKey = "Tally-Amqp-Routing-Key"
	// HeaderMessageID is the oslo message_id; Nats-Msg-Id is oslo.Key:
	// the message_id and a digest of the body (see oslo.Key).
	HeaderMessageID = "Tally-Oslo-Message-Id"
)

// Bridge is notify-bridge with the service lifecycle.
type Bridge struct {
	cfg     Config
	busFn   func() *bus.Bus
	metrics *metrics.Metrics
	logger  *slog.Logger

	bus        *bus.Bus
	first      *session
	workCtx    context.Context
	cancelWork context.CancelFunc
	done       chan struct{}
	stopOnce   sync.Once

	// Counters for tests and logs.
	published    atomic.Int64
	deadLettered atomic.Int64
	sessions     atomic.Int64
}

// New returns the bridge; the bus is taken from busFn at Start, when the
// process has connected it.
func New(cfg Config, busFn func() *bus.Bus, m *metrics.Metrics, logger *slog.Logger) *Bridge {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Bridge{cfg: cfg, busFn: busFn, metrics: m, logger: logger.With("service", Name)}
}

// Name implements service.Service.
func (b *Bridge) Name() string { return Name }

// Start checks the configuration and makes the first connection, so wrong
// credentials or a wrong exchange durability fail the start, not later.
func (b *Bridge) Start(ctx context.Context) error {
	if err := b.cfg.Validate(); err != nil {
		return err
	}
	if b.bus = b.busFn(); b.bus == nil {
		return errors.New("notify-bridge: no bus")
	}
	s, err := b.connect(ctx)
	if err != nil {
		return err
	}
	b.first = s
	// In-flight deliveries outlive Run's context so Stop can finish them.
	b.workCtx, b.cancelWork = context.WithCancel(context.WithoutCancel(ctx))
	b.done = make(chan struct{})
	return nil
}

// Run consumes until ctx ends, reconnecting after every connection loss.
func (b *Bridge) Run(ctx context.Context) error {
	defer close(b.done)
	s := b.first
	b.first = nil
	delay := b.cfg.ReconnectDelay
	for {
		if s == nil {
			var err error
			if s, err = b.connect(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				b.logger.Warn("cannot reconnect to RabbitMQ", "url", b.cfg.redactedURL(), "retry_in", delay, "error", err)
				if !sleep(ctx, delay) {
					return nil
				}
				delay = min(2*delay, 10*b.cfg.ReconnectDelay)
				continue
			}
			b.logger.Info("reconnected to RabbitMQ", "url", b.cfg.redactedURL())
		}
		delay = b.cfg.ReconnectDelay
		err := b.consume(ctx, s)
		s = nil
		if ctx.Err() != nil {
			return nil
		}
		if b.metrics != nil {
			b.metrics.Errors.WithLabelValues(Name, "connection_lost").Inc()
		}
		b.logger.Warn("RabbitMQ connection lost; unacked deliveries will be redelivered", "error", err)
	}
}

// Stop waits for in-flight deliveries until ctx's deadline; RabbitMQ
// redelivers what was not acked.
func (b *Bridge) Stop(ctx context.Context) error {
	if b.done == nil {
		return nil
	}
	defer b.stopOnce.Do(b.cancelWork)
	if b.first != nil { // Run never ran
		b.first.conn.Close()
		return nil
	}
	select {
	case <-b.done:
		return nil
	case <-ctx.Done():
		b.stopOnce.Do(b.cancelWork)
		<-b.done
		return fmt.Errorf("notify-bridge: in-flight deliveries abandoned: %w", ctx.Err())
	}
}

// Published counts notifications republished (including duplicates JetStream
// dropped); DeadLettered counts malformed ones; Sessions counts connections.
func (b *Bridge) Published() int64    { return b.published.Load() }
func (b *Bridge) DeadLettered() int64 { return b.deadLettered.Load() }
func (b *Bridge) Sessions() int64     { return b.sessions.Load() }

type session struct {
	conn *amqp.Connection
	ch   *amqp.Channel
}

// connect dials, declares the exchanges and queues, binds them and sets
// the prefetch.
func (b *Bridge) connect(ctx context.Context) (*session, error) {
	conn, err := amqp.DialConfig(b.cfg.url(), amqp.Config{
		Heartbeat:  10 * time.Second,
		Dial:       amqp.DefaultDial(10 * time.Second),
		Properties: amqp.Table{"connection_name": Name},
	})
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", b.cfg.redactedURL(), err)
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("open channel: %w", err)
	}
	fail := func(err error) (*session, error) {
		conn.Close()
		return nil, err
	}
	for ex, binds := range b.cfg.Topics {
		if err := ch.ExchangeDeclare(ex, "topic", b.cfg.DurableExchanges, false, false, false, nil); err != nil {
			return fail(fmt.Errorf("declare exchange %s (durable=%v; set durable_exchanges to match how the services declared it): %w",
				ex, b.cfg.DurableExchanges, err))
		}
		for _, bd := range binds {
			if _, err := ch.QueueDeclare(bd.Queue, b.cfg.DurableQueue, false, false, false, nil); err != nil {
				return fail(fmt.Errorf("declare queue %s: %w", bd.Queue, err))
			}
			if err := ch.QueueBind(bd.Queue, bd.RoutingKey, ex, false, nil); err != nil {
				return fail(fmt.Errorf("bind queue %s to %s/%s: %w", bd.Queue, ex, bd.RoutingKey, err))
			}
		}
	}
	if err := ch.Qos(b.cfg.Prefetch, 0, false); err != nil {
		return fail(fmt.Errorf("set prefetch: %w", err))
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	b.sessions.Add(1)
	return &session{conn: conn, ch: ch}, nil
}

// consume runs the workers of one connection until it is lost or ctx ends.
func (b *Bridge) consume(ctx context.Context, s *session) error {
	defer s.conn.Close()
	closed := s.conn.NotifyClose(make(chan *amqp.Error, 1))
	var wg sync.WaitGroup
	var tags []string
	for ex, binds := range b.cfg.Topics {
		for _, bd := range binds {
			tag := fmt.Sprintf("%s-%s-%d", Name, bd.Queue, b.sessions.Load())
			deliveries, err := s.ch.Consume(bd.Queue, tag, false, false, false, false, nil)
			if err != nil {
				cancelAll(s.ch, tags)
				wg.Wait()
				return fmt.Errorf("consume %s: %w", bd.Queue, err)
			}
			tags = append(tags, tag)
			service := bd.Service
			if service == "" {
				service = ex
			}
			for range b.cfg.Workers {
				wg.Go(func() {
					for d := range deliveries {
						b.handle(ex, service, d)
					}
				})
			}
		}
	}
	var err error
	select {
	case <-ctx.Done():
		// Stop taking deliveries; the workers finish those already here and
		// exit when the library closes the delivery channels.
		cancelAll(s.ch, tags)
	case e := <-closed:
		if e != nil {
			err = e
		} else {
			err = errors.New("connection closed")
		}
	}
	wg.Wait()
	return err
}

func cancelAll(ch *amqp.Channel, tags []string) {
	for _, t := range tags {
		_ = ch.Cancel(t, false)
	}
}

// handle republishes one delivery, or dead-letters it, then acks it.
func (b *Bridge) handle(exchange, service string, d amqp.Delivery) {
	ctx := b.workCtx
	m, perr := oslo.Parse(d.Body)
	if perr == nil {
		perr = checkEventType(m.EventType)
	}
	var publish func() error
	if perr != nil {
		publish = func() error { return b.deadLetter(ctx, exchange, d, perr) }
	} else {
		id := oslo.Key(m, d.Body)
		subject := bus.NotificationSubject(service, m.EventType)
		h := nats.Header{HeaderExchange: {exchange}, HeaderRoutingKey: {d.RoutingKey}, HeaderMessageID: {m.MessageID}}
		publish = func() error {
			_, err := b.bus.Publish(ctx, subject, id, d.Body, h)
			return err
		}
	}
	delay := 100 * time.Millisecond
	for {
		err := publish()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			// Shutting down with JetStream unreachable: hand it back.
			_ = d.Nack(false, true)
			return
		}
		if b.metrics != nil {
			b.metrics.Errors.WithLabelValues(Name, "publish").Inc()
		}
		b.logger.Warn("publish to the bus failed; retrying", "routing_key", d.RoutingKey, "retry_in", delay, "error", err)
		if !sleep(ctx, delay) {
			_ = d.Nack(false, true)
			return
		}
		delay = min(2*delay, 10*time.Second)
	}
	if perr != nil {
		b.deadLettered.Add(1)
		if b.metrics != nil {
			b.metrics.DeadLetters.WithLabelValues(Name).Inc()
		}
		b.logger.Error("malformed notification dead-lettered", "exchange", exchange, "routing_key", d.RoutingKey, "reason", perr)
	} else {
		b.published.Add(1)
		if b.metrics != nil {
			b.metrics.RecordsIn.WithLabelValues(Name, service).Inc()
			b.metrics.RecordsOut.WithLabelValues(Name, "bus", service).Inc()
		}
	}
	// If this ack is lost with the connection, the redelivery is published
	// again and JetStream drops it as a duplicate.
	if err := d.Ack(false); err != nil {
		b.logger.Debug("ack lost; the redelivery will be deduplicated", "error", err)
	}
}

func (b *Bridge) deadLetter(ctx context.Context, exchange string, d amqp.Delivery, reason error) error {
	h := nats.Header{}
	h.Set(bus.HeaderReason, reason.Error())
	h.Set(bus.HeaderStage, Name)
	h.Set(HeaderExchange, exchange)
	h.Set(HeaderRoutingKey, d.RoutingKey)
	_, err := b.bus.Publish(ctx, bus.DeadLetterSubject(Name), Name+"/"+digest(d.Body), d.Body, h)
	return err
}

// checkEventType refuses event types that cannot be a subject tail, since
// they would otherwise fail to publish forever.
func checkEventType(ev string) error {
	for _, tok := range strings.Split(ev, ".") {
		if tok == "" || strings.ContainsAny(tok, "*> \t\r\n") {
			return fmt.Errorf("%w: event_type %q is not a valid subject tail", oslo.ErrMalformed, ev)
		}
	}
	return nil
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
