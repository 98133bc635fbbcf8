package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/config"
	"github.com/tally-accounting/tally/pkg/extract"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/logging"
	"github.com/tally-accounting/tally/pkg/messenger"
	"github.com/tally-accounting/tally/pkg/metrics"
	"github.com/tally-accounting/tally/pkg/record"
	"github.com/tally-accounting/tally/pkg/rpc"
	"github.com/tally-accounting/tally/pkg/service"
	"github.com/tally-accounting/tally/pkg/telemetry"
	"github.com/tally-accounting/tally/services/enricher"
	cinder "github.com/tally-accounting/tally/services/extractor-cinder"
	energy "github.com/tally-accounting/tally/services/extractor-energy"
	neutron "github.com/tally-accounting/tally/services/extractor-neutron"
	nova "github.com/tally-accounting/tally/services/extractor-nova"
	logstash "github.com/tally-accounting/tally/services/messenger-logstash"
	ssm "github.com/tally-accounting/tally/services/messenger-ssm"
	"github.com/tally-accounting/tally/services/query"
	"github.com/tally-accounting/tally/services/verifier"
	"github.com/tally-accounting/tally/services/verifier/bridge"
)

// Targets a service process can run; "all" runs every one that is enabled.
const (
	TargetAll               = "all"
	TargetAPI               = "api"
	TargetEnricher          = enricher.Name
	TargetMessengerNoop     = "messenger-noop"
	TargetMessengerSSM      = "messenger-ssm"
	TargetMessengerLogstash = logstash.Name
	TargetExtractorNova     = nova.Name
	TargetExtractorCinder   = cinder.Name
	TargetExtractorNeutron  = neutron.Name
	TargetExtractorEnergy   = energy.Name
	TargetNotifyBridge      = bridge.Name
	TargetQuery             = query.Name
	TargetVerifier          = verifier.Name
)

// Targets lists the names --target accepts besides "all", in start order:
// messengers before the enricher that pushes to them, the enricher before
// the extractors that feed it.
func Targets() []string {
	return []string{TargetAPI, TargetQuery, TargetMessengerNoop, TargetMessengerSSM, TargetMessengerLogstash, TargetEnricher,
		TargetExtractorNova, TargetExtractorCinder, TargetExtractorNeutron, TargetExtractorEnergy,
		TargetVerifier, TargetNotifyBridge}
}

// isExtractor reports whether target is an extractor.
func isExtractor(target string) bool {
	switch target {
	case TargetExtractorNova, TargetExtractorCinder, TargetExtractorNeutron, TargetExtractorEnergy:
		return true
	}
	return false
}

// enabledTargets are what "all" runs.
func enabledTargets(cfg *Config) []string {
	out := []string{TargetAPI}
	if cfg.Query.Enabled {
		out = append(out, TargetQuery)
	}
	if cfg.Messengers.Noop.Enabled {
		out = append(out, TargetMessengerNoop)
	}
	if cfg.Messengers.SSM.Enabled {
		out = append(out, TargetMessengerSSM)
	}
	if cfg.Messengers.Logstash.Enabled {
		out = append(out, TargetMessengerLogstash)
	}
	out = append(out, TargetEnricher)
	if cfg.Extractors.Nova.Enabled {
		out = append(out, TargetExtractorNova)
	}
	if cfg.Extractors.Cinder.Enabled {
		out = append(out, TargetExtractorCinder)
	}
	if cfg.Extractors.Neutron.Enabled {
		out = append(out, TargetExtractorNeutron)
	}
	if cfg.Extractors.Energy.Enabled {
		out = append(out, TargetExtractorEnergy)
	}
	if cfg.Verifier.Enabled {
		out = append(out, TargetVerifier)
	}
	if cfg.NotifyBridge.Enabled {
		out = append(out, TargetNotifyBridge)
	}
	return out
}

// ServeFlags returns the flag set of "tally serve" bound to cfg, with the
// --config and --target values; the compose test parses commands with it.
func ServeFlags(cfg *Config) (fs *flag.FlagSet, path, target *string) {
	fs = flag.NewFlagSet("serve", flag.ContinueOnError)
	path = commonFlags(fs, cfg)
	casoFlags(fs)
	target = fs.String("target", TargetAll, "`services` to run: all, or a comma-separated list of "+strings.Join(Targets(), ", "))
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "public gRPC API `address` (query, verification, health, reflection)")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", cfg.MetricsListen, "Prometheus /metrics `address`; empty turns it off")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: tally serve [flags]

Runs tally's services. With --target all (the default) every enabled service
runs in this one process on an embedded NATS JetStream server (store under
--data-dir), talking gRPC over loopback exactly as the split deployment does.
With a list of targets, only those run, against the external NATS server
given by --nats-url.

Configuration is read from cASO's files (--caso-config, --caso-config-dir)
when given, then the --config file, then TALLY_* environment variables
(TALLY_NATS_URL for nats.url, ...), then these flags.

Flags:
`)
		fs.PrintDefaults()
	}
	return fs, path, target
}

// LoadServeConfig parses serve's flags and loads the layered config.
func LoadServeConfig(args []string, env Env) (cfg Config, targets []string, code int, ok bool) {
	cfg = DefaultConfig()
	fs, path, target := ServeFlags(&cfg)
	if code, ok := parseFlags(fs, args, env); !ok {
		return cfg, nil, code, false
	}
	if *path == "" {
		*path = env.getenv("TALLY_CONFIG")
	}
	casoDryRun, ok := layerCaso(&cfg, fs, env, "serve")
	if !ok {
		return cfg, nil, 2, false
	}
	if casoDryRun {
		fmt.Fprintln(env.Stderr, "tally serve: cASO's dry_run is true, and tally serve delivers: set dry_run = false, or try it with tally extract --caso-config ... (a dry run)")
		return cfg, nil, 2, false
	}
	unknown, err := config.Layer(&cfg, fs, *path, env.Environ)
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally serve: %v\n", err)
		return cfg, nil, 2, false
	}
	for _, name := range unknown {
		if name != "TALLY_CONFIG" {
			fmt.Fprintf(env.Stderr, "tally serve: warning: unknown environment variable %s (known: see README)\n", name)
		}
	}
	targets, err = ResolveTargets(*target, &cfg)
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally serve: --target: %v\n", err)
		return cfg, nil, 2, false
	}
	if *target == TargetAll {
		// "all" on a fresh install runs what is configured enough to run,
		// and says what is off and why, rather than refusing to start.
		var off []string
		targets, off = cfg.runnable(targets, env.getenv)
		for _, why := range off {
			fmt.Fprintf(env.Stderr, "tally serve: warning: %s\n", why)
		}
	}
	if err := cfg.checkTargets(targets, env.getenv); err != nil {
		fmt.Fprintf(env.Stderr, "tally serve: %v\n", err)
		return cfg, nil, 2, false
	}
	return cfg, targets, 0, true
}

// ResolveTargets expands --target into the services to run, in start order.
func ResolveTargets(spec string, cfg *Config) ([]string, error) {
	names := config.SplitList(spec)
	if len(names) == 0 {
		return nil, errors.New("is empty")
	}
	if slices.Contains(names, TargetAll) {
		if len(names) > 1 {
			return nil, errors.New(`"all" cannot be combined with other targets`)
		}
		return enabledTargets(cfg), nil
	}
	var out []string
	for _, t := range Targets() {
		if slices.Contains(names, t) {
			out = append(out, t)
		}
	}
	if slices.Contains(out, TargetQuery) && !slices.Contains(out, TargetAPI) {
		// RecordQuery is served on the public API listener.
		out = append([]string{TargetAPI}, out...)
	}
	for _, n := range names {
		if !slices.Contains(Targets(), n) {
			return nil, fmt.Errorf("unknown target %q (known: all, %s)", n, strings.Join(Targets(), ", "))
		}
	}
	if cfg.NATS.URL == "" && slices.ContainsFunc(out, needsBus) {
		return nil, errors.New("a split deployment needs --nats-url: the embedded NATS server runs only with --target all")
	}
	return out, nil
}

func serve(ctx context.Context, args []string, env Env) int {
	cfg, targets, code, ok := LoadServeConfig(args, env)
	if !ok {
		return code
	}
	logger, err := logging.New(env.Stderr, cfg.Log)
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally serve: %v\n", err)
		return 2
	}
	defer softMemoryLimit(cfg.MemoryLimitMiB, 0, env)()
	if err := runServices(ctx, &cfg, targets, env, logger); err != nil {
		logger.Error("tally serve failed", "error", err)
		return 1
	}
	logger.Info("tally stopped")
	return 0
}

// runServices runs targets until ctx ends.
func runServices(ctx context.Context, cfg *Config, targets []string, env Env, logger *slog.Logger) error {
	tel, err := telemetry.Setup(ctx, traceServiceName(targets), Version())
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}()
	p, err := buildProcess(cfg, targets, env, tel, logger)
	if err != nil {
		return err
	}
	logger.Info("tally starting", "version", Version(), "targets", strings.Join(targets, ","),
		"nats", natsDescription(cfg), "listen", cfg.Listen, "data_dir", cfg.DataDir)
	return p.manager.Run(ctx)
}

// traceServiceName names the process in traces: "tally" for the all-in-one,
// "tally-enricher" for one target of the split deployment. OTEL_SERVICE_NAME
// overrides it.
func traceServiceName(targets []string) string {
	if n := os.Getenv("OTEL_SERVICE_NAME"); n != "" {
		return n
	}
	if len(targets) == 1 {
		return "tally-" + targets[0]
	}
	return "tally"
}

// needsBus reports whether a target uses NATS; a messenger or the API alone
// does not.
func needsBus(target string) bool {
	return target == TargetEnricher || isExtractor(target) || target == TargetVerifier || target == TargetNotifyBridge
}

func natsDescription(cfg *Config) string {
	if cfg.NATS.URL == "" {
		return "embedded (" + filepath.Join(cfg.DataDir, "nats") + ")"
	}
	return config.RedactURL(cfg.NATS.URL)
}

// process is one tally process: its services and their shared parts.
type process struct {
	querySink lazySink
	services  []service.Service
	manager   *service.Manager
	api       *rpc.Server
	grpc      []*rpc.Server
	busSvc    *busService
	// queryStore is the record store once open in this process, for the
	// verifier's cross-check.
	queryStore query.Store
}

// buildProcess wires the services for targets. Services start in the order
// of the list and stop in reverse, so the bus comes first and goes last.
func buildProcess(cfg *Config, targets []string, env Env, tel *telemetry.Telemetry, logger *slog.Logger) (*process, error) {
	return newProcess(cfg, targets, env, tel, metrics.New(), logger)
}

func newProcess(cfg *Config, targets []string, env Env, tel *telemetry.Telemetry, m *metrics.Metrics, logger *slog.Logger) (*process, error) {
	p := &process{busSvc: &busService{cfg: cfg, tel: tel, logger: logger}}
	var services []service.Service
	if slices.ContainsFunc(targets, needsBus) {
		services = append(services, p.busSvc)
	}
	if cfg.MetricsListen != "" {
		services = append(services, metrics.NewServer(cfg.MetricsListen, m, logger))
	}
	var messengerTargets []enricher.Target
	for _, t := range targets {
		switch t {
		case TargetAPI:
			apiOpts, err := query.ServerOptions(cfg.Query.Auth)
			if err != nil {
				return nil, fmt.Errorf("query.auth: %w", err)
			}
			p.api = rpc.NewServer("api", cfg.Listen, tel, logger, apiOpts...)
			p.grpc = append(p.grpc, p.api)
			if slices.Contains(targets, TargetQuery) {
				// The store opens, and registers RecordQuery, before the API
				// serves; watch streams end before the API's graceful stop.
				open, watches := p.queryServices(cfg, logger)
				services = append(services, open, p.api, watches)
			} else {
				services = append(services, p.api)
			}
		case TargetQuery:
			types, err := cfg.Query.Config.Types()
			if err != nil {
				return nil, fmt.Errorf("query.record_types: %w", err)
			}
			srv, ledger := newMessenger("query", cfg.Query.Listen, types, &p.querySink, cfg, tel, m, logger)
			p.grpc = append(p.grpc, srv)
			if !slices.Contains(targets, TargetAPI) {
				// A store with no API in this process (tally extract).
				open, watches := p.queryServices(cfg, logger)
				services = append(services, open, watches)
			}
			services = append(services, ledger, srv)
			messengerTargets = append(messengerTargets, enricher.Target{Name: "query", Addr: srv.Addr})
		case TargetMessengerNoop:
			types, err := record.ParseTypes(cfg.Messengers.Noop.RecordTypes)
			if err != nil {
				return nil, fmt.Errorf("messengers.noop.record_types: %w", err)
			}
			srv, ledger := newMessenger("noop", cfg.Messengers.Noop.Listen, types, messenger.Discard{}, cfg, tel, m, logger)
			p.grpc = append(p.grpc, srv)
			services = append(services, ledger, srv)
			messengerTargets = append(messengerTargets, enricher.Target{Name: "noop", Addr: srv.Addr})
		case TargetMessengerSSM:
			sc := cfg.Messengers.SSM
			var sink *ssm.Sink
			lazy := &lazySink{}
			types, err := sc.Config.Types()
			if err != nil {
				return nil, fmt.Errorf("messengers.ssm.record_types: %w", err)
			}
			srv, ledger := newMessenger("ssm", sc.Listen, types, lazy, cfg, tel, m, logger)
			spool := service.Funcs{
				ServiceName: "messenger-ssm-spool",
				StartFunc: func(context.Context) error {
					var err error
					if sink, err = ssm.NewSink(sc.Config, logger); err != nil {
						return err
					}
					lazy.set(sink)
					logger.Info("SSM spool ready", "spool_dir", sc.Spool, "max_size", sc.MaxSize)
					return nil
				},
				StopFunc: func(context.Context) error { return sink.Close() },
			}
			p.grpc = append(p.grpc, srv)
			// The spool and ledger open before the server takes calls and
			// close after it stopped.
			services = append(services, spool, ledger, srv)
			messengerTargets = append(messengerTargets, enricher.Target{Name: "ssm", Addr: srv.Addr})
		case TargetMessengerLogstash:
			lc := cfg.Messengers.Logstash
			types, err := lc.Config.Types()
			if err != nil {
				return nil, fmt.Errorf("messengers.logstash.record_types: %w", err)
			}
			ls, err := logstash.New(lc.Config, logger, m)
			if err != nil {
				return nil, err
			}
			srv, ledger := newMessenger("logstash", lc.Listen, types, ls, cfg, tel, m, logger)
			p.grpc = append(p.grpc, srv)
			// The buffer opens first and, stopped last, flushes to Logstash.
			services = append(services, ls, ledger, srv)
			messengerTargets = append(messengerTargets, enricher.Target{Name: "logstash", Addr: srv.Addr})
		case TargetVerifier:
			v := verifier.New(cfg.Verifier.Config, p.busSvc.Bus, m, logger)
			services = append(services, v)
			if p.api != nil {
				// After the verifier, which opens the store the API reads.
				services = append(services, p.verificationAPI(cfg, v, logger))
			}
		case TargetNotifyBridge:
			services = append(services, bridge.New(cfg.NotifyBridge.Config, p.busSvc.Bus, m, logger))
		case TargetExtractorNova, TargetExtractorCinder, TargetExtractorNeutron, TargetExtractorEnergy:
			src, ec := cfg.source(t, logger)
			services = append(services, extract.NewService(src, ec, cfg.Auth(env.getenv), p.busSvc.Bus, m, logger))
		case TargetEnricher:
			// In the split deployment the addresses come from the config; in
			// all-in-one they default to the messengers of this process.
			if len(cfg.Enricher.Messengers) > 0 {
				messengerTargets = messengerTargets[:0]
				for _, mt := range cfg.Enricher.Messengers {
					messengerTargets = append(messengerTargets, enricher.Target{Name: mt.Name, Addr: func() string { return mt.Address }})
				}
			}
			ecfg := cfg.Enricher
			ecfg.CloudType = CloudType()
			services = append(services, enricher.New(ecfg, messengerTargets, enricher.Deps{
				Bus: p.busSvc.Bus, Telemetry: tel, Metrics: m, Logger: logger,
			}))
		}
	}
	p.services = services
	p.manager = service.NewManager(logger, cfg.ShutdownTimeout, services...)
	p.manager.OnStateChange(p.healthFollows())
	return p, nil
}

// healthFollows makes every gRPC health service report SERVING exactly while
// every service of the process runs.
func (p *process) healthFollows() func(string, service.State) {
	var mu sync.Mutex
	return func(string, service.State) {
		mu.Lock()
		defer mu.Unlock()
		st := healthpb.HealthCheckResponse_SERVING
		for _, s := range p.manager.States() {
			if s != service.Running {
				st = healthpb.HealthCheckResponse_NOT_SERVING
			}
		}
		for _, g := range p.grpc {
			g.Health.SetServingStatus("", st)
			for name := range g.GRPC.GetServiceInfo() {
				g.Health.SetServingStatus(name, st)
			}
		}
	}
}

// newMessenger builds a messenger's gRPC server and a service that closes
// its ledger after the server stopped.
func newMessenger(name, listen string, types map[tallyv1.RecordType]bool, sink messenger.Sink, cfg *Config, tel *telemetry.Telemetry, m *metrics.Metrics, logger *slog.Logger) (*rpc.Server, service.Service) {
	srv := rpc.NewServer("messenger-"+name, listen, tel, logger)
	var ledger *messenger.Ledger
	ms := &lazyMessenger{}
	tallyv1.RegisterMessengerServer(srv.GRPC, ms)
	closer := service.Funcs{
		ServiceName: "messenger-" + name + "-ledger",
		StartFunc: func(context.Context) error {
			var err error
			ledger, err = messenger.OpenLedger(cfg.ledgerPath(name), 0)
			if err != nil {
				return err
			}
			ms.set(messenger.NewServer(name, sink, ledger, types, m, logger))
			return nil
		},
		StopFunc: func(context.Context) error { return ledger.Close() },
	}
	return srv, closer
}

// queryServices returns the service that opens the record store (and
// registers RecordQuery on the API server) and the one that ends the watch
// streams first at stop.
func (p *process) queryServices(cfg *Config, logger *slog.Logger) (open, watches service.Service) {
	var qs *query.Service
	open = service.Funcs{
		ServiceName: "query-store",
		StartFunc: func(ctx context.Context) error {
			var err error
			if qs, err = query.Open(ctx, cfg.Query.Config, cfg.DataDir, logger); err != nil {
				return err
			}
			if p.api != nil {
				qs.RegisterAPI(p.api.GRPC)
			}
			p.queryStore = qs.Store()
			p.querySink.set(qs.Sink())
			return nil
		},
		StopFunc: func(context.Context) error { return qs.Close() },
	}
	watches = service.Funcs{
		ServiceName: "query-watches",
		StopFunc:    func(ctx context.Context) error { return qs.Stop(ctx) },
	}
	return open, watches
}

// lazySink is the SSM sink, opened at Start (it recovers interrupted
// batches then, which must not happen at wiring time).
type lazySink struct {
	mu sync.RWMutex
	s  messenger.Sink
}

func (l *lazySink) set(s messenger.Sink) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.s = s
}

func (l *lazySink) Write(ctx context.Context, batchID string, records []*tallyv1.Record) error {
	l.mu.RLock()
	s := l.s
	l.mu.RUnlock()
	if s == nil {
		return errors.New("spool not open yet")
	}
	return s.Write(ctx, batchID, records)
}

// CloudType is what records say produced them (APEL's CloudType).
func CloudType() string { return "tally/" + Version() + " (OpenStack)" }

// lazyMessenger lets the gRPC server be registered before the ledger is
// opened at Start; a call before that is answered Unavailable.
type lazyMessenger struct {
	tallyv1.UnimplementedMessengerServer
	mu sync.RWMutex
	s  *messenger.Server
}

func (l *lazyMessenger) set(s *messenger.Server) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.s = s
}

func (l *lazyMessenger) Push(ctx context.Context, req *tallyv1.PushRequest) (*tallyv1.PushResponse, error) {
	l.mu.RLock()
	s := l.s
	l.mu.RUnlock()
	if s == nil {
		return nil, errUnavailable
	}
	return s.Push(ctx, req)
}

// busService owns the bus connection, and the embedded NATS server when no
// external URL is configured.
type busService struct {
	cfg      *Config
	tel      *telemetry.Telemetry
	logger   *slog.Logger
	embedded *bus.Embedded
	bus      *bus.Bus
}

func (b *busService) Name() string { return "bus" }

// Bus is valid after Start.
func (b *busService) Bus() *bus.Bus { return b.bus }

func (b *busService) Start(ctx context.Context) error {
	if b.cfg.NATS.URL == "" {
		dir := filepath.Join(b.cfg.DataDir, "nats")
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		emb, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: dir, Listen: b.cfg.NATS.EmbeddedListen}, b.logger)
		if err != nil {
			return err
		}
		b.embedded = emb
		if u := emb.ClientURL(); u != "" {
			b.logger.Info("embedded NATS listening", "url", u)
		}
	}
	bb, err := bus.Connect(ctx, b.cfg.NATS, b.embedded, "tally", b.tel, b.logger)
	if err != nil {
		if b.embedded != nil {
			b.embedded.Shutdown()
		}
		return err
	}
	b.bus = bb
	return nil
}

func (b *busService) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

func (b *busService) Stop(context.Context) error {
	if b.bus != nil {
		b.bus.NC.Close()
	}
	if b.embedded != nil {
		b.embedded.Shutdown()
	}
	return nil
}
