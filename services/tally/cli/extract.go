package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/tally-accounting/tally/pkg/config"
	"github.com/tally-accounting/tally/pkg/extract"
	"github.com/tally-accounting/tally/pkg/logging"
	"github.com/tally-accounting/tally/pkg/metrics"
	"github.com/tally-accounting/tally/pkg/openstack"
	"github.com/tally-accounting/tally/pkg/record"
	"github.com/tally-accounting/tally/pkg/service"
	"github.com/tally-accounting/tally/pkg/telemetry"
)

// ParseTime reads --from/--to: RFC 3339, or a date or date-time without a
// zone, taken as UTC.
func ParseTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time (RFC 3339, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS in UTC)", s)
}

// extractCmd is the cron-friendly one-shot: one window, then exit.
func extractCmd(ctx context.Context, args []string, env Env) int {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("extract", flag.ContinueOnError)
	path := commonFlags(fs, &cfg)
	casoFlags(fs)
	from := fs.String("from", "", "window `start` (RFC 3339 or YYYY-MM-DD, UTC); default: each project's last delivered window")
	to := fs.String("to", "", "window `end`; default now (a future end is clamped to now)")
	var projects []string
	fs.Var(config.ListFlag{P: &projects}, "projects", "comma-separated project ids or names, instead of the configured ones and the tagged ones")
	dryRun := fs.Bool("dry-run", false, "extract and print the records as JSON lines; publish nothing, move no window")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: tally extract [flags]

Extracts one window of usage from the cloud in the OS_* environment (or
--os-cloud, or the config file's openstack section) and delivers the records
to every enabled messenger (by default the SSM spool <data-dir>/spool/ssm),
like caso-extract. Without --nats-url it runs the whole pipeline in this
process on an embedded NATS server; with it, it only publishes, for an
enricher and messengers running elsewhere (tally serve).

It exits 0 only when every record of every project reached every messenger;
a project that failed keeps its window, so the next run extracts it again.

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, env); !ok {
		return code
	}
	if *path == "" {
		*path = env.getenv("TALLY_CONFIG")
	}
	casoDryRun, ok := layerCaso(&cfg, fs, env, "extract")
	if !ok {
		return 2
	}
	if casoDryRun && !flagSet(fs, "dry-run") {
		fmt.Fprintln(env.Stderr, "tally extract: cASO's dry_run is true: a dry run (--dry-run=false delivers)")
		*dryRun = true
	}
	if _, err := config.Layer(&cfg, fs, *path, env.Environ); err != nil {
		fmt.Fprintf(env.Stderr, "tally extract: %v\n", err)
		return 2
	}
	var opts extract.Options
	var err error
	if *from != "" {
		if opts.From, err = ParseTime(*from); err != nil {
			fmt.Fprintf(env.Stderr, "tally extract: --from: %v\n", err)
			return 2
		}
	}
	if *to != "" {
		if opts.To, err = ParseTime(*to); err != nil {
			fmt.Fprintf(env.Stderr, "tally extract: --to: %v\n", err)
			return 2
		}
	}
	if !opts.From.IsZero() && !opts.To.IsZero() && !opts.From.Before(opts.To) {
		fmt.Fprintf(env.Stderr, "tally extract: --from %s is not before --to %s\n", *from, *to)
		return 2
	}
	opts.Projects, opts.DryRun, opts.DryRunOut = projects, *dryRun, env.Stdout
	if !*dryRun && cfg.NATS.URL == "" {
		if err := cfg.checkTargets([]string{TargetEnricher}, env.getenv); err != nil {
			fmt.Fprintf(env.Stderr, "tally extract: %v\n", err)
			return 2
		}
	}
	auth := cfg.Auth(env.getenv)
	if _, _, _, err := auth.Options(); err != nil {
		fmt.Fprintf(env.Stderr, "tally extract: OpenStack credentials: %v\n", err)
		return 2
	}
	logger, err := logging.New(env.Stderr, cfg.Log)
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally extract: %v\n", err)
		return 2
	}
	defer softMemoryLimit(cfg.MemoryLimitMiB, DefaultExtractMemoryMiB, env)()
	bar := newProgress(env.Stderr)
	opts.Progress = bar.update
	stopProfile := startMemProfile(env)
	sums, err := runExtract(ctx, &cfg, auth, opts, env, logger)
	stopProfile()
	bar.finish()
	if !*dryRun || err != nil {
		for _, sum := range sums {
			printSummary(env.Stdout, sum, *dryRun)
		}
	}
	switch {
	case errors.Is(err, extract.ErrPartial):
		return 1
	case err != nil:
		fmt.Fprintf(env.Stderr, "tally extract: %v\n", err)
		return 1
	}
	return 0
}

// runExtract runs every enabled extractor once, inside the pipeline this
// process needs.
func runExtract(ctx context.Context, cfg *Config, auth openstack.AuthConfig, opts extract.Options, env Env, logger *slog.Logger) ([]extract.Summary, error) {
	m := metrics.New()
	runAll := func(ctx context.Context, deps extract.Deps) ([]extract.Summary, error) {
		var (
			sums []extract.Summary
			errs []error
		)
		for _, t := range cfg.extractors() {
			src, ec := cfg.source(t, logger)
			sum, err := extract.NewRunner(src, ec, auth, deps).Run(ctx, opts)
			sums = append(sums, sum)
			if err != nil && !errors.Is(err, extract.ErrPartial) {
				err = fmt.Errorf("%s: %w", t, err)
			}
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
		}
		return sums, errors.Join(errs...)
	}
	if opts.DryRun {
		return runAll(ctx, extract.Deps{Metrics: m, Logger: logger})
	}
	tel, err := telemetry.Setup(ctx, "tally-extract", Version())
	if err != nil {
		return nil, err
	}
	defer tel.Shutdown(context.WithoutCancel(ctx))

	// With the embedded bus this process also runs the enricher and the
	// messengers, on free loopback ports so a running "tally serve" is no
	// obstacle; with an external bus they run elsewhere.
	local := *cfg
	local.MetricsListen = ""
	local.Messengers.Noop.Listen = "127.0.0.1:0"
	local.Messengers.SSM.Listen = "127.0.0.1:0"
	local.Messengers.Logstash.Listen = "127.0.0.1:0"
	local.Query.Listen = "127.0.0.1:0"
	if local.Query.CacheMiB == 0 {
		// One run's records fit a small page cache; memory stays bounded
		// whatever the size of the store.
		local.Query.CacheMiB = 8
	}
	local.Enricher.Messengers = nil
	var targets []string
	if cfg.NATS.URL == "" {
		targets = slices.DeleteFunc(enabledTargets(&local), func(t string) bool {
			return t == TargetAPI || isExtractor(t)
		})
	}
	p, err := newProcess(&local, targets, env, tel, m, logger)
	if err != nil {
		return nil, err
	}
	services := p.services
	if !slices.Contains(services, service.Service(p.busSvc)) {
		services = append([]service.Service{p.busSvc}, services...)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		sums   []extract.Summary
		runErr error
	)
	services = append(services, service.Funcs{
		ServiceName: "extract",
		RunFunc: func(rctx context.Context) error {
			// The one-shot is done: stop the rest of the pipeline.
			defer cancel()
			deps, err := extract.OpenDeps(rctx, p.busSvc.Bus(), m, logger)
			if err != nil {
				runErr = err
				return nil
			}
			sums, runErr = runAll(rctx, deps)
			return nil
		},
	})
	mgrErr := service.NewManager(logger, cfg.ShutdownTimeout, services...).Run(runCtx)
	if ctx.Err() != nil {
		runErr = errors.Join(runErr, fmt.Errorf("interrupted: %w", ctx.Err()))
	}
	return sums, errors.Join(runErr, mgrErr)
}

// progress is a bar on a terminal, and nothing otherwise (cron, pipes).
type progress struct {
	w   io.Writer
	tty bool
	mu  sync.Mutex
	bar *progressbar.ProgressBar
}

func newProgress(w io.Writer) *progress {
	f, ok := w.(*os.File)
	return &progress{w: w, tty: ok && term.IsTerminal(int(f.Fd()))}
}

func (p *progress) update(done, total int) {
	if !p.tty {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar == nil {
		p.bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(p.w), progressbar.OptionSetDescription("projects"),
			progressbar.OptionShowCount(), progressbar.OptionClearOnFinish(), progressbar.OptionSetElapsedTime(true))
	}
	_ = p.bar.Set(done)
}

func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}

func printSummary(w io.Writer, s extract.Summary, dryRun bool) {
	verb := "delivered"
	if dryRun {
		verb = "printed (dry run)"
	}
	fmt.Fprintf(w, "tally extract: %s, %s mode, window %s to %s\n", s.Extractor, orDash(s.Mode), fmtTime(s.From), fmtTime(s.To))
	fmt.Fprintf(w, "  projects: %d extracted, %d failed, %d skipped (leased by another extractor)\n",
		s.Projects-len(s.Failed), len(s.Failed), len(s.Skipped))
	var recs []string
	for _, t := range record.Names() {
		if n := s.Records[t]; n > 0 {
			recs = append(recs, fmt.Sprintf("%s %d", t, n))
		}
	}
	if len(recs) == 0 {
		recs = []string{"none"}
	}
	fmt.Fprintf(w, "  records %s: %s in %d batches\n", verb, strings.Join(recs, ", "), s.Batches)
	fmt.Fprintf(w, "  API calls: %d (%d retried); %.1f s\n", s.APICalls, s.Retries, s.Duration.Seconds())
	for _, f := range s.SortedFailures() {
		fmt.Fprintf(w, "  FAILED %s\n", f)
	}
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// DefaultExtractMemoryMiB is tally extract's soft memory limit: the run's
// memory stays bounded by a page of the listing and the batches in flight,
// not by the size of the cloud, and without a limit the garbage collector
// lets the heap grow to twice what is live. Measured on 100,000 servers
// (BenchmarkExtract): peak RSS about 190 MiB at 128, about 200 at 150;
// 100 saves another 15 MiB but runs 25% slower.
const DefaultExtractMemoryMiB = 128

// softMemoryLimit sets the Go runtime's soft memory limit to mib (or def
// when mib is 0) unless GOMEMLIMIT is set, and returns the undo.
func softMemoryLimit(mib, def int, env Env) func() {
	if env.getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	if mib == 0 {
		mib = def
	}
	if mib <= 0 {
		return func() {}
	}
	old := debug.SetMemoryLimit(int64(mib) << 20)
	return func() { debug.SetMemoryLimit(old) }
}
