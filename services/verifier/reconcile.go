package verifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/flavors"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"github.com/tally-accounting/tally/pkg/openstack"
)

// The reconciler (StackTach's stacktach/reconciler, §1.9): when the state
// tracked from notifications is missing or disagrees with an exists, Nova
// is asked about the instance. If Nova agrees with the exists, the launch
// (and its delete) is recorded as confirmed by Nova (InstanceReconcile,
// Source SourceNovaAPI) and the exists verifies against it; later exists of
// the same launch verify against that record without asking again.
// Otherwise the exists fails as before, with what Nova said added to the
// reason.
//
// Where tally differs from StackTach:
//   - Nova's API is asked (GET /servers/{id}, and for a deleted server,
//     which that answers 404 even to admins, the admin listing
//     /servers/detail?deleted=true&uuid=), not Nova's database through a
//     JSON bridge; Nova's API has no image metadata, so os_* and
//     rax_options failures are not reconciled;
//   - the exists that prompted the question verifies when Nova agrees
//     (StackTach left it failed and only later exists became reconciled);
//   - Nova knows only an instance's current launch: an exists of a launch
//     since replaced by a resize or rebuild cannot be confirmed;
//   - when Nova cannot be reached (after the retries), the exists is not
//     failed: it goes back to pending at the end of the pass and is asked
//     about again at the next one.

// SourceNovaAPI marks launches confirmed by Nova's compute API.
const SourceNovaAPI = "reconciler:nova_api"

// reconcilableFields are the fields whose failure Nova's answer can settle.
var reconcilableFields = map[string]bool{"instance": true, "launched_at": true, "instance_flavor_id": true,
	"instance_type_id": true, "instance_type": true, "tenant": true, "deleted_at": true}

// reconcilable reports whether f, a failure of e against the tracked
// state, could be settled by Nova: not a malformed exists.
func (r rules) reconcilable(e InstanceExists, f *Failure) bool {
	return e.Invalid == "" && !e.Usage.LaunchedAt.IsZero() && reconcilableFields[f.Field] && r.validity(e) == nil
}

// novaServer is what Nova's API says of an instance.
type novaServer struct {
	// Found is false when Nova answered 404 (or 403: Refused says so).
	Found   bool
	Refused string
	Status  string
	Tenant  string
	// FlavorID is the flavor's id (instance_flavor_id), FlavorName its
	// name ("" when Nova no longer has the flavor).
	FlavorID   string
	FlavorName string
	LaunchedAt time.Time
	Deleted    bool
	// DeletedAt is terminated_at, else (deleted without it) the time of
	// the last update, which for a deleted server is its deletion.
	DeletedAt time.Time
}

// agree compares what Nova says with e. It returns the launch to record,
// or why Nova does not confirm e.
func (r rules) agree(e InstanceExists, failed string, s novaServer) (InstanceReconcile, string) {
	id := e.Usage.Instance
	switch {
	case s.Refused != "":
		return InstanceReconcile{}, "Nova refused to show instance " + id + ": " + s.Refused
	case !s.Found:
		return InstanceReconcile{}, "Nova has no instance " + id + " (404)"
	}
	var no []string
	say := func(format string, args ...any) { no = append(no, fmt.Sprintf(format, args...)) }
	switch {
	case s.LaunchedAt.IsZero():
		say("launched_at is null (status %s)", s.Status)
	case !sameSecond(s.LaunchedAt, e.Usage.LaunchedAt):
		say("launched_at '%s'", fmtTime(s.LaunchedAt))
	}
	if s.Tenant != e.Usage.Tenant {
		say("tenant '%s'", s.Tenant)
	}
	switch {
	case e.Usage.InstanceFlavorID == "":
		say("flavor '%s' (the exists has no instance_flavor_id to compare)", s.FlavorID)
	case s.FlavorID != e.Usage.InstanceFlavorID:
		say("instance_flavor_id '%s'", s.FlavorID)
	}
	switch {
	case e.Usage.FlavorName == "":
	case s.FlavorName != "" && s.FlavorName != e.Usage.FlavorName:
		say("instance_type '%s'", s.FlavorName)
	case s.FlavorName == "" && failed == "instance_type":
		say("no name for flavor '%s' (deleted flavor)", s.FlavorID)
	}
	switch {
	case !e.DeletedAt.IsZero() && !s.Deleted:
		say("not deleted (status %s)", s.Status)
	case !e.DeletedAt.IsZero() && !sameSecond(s.DeletedAt, e.DeletedAt):
		say("deleted_at '%s'", fmtTime(s.DeletedAt))
	case e.DeletedAt.IsZero() && s.Deleted && (e.AuditEnd.IsZero() || !s.DeletedAt.After(e.AuditEnd)):
		say("deleted_at '%s', before the audit period ended", fmtTime(s.DeletedAt))
	}
	if len(no) > 0 {
		return InstanceReconcile{}, "Nova says " + strings.Join(no, ", ")
	}
	return InstanceReconcile{Usage: e.Usage, DeletedAt: e.DeletedAt, Source: SourceNovaAPI, NovaStatus: s.Status}, ""
}

func (rc InstanceReconcile) deletes() []InstanceDelete {
	if rc.DeletedAt.IsZero() {
		return nil
	}
	return []InstanceDelete{{Instance: rc.Usage.Instance, LaunchedAt: rc.Usage.LaunchedAt, DeletedAt: rc.DeletedAt}}
}

func withNova(f *Failure, said string) *Failure {
	out := *f
	out.Reason = f.Reason + "; reconciler: " + said
	return &out
}

// errAskLater defers an exists to the next pass: the reconciler could not
// reach Nova.
var errAskLater = errors.New("reconciler: cannot ask Nova")

// reconcile settles f, e's failure against the tracked state, with the
// launches Nova confirmed before, else by asking Nova if the reconciler is
// on. It returns nil when e verifies.
func (v *Verifier) reconcile(ctx context.Context, e InstanceExists, f *Failure) (*Failure, error) {
	id := e.Usage.Instance
	recs, err := v.store.Reconciles(ctx, id)
	if err != nil {
		return nil, err
	}
	for _, rc := range recs {
		if sameSecond(rc.Usage.LaunchedAt, e.Usage.LaunchedAt) && v.rules.verifyInstance(e, []InstanceUsage{rc.Usage}, rc.deletes()) == nil {
			return nil, nil
		}
	}
	if v.reconciler == nil {
		return f, nil
	}
	s, err := v.reconciler.server(ctx, id)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// Nova down or unreachable says nothing about the exists: it is
		// checked again at the next pass rather than failed for good.
		v.logger.Warn("reconciler: cannot ask Nova; the exists stays pending for the next pass", "instance", id, "error", err)
		return nil, fmt.Errorf("%w: %v", errAskLater, err)
	}
	rc, no := v.rules.agree(e, f.Field, s)
	if no != "" {
		return withNova(f, no), nil
	}
	rc.Reconciled = v.now().UTC()
	if g := v.rules.verifyInstance(e, []InstanceUsage{rc.Usage}, rc.deletes()); g != nil {
		return withNova(f, "Nova agrees but the exists does not verify: "+g.Reason), nil
	}
	if err := v.store.AddReconcile(ctx, rc); err != nil {
		return nil, err
	}
	v.logger.Info("reconciled with Nova", "instance", id, "launched_at", fmtTime(e.Usage.LaunchedAt),
		"message_id", e.MessageID, "tracked", f.Reason)
	return nil, nil
}

// reconciler asks Nova, at most pool_size calls at a time, each instance
// once per verification pass.
type reconciler struct {
	cfg    ReconcilerConfig
	logger *slog.Logger
	sem    chan struct{}

	mu        sync.Mutex
	compute   *gophercloud.ServiceClient
	connErr   error
	connAt    time.Time
	pass      map[string]*novaCall
	flavorMap map[string]string // flavor id -> name; flavors are never renamed
}

type novaCall struct {
	done chan struct{}
	s    novaServer
	err  error
}

func newReconciler(cfg ReconcilerConfig, logger *slog.Logger) *reconciler {
	return &reconciler{cfg: cfg, logger: logger, sem: make(chan struct{}, max(cfg.PoolSize, 1)),
		pass: map[string]*novaCall{}, flavorMap: map[string]string{}}
}

// newPass forgets Nova's answers of the previous pass.
func (r *reconciler) newPass() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pass = map[string]*novaCall{}
}

// server is Nova's answer about id, asked once per pass.
func (r *reconciler) server(ctx context.Context, id string) (novaServer, error) {
	r.mu.Lock()
	c, ok := r.pass[id]
	if !ok {
		c = &novaCall{done: make(chan struct{})}
		r.pass[id] = c
	}
	r.mu.Unlock()
	if ok {
		select {
		case <-c.done:
			return c.s, c.err
		case <-ctx.Done():
			return novaServer{}, ctx.Err()
		}
	}
	c.s, c.err = r.ask(ctx, id)
	if c.err != nil && ctx.Err() != nil {
		// Not an answer: the next caller asks again.
		r.mu.Lock()
		delete(r.pass, id)
		r.mu.Unlock()
	}
	close(c.done)
	return c.s, c.err
}

// connRetry is how long a failed authentication is remembered.
const connRetry = 30 * time.Second

func (r *reconciler) client(ctx context.Context) (*gophercloud.ServiceClient, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.compute != nil {
		return r.compute, nil
	}
	if r.connErr != nil && time.Since(r.connAt) < connRetry {
		return nil, r.connErr
	}
	auth := r.cfg.Client
	if r.cfg.Region != "" {
		auth.Region = r.cfg.Region
	}
	cloud, err := openstack.Connect(ctx, auth, r.cfg.Retry)
	if err == nil {
		r.compute, err = gopenstack.NewComputeV2(cloud.Provider, cloud.Endpoint)
	}
	if err != nil {
		r.connErr, r.connAt = fmt.Errorf("connect to Nova: %w", err), time.Now()
		return nil, r.connErr
	}
	return r.compute, nil
}

func (r *reconciler) acquire(ctx context.Context) error {
	select {
	case r.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *reconciler) release() { <-r.sem }

// novaServerJSON is the part of Nova's server (microversion 2.1, where the
// flavor has its id) the reconciler reads.
type novaServerJSON struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	TenantID string `json:"tenant_id"`
	Updated  string `json:"updated"`
	Flavor   struct {
		ID string `json:"id"`
	} `json:"flavor"`
	LaunchedAt   *string `json:"OS-SRV-USG:launched_at"`
	TerminatedAt *string `json:"OS-SRV-USG:terminated_at"`
}

// deletedQuery is the admin listing of one deleted server: Nova answers
// GET /servers/{id} with 404 for a deleted server, even to admins.
type deletedQuery string

func (q deletedQuery) ToServerListQuery() (string, error) {
	return "?" + url.Values{"all_tenants": {"1"}, "deleted": {"true"}, "uuid": {string(q)}}.Encode(), nil
}

func (r *reconciler) ask(ctx context.Context, id string) (novaServer, error) {
	c, err := r.client(ctx)
	if err != nil {
		return novaServer{}, err
	}
	if err := r.acquire(ctx); err != nil {
		return novaServer{}, err
	}
	defer r.release()
	var one novaServerJSON
	err = servers.Get(ctx, c, id).ExtractInto(&one) // the "server" member
	var found *novaServerJSON
	switch st := openstack.StatusOf(err); {
	case err == nil:
		found = &one
	case st == http.StatusForbidden:
		return novaServer{Refused: openstack.Explain(err).Error()}, nil
	case st == http.StatusNotFound:
		err = servers.List(c, deletedQuery(id)).EachPage(ctx, func(_ context.Context, p pagination.Page) (bool, error) {
			var page struct {
				Servers []novaServerJSON `json:"servers"`
			}
			if err := p.(servers.ServerPage).ExtractInto(&page); err != nil {
				return false, err
			}
			for i := range page.Servers {
				// A Nova that ignores the filter lists others too.
				if page.Servers[i].ID == id {
					found = &page.Servers[i]
					return false, nil
				}
			}
			return false, nil // one page: the filter leaves one server at most
		})
		switch st := openstack.StatusOf(err); {
		case st == http.StatusForbidden:
			return novaServer{Refused: openstack.Explain(err).Error()}, nil
		case err != nil:
			return novaServer{}, openstack.Explain(err)
		case found == nil:
			return novaServer{}, nil
		}
	default:
		return novaServer{}, openstack.Explain(err)
	}
	s := novaServer{Found: true, Status: found.Status, Tenant: found.TenantID, FlavorID: found.Flavor.ID,
		Deleted: strings.EqualFold(found.Status, "DELETED")}
	var perr error
	if found.LaunchedAt != nil {
		s.LaunchedAt, perr = parseNovaTime(*found.LaunchedAt)
	}
	if found.TerminatedAt != nil && perr == nil {
		s.DeletedAt, perr = parseNovaTime(*found.TerminatedAt)
	}
	if s.Deleted && s.DeletedAt.IsZero() && perr == nil {
		s.DeletedAt, perr = parseNovaTime(found.Updated)
	}
	if perr != nil {
		return novaServer{}, fmt.Errorf("Nova's server %s: %w", id, perr)
	}
	s.FlavorName = r.flavorName(ctx, c, s.FlavorID)
	return s, nil
}

// flavorName is the name of flavor id, "" when Nova does not have it
// (deleted) or cannot say.
func (r *reconciler) flavorName(ctx context.Context, c *gophercloud.ServiceClient, id string) string {
	if id == "" {
		return ""
	}
	r.mu.Lock()
	name, ok := r.flavorMap[id]
	r.mu.Unlock()
	if ok {
		return name
	}
	f, err := flavors.Get(ctx, c, id).Extract()
	if err != nil {
		if openstack.StatusOf(err) != http.StatusNotFound {
			r.logger.Warn("reconciler: cannot read flavor", "flavor", id, "error", openstack.Explain(err))
			return ""
		}
	} else {
		name = f.Name
	}
	r.mu.Lock()
	r.flavorMap[id] = name
	r.mu.Unlock()
	return name
}

// parseNovaTime reads Nova's times: launched_at and terminated_at without
// a zone ("2026-11-23T11:56:52.000000"), updated with one.
func parseNovaTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, l := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999", "2006-01-02 15:04:05.999999"} {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, errors.New("unreadable time " + s)
}
