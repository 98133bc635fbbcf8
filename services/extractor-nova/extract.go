package nova

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
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

// Name is the extractor's service name and provenance.
const Name = "extractor-nova"

// Deps are the shared parts an extractor uses.
type Deps struct {
	Bus       *bus.Bus
	State     *state.Store
	Directory *directory.Directory
	Metrics   *metrics.Metrics
	Logger    *slog.Logger
}

// Extractor extracts one region's Nova usage.
type Extractor struct {
	cfg       Config
	auth      openstack.AuthConfig
	region    string
	cloudType string
	deps      Deps
	logger    *slog.Logger
}

// New returns an extractor for the region of auth.
func New(cfg Config, auth openstack.AuthConfig, cloudType string, deps Deps) *Extractor {
	region := auth.Region
	if region == "" {
		region = "default"
	}
	return &Extractor{cfg: cfg, auth: auth, region: region, cloudType: cloudType, deps: deps,
		logger: deps.Logger.With("extractor", Name, "region", region)}
}

// Region is the region this extractor serves.
func (e *Extractor) Region() string { return e.region }

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
	Mode     string
	From, To time.Time
	Projects int
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

// ErrPartial means some projects failed; the summary says which.
var ErrPartial = errors.New("some projects failed")

// Run extracts one window for every selected project.
func (e *Extractor) Run(ctx context.Context, opts Options) (sum Summary, err error) {
	began := time.Now()
	sum = Summary{Failed: map[string]string{}, Skipped: map[string]string{}, Records: map[string]int{}}
	now := time.Now().UTC()
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

	defer func() { sum.Duration = time.Since(began) }()
	a, err := connect(ctx, e.auth, e.cfg)
	if err != nil {
		return sum, err
	}
	defer func() {
		sum.APICalls, sum.Retries = a.cloud.Stats.Calls.Load(), a.cloud.Stats.Retries.Load()
	}()

	wanted := e.cfg.Projects
	tag := e.cfg.Tag
	if len(opts.Projects) > 0 {
		wanted, tag = opts.Projects, ""
	}
	projects, warnings, err := a.projects(ctx, tag, wanted)
	for _, w := range warnings {
		e.warn(&sum, "%s", w)
	}
	if err != nil {
		return sum, err
	}
	if len(projects) == 0 {
		return sum, fmt.Errorf("no project selected: none carries the tag %q and none of %q is visible", tag, wanted)
	}

	run := &runState{e: e, api: a, opts: opts, to: to, sum: &sum, windows: map[string]Window{},
		pending: map[string]*projectBatches{}, imageRefs: map[string]string{}}
	if err := run.prepare(ctx, projects); err != nil {
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
	}

	mode, err := run.mode(ctx)
	if err != nil {
		return sum, err
	}
	sum.Mode = mode
	e.logger.Info("extracting", "mode", mode, "projects", len(run.windows), "to", to.Format(time.RFC3339))
	if mode == AccessAllTenants {
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

func (e *Extractor) warn(sum *Summary, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	sum.Warnings = append(sum.Warnings, msg)
	e.logger.Warn(msg)
}

// runState is one run's working set.
type runState struct {
	e         *Extractor
	api       *api
	opts      Options
	to        time.Time
	sum       *Summary
	windows   map[string]Window // selected, leased projects
	leases    []*state.Lease
	imageRefs map[string]string

	mu      sync.Mutex
	pending map[string]*projectBatches
	order   []string // project ids, for a stable progress order
	done    int
}

// prepare stores the directory, fetches images and users once, and works out
// and leases each project's window.
func (r *runState) prepare(ctx context.Context, projects []directory.Project) error {
	e := r.e
	if !r.opts.DryRun {
		for _, p := range projects {
			if err := e.deps.Directory.PutProject(ctx, p); err != nil {
				return err
			}
		}
		if users, err := r.api.users(ctx); err != nil {
			e.warn(r.sum, "cannot list Keystone users (%v): records carry no GlobalUserName unless another extractor stored the names", err)
		} else {
			for _, u := range users {
				if err := e.deps.Directory.PutUser(ctx, u); err != nil {
					return err
				}
			}
		}
	}
	refs, err := r.api.imageRefs(ctx)
	if err != nil {
		e.warn(r.sum, "cannot list Glance images (%v): ImageId is the image id", err)
	}
	r.imageRefs = refs

	for _, p := range projects {
		from := r.opts.From.UTC()
		if from.IsZero() && e.deps.State != nil {
			last, ok, err := e.deps.State.LastRun(ctx, state.Key(Name, e.region, p.ID))
			if err != nil {
				return err
			}
			if ok {
				from = last
			}
		}
		if from.IsZero() {
			from = time.Unix(0, 0).UTC()
		}
		if !from.Before(r.to) {
			r.sum.Failed[p.ID] = fmt.Sprintf("window start %s is not before its end %s", from.Format(time.RFC3339), r.to.Format(time.RFC3339))
			continue
		}
		if !r.opts.DryRun {
			lease, err := e.deps.State.Acquire(ctx, state.Key(Name, e.region, p.ID))
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
	}
	if r.sum.From.IsZero() {
		for _, w := range r.windows {
			if r.sum.From.IsZero() || w.From.Before(r.sum.From) {
				r.sum.From = w.From
			}
		}
	}
	return nil
}

func (r *runState) release(ctx context.Context) {
	for _, l := range r.leases {
		if err := l.Release(ctx); err != nil {
			r.e.logger.Warn("lease release", "error", err)
		}
	}
}

func (r *runState) mode(ctx context.Context) (string, error) {
	switch r.e.cfg.AccessMode {
	case AccessAllTenants, AccessPerProject:
		return r.e.cfg.AccessMode, nil
	}
	ok, err := r.api.canListAllTenants(ctx)
	if err != nil {
		return "", err
	}
	if ok {
		return AccessAllTenants, nil
	}
	r.e.logger.Info("these credentials may not list all projects' servers (os_compute_api:servers:detail:get_all_tenants): extracting project by project")
	return AccessPerProject, nil
}

// allTenants lists every project's servers at once: the servers changed
// since the earliest window start (deleted ones included) and every live
// server (those not changed since still accrue usage), each once.
func (r *runState) allTenants(ctx context.Context) error {
	seen := map[string]bool{}
	visit := func(s Server) error {
		if seen[s.ID] {
			return nil
		}
		seen[s.ID] = true
		w, ok := r.windows[s.ProjectID]
		if !ok {
			return nil
		}
		return r.add(ctx, s, w)
	}
	since := r.sum.From.Format(time.RFC3339)
	if err := r.api.eachServer(ctx, r.api.compute, servers.ListOpts{AllTenants: true, ChangesSince: since}, visit); err != nil {
		return fmt.Errorf("list servers changed since %s: %w", since, err)
	}
	if err := r.api.eachServer(ctx, r.api.compute, servers.ListOpts{AllTenants: true}, visit); err != nil {
		return fmt.Errorf("list live servers: %w", err)
	}
	for _, id := range r.order {
		if err := r.flush(ctx, id, true); err != nil {
			return err
		}
		r.progress()
	}
	return nil
}

// perProject extracts each project with a token scoped to it.
func (r *runState) perProject(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.e.cfg.Concurrency)
	for _, id := range r.order {
		w := r.windows[id]
		g.Go(func() error {
			if err := r.project(gctx, id, w); err != nil {
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

func (r *runState) project(ctx context.Context, id string, w Window) error {
	c, err := r.api.scoped(ctx, id)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	visit := func(s Server) error {
		if seen[s.ID] || s.ProjectID != id {
			return nil
		}
		seen[s.ID] = true
		return r.add(ctx, s, w)
	}
	if err := r.api.eachServer(ctx, c, servers.ListOpts{ChangesSince: w.From.Format(time.RFC3339)}, visit); err != nil {
		return fmt.Errorf("list servers: %w", err)
	}
	if err := r.api.eachServer(ctx, c, servers.ListOpts{}, visit); err != nil {
		return fmt.Errorf("list live servers: %w", err)
	}
	return r.flush(ctx, id, true)
}

func (r *runState) progress() {
	r.mu.Lock()
	r.done++
	done, total := r.done, len(r.order)
	r.mu.Unlock()
	if r.opts.Progress != nil {
		r.opts.Progress(done, total)
	}
}

// add builds a server's records and queues them in its project's batches.
func (r *runState) add(ctx context.Context, s Server, w Window) error {
	if !Included(s, w) {
		return nil
	}
	e := r.e
	site := Site{CloudType: e.cloudType}
	warn := func(format string, args ...any) {
		e.logger.Warn(fmt.Sprintf(format, args...), "vm_uuid", s.ID, "project_id", s.ProjectID)
	}
	imageRef := func(id string) string {
		if ref, ok := r.imageRefs[id]; ok {
			return ref
		}
		return id
	}
	prov := &tallyv1.Provenance{
		Region: e.region, Extractor: Name, ProjectId: s.ProjectID,
		WindowFrom: timestamppb.New(w.From), WindowTo: timestamppb.New(w.To), ExtractedAt: timestamppb.Now(),
	}
	cloud := Cloud(s, nil, w, site, e.cfg.Keys(), imageRef, warn)
	recs := []*tallyv1.Record{{Key: CloudKey(s.ID), Provenance: prov, Payload: &tallyv1.Record_Cloud{Cloud: cloud}}}
	for _, acc := range Accelerators(s, w, site, e.cfg.Keys()) {
		recs = append(recs, &tallyv1.Record{Key: AcceleratorKey(s.ID, acc.MeasurementYear, acc.MeasurementMonth),
			Provenance: prov, Payload: &tallyv1.Record_Accelerator{Accelerator: acc}})
	}
	for _, rec := range recs {
		if err := r.queue(ctx, s.ProjectID, rec); err != nil {
			return err
		}
	}
	return nil
}

// projectBatches holds a project's records not yet published, by type, and
// the ids of the batches published for it.
type projectBatches struct {
	open map[tallyv1.RecordType][]*tallyv1.Record
	seq  int
	ids  []string
}

func (r *runState) queue(ctx context.Context, project string, rec *tallyv1.Record) error {
	t := record.TypeOf(rec)
	r.mu.Lock()
	pb := r.pending[project]
	if pb == nil {
		pb = &projectBatches{open: map[tallyv1.RecordType][]*tallyv1.Record{}}
		r.pending[project] = pb
	}
	pb.open[t] = append(pb.open[t], rec)
	r.sum.Records[record.TypeName(t)]++
	full := len(pb.open[t]) >= r.e.cfg.BatchSize
	r.mu.Unlock()
	if full {
		return r.flush(ctx, project, false)
	}
	return nil
}

// flush publishes a project's full batches, or all of them when final.
func (r *runState) flush(ctx context.Context, project string, final bool) error {
	r.mu.Lock()
	pb := r.pending[project]
	if pb == nil {
		r.mu.Unlock()
		return nil
	}
	type out struct {
		t     tallyv1.RecordType
		batch *tallyv1.RecordBatch
	}
	var outs []out
	for _, t := range slices.Sorted(maps.Keys(pb.open)) {
		recs := pb.open[t]
		if len(recs) == 0 || (!final && len(recs) < r.e.cfg.BatchSize) {
			continue
		}
		pb.seq++
		id := batchID(r.e.region, project, r.to, t, pb.seq, recs)
		pb.ids = append(pb.ids, id)
		outs = append(outs, out{t, &tallyv1.RecordBatch{BatchId: id, Records: recs}})
		pb.open[t] = nil
	}
	r.mu.Unlock()
	for _, o := range outs {
		if err := r.publish(ctx, o.t, o.batch); err != nil {
			return err
		}
	}
	return nil
}

func (r *runState) publish(ctx context.Context, t tallyv1.RecordType, b *tallyv1.RecordBatch) error {
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
	if _, err := r.e.deps.Bus.PublishBatch(ctx, bus.RawSubject(r.e.region, t), b); err != nil {
		return err
	}
	if m := r.e.deps.Metrics; m != nil {
		m.RecordsOut.WithLabelValues(Name, "bus", record.TypeName(t)).Add(float64(len(b.GetRecords())))
	}
	return nil
}

// batchID is stable for the same records in the same window, so a rerun
// after a crash re-publishes what JetStream and the messengers already
// have under the same id, and different content gets a different id.
func batchID(region, project string, to time.Time, t tallyv1.RecordType, seq int, recs []*tallyv1.Record) string {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	for _, r := range recs {
		// The payload only: provenance carries the extraction time.
		var payload proto.Message
		switch p := r.GetPayload().(type) {
		case *tallyv1.Record_Cloud:
			payload = p.Cloud
		case *tallyv1.Record_Accelerator:
			payload = p.Accelerator
		}
		b, _ := opts.Marshal(payload)
		h.Write(b)
	}
	return fmt.Sprintf("nova/%s/%s/%d/%s/%d-%s", bus.Token(region), project, to.Unix(), record.TypeName(t), seq,
		hex.EncodeToString(h.Sum(nil))[:16])
}

// settle waits until every project's batches reached every messenger, then
// moves each fully delivered project's window to the run's end.
func (r *runState) settle(ctx context.Context, tracker *bus.Tracker) {
	var ids []string
	for _, id := range r.order {
		if pb := r.pending[id]; pb != nil {
			ids = append(ids, pb.ids...)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, r.e.cfg.DeliveryTimeout)
	defer cancel()
	outcomes, reasons := tracker.Wait(wctx, ids)
	for _, project := range r.order {
		if _, failed := r.sum.Failed[project]; failed {
			continue
		}
		var problem string
		if pb := r.pending[project]; pb != nil {
			for _, id := range pb.ids {
				switch outcomes[id] {
				case bus.Failed:
					problem = fmt.Sprintf("batch %s was dead-lettered: %s", id, reasons[id])
				case bus.Pending:
					problem = fmt.Sprintf("batch %s not delivered within %v", id, r.e.cfg.DeliveryTimeout)
				}
				if problem != "" {
					break
				}
			}
		}
		if problem != "" {
			r.sum.Failed[project] = problem
			r.e.logger.Error("project window not moved", "project_id", project, "reason", problem)
			continue
		}
		if err := r.e.deps.State.SetLastRun(ctx, state.Key(Name, r.e.region, project), r.to, false); err != nil {
			r.sum.Failed[project] = err.Error()
		}
	}
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
