package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tally-accounting/tally/pkg/telemetry"
)

// Message is one delivery handed to a Handler.
type Message struct {
	Subject string
	Data    []byte
	Header  nats.Header
	// Delivered counts deliveries of this message, 1 the first time.
	Delivered uint64
	// Sequence is the stream sequence, for logs.
	Sequence uint64
}

// Handler processes one message. Returning nil acks it; a *PermanentError
// sends it to the dead-letter subject, then acks it; any other error makes
// JetStream redeliver it after a back-off.
type Handler func(ctx context.Context, m *Message) error

// PermanentError marks a message that no retry can process.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err as a *PermanentError.
func Permanent(err error) error { return &PermanentError{Err: err} }

// ConsumerConfig names a durable consumer and its work.
type ConsumerConfig struct {
	Stream string
	// Durable is shared by every replica of a service, so they split the
	// messages between them.
	Durable        string
	FilterSubjects []string
	// Workers handle messages concurrently.
	Workers int
	// Stage names the service in dead-letter subjects and headers.
	Stage string
	// MaxAckPending bounds the messages delivered and not yet acked; 0 is
	// Workers*4.
	MaxAckPending int
}

// ConsumerObserver receives what a consumer does, for metrics.
type ConsumerObserver interface {
	Handled(stage string, err error, deadLettered bool)
	Pending(stage string, numPending uint64, numAckPending int)
}

// Consumer is a durable pull consumer whose lifecycle matches the service
// runtime: Start creates it, Run dispatches until its context ends, Stop
// drains in-flight work until its deadline.
type Consumer struct {
	bus      *Bus
	cfg      ConsumerConfig
	handler  Handler
	observer ConsumerObserver
	logger   *slog.Logger

	cons       jetstream.Consumer
	workCtx    context.Context
	cancelWork context.CancelFunc
	done       chan struct{}
	stopOnce   sync.Once
}

// NewConsumer returns a consumer that calls h for every message.
func (b *Bus) NewConsumer(cfg ConsumerConfig, h Handler, obs ConsumerObserver) *Consumer {
	if cfg.Workers < 1 {
		cfg.Workers = 1
	}
	if cfg.MaxAckPending < 1 {
		cfg.MaxAckPending = cfg.Workers * 4
	}
	return &Consumer{bus: b, cfg: cfg, handler: h, observer: obs, logger: b.logger.With("consumer", cfg.Durable)}
}

// Start creates or updates the durable consumer.
func (c *Consumer) Start(ctx context.Context) error {
	cons, err := c.bus.JS.CreateOrUpdateConsumer(ctx, c.cfg.Stream, jetstream.ConsumerConfig{
		Durable:        c.cfg.Durable,
		FilterSubjects: c.cfg.FilterSubjects,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        c.bus.cfg.AckWait,
		// Never give up on a message: a record is either delivered or dead-lettered
		// with a reason, never dropped after N tries.
		MaxDeliver:    -1,
		MaxAckPending: c.cfg.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("consumer %s on %s: %w", c.cfg.Durable, c.cfg.Stream, err)
	}
	c.cons = cons
	// In-flight work outlives Run's context so Stop can drain it.
	c.workCtx, c.cancelWork = context.WithCancel(context.WithoutCancel(ctx))
	c.done = make(chan struct{})
	return nil
}

// Run pulls and dispatches messages until ctx ends.
func (c *Consumer) Run(ctx context.Context) error {
	defer close(c.done)
	it, err := c.cons.Messages(jetstream.PullMaxMessages(c.cfg.Workers * 2))
	if err != nil {
		return fmt.Errorf("consume %s: %w", c.cfg.Durable, err)
	}
	var wg sync.WaitGroup
	for range c.cfg.Workers {
		wg.Go(func() {
			for {
				msg, err := it.Next()
				if err != nil {
					if !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
						c.logger.Warn("pull failed", "error", err)
						continue
					}
					return
				}
				if ctx.Err() != nil {
					// Stopping: hand buffered messages straight back so
					// another replica (or the next start) takes them now,
					// not after AckWait.
					_ = msg.Nak()
					continue
				}
				c.process(msg)
			}
		})
	}
	wg.Go(func() { c.watchLag(ctx) })
	<-ctx.Done()
	it.Drain()
	wg.Wait()
	return nil
}

// Stop waits for in-flight messages until ctx's deadline, then abandons
// them; JetStream redelivers what was not acked.
func (c *Consumer) Stop(ctx context.Context) error {
	if c.done == nil {
		return nil
	}
	defer c.stopOnce.Do(c.cancelWork)
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		c.stopOnce.Do(c.cancelWork)
		<-c.done
		return fmt.Errorf("consumer %s: in-flight work abandoned: %w", c.cfg.Durable, ctx.Err())
	}
}

func (c *Consumer) process(msg jetstream.Msg) {
	m := newMessage(msg)
	ctx := c.bus.tel.Propagator.Extract(c.workCtx, telemetry.HeaderCarrier(m.Header))
	ctx, span := c.bus.tracer.Start(ctx, "process "+msg.Subject(), trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", msg.Subject()),
			attribute.String("messaging.consumer.group.name", c.cfg.Durable),
			attribute.Int64("messaging.nats.delivered", int64(m.Delivered)),
		))
	defer span.End()

	herr := c.handler(ctx, m)
	if herr != nil {
		span.RecordError(herr)
		span.SetStatus(codes.Error, herr.Error())
	}
	// DoubleAck: the work is done, and one message at a time can afford
	// to wait for the ack's confirmation.
	c.settle(ctx, msg, m, herr, func() error { return msg.DoubleAck(ctx) })
}

// newMessage is msg as a Handler sees it.
func newMessage(msg jetstream.Msg) *Message {
	var delivered, seq uint64 = 1, 0
	if meta, err := msg.Metadata(); err == nil {
		delivered, seq = meta.NumDelivered, meta.Sequence.Stream
	}
	hdr := msg.Headers()
	if hdr == nil {
		hdr = nats.Header{}
	}
	return &Message{Subject: msg.Subject(), Data: msg.Data(), Header: hdr, Delivered: delivered, Sequence: seq}
}

// settle acks, dead-letters or redelivers msg by its handler's answer
// herr, as Handler documents; ack is how a done message is acked.
func (c *Consumer) settle(ctx context.Context, msg jetstream.Msg, m *Message, herr error, ack func() error) {
	var perm *PermanentError
	switch {
	case herr == nil:
		if err := ack(); err != nil {
			// The work is done but the ack was lost: JetStream redelivers and
			// the idempotent downstream answers "duplicate".
			c.logger.Warn("ack failed", "subject", m.Subject, "seq", m.Sequence, "error", err)
		}
		c.observe(nil, false)
	case errors.As(herr, &perm):
		if err := c.deadLetter(ctx, m, herr); err != nil {
			c.logger.Error("dead-letter failed; will retry", "subject", m.Subject, "seq", m.Sequence, "error", err)
			_ = msg.NakWithDelay(backoff(m.Delivered))
			c.observe(herr, false)
			return
		}
		c.logger.Error("message dead-lettered", "subject", m.Subject, "seq", m.Sequence, "reason", herr)
		if err := ack(); err != nil {
			c.logger.Warn("ack failed", "subject", m.Subject, "seq", m.Sequence, "error", err)
		}
		c.observe(herr, true)
	default:
		d := backoff(m.Delivered)
		c.logger.Warn("processing failed; will retry", "subject", m.Subject, "seq", m.Sequence, "delivered", m.Delivered, "retry_in", d, "error", herr)
		_ = msg.NakWithDelay(d)
		c.observe(herr, false)
	}
}

func (c *Consumer) observe(err error, dead bool) {
	if c.observer != nil {
		c.observer.Handled(c.cfg.Stage, err, dead)
	}
}

// deadLetter republishes the message, unchanged, with the reason.
func (c *Consumer) deadLetter(ctx context.Context, m *Message, reason error) error {
	h := nats.Header{}
	h.Set(HeaderReason, reason.Error())
	h.Set(HeaderOriginalSubject, m.Subject)
	h.Set(HeaderStage, c.cfg.Stage)
	if bid := m.Header.Get(HeaderBatchID); bid != "" {
		h.Set(HeaderBatchID, bid)
	}
	id := fmt.Sprintf("%s/%s/%d", c.cfg.Stage, m.Subject, m.Sequence)
	if mid := m.Header.Get(nats.MsgIdHdr); mid != "" {
		id = c.cfg.Stage + "/" + mid
	}
	_, err := c.bus.Publish(ctx, DeadLetterSubject(c.cfg.Stage), id, m.Data, h)
	return err
}

// watchLag reports the consumer's backlog every few seconds.
func (c *Consumer) watchLag(ctx context.Context) {
	if c.observer == nil {
		return
	}
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		info, err := c.cons.Info(ctx)
		if err == nil {
			c.observer.Pending(c.cfg.Stage, info.NumPending, info.NumAckPending)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// backoff grows with each redelivery: 1s, 2s, 4s ... up to one minute.
func backoff(delivered uint64) time.Duration {
	if delivered < 1 {
		delivered = 1
	}
	d := time.Second << min(delivered-1, 6)
	return min(d, time.Minute)
}
