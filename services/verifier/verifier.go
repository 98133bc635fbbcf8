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

	"golang.org/x/sync/errgroup"

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
	consumer *bus.BatchConsumer
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
	v.consumer = v.bus.NewBatchConsumer(bus.ConsumerConfig{
		Stream: bus.NotificationsStream, Durable: Durable, FilterSubjects: filters, Workers: v.cfg.Workers, Stage: Name,
	}, v.cfg.IngestBatch, v.handleBatch, obs)
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

// handleBatch applies a batch of bus messages in one store transaction.
// Each message is read first; one that can never be applied is answered
// with its permanent error and left out. If the transaction fails, the
// messages are applied one by one, so that a message the store refuses
// holds back only itself.
func (v *Verifier) handleBatch(ctx context.Context, msgs []*bus.Message) []error {
	errs := make([]error, len(msgs))
	// Sized for the common batch of one write per message, so that the
	// batch is built without growing.
	all := Batch{Usage: make([]UsageEvent, 0, len(msgs)), Exists: make([]InstanceExists, 0, len(msgs))}
	for i, m := range msgs {
		errs[i] = v.collect(&all, m.Data, m.Header.Get(bridge.HeaderRoutingKey))
	}
	err := v.store.ApplyBatch(ctx, &all)
	if err == nil || len(msgs) == 1 {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return errs
	}
	v.logger.Warn("batch failed; applying its messages one by one", "messages", len(msgs), "error", err)
	// Rare: read each message again rather than keep every message's
	// writes apart on the common path.
	for i, m := range msgs {
		if errs[i] == nil {
			var part Batch
			if errs[i] = v.read(&part, m.Data, m.Header.Get(bridge.HeaderRoutingKey), false); errs[i] == nil {
				errs[i] = v.store.ApplyBatch(ctx, &part)
			}
		}
	}
	return errs
}

// append adds o's writes after b's.
func (b *Batch) append(o *Batch) {
	b.Usage = append(b.Usage, o.Usage...)
	b.Deletes = append(b.Deletes, o.Deletes...)
	b.Exists = append(b.Exists, o.Exists...)
	b.ImageUsage = append(b.ImageUsage, o.ImageUsage...)
	b.ImageDeletes = append(b.ImageDeletes, o.ImageDeletes...)
	b.ImageExists = append(b.ImageExists, o.ImageExists...)
}

// Ingest applies one notification body (an oslo.messaging body as it came
// from RabbitMQ) to the tracked state. It is idempotent. A body that can
// never be applied returns a bus.Permanent error.
func (v *Verifier) Ingest(ctx context.Context, body []byte, routingKey string) error {
	var b Batch
	if err := v.collect(&b, body, routingKey); err != nil {
		return err
	}
	return v.store.ApplyBatch(ctx, &b)
}

// collect adds to b what one notification body changes, and nothing if it
// returns an error. A body that can never be applied returns a
// bus.Permanent error.
func (v *Verifier) collect(b *Batch, body []byte, routingKey string) error {
	return v.read(b, body, routingKey, true)
}

// read is collect; count says whether to count the notification (not when
// it is read a second time).
func (v *Verifier) read(b *Batch, body []byte, routingKey string, count bool) error {
	msg, p, err := oslo.ParseTyped[payload](body)
	if err != nil {
		return bus.Permanent(err)
	}
	if v.metrics != nil && count {
		v.metrics.RecordsIn.WithLabelValues(Name, "notification").Inc()
	}
	if strings.HasPrefix(msg.EventType, "image.") {
		return collectImage(b, msg, p, routingKey, body)
	}
	ev, ok, err := parseNova(msg, p)
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
		b.Usage = append(b.Usage, UsageEvent{Usage: u, Overwrite: ev.Effect == effectUpdate})
	case effectDelete:
		if ev.Usage.LaunchedAt.IsZero() {
			return nil // never launched: nothing was used
		}
		at := ev.DeletedAt
		if at.IsZero() {
			at = ev.When
		}
		b.Deletes = append(b.Deletes, InstanceDelete{Instance: ev.Instance, LaunchedAt: ev.Usage.LaunchedAt, DeletedAt: at})
	case effectExists:
		id := msg.MessageID
		if id == "" {
			return bus.Permanent(fmt.Errorf("%s for %s without message_id", msg.EventType, ev.Instance))
		}
		b.Exists = append(b.Exists, InstanceExists{Key: oslo.Key(msg, body), MessageID: id, EventType: msg.EventType, Versioned: ev.Versioned,
			Usage: ev.Usage, DeletedAt: ev.DeletedAt, AuditBegin: ev.AuditBegin, AuditEnd: ev.AuditEnd, Bandwidth: ev.Bandwidth,
			Invalid: ev.Invalid, Received: ev.When, RoutingKey: routingKey, Raw: body})
	}
	return nil
}

func collectImage(b *Batch, msg *oslo.Message, p *payload, routingKey string, body []byte) error {
	ev, ok, err := parseGlance(msg, p)
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
			b.ImageExists = append(b.ImageExists, e)
		}
	case msg.EventType == "image.delete":
		b.ImageDeletes = append(b.ImageDeletes, ev.Deleted...)
	default:
		b.ImageUsage = append(b.ImageUsage, ev.Images...)
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
	instances := kind[InstanceExists]{name: "instance", claim: v.store.ClaimInstanceExists, prepare: v.instanceVerifier,
		finish: v.store.FinishInstanceExistsBatch, id: func(e InstanceExists) (int64, string) { return e.ID, e.MessageID },
		pos: func(e InstanceExists) Cursor { return Cursor{AuditEnd: e.AuditEnd, ID: e.ID} }}
	if err := drain(ctx, v, endingMax, instances, count); err != nil {
		return res, err
	}
	images := kind[ImageExists]{name: "image", claim: v.store.ClaimImageExists, prepare: v.imageVerifier,
		finish: v.store.FinishImageExistsBatch, id: func(e ImageExists) (int64, string) { return e.ID, e.MessageID },
		pos: func(e ImageExists) Cursor { return Cursor{AuditEnd: e.AuditEnd, ID: e.ID} }}
	if err := drain(ctx, v, endingMax, images, count); err != nil {
		return res, err
	}
	if res.Verified+res.Failed > 0 {
		v.logger.Info("verification pass", "verified", res.Verified, "failed", res.Failed)
	}
	return res, nil
}

// pool runs f over items with at most n at a time; the first error stops
// it from starting more. Exists left verifying by an error are put back to
// pending at the next start.
func pool[T any](ctx context.Context, n int, items []T, f func(T) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(n, 1))
	for _, it := range items {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return f(it) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// instanceVerifier reads the launches and deletes of a claimed batch's
// instances in two queries and returns the check of one exists against
// them, reconciling and notifying as configured.
func (v *Verifier) instanceVerifier(ctx context.Context, batch []InstanceExists) (func(context.Context, InstanceExists) (*Failure, error), error) {
	seen := make(map[string]bool, len(batch))
	var ids []string
	for _, e := range batch {
		if !seen[e.Usage.Instance] {
			seen[e.Usage.Instance] = true
			ids = append(ids, e.Usage.Instance)
		}
	}
	launches, err := v.store.LaunchesOf(ctx, ids)
	if err != nil {
		return nil, err
	}
	deletes, err := v.store.DeletesOf(ctx, ids)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, e InstanceExists) (*Failure, error) {
		f := v.rules.verifyInstance(e, launches[e.Usage.Instance], deletes[e.Usage.Instance])
		if f != nil && v.rules.reconcilable(e, f) {
			var err error
			if f, err = v.reconcile(ctx, e, f); err != nil {
				return nil, err
			}
		}
		if f == nil && v.notifier != nil {
			if err := v.notifier.verified(ctx, v.cfg.Rabbit.NovaExchange, v.cfg.NovaEventType, e.RoutingKey, e.Raw); err != nil {
				return nil, err
			}
		}
		return f, nil
	}, nil
}

// imageVerifier checks image exists one by one: images are few next to
// instances.
func (v *Verifier) imageVerifier(context.Context, []ImageExists) (func(context.Context, ImageExists) (*Failure, error), error) {
	return func(ctx context.Context, e ImageExists) (*Failure, error) {
		u, err := v.store.ImageUsage(ctx, e.Image.UUID)
		if err != nil {
			return nil, err
		}
		deletes, err := v.store.ImageDeletes(ctx, e.Image.UUID)
		if err != nil {
			return nil, err
		}
		f := v.rules.verifyImage(e, u, deletes)
		// One verified notification per image.exists message (Raw is kept
		// on its first image only).
		if f == nil && v.notifier != nil && e.Raw != nil {
			if err := v.notifier.verified(ctx, v.cfg.Rabbit.GlanceExchange, v.cfg.GlanceEventType, e.RoutingKey, e.Raw); err != nil {
				return nil, err
			}
		}
		return f, nil
	}, nil
}

// kind is how a pass claims, checks and finishes one kind of exists.
type kind[E any] struct {
	name  string
	claim func(context.Context, Claim) ([]E, error)
	// prepare reads what the checks of a claimed batch need and returns
	// the check of one exists. The check sends the verified notification
	// before the exists is marked: a crash in between re-verifies and
	// re-sends, and the new message id of a re-send is derived from the
	// old one, so consumers can drop it.
	prepare func(context.Context, []E) (func(context.Context, E) (*Failure, error), error)
	finish  func(context.Context, []Finished) error
	id      func(E) (int64, string)
	pos     func(E) Cursor
}

// drain claims pending exists of one kind a batch at a time, checks each
// batch with the worker pool and writes its outcomes in one transaction,
// until a short batch says none is left. While a batch is checked and
// finished, the next one is claimed and prepared: the claims walk the
// pending exists from a cursor, so the next claim never takes what the
// batch before it holds, and the store's work (the SQLite store's single
// connection) does not wait for the checks. Exists a failed check leaves
// verifying are put back to pending at the next start, as after a crash;
// the others of the batch are finished first. A batch claimed and not
// checked (claimed ahead of a failure, or whose preparation failed) is put
// back to pending at once.
func drain[E any](ctx context.Context, v *Verifier, endingMax time.Time, k kind[E], count func(*Failure)) (err error) {
	// Deferred exists (Nova unreachable) go back to pending when the pass
	// ends; the pass's claims move past them meanwhile.
	var deferredMu sync.Mutex
	var deferred []Finished
	defer func() {
		if len(deferred) == 0 {
			return
		}
		if ferr := k.finish(context.WithoutCancel(ctx), deferred); ferr != nil {
			err = errors.Join(err, ferr)
			return
		}
		v.logger.Info("exists deferred to the next pass", "kind", k.name, "count", len(deferred))
	}()
	// unclaim returns a claimed batch the pass will not check to pending.
	unclaim := func(batch []E, err error) error {
		if len(batch) == 0 {
			return err
		}
		fs := make([]Finished, len(batch))
		for i, e := range batch {
			id, _ := k.id(e)
			fs[i] = Finished{ID: id, Status: StatusPending}
		}
		return errors.Join(err, k.finish(context.WithoutCancel(ctx), fs))
	}
	c := Claim{EndingMax: endingMax, Limit: v.cfg.BatchSize, Raw: v.notifier != nil}
	cur := fetch(ctx, k, c)
	for {
		if cur.err != nil {
			return unclaim(cur.batch, cur.err)
		}
		batch, check := cur.batch, cur.check
		if len(batch) == 0 {
			return nil
		}
		c.After = next(c.After, len(batch), func(i int) Cursor { return k.pos(batch[i]) })
		// Only a full batch may have exists after it.
		var ahead chan fetched[E]
		if len(batch) == v.cfg.BatchSize {
			ahead = make(chan fetched[E], 1)
			go func(c Claim) { ahead <- fetch(ctx, k, c) }(c)
		}
		// stop ends the pass with err, the batch claimed ahead unclaimed.
		stop := func(err error) error {
			if ahead == nil {
				return err
			}
			return unclaim((<-ahead).batch, err)
		}
		done := make([]*Finished, len(batch))
		idx := make([]int, len(batch))
		for i := range idx {
			idx[i] = i
		}
		perr := pool(ctx, v.cfg.PoolSize, idx, func(i int) error {
			f, err := check(ctx, batch[i])
			id, _ := k.id(batch[i])
			if errors.Is(err, errAskLater) {
				deferredMu.Lock()
				deferred = append(deferred, Finished{ID: id, Status: StatusPending})
				deferredMu.Unlock()
				return nil
			}
			if err != nil {
				return err
			}
			status := StatusVerified
			if f != nil {
				status = StatusFailed
			}
			done[i] = &Finished{ID: id, Status: status, Failure: f}
			return nil
		})
		fs := make([]Finished, 0, len(batch))
		for _, f := range done {
			if f != nil {
				fs = append(fs, *f)
			}
		}
		if err := k.finish(ctx, fs); err != nil {
			return stop(errors.Join(perr, err))
		}
		for i, f := range done {
			if f == nil {
				continue
			}
			count(f.Failure)
			if v.metrics != nil {
				v.metrics.RecordsOut.WithLabelValues(Name, string(f.Status), k.name).Inc()
			}
			if f.Failure != nil {
				_, msgID := k.id(batch[i])
				v.logger.Debug("exists failed", "kind", k.name, "id", f.ID, "message_id", msgID, "field", f.Failure.Field, "reason", f.Failure.Reason)
			}
		}
		if perr != nil {
			return stop(perr)
		}
		if ahead == nil {
			return nil
		}
		cur = <-ahead
	}
}

// fetched is a claimed batch and the check prepared for it.
type fetched[E any] struct {
	batch []E
	check func(context.Context, E) (*Failure, error)
	err   error
}

// fetch claims the batch after c's cursor and prepares its check. When
// the preparation fails, the batch comes with the error, to be unclaimed.
func fetch[E any](ctx context.Context, k kind[E], c Claim) fetched[E] {
	batch, err := k.claim(ctx, c)
	if err != nil || len(batch) == 0 {
		return fetched[E]{err: err}
	}
	check, err := k.prepare(ctx, batch)
	return fetched[E]{batch: batch, check: check, err: err}
}
