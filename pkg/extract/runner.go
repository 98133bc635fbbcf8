package extract

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/directory"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/metrics"
	"github.com/tally-accounting/tally/pkg/openstack"
	"github.com/tally-accounting/tally/pkg/record"
	"github.com/tally-accounting/tally/pkg/state"
)

// Window is an extraction window [From, To].
type Window struct{ From, To time.Time }

// Emit hands a record of project to the runner, which completes its
// provenance (keeping an owner_user_id the source set), batches it and
// publishes it.
type Emit func(ctx context.Context, project string, rec *tallyv1.Record) error

// Source is what one extractor knows about its OpenStack API.
type Source interface {
	// Name is the extractor's name (extractor-nova, ...): provenance,
	// batch ids and state keys carry it.
	Name() string
	// Open makes the source's clients from an authenticated cloud; it is
	// called once per run and may fetch what the whole run needs once
	// (flavors, images).
	Open(ctx context.Context, cloud *openstack.Cloud) error
	// CanListAll reports whether the credentials may list every project's
	// resources at once.
	CanListAll(ctx context.Context) (bool, error)
	// All emits the records of every project of windows; since is the
	// earliest window start.
	All(ctx context.Context, windows map[string]Window, since time.Time, emit Emit) error
	// Project emits one project's records through a cloud whose token is
	// scoped to it.
	Project(ctx context.Context, cloud *openstack.Cloud, project string, w Window, emit Emit) error
}

// Deps are the shared parts a runner uses; Bus, State and Directory may be
// nil in a dry run.
type Deps struct {
	Bus       *bus.Bus
	State     *state.Store
	Directory *directory.Directory
	Metrics   *metrics.Metrics
	Logger    *slog.Logger
}

// Runner extracts one region's usage for one source.
type Runner struct {
	cfg    Config
	auth   openstack.AuthConfig
	region string
	src    Source
	deps   Deps
	logger *slog.Logger
}

// NewRunner returns a runner for the region of auth.
func NewRunner(src Source, cfg Config, auth openstack.AuthConfig, deps Deps) *Runner {
	region := auth.Region
	if region == "" {
		region = "default"
	}
	return &Runner{cfg: cfg, auth: auth, region: region, src: src, deps: deps,
		logger: deps.Logger.With("extractor", src.Name(), "region", region)}
}

// Region is the region this runner serves.
func (e *Runner) Region() string { return e.region }

// Name is the source's name.
func (e *Runner) Name() string { return e.src.Name() }

// Options are one run's parameters.
type Options struct {
	// From starts every project's window; zero resumes each project from
	// its last delivered window (or 1970, as cASO does, when there is none).
	From time.Time
	// To ends the window; zero means now. A future To is clamped to now.
	To time.Time
	// Projects replaces the configured project list when set.
	Projects []string
	// DryRun extracts and writes the records to DryRunOut as JSON lines,
	// publishes nothing and moves no state.
	DryRun    bool
	DryRunOut io.Writer
	// Progress is told after each project.
	Progress func(done, total int)
}

// Summary is what a run did.
type Summary struct {
	Extractor string
	Mode      string
	From, To  time.Time
	Projects  int
	// Failed projects, with the reason; their windows did not move.
	Failed map[string]string
	// Skipped projects: another replica holds their lease.
	Skipped  map[string]string
	Records  map[string]int
	Batches  int
	APICalls int64
	Retries  int64
	Duration time.Duration
	Warnings []string
}

// SortedFailures lists failed projects in a stable order, for reports.
func (s Summary) SortedFailures() []string {
	out := make([]string, 0, len(s.Failed))
	for p, why := range s.Failed {
		out = append(out, p+": "+why)
	}
	sort.Strings(out)
	return out
}

// ErrPartial means some projects failed; the summary says which.
var ErrPartial = errors.New("some projects failed")

// Run extracts one window for every selected project.
func (e *Runner) Run(ctx context.Context, opts Options) (sum Summary, err error) {
	began := time.Now()
	sum = Summary{Extractor: e.src.Name(), Failed: map[string]string{}, Skipped: map[string]string{}, Records: map[string]int{}}
	defer func() { sum.Duration = time.Since(began) }()
	// Whole seconds: APEL times are integer epochs, and state keys stay readable.
	now := time.Now().UTC().Truncate(time.Second)
	to := opts.To.UTC()
	if to.IsZero() {
		to = now
	}
	if to.After(now) {
		e.warn(&sum, "--to %s is in the future: clamped to now (%s)", to.Format(time.RFC3339), now.Format(time.RFC3339))
		to = now
	}
	sum.To = to
	if !opts.From.IsZero() && !opts.From.Before(to) {
		return sum, fmt.Errorf("--from %s is not before --to %s", opts.From.Format(time.RFC3339), to.Format(time.RFC3339))
	}

	cloud, err := openstack.Connect(ctx, e.auth, e.cfg.Retry)
	if err != nil {
		return sum, err
	}
	defer func() { sum.APICalls, sum.Retries = cloud.Stats.Calls.Load(), cloud.Stats.Retries.Load() }()
	ks, err := newKeystone(cloud)
	if err != nil {
		return sum, err
	}

	wanted, tag := e.cfg.Projects, e.cfg.Tag
	if len(opts.Projects) > 0 {
		wanted, tag = opts.Projects, ""
	}
	projects, warnings, err := ks.projects(ctx, tag, wanted)
	for _, w := range warnings {
		e.warn(&sum, "%s", w)
	}
	if err != nil {
		return sum, err
	}
	if len(projects) == 0 {
		return sum, fmt.Errorf("no project selected: none carries the tag %q and none of %q is visible", tag, wanted)
	}
	if err := e.src.Open(ctx, cloud); err != nil {
		return sum, err
	}

	run := &run{e: e, cloud: cloud, opts: opts, to: to, sum: &sum, windows: map[string]Window{},
		pending: map[string]*projectBatches{}, batchesOf: map[string][]string{}}
	if err := run.prepare(ctx, ks, projects); err != nil {
		return sum, err
	}
	defer run.release(context.WithoutCancel(ctx))
	sum.Projects = len(run.windows)
	if len(run.windows) == 0 {
		return sum, errors.Join(ErrPartial, errors.New("no project could be extracted"))
	}

	var tracker *bus.Tracker
	if !opts.DryRun {
		if tracker, err = e.deps.Bus.NewTracker(e.region); err != nil {
			return sum, err
		}
		defer tracker.Close()
		run.tracker = tracker
	}
	if sum.Mode, err = run.mode(ctx); err != nil {
		return sum, err
	}
	e.logger.Info("extracting", "mode", sum.Mode, "projects", len(run.windows), "to", to.Format(time.RFC3339))
	if sum.Mode == AccessAllTenants {
		run.shared = true
		err = run.allTenants(ctx)
	} else {
		err = run.perProject(ctx)
	}
	if err != nil {
		return sum, err
	}
	if opts.DryRun {
		return sum, nil
	}
	run.settle(ctx, tracker)
	if len(sum.Failed) > 0 {
		return sum, ErrPartial
	}
	return sum, nil
}

func (e *Runner) warn(sum *Summary, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	sum.Warnings = append(sum.Warnings, msg)
	e.logger.Warn(msg)
}

// run is one run's working set.
type run struct {
	e       *Runner
	cloud   *openstack.Cloud
	opts    Options
	to      time.Time
	sum     *Summary
	windows map[string]Window // selected, leased projects
	leases  []*state.Lease

	mu sync.Mutex
	// shared batches records of every project together (all-tenants mode):
	// per-project batches of a thousand small projects would hold the whole
	// cloud in memory until the listing ends, or make tiny batches.
	shared  bool
	pending map[string]*projectBatches // by bucket: a project, or allProjects
	// batchesOf lists, per project, the batches holding its records.
	batchesOf map[string][]string
	order     []string // project ids, for a stable progress order
	done      int

	// tracker hears the outcomes; publish admits each batch through it,
	// so at most max_pending_batches are in the pipeline at once.
	tracker *bus.Tracker
	// unbounded is set once a wait for a free slot outlasted
	// delivery_timeout: the pipeline is stuck (no enricher?), and waiting
	// longer per batch would only stretch the run; the stream takes the
	// rest, as it would have without the bound, and settle says which
	// projects did not make it.
	unbounded atomic.Bool

	// userGet, when listing users is forbidden, names each record owner
	// with one GET per user; users holds each user's fetch, once.
	userGet *keystone
	users   map[string]*userFetch
	// userDenied stops the lookups once Keystone refuses get_user too.
	userDenied atomic.Bool
}

// userFetch is one user's lookup; done closes when it is in the directory
// (or failed), so records of that user wait for their name.
type userFetch struct{ done chan struct{} }

// nameOwner makes sure the owner of a record is in the directory before
// the record is queued, so the enricher finds the name.
func (r *run) nameOwner(ctx context.Context, id string) error {
	if r.userGet == nil || id == "" || r.userDenied.Load() {
		return nil
	}
	r.mu.Lock()
	f, seen := r.users[id]
	if !seen {
		f = &userFetch{done: make(chan struct{})}
		r.users[id] = f
	}
	r.mu.Unlock()
	if seen {
		select {
		case <-f.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	defer close(f.done)
	if _, known, err := r.e.deps.Directory.User(ctx, id); err != nil || known {
		return err
	}
	u, err := r.userGet.user(ctx, id)
	switch {
	case openstack.StatusOf(err) == http.StatusForbidden:
		if r.userDenied.CompareAndSwap(false, true) {
			r.mu.Lock()
			r.e.warn(r.sum, "Keystone refuses both identity:list_users and identity:get_user (%v): records carry no user names; \"tally doctor\" shows the policy to grant", err)
			r.mu.Unlock()
		}
		return nil
	case err != nil:
		r.mu.Lock()
		r.e.warn(r.sum, "cannot get Keystone user %s (%v): its records carry no user name", id, err)
		r.mu.Unlock()
		return nil
	}
	return r.e.deps.Directory.PutUser(ctx, u)
}

// prepare stores the directory and works out and leases each project's
// window.
func (r *run) prepare(ctx context.Context, ks *keystone, projects []directory.Project) error {
	e := r.e
	if !r.opts.DryRun {
		for _, p := range projects {
			if err := e.deps.Directory.PutProject(ctx, p); err != nil {
				return err
			}
		}
		if users, err := ks.users(ctx); openstack.StatusOf(err) == http.StatusForbidden {
			// The policy cASO's docs give grants identity:get_user only.
			e.logger.Info("listing Keystone users is forbidden: fetching each record owner with identity:get_user, as cASO does", "reason", err)
			r.userGet, r.users = ks, map[string]*userFetch{}
		} else if err != nil {
			e.warn(r.sum, "cannot list Keystone users (%v): records carry no user name unless another extractor stored them", err)
		} else {
			for _, u := range users {
				if err := e.deps.Directory.PutUser(ctx, u); err != nil {
					return err
				}
			}
		}
	}
	for _, p := range projects {
		key := state.Key(e.src.Name(), e.region, p.ID)
		from, source := r.opts.From.UTC(), "--from"
		if from.IsZero() && e.deps.State != nil {
			last, ok, err := e.deps.State.LastRun(ctx, key)
			if err != nil {
				return err
			}
			if ok {
				from, source = last, "last run"
			}
		}
		if from.IsZero() {
			from, source = time.Unix(0, 0).UTC(), "no last run: from the epoch, as cASO"
		}
		// One line per project and run, for sites that grep their logs
		// for where a project's window started and why.
		e.logger.Info("project window", "project_id", p.ID, "project", p.Name,
			"from", from.Format(time.RFC3339Nano), "to", r.to.Format(time.RFC3339Nano), "from_source", source)
		if !from.Before(r.to) {
			r.sum.Failed[p.ID] = fmt.Sprintf("window start %s is not before its end %s", from.Format(time.RFC3339), r.to.Format(time.RFC3339))
			continue
		}
		if !r.opts.DryRun {
			lease, err := e.deps.State.Acquire(ctx, key)
			if errors.Is(err, state.ErrLeased) && e.deps.Bus != nil && breakDeadLease(ctx, e.deps.Bus.JS, key) {
				e.logger.Warn("took over the lease of a dead extractor process", "project_id", p.ID, "reason", err)
				lease, err = e.deps.State.Acquire(ctx, key)
			}
			if errors.Is(err, state.ErrLeased) {
				r.sum.Skipped[p.ID] = err.Error()
				e.logger.Info("project skipped: another extractor has it", "project_id", p.ID, "reason", err)
				continue
			}
			if err != nil {
				return err
			}
			r.leases = append(r.leases, lease)
		}
		r.windows[p.ID] = Window{From: from, To: r.to}
		r.order = append(r.order, p.ID)
		if r.sum.From.IsZero() || from.Before(r.sum.From) {
			r.sum.From = from
		}
	}
	return nil
}

func (r *run) release(ctx context.Context) {
	for _, l := range r.leases {
		if err := l.Release(ctx); err != nil {
			r.e.logger.Warn("lease release", "error", err)
		}
	}
}

func (r *run) mode(ctx context.Context) (string, error) {
	switch r.e.cfg.AccessMode {
	case AccessAllTenants, AccessPerProject:
		return r.e.cfg.AccessMode, nil
	}
	ok, err := r.e.src.CanListAll(ctx)
	if err != nil {
		return "", err
	}
	if ok {
		return AccessAllTenants, nil
	}
	r.e.logger.Info("these credentials may not list every project's resources: extracting project by project")
	return AccessPerProject, nil
}

func (r *run) allTenants(ctx context.Context) error {
	if err := r.e.src.All(ctx, r.windows, r.sum.From, r.emit); err != nil {
		return err
	}
	if err := r.flush(ctx, allProjects, true); err != nil {
		return err
	}
	for range r.order {
		r.progress()
	}
	return nil
}

// perProject extracts each project with a token scoped to it; a project
// that fails is reported and the others go on.
func (r *run) perProject(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.e.cfg.Concurrency)
	for _, id := range r.order {
		w := r.windows[id]
		g.Go(func() error {
			err := r.project(gctx, id, w)
			if err != nil {
				if gctx.Err() != nil {
					return gctx.Err()
				}
				r.mu.Lock()
				r.sum.Failed[id] = err.Error()
				r.mu.Unlock()
				r.e.logger.Error("project failed", "project_id", id, "error", err)
			}
			r.progress()
			return nil
		})
	}
	return g.Wait()
}

func (r *run) project(ctx context.Context, id string, w Window) error {
	scoped, err := Scoped(ctx, r.cloud, r.e.auth, r.e.cfg.Retry, id)
	if err != nil {
		return err
	}
	if err := r.e.src.Project(ctx, scoped, id, w, r.emit); err != nil {
		return err
	}
	return r.flush(ctx, id, true)
}

func (r *run) progress() {
	r.mu.Lock()
	r.done++
	done, total := r.done, len(r.order)
	r.mu.Unlock()
	if r.opts.Progress != nil {
		r.opts.Progress(done, total)
	}
}

// emit completes a record's provenance and queues it in its project's
// batches; records of projects not in this run are dropped.
func (r *run) emit(ctx context.Context, project string, rec *tallyv1.Record) error {
	w, ok := r.windows[project]
	if !ok {
		return nil
	}
	if err := r.nameOwner(ctx, rec.GetProvenance().GetOwnerUserId()); err != nil {
		return err
	}
	rec.Provenance = &tallyv1.Provenance{
		Region: r.e.region, Extractor: r.e.src.Name(), ProjectId: project,
		WindowFrom: timestamppb.New(w.From), WindowTo: timestamppb.New(w.To), ExtractedAt: timestamppb.Now(),
		OwnerUserId: rec.GetProvenance().GetOwnerUserId(),
	}
	t := record.TypeOf(rec)
	bucket := project
	if r.shared {
		bucket = allProjects
	}
	r.mu.Lock()
	pb := r.pending[bucket]
	if pb == nil {
		pb = &projectBatches{open: map[tallyv1.RecordType][]*tallyv1.Record{}}
		r.pending[bucket] = pb
	}
	pb.open[t] = append(pb.open[t], rec)
	r.sum.Records[record.TypeName(t)]++
	full := len(pb.open[t]) >= r.e.cfg.BatchSize
	r.mu.Unlock()
	if full {
		return r.flush(ctx, bucket, false)
	}
	return nil
}

// allProjects is the bucket of the shared batches.
const allProjects = "all"

// projectBatches holds a bucket's records not yet published, by type.
type projectBatches struct {
	open map[tallyv1.RecordType][]*tallyv1.Record
	seq  int
}

// flush publishes a bucket's full batches, or all of them when final.
func (r *run) flush(ctx context.Context, project string, final bool) error {
	type out struct {
		t     tallyv1.RecordType
		batch *tallyv1.RecordBatch
	}
	var outs []out
	r.mu.Lock()
	if pb := r.pending[project]; pb != nil {
		for _, t := range slices.Sorted(maps.Keys(pb.open)) {
			recs := pb.open[t]
			if len(recs) == 0 || (!final && len(recs) < r.e.cfg.BatchSize) {
				continue
			}
			pb.seq++
			id := BatchID(r.e.src.Name(), r.e.region, project, r.to, t, pb.seq, recs)
			for _, rec := range recs {
				p := rec.GetProvenance().GetProjectId()
				if ids := r.batchesOf[p]; len(ids) == 0 || ids[len(ids)-1] != id {
					r.batchesOf[p] = append(ids, id)
				}
			}
			outs = append(outs, out{t, &tallyv1.RecordBatch{BatchId: id, Records: recs}})
			pb.open[t] = nil
		}
	}
	r.mu.Unlock()
	for _, o := range outs {
		if err := r.publish(ctx, o.t, o.batch); err != nil {
			return err
		}
	}
	return nil
}

func (r *run) publish(ctx context.Context, t tallyv1.RecordType, b *tallyv1.RecordBatch) error {
	r.mu.Lock()
	r.sum.Batches++
	r.mu.Unlock()
	if r.opts.DryRun {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, rec := range b.GetRecords() {
			line, err := protojson.Marshal(rec)
			if err != nil {
				return err
			}
			if _, err := fmt.Fprintf(r.opts.DryRunOut, "%s\n", line); err != nil {
				return err
			}
		}
		return nil
	}
	if err := r.admit(ctx, b.GetBatchId()); err != nil {
		return err
	}
	subject := bus.RawSubject(r.e.region, t)
	dup, err := r.e.deps.Bus.PublishBatch(ctx, subject, b)
	if err != nil {
		return err
	}
	if dup {
		// A run that died after publishing this very batch: JetStream
		// dropped it as a duplicate, and if the enricher had settled it
		// already, no outcome would ever reach this run's tracker (it
		// would wait out delivery_timeout and keep the window). Publish it
		// again under a fresh message id: the messengers know the batch id
		// and write nothing twice, and the outcome comes back.
		data, err := proto.Marshal(b)
		if err != nil {
			return err
		}
		again := fmt.Sprintf("%s/again/%d", b.GetBatchId(), time.Now().UnixNano())
		if _, err := r.e.deps.Bus.Publish(ctx, subject, again, data, nats.Header{bus.HeaderBatchID: []string{b.GetBatchId()}}); err != nil {
			return err
		}
	}
	if m := r.e.deps.Metrics; m != nil {
		m.RecordsOut.WithLabelValues(r.e.src.Name(), "bus", record.TypeName(t)).Add(float64(len(b.GetRecords())))
	}
	return nil
}

// admit waits for a free slot among the batches in the pipeline.
func (r *run) admit(ctx context.Context, id string) error {
	if r.tracker == nil || r.unbounded.Load() {
		return nil
	}
	limit := r.e.cfg.MaxPendingBatches
	if limit <= 0 {
		limit = DefaultMaxPendingBatches
	}
	wctx, cancel := context.WithTimeout(ctx, r.e.cfg.DeliveryTimeout)
	defer cancel()
	err := r.tracker.Admit(wctx, id, limit)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	}
	if r.unbounded.CompareAndSwap(false, true) {
		r.mu.Lock()
		r.e.warn(r.sum, "none of %d batches on the bus was delivered within %v: publishing the rest without waiting (is the enricher running?)", limit, r.e.cfg.DeliveryTimeout)
		r.mu.Unlock()
	}
	return nil
}

// BatchID is stable for the same records in the same window, so a rerun
// after a crash re-publishes what JetStream and the messengers already have
// under the same id, while different content gets a different id.
func BatchID(extractor, region, project string, to time.Time, t tallyv1.RecordType, seq int, recs []*tallyv1.Record) string {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	for _, r := range recs {
		// The key and payload only: provenance carries the extraction time.
		bare := &tallyv1.Record{Key: r.GetKey()}
		proto.Merge(bare, r)
		bare.Provenance = nil
		b, _ := opts.Marshal(bare)
		h.Write(b)
	}
	return fmt.Sprintf("%s/%s/%s/%d/%s/%d-%s", extractor, bus.Token(region), project, to.Unix(), record.TypeName(t), seq,
		hex.EncodeToString(h.Sum(nil))[:16])
}

// settle waits until every project's batches reached every messenger, then
// moves each fully delivered project's window to the run's end.
func (r *run) settle(ctx context.Context, tracker *bus.Tracker) {
	seen := map[string]bool{}
	var ids []string
	for _, project := range r.order {
		for _, id := range r.batchesOf[project] {
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	wctx, cancel := context.WithTimeout(ctx, r.e.cfg.DeliveryTimeout)
	defer cancel()
	outcomes, reasons := tracker.Wait(wctx, ids)
	for _, project := range r.order {
		if _, failed := r.sum.Failed[project]; failed {
			continue
		}
		problem := ""
		for _, id := range r.batchesOf[project] {
			switch outcomes[id] {
			case bus.Failed:
				// A shared batch fails a project only if it failed as a
				// whole or names that project among the held ones.
				if held := tracker.FailedProjects(id); len(held) == 0 || slices.Contains(held, project) {
					problem = fmt.Sprintf("batch %s was dead-lettered: %s", id, reasons[id])
				}
			case bus.Pending:
				problem = fmt.Sprintf("batch %s not delivered within %v", id, r.e.cfg.DeliveryTimeout)
			}
			if problem != "" {
				break
			}
		}
		if problem != "" {
			r.sum.Failed[project] = problem
			r.e.logger.Error("project window not moved", "project_id", project, "reason", problem)
			continue
		}
		if err := r.e.deps.State.SetLastRun(ctx, state.Key(r.e.src.Name(), r.e.region, project), r.to, false); err != nil {
			r.sum.Failed[project] = err.Error()
		}
	}
}
