// Package bridge is notify-bridge: it consumes OpenStack notifications from
// RabbitMQ and republishes each one, byte for byte, to JetStream on
// tally.notifications.<service>.<event_type>, with the oslo message_id
// (plus a digest of the body, see oslo.Key) as Nats-Msg-Id. A delivery is acked on RabbitMQ only once JetStream has
// acked the copy, so a crash or a lost connection redelivers it, and
// JetStream's duplicate window drops the second copy: nothing lost, nothing
// doubled. StackTach acked before processing; this is the fix.
//
// The duplicate window (nats.notifications.duplicate_window, 2 minutes by
// default) is what JetStream remembers ids for, in server memory (see
// bus.DefaultConfig). It covers the bridge's own case: the copies it
// publishes twice are deliveries whose RabbitMQ ack was lost with a
// connection, redelivered as soon as it reconnects (seconds, at most 10 x
// reconnect_delay between attempts). Only an outage longer than the
// window (RabbitMQ unreachable, the bridge down) brings a copy back after
// it, and then the verifier still drops it: exists are unique by oslo.Key,
// usage is folded by event time and deletes are inserted once, so a late
// duplicate costs one redundant ingest, never a wrong count.
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
	"github.com/nats-io/nats.go/jetstream"
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

// connect dials, declares the exchanges and queues and binds them.
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
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	b.sessions.Add(1)
	return &session{conn: conn, ch: ch}, nil
}

// consume runs one pipeline per queue until the connection is lost or ctx
// ends. Each queue has a channel of its own: an ack with multiple=true
// covers every delivery tag of its channel up to it, so two queues on one
// channel would ack each other's deliveries.
func (b *Bridge) consume(ctx context.Context, s *session) error {
	defer s.conn.Close()
	closed := s.conn.NotifyClose(make(chan *amqp.Error, 1))
	var wg sync.WaitGroup
	type consumer struct {
		ch  *amqp.Channel
		tag string
	}
	var cs []consumer
	cancel := func() {
		for _, c := range cs {
			_ = c.ch.Cancel(c.tag, false)
		}
	}
	for ex, binds := range b.cfg.Topics {
		for _, bd := range binds {
			ch, err := s.conn.Channel()
			if err == nil {
				err = ch.Qos(b.cfg.Prefetch, 0, false)
			}
			if err != nil {
				cancel()
				wg.Wait()
				return fmt.Errorf("open channel for %s: %w", bd.Queue, err)
			}
			tag := fmt.Sprintf("%s-%s-%d", Name, bd.Queue, b.sessions.Load())
			deliveries, err := ch.Consume(bd.Queue, tag, false, false, false, false, nil)
			if err != nil {
				cancel()
				wg.Wait()
				return fmt.Errorf("consume %s: %w", bd.Queue, err)
			}
			cs = append(cs, consumer{ch, tag})
			service := bd.Service
			if service == "" {
				service = ex
			}
			wg.Go(func() { b.pipeline(ch, deliveries, ex, service) })
		}
	}
	var err error
	select {
	case <-ctx.Done():
		// Stop taking deliveries; the pipelines finish those already here
		// and exit when the library closes the delivery channels.
		cancel()
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

// pending is one delivery on its way to JetStream.
type pending struct {
	d amqp.Delivery
	// ready is closed once the publish below was sent (or failed to be).
	ready   chan struct{}
	subject string
	id      string
	header  nats.Header
	// malformed is why the body is dead-lettered rather than republished.
	malformed error
	future    jetstream.PubAckFuture
	sent      time.Time
	err       error
}

// ackEvery bounds the deliveries that wait for one multiple=true ack.
const ackEvery = 256

// pubAckWait bounds the wait for JetStream's answer to one asynchronous
// publish, from when it was sent, before it is published again (with the
// same id, so at most once stored). Counted from the send, so that after
// an outage the unanswered publishes are retried at once, not each after
// a wait of its own.
const pubAckWait = 30 * time.Second

// pipeline republishes one channel's deliveries: workers parse and publish
// asynchronously, many at once, and one acker takes the deliveries in
// their order, waits for JetStream's ack of each and acks RabbitMQ with
// multiple=true up to the last one stored. Nothing is acked before its
// copy is in JetStream, and no delivery is acked past one that is not.
func (b *Bridge) pipeline(ch *amqp.Channel, deliveries <-chan amqp.Delivery, exchange, service string) {
	inflight := make(chan *pending, b.cfg.Prefetch)
	work := make(chan *pending, b.cfg.Prefetch)
	var wg sync.WaitGroup
	for range b.cfg.Workers {
		wg.Go(func() {
			for p := range work {
				b.publish(exchange, service, p)
				close(p.ready)
			}
		})
	}
	wg.Go(func() { b.ack(ch, inflight, exchange, service) })
	for d := range deliveries {
		p := &pending{d: d, ready: make(chan struct{})}
		inflight <- p
		work <- p
	}
	close(work)
	close(inflight)
	wg.Wait()
}

// publish parses a delivery and sends its copy, or its dead letter.
func (b *Bridge) publish(exchange, service string, p *pending) {
	m, perr := oslo.ParseHeader(p.d.Body)
	if perr == nil {
		perr = checkEventType(m.EventType)
	}
	if perr != nil {
		p.malformed = perr
		p.subject, p.id = bus.DeadLetterSubject(Name), Name+"/"+digest(p.d.Body)
		p.header = nats.Header{}
		p.header.Set(bus.HeaderReason, perr.Error())
		p.header.Set(bus.HeaderStage, Name)
		p.header.Set(HeaderExchange, exchange)
		p.header.Set(HeaderRoutingKey, p.d.RoutingKey)
	} else {
		p.subject, p.id = bus.NotificationSubject(service, m.EventType), oslo.Key(m, p.d.Body)
		p.header = nats.Header{HeaderExchange: {exchange}, HeaderRoutingKey: {p.d.RoutingKey}, HeaderMessageID: {m.MessageID}}
	}
	p.sent = time.Now()
	p.future, p.err = b.bus.PublishAsync(b.workCtx, p.subject, p.id, p.d.Body, p.header)
}

// ack acks the deliveries of inflight, in order, once JetStream stored
// them. A publish that failed is retried synchronously, holding back the
// acks after it; when the bridge gives up (Stop's deadline), nothing more
// is acked and RabbitMQ redelivers the rest once the connection closes.
func (b *Bridge) ack(ch *amqp.Channel, inflight <-chan *pending, exchange, service string) {
	var last uint64
	unacked := 0
	flush := func() {
		if unacked == 0 {
			return
		}
		// If this ack is lost with the connection, the redeliveries are
		// published again and JetStream drops them as duplicates.
		if err := ch.Ack(last, true); err != nil {
			b.logger.Debug("ack lost; the redeliveries will be deduplicated", "error", err)
		}
		unacked = 0
	}
	timer := time.NewTimer(pubAckWait)
	defer timer.Stop()
	abandoned := false
	for p := range inflight {
		if abandoned {
			continue
		}
		select {
		case <-p.ready:
		default:
			flush()
			<-p.ready
		}
		if p.err == nil {
			select {
			case <-p.future.Ok():
			case err := <-p.future.Err():
				p.err = err
			default:
				flush()
				timer.Reset(max(pubAckWait-time.Since(p.sent), 0))
				select {
				case <-p.future.Ok():
				case err := <-p.future.Err():
					p.err = err
				case <-timer.C:
					p.err = fmt.Errorf("no answer from JetStream after %s", pubAckWait)
				}
			}
		}
		if p.err != nil {
			flush()
			if !b.retry(p) {
				abandoned = true
				continue
			}
		}
		b.delivered(p, exchange, service)
		last = p.d.DeliveryTag
		if unacked++; unacked >= ackEvery || len(inflight) == 0 {
			flush()
		}
	}
	if !abandoned {
		flush()
	}
}

// retry publishes p again, synchronously, until JetStream stores it or the
// bridge gives up (false).
func (b *Bridge) retry(p *pending) bool {
	ctx := b.workCtx
	delay := 100 * time.Millisecond
	err := p.err
	for {
		if ctx.Err() != nil {
			return false
		}
		if b.metrics != nil {
			b.metrics.Errors.WithLabelValues(Name, "publish").Inc()
		}
		b.logger.Warn("publish to the bus failed; retrying", "routing_key", p.d.RoutingKey, "retry_in", delay, "error", err)
		if !sleep(ctx, delay) {
			return false
		}
		delay = min(2*delay, 10*time.Second)
		if _, err = b.bus.Publish(ctx, p.subject, p.id, p.d.Body, p.header); err == nil {
			return true
		}
	}
}

// delivered counts a delivery JetStream stored.
func (b *Bridge) delivered(p *pending, exchange, service string) {
	if p.malformed != nil {
		b.deadLettered.Add(1)
		if b.metrics != nil {
			b.metrics.DeadLetters.WithLabelValues(Name).Inc()
		}
		b.logger.Error("malformed notification dead-lettered", "exchange", exchange, "routing_key", p.d.RoutingKey, "reason", p.malformed)
		return
	}
	b.published.Add(1)
	if b.metrics != nil {
		b.metrics.RecordsIn.WithLabelValues(Name, service).Inc()
		b.metrics.RecordsOut.WithLabelValues(Name, "bus", service).Inc()
	}
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
