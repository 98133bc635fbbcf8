package verifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/metrics"
	"github.com/tally-accounting/tally/services/verifier/bridge"
	"github.com/tally-accounting/tally/services/verifier/oslo"
)

// Name is the service's name, its --target and its bus stage.
const Name = "verifier"

// Durable is the bus consumer every verifier replica shares.
const Durable = "verifier"

// Verifier is the verifier with the service lifecycle.
type Verifier struct {
	cfg     Config
	rules   rules
	busFn   func() *bus.Bus
	metrics *metrics.Metrics
	logger  *slog.Logger
	now     func() time.Time

	store    Store
	ownStore bool
	bus      *bus.Bus
	consumer *bus.Consumer
	notifier *notifier
	done     chan struct{}
	running  atomic.Bool
	passMu   sync.Mutex

	// reconciler asks Nova (reconcile: true); nil when off.
	reconciler *reconciler
}

// Option changes how a Verifier is built.
type Option func(*Verifier)

// WithClock replaces the wall clock that decides when an exists has settled
// (tests drive it with the simulator's clock).
func WithClock(now func() time.Time) Option { return func(v *Verifier) { v.now = now } }

// WithStore uses s instead of opening cfg.Store at Start; the caller closes it.
func WithStore(s Store) Option { return func(v *Verifier) { v.store = s } }

// New returns the verifier; the bus is taken from busFn at Start.
func New(cfg Config, busFn func() *bus.Bus, m *metrics.Metrics, logger *slog.Logger, opts ...Option) *Verifier {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	v := &Verifier{cfg: cfg, rules: newRules(cfg), busFn: busFn, metrics: m, logger: logger.With("service", Name), now: time.Now}
	for _, o := range opts {
		o(v)
	}
	if cfg.Reconcile {
		v.reconciler = newReconciler(cfg.Reconciler, v.logger) // connects at its first question
	}
	return v
}

// Name implements service.Service.
func (v *Verifier) Name() string { return Name }

// Store is the verifier's store, for the API and reports; valid after Start.
func (v *Verifier) Store() Store { return v.store }

// Start opens the store, puts exists left verifying back to pending and
// creates the bus consumer.
func (v *Verifier) Start(ctx context.Context) error {
	if err := v.cfg.Validate(); err != nil {
		return err
	}
	if v.bus = v.busFn(); v.bus == nil {
		return errors.New("verifier: no bus")
	}
	if v.store == nil {
		s, err := OpenStore(ctx, v.cfg.Store)
		if err != nil {
			return err
		}
		v.store, v.ownStore = s, true
	}
	if n, err := v.store.ResetVerifying(ctx); err != nil {
		return v.closeOnError(err)
	} else if n > 0 {
		v.logger.Info("exists left verifying by the last run are pending again", "count", n)
	}
	if v.cfg.EnableNotifications {
		n, err := newNotifier(ctx, v.cfg, v.bus, v.logger)
		if err != nil {
			return v.closeOnError(err)
		}
		v.notifier = n
	}
	var filters []string
	for ex := range v.cfg.Rabbit.Topics {
		filters = append(filters, "tally.notifications."+bus.Token(ex)+".>")
	}
	// A nil *Metrics in the interface would not be a nil observer.
	var obs bus.ConsumerObserver
	if v.metrics != nil {
		obs = v.metrics
	}
	v.consumer = v.bus.NewConsumer(bus.ConsumerConfig{
		Stream: bus.NotificationsStream, Durable: Durable, FilterSubjects: filters, Workers: v.cfg.Workers, Stage: Name,
	}, v.handle, obs)
	if err := v.consumer.Start(ctx); err != nil {
		return v.closeOnError(err)
	}
	v.done = make(chan struct{})
	return nil
}

func (v *Verifier) closeOnError(err error) error {
	if v.notifier != nil {
		v.notifier.close()
	}
	if v.ownStore {
		err = errors.Join(err, v.store.Close())
	}
	return err
}

// Run consumes notifications and runs a verification pass every tick_time
// until ctx ends.
func (v *Verifier) Run(ctx context.Context) error {
	v.running.Store(true)
	defer close(v.done)
	var wg sync.WaitGroup
	var cerr error
	wg.Go(func() { cerr = v.consumer.Run(ctx) })
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return cerr
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, time.Duration(v.cfg.ProcessTimeout)*time.Second)
		if _, err := v.VerifyPending(pctx); err != nil && ctx.Err() == nil {
			v.logger.Error("verification pass failed", "error", err)
			if v.metrics != nil {
				v.metrics.Errors.WithLabelValues(Name, "pass").Inc()
			}
		}
		cancel()
		t.Reset(v.cfg.Tick())
	}
}

// Stop drains the consumer and closes the store.
func (v *Verifier) Stop(ctx context.Context) error {
	var err error
	if !v.running.Load() {
		// Started but never run (another service failed to start): there
		// is nothing in flight, and the consumer would wait for a Run.
		return v.closeOnError(nil)
	}
	if v.consumer != nil {
		err = v.consumer.Stop(ctx)
	}
	if v.done != nil {
		select {
		case <-v.done:
		case <-ctx.Done():
			return errors.Join(err, fmt.Errorf("verifier: pass still running: %w", ctx.Err()))
		}
	}
	if v.notifier != nil {
		v.notifier.close()
	}
	if v.ownStore && v.store != nil {
		err = errors.Join(err, v.store.Close())
	}
	return err
}

func (v *Verifier) handle(ctx context.Context, m *bus.Message) error {
	return v.Ingest(ctx, m.Data, m.Header.Get(bridge.HeaderRoutingKey))
}

// Ingest applies one notification body (an oslo.messaging body as it came
// from RabbitMQ) to the tracked state. It is idempotent. A body that can
// never be applied returns a bus.Permanent error.
func (v *Verifier) Ingest(ctx context.Context, body []byte, routingKey string) error {
	msg, err := oslo.Parse(body)
	if err != nil {
		return bus.Permanent(err)
	}
	if v.metrics != nil {
		v.metrics.RecordsIn.WithLabelValues(Name, "notification").Inc()
	}
	if strings.HasPrefix(msg.EventType, "image.") {
		return v.ingestImage(ctx, msg, routingKey, body)
	}
	ev, ok, err := parseNova(msg)
	if err != nil {
		return bus.Permanent(err)
	}
	if !ok {
		return nil
	}
	switch ev.Effect {
	case effectFill, effectUpdate:
		if ev.Usage.LaunchedAt.IsZero() || ev.Message != "" {
			// Not launched yet (create.start), or a failed build.
			return nil
		}
		u := ev.Usage
		u.Updated = ev.When
		return v.store.ApplyUsage(ctx, u, ev.Effect == effectUpdate)
	case effectDelete:
		if ev.Usage.LaunchedAt.IsZero() {
			return nil // never launched: nothing was used
		}
		at := ev.DeletedAt
		if at.IsZero() {
			at = ev.When
		}
		return v.store.AddDelete(ctx, InstanceDelete{Instance: ev.Instance, LaunchedAt: ev.Usage.LaunchedAt, DeletedAt: at})
	case effectExists:
		id := msg.MessageID
		if id == "" {
			return bus.Permanent(fmt.Errorf("%s for %s without message_id", msg.EventType, ev.Instance))
		}
		return v.store.AddInstanceExists(ctx, InstanceExists{Key: oslo.Key(msg, body), MessageID: id, EventType: msg.EventType, Versioned: ev.Versioned,
			Usage: ev.Usage, DeletedAt: ev.DeletedAt, AuditBegin: ev.AuditBegin, AuditEnd: ev.AuditEnd, Bandwidth: ev.Bandwidth,
			Invalid: ev.Invalid, Received: ev.When, RoutingKey: routingKey, Raw: body})
	}
	return nil
}

func (v *Verifier) ingestImage(ctx context.Context, msg *oslo.Message, routingKey string, body []byte) error {
	ev, ok, err := parseGlance(msg)
	if err != nil {
		return bus.Permanent(err)
	}
	if !ok {
		return nil
	}
	switch {
	case msg.EventType == "image.exists":
		if msg.MessageID == "" {
			return bus.Permanent(errors.New("image.exists without message_id"))
		}
		for i, im := range ev.Images {
			var deleted ImageExists
			for _, d := range ev.Deleted {
				if d.UUID == im.UUID {
					deleted.DeletedAt = d.DeletedAt
				}
			}
			im.Updated = time.Time{}
			e := ImageExists{Key: oslo.Key(msg, body), MessageID: msg.MessageID, Image: im, DeletedAt: deleted.DeletedAt, AuditBegin: ev.AuditBegin,
				AuditEnd: ev.AuditEnd, Received: ev.When, RoutingKey: routingKey}
			if i == 0 {
				e.Raw = body // once per message: the verified notification re-emits it
			}
			if err := v.store.AddImageExists(ctx, e); err != nil {
				return err
			}
		}
	case msg.EventType == "image.delete":
		for _, d := range ev.Deleted {
			if err := v.store.AddImageDelete(ctx, d); err != nil {
				return err
			}
		}
	default:
		for _, u := range ev.Images {
			if err := v.store.ApplyImageUsage(ctx, u); err != nil {
				return err
			}
		}
	}
	return nil
}

// PassResult counts what one pass decided.
type PassResult struct {
	Verified int
	Failed   int
}

// VerifyPending runs one verification pass: every exists whose audit
// period ended at least settle_time ago is verified by pool_size workers,
// batchsize at a time, until none is left.
func (v *Verifier) VerifyPending(ctx context.Context) (PassResult, error) {
	v.passMu.Lock()
	defer v.passMu.Unlock()
	endingMax := v.now().Add(-v.cfg.Settle())
	if v.reconciler != nil {
		v.reconciler.newPass()
	}
	var res PassResult
	var mu sync.Mutex
	count := func(f *Failure) {
		mu.Lock()
		defer mu.Unlock()
		if f == nil {
			res.Verified++
		} else {
			res.Failed++
		}
	}
	if err := drain(ctx, v, endingMax, v.store.ClaimInstanceExists, v.verifyInstance, count); err != nil {
		return res, err
	}
	if err := drain(ctx, v, endingMax, v.store.ClaimImageExists, v.verifyImage, count); err != nil {
		return res, err
	}
	if res.Verified+res.Failed > 0 {
		v.logger.Info("verification pass", "verified", res.Verified, "failed", res.Failed)
	}
	return res, nil
}

// pool runs f over items with n workers; the first error stops it. Exists
// left verifying by an error are put back to pending at the next start.
func pool[T any](ctx context.Context, n int, items []T, f func(T) error) error {
	if len(items) == 0 {
		return nil
	}
	ch := make(chan T)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range min(n, len(items)) {
		wg.Go(func() {
			for it := range ch {
				if err := f(it); err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		})
	}
feed:
	for _, it := range items {
		select {
		case ch <- it:
		case <-ctx.Done():
			break feed
		}
	}
	close(ch)
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

func (v *Verifier) verifyInstance(ctx context.Context, e InstanceExists) (*Failure, error) {
	launches, err := v.store.Launches(ctx, e.Usage.Instance)
	if err != nil {
		return nil, err
	}
	deletes, err := v.store.Deletes(ctx, e.Usage.Instance)
	if err != nil {
		return nil, err
	}
	f := v.rules.verifyInstance(e, launches, deletes)
	if f != nil && v.rules.reconcilable(e, f) {
		if f, err = v.reconcile(ctx, e, f); err != nil {
			return nil, err
		}
	}
	return f, v.finish("instance", e.ID, e.MessageID, f, func(s Status) error {
		return v.store.FinishInstanceExists(ctx, e.ID, s, f)
	}, func() error {
		return v.notifier.verified(ctx, v.cfg.Rabbit.NovaExchange, v.cfg.NovaEventType, e.RoutingKey, e.Raw)
	})
}

func (v *Verifier) verifyImage(ctx context.Context, e ImageExists) (*Failure, error) {
	u, err := v.store.ImageUsage(ctx, e.Image.UUID)
	if err != nil {
		return nil, err
	}
	deletes, err := v.store.ImageDeletes(ctx, e.Image.UUID)
	if err != nil {
		return nil, err
	}
	f := v.rules.verifyImage(e, u, deletes)
	return f, v.finish("image", e.ID, e.MessageID, f, func(s Status) error {
		return v.store.FinishImageExists(ctx, e.ID, s, f)
	}, func() error {
		if e.Raw == nil {
			return nil // one verified notification per image.exists message
		}
		return v.notifier.verified(ctx, v.cfg.Rabbit.GlanceExchange, v.cfg.GlanceEventType, e.RoutingKey, e.Raw)
	})
}

func (v *Verifier) finish(kind string, id int64, msgID string, f *Failure, mark func(Status) error, notify func() error) error {
	status := StatusVerified
	if f != nil {
		status = StatusFailed
	}
	if status == StatusVerified && v.notifier != nil {
		// Before marking: a crash in between re-verifies and re-sends, and
		// the new message id of a re-send is derived from the old one, so
		// consumers can drop it.
		if err := notify(); err != nil {
			return err
		}
	}
	if err := mark(status); err != nil {
		return err
	}
	if v.metrics != nil {
		v.metrics.RecordsOut.WithLabelValues(Name, string(status), kind).Inc()
	}
	if f != nil {
		v.logger.Debug("exists failed", "kind", kind, "id", id, "message_id", msgID, "field", f.Field, "reason", f.Reason)
	}
	return nil
}

// drain claims pending exists of one kind a batch at a time and verifies
// each batch with the worker pool, until a short batch says none is left.
func drain[E any](ctx context.Context, v *Verifier, endingMax time.Time,
	claim func(context.Context, time.Time, int) ([]E, error),
	verify func(context.Context, E) (*Failure, error),
	count func(*Failure),
) error {
	for {
		batch, err := claim(ctx, endingMax, v.cfg.BatchSize)
		if err != nil {
			return err
		}
		if err := pool(ctx, v.cfg.PoolSize, batch, func(e E) error {
			f, err := verify(ctx, e)
			if err != nil {
				return err
			}
			count(f)
			return nil
		}); err != nil {
			return err
		}
		if len(batch) < v.cfg.BatchSize {
			return nil
		}
	}
}
