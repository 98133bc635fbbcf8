package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tally-accounting/tally/pkg/telemetry"
)

// BatchHandler processes messages together, typically in one store
// transaction. It returns one error per message, read as a Handler's: nil
// acks it, a *PermanentError dead-letters it, anything else redelivers it.
type BatchHandler func(ctx context.Context, msgs []*Message) []error

// BatchConsumer is a Consumer that hands its workers up to Batch messages
// at a time: a service that commits once per batch pays one transaction
// (and one fsync) for hundreds of messages instead of one each.
type BatchConsumer struct {
	*Consumer
	batch   int
	handler BatchHandler
}

// NewBatchConsumer returns a consumer that calls h with up to batch
// messages at a time, from cfg.Workers goroutines. Unless cfg says
// otherwise, enough messages may be unacked for every worker to fill a
// batch while another one is being handled.
func (b *Bus) NewBatchConsumer(cfg ConsumerConfig, batch int, h BatchHandler, obs ConsumerObserver) *BatchConsumer {
	batch = max(batch, 1)
	if cfg.MaxAckPending < 1 {
		cfg.MaxAckPending = max(cfg.Workers, 1) * batch * 2
	}
	return &BatchConsumer{Consumer: b.NewConsumer(cfg, nil, obs), batch: batch, handler: h}
}

// Run pulls messages and dispatches them in batches until ctx ends.
func (c *BatchConsumer) Run(ctx context.Context) error {
	defer close(c.done)
	it, err := c.cons.Messages(jetstream.PullMaxMessages(c.batch * 2))
	if err != nil {
		return fmt.Errorf("consume %s: %w", c.cfg.Durable, err)
	}
	// One goroutine pulls, so that a worker can take whatever has arrived
	// without blocking once it has its first message.
	feed := make(chan jetstream.Msg, c.batch)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(feed)
		for {
			msg, err := it.Next()
			if err != nil {
				if !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					c.logger.Warn("pull failed", "error", err)
					continue
				}
				return
			}
			feed <- msg
		}
	})
	for range c.cfg.Workers {
		wg.Go(func() {
			for {
				msgs := c.gather(feed)
				if msgs == nil {
					return
				}
				if ctx.Err() != nil {
					// Stopping: hand them straight back (see Consumer.Run).
					for _, m := range msgs {
						_ = m.Nak()
					}
					continue
				}
				c.processBatch(msgs)
			}
		})
	}
	wg.Go(func() { c.watchLag(ctx) })
	<-ctx.Done()
	it.Drain()
	wg.Wait()
	return nil
}

// gather waits for one message and takes what else is already there, up
// to the batch size; nil once the feed is closed and empty.
func (c *BatchConsumer) gather(feed <-chan jetstream.Msg) []jetstream.Msg {
	first, ok := <-feed
	if !ok {
		return nil
	}
	msgs := make([]jetstream.Msg, 1, c.batch)
	msgs[0] = first
	for len(msgs) < c.batch {
		select {
		case m, ok := <-feed:
			if !ok {
				return msgs
			}
			msgs = append(msgs, m)
		default:
			return msgs
		}
	}
	return msgs
}

func (c *BatchConsumer) processBatch(raw []jetstream.Msg) {
	ctx, span := c.bus.tracer.Start(c.workCtx, "process batch "+c.cfg.Durable, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.consumer.group.name", c.cfg.Durable),
			attribute.Int("messaging.batch.message_count", len(raw)),
		))
	defer span.End()
	msgs := make([]*Message, len(raw))
	for i, msg := range raw {
		msgs[i] = newMessage(msg)
		// The batch is one unit of work; each message's producer trace is
		// linked to it rather than parenting it.
		if sc := trace.SpanContextFromContext(c.bus.tel.Propagator.Extract(context.Background(), telemetry.HeaderCarrier(msgs[i].Header))); sc.IsValid() {
			span.AddLink(trace.Link{SpanContext: sc})
		}
	}
	errs := c.handler(ctx, msgs)
	if n := len(errs); n != len(msgs) {
		// A handler bug; redelivering is the only answer that loses nothing.
		errs = make([]error, len(msgs))
		for i := range errs {
			errs[i] = fmt.Errorf("batch handler returned %d answers for %d messages", n, len(msgs))
		}
	}
	failed := 0
	for i, msg := range raw {
		if errs[i] != nil {
			failed++
		}
		// A plain ack, not DoubleAck: the work is committed, so a lost ack
		// only means a redelivery that the idempotent handler absorbs, and
		// waiting for each ack's confirmation would cost a round trip per
		// message.
		c.settle(ctx, msg, msgs[i], errs[i], msg.Ack)
	}
	if failed > 0 {
		span.SetStatus(codes.Error, fmt.Sprintf("%d of %d messages failed", failed, len(raw)))
	}
}

// PublishAsync publishes like Publish without waiting: the future says
// when JetStream stored the message (or why not). At most the JetStream
// context's async limit is in flight; beyond it the call stalls, then
// fails with jetstream.ErrTooManyStalledMsgs. A future may never resolve
// if the reply is lost: callers bound their wait.
func (b *Bus) PublishAsync(ctx context.Context, subject, msgID string, data []byte, header nats.Header) (jetstream.PubAckFuture, error) {
	msg := nats.NewMsg(subject)
	msg.Data = data
	for k, v := range header {
		msg.Header[k] = v
	}
	b.tel.Propagator.Inject(ctx, telemetry.HeaderCarrier(msg.Header))
	f, err := b.JS.PublishMsgAsync(msg, jetstream.WithMsgID(msgID))
	if err != nil {
		return nil, fmt.Errorf("publish to %s: %w", subject, err)
	}
	return f, nil
}
