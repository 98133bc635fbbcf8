package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Server is the simulated OpenStack cloud: one listener serving Keystone at
// /v3 and every other service under its own path prefix, per region.
type Server struct {
	cfg    Config
	logger *slog.Logger
	clock  *clock
	faults *faults

	mu      sync.RWMutex
	world   *World
	version int // bumped whenever the world changes
	snap    *snapshot
	tokens  map[string]*token

	ln       net.Listener
	http     *http.Server
	notifier *notifier
}

// New checks cfg and prepares a server; the population is built by Start.
func New(cfg Config, logger *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Server{
		cfg:    cfg,
		logger: logger,
		clock:  newClock(cfg.Now),
		faults: newFaults(cfg),
		tokens: map[string]*token{},
	}, nil
}

// Name is the service name in the lifecycle manager.
func (s *Server) Name() string { return "sim" }

// BuildWorld returns the world a config describes: the scenario file, or a
// population generated from the seed.
func BuildWorld(cfg Config, now time.Time) (*World, error) {
	if cfg.Scenario != "" {
		return LoadScenario(cfg.Scenario)
	}
	return Generate(cfg, now)
}

// Start builds the population, writes the ground truth if asked and listens.
func (s *Server) Start(ctx context.Context) error {
	w, err := BuildWorld(s.cfg, s.clock.Now())
	if err != nil {
		return fmt.Errorf("build the cloud: %w", err)
	}
	s.world = w
	if s.cfg.DumpTruth != "" {
		if err := s.dumpTruthFile(s.cfg.DumpTruth); err != nil {
			return err
		}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Listen, err)
	}
	if s.cfg.NotifyAMQP != "" {
		n, err := newNotifier(s.cfg.NotifyAMQP, s.clock.Now(), s.cfg.Seed, s.cfg.NotifyFaults, s.cfg.auditPeriod())
		if err != nil {
			ln.Close()
			return fmt.Errorf("notifications: %w", err)
		}
		s.notifier = n
	}
	s.ln = ln
	s.http = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	s.logger.InfoContext(ctx, "openstack simulator listening", "addr", ln.Addr().String(),
		"projects", len(w.Projects), "servers", len(w.Servers), "volumes", len(w.Volumes))
	return nil
}

// Addr is the address actually bound; valid after Start.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Run serves until ctx ends, then shuts down gracefully.
func (s *Server) Run(ctx context.Context) error {
	if s.ln == nil {
		return errors.New("sim: Run before Start")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// nerrc stays nil (never ready) without notifications.
	var nerrc chan error
	if s.notifier != nil {
		nerrc = make(chan error, 1)
		go func() { nerrc <- s.notifier.run(ctx, s, "http://"+s.Addr()+"/image") }()
	}
	waitNotifier := func() error {
		if nerrc == nil {
			return nil
		}
		err := <-nerrc
		nerrc = nil
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- s.http.Serve(s.ln) }()
	var runErr error
	select {
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			runErr = fmt.Errorf("serve: %w", err)
		}
		cancel()
		if err := waitNotifier(); err != nil && runErr == nil {
			runErr = fmt.Errorf("notifications: %w", err)
		}
		return runErr
	case err := <-nerrc:
		nerrc = nil
		if err != nil {
			runErr = fmt.Errorf("notifications: %w", err)
		}
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer scancel()
	if err := s.http.Shutdown(sctx); err != nil && runErr == nil {
		runErr = fmt.Errorf("shutdown: %w", err)
	}
	<-errc
	cancel()
	if err := waitNotifier(); err != nil && runErr == nil {
		runErr = fmt.Errorf("notifications: %w", err)
	}
	return runErr
}

// Stop shuts the HTTP server down gracefully.
func (s *Server) Stop(ctx context.Context) error {
	if s.http == nil {
		return nil
	}
	if err := s.http.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

func (s *Server) currentWorld() *World {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.world
}

// Now is the simulated time.
func (s *Server) Now() time.Time { return s.clock.Now() }

// view returns the world and the state of every server at now; callers hold
// s.mu for reading.
func (s *Server) viewLocked(now time.Time) *snapshot {
	if sn := s.snap; sn.valid(now, s.version) {
		return sn
	}
	return nil
}

// view returns the world and a snapshot valid at now.
func (s *Server) view(now time.Time) (*World, *snapshot) {
	s.mu.RLock()
	sn := s.viewLocked(now)
	w := s.world
	s.mu.RUnlock()
	if sn != nil {
		return w, sn
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sn := s.viewLocked(now); sn != nil {
		return s.world, sn
	}
	s.snap = s.world.snapshotAt(now, s.version)
	return s.world, s.snap
}

// Handler is the whole HTTP API, for tests that do not need a listener.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	s.keystoneRoutes(mux)
	s.novaRoutes(mux)
	s.glanceRoutes(mux)
	s.cinderRoutes(mux)
	s.neutronRoutes(mux)
	s.prometheusRoutes(mux)
	s.adminRoutes(mux)
	return s.faults.wrap(mux)
}

// route registers pattern for the first region (no prefix) and for every
// region under /regions/{region}.
func (s *Server) route(mux *http.ServeMux, method, path string, h http.HandlerFunc) {
	mux.HandleFunc(method+" "+path, h)
	mux.HandleFunc(method+" /regions/{region}"+path, h)
}

func regionPrefix(w *World, region string) string {
	if region == w.Regions[0] {
		return ""
	}
	return "/regions/" + region
}

func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// --- admin endpoints: drive the simulated clock and script changes ---

func (s *Server) adminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /sim/clock", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, obj{{"now", s.clock.Now().Format(time.RFC3339Nano)}, {"frozen", s.clock.Frozen()}})
	})
	mux.HandleFunc("POST /sim/clock", s.handleClock)
	mux.HandleFunc("POST /sim/events", s.handleEvents)
	mux.HandleFunc("GET /sim/truth", func(w http.ResponseWriter, r *http.Request) {
		truth := s.currentWorld().Truth(s.clock.Now())
		if s.notifier != nil {
			truth.NotificationFaults = s.notifier.Faults()
		}
		writeJSON(w, 200, truth)
	})
}

// handleClock accepts {"advance": "90m"} or {"set": "2026-11-23T12:00:00Z"}.
func (s *Server) handleClock(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Advance string `json:"advance"`
		Set     string `json:"set"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeJSON(w, 400, obj{{"error", "body must be JSON {\"advance\": \"1h\"} or {\"set\": RFC3339}: " + err.Error()}})
		return
	}
	switch {
	case req.Set != "":
		t, err := time.Parse(time.RFC3339Nano, req.Set)
		if err != nil {
			writeJSON(w, 400, obj{{"error", "set: " + err.Error()}})
			return
		}
		s.clock.Set(t)
	case req.Advance != "":
		d, err := time.ParseDuration(req.Advance)
		if err != nil || d < 0 {
			writeJSON(w, 400, obj{{"error", fmt.Sprintf("advance: %q is not a positive Go duration", req.Advance)}})
			return
		}
		s.clock.Advance(d)
	default:
		writeJSON(w, 400, obj{{"error", "give advance or set"}})
		return
	}
	writeJSON(w, 200, obj{{"now", s.clock.Now().Format(time.RFC3339Nano)}, {"frozen", s.clock.Frozen()}})
}

// handleEvents applies scripted changes: a JSON or YAML list of scenario
// events ({"server", "kind", "at", "flavor"}); "at" defaults to now.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	var evs []scenarioEvent
	if err := json.NewDecoder(r.Body).Decode(&evs); err != nil {
		writeJSON(w, 400, obj{{"error", "body must be a JSON list of events: " + err.Error()}})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	flavor := func(ref string) (string, error) {
		for _, f := range s.world.Flavors {
			if f.Name == ref || f.ID == ref {
				return f.ID, nil
			}
		}
		return "", fmt.Errorf("unknown flavor %q", ref)
	}
	type change struct {
		srv *Instance
		ev  Event
	}
	var changes []change
	for i, e := range evs {
		if e.At == "" {
			e.At = now.Format(time.RFC3339Nano)
		}
		ev, err := e.build(flavor)
		if err != nil {
			writeJSON(w, 400, obj{{"error", fmt.Sprintf("events[%d]: %v", i, err)}})
			return
		}
		idx, ok := s.world.srvByID[e.Server]
		if !ok {
			for j, sv := range s.world.Servers {
				if sv.Name == e.Server {
					idx, ok = j, true
					break
				}
			}
		}
		if !ok {
			writeJSON(w, 400, obj{{"error", fmt.Sprintf("events[%d]: unknown server %q", i, e.Server)}})
			return
		}
		changes = append(changes, change{s.world.Servers[idx], ev})
	}
	// Copy on write: handlers may hold the old world while this one is built.
	nw := *s.world
	nw.Servers = slices.Clone(s.world.Servers)
	for _, c := range changes {
		i := s.world.srvByID[c.srv.ID]
		cp := *nw.Servers[i]
		cp.Events = append(slices.Clone(cp.Events), c.ev)
		nw.Servers[i] = &cp
	}
	if err := nw.index(); err != nil {
		writeJSON(w, 500, obj{{"error", err.Error()}})
		return
	}
	s.world = &nw
	s.version++
	writeJSON(w, 200, obj{{"applied", len(changes)}})
}

func (s *Server) dumpTruthFile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("dump truth: %w", err)
	}
	enc := json.NewEncoder(f)
	enc.SetIndent("", "  ")
	if err := enc.Encode(s.world.Truth(s.clock.Now())); err != nil {
		f.Close()
		return fmt.Errorf("dump truth to %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("dump truth to %s: %w", path, err)
	}
	return nil
}

// --- clock ---

type clock struct {
	mu     sync.Mutex
	frozen bool
	at     time.Time     // frozen instant
	offset time.Duration // added to the wall clock when not frozen
}

func newClock(now time.Time) *clock {
	if now.IsZero() {
		return &clock{}
	}
	return &clock{frozen: true, at: now.UTC()}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen {
		return c.at
	}
	return time.Now().UTC().Add(c.offset)
}

func (c *clock) Frozen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frozen
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen {
		c.at = t.UTC()
		return
	}
	c.offset = time.Until(t)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen {
		c.at = c.at.Add(d)
		return
	}
	c.offset += d
}

func trimSlash(p string) string { return strings.TrimRight(p, "/") }
