package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tally-accounting/tally/pkg/config"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/services/query"
	"github.com/tally-accounting/tally/services/verifier"
)

// openVerifierStore opens the verifier's store (SQLite or PostgreSQL, as
// configured) for the audit commands; a SQLite file must exist already (an
// audit of a store created empty here would report nothing, silently).
func openVerifierStore(ctx context.Context, cfg *Config, env Env, cmd string) (verifier.Store, bool) {
	if cfg.Verifier.Store.Driver != "postgres" {
		if _, err := os.Stat(cfg.Verifier.Store.Path); err != nil {
			fmt.Fprintf(env.Stderr, "%s: the verifier's store %s: %v (is the verifier running with this --data-dir?)\n", cmd, cfg.Verifier.Store.Path, err)
			return nil, false
		}
	}
	store, err := verifier.OpenStore(ctx, cfg.Verifier.Store)
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s: %v\n", cmd, err)
		return nil, false
	}
	return store, true
}

// wantJSON is --json, or stdout not being a terminal.
func wantJSON(asJSON bool, w io.Writer) bool {
	f, ok := w.(*os.File)
	return asJSON || !ok || !term.IsTerminal(int(f.Fd()))
}

func printJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return 1
	}
	return 0
}

// loadAuditConfig parses an audit subcommand's flags and the layered config.
func loadAuditConfig(fs *flag.FlagSet, cfg *Config, path *string, args []string, env Env, cmd string) (int, bool) {
	if code, ok := parseFlags(fs, args, env); !ok {
		return code, false
	}
	if *path == "" {
		*path = env.getenv("TALLY_CONFIG")
	}
	if _, err := config.Layer(cfg, fs, *path, env.Environ); err != nil {
		fmt.Fprintf(env.Stderr, "%s: %v\n", cmd, err)
		return 2, false
	}
	return 0, true
}

// auditPeriod resolves --period and --at, or --from and --to.
func auditPeriod(period, at, from, to string) (name string, begin, end time.Time, err error) {
	if from != "" || to != "" {
		if from == "" || to == "" {
			return "", begin, end, fmt.Errorf("--from and --to go together")
		}
		if at != "" {
			return "", begin, end, fmt.Errorf("--at chooses a whole period; with --from and --to it is not used")
		}
		if begin, err = ParseTime(from); err != nil {
			return "", begin, end, fmt.Errorf("--from: %w", err)
		}
		if end, err = ParseTime(to); err != nil {
			return "", begin, end, fmt.Errorf("--to: %w", err)
		}
		if !begin.Before(end) {
			return "", begin, end, fmt.Errorf("--to %s is not after --from %s", end.Format(time.RFC3339), begin.Format(time.RFC3339))
		}
		return "custom", begin, end, nil
	}
	now := time.Now()
	if at != "" {
		if now, err = ParseTime(at); err != nil {
			return "", begin, end, fmt.Errorf("--at: %w", err)
		}
	}
	begin, end, err = verifier.PreviousPeriod(now, period)
	if err != nil {
		return "", begin, end, fmt.Errorf("--period: %w", err)
	}
	return period, begin, end, nil
}

// storeAudit keeps a report in the verifier's store (audit --store).
func storeAudit(ctx context.Context, store verifier.Store, period string, r *verifier.AuditReport) (int64, error) {
	reports, err := verifier.OpenReports(ctx, store)
	if err != nil {
		return 0, err
	}
	return reports.SaveAudit(ctx, verifier.StoredAudit{Created: time.Now().UTC(), Period: period, Report: r})
}

// auditHoursCmd prints StackTach's instance hours report.
func auditHoursCmd(ctx context.Context, args []string, env Env) int {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("audit hours", flag.ContinueOnError)
	path := commonFlags(fs, &cfg)
	period := fs.String("period", "day", "reported `period`: the whole hour, day, month or year before --at")
	at := fs.String("at", "", "report on the period before this `time` (RFC 3339 or YYYY-MM-DD); default now")
	from := fs.String("from", "", "report on [--from, --to) instead (`time`)")
	to := fs.String("to", "", "end of the reported period (`time`, exclusive)")
	asJSON := fs.Bool("json", false, "print JSON (the default when stdout is not a terminal)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: tally audit hours [flags]

Reports StackTach's instance hours: per tenant and flavor, the instances and
the hours their verified exists prove in the period (each exists counts its
hours rounded up), and the unit hours (hours x memory MB / 256).

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := loadAuditConfig(fs, &cfg, path, args, env, "tally audit hours"); !ok {
		return code
	}
	_, begin, end, err := auditPeriod(*period, *at, *from, *to)
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally audit hours: %v\n", err)
		return 2
	}
	store, ok := openVerifierStore(ctx, &cfg, env, "tally audit hours")
	if !ok {
		return 1
	}
	defer store.Close()
	r, err := verifier.InstanceHours(ctx, store, begin, end)
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally audit hours: %v\n", err)
		return 1
	}
	if wantJSON(*asJSON, env.Stdout) {
		return printJSON(env.Stdout, r)
	}
	w := env.Stdout
	fmt.Fprintf(w, "instance hours, %s to %s: %d instances, %d hours, %.1f unit hours\n\n", r.PeriodBegin.Format(time.RFC3339),
		r.PeriodEnd.Format(time.RFC3339), r.TotalInstances, r.TotalHours, r.TotalUnitHours)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "tenant\tflavor\tname\tinstances\thours\tunit hours\t% hours")
	for _, g := range r.Groups {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%.1f\t%.1f\n", g.Tenant, g.FlavorID, g.FlavorName, g.Instances, g.Hours, g.UnitHours, g.PercentHours)
	}
	tw.Flush()
	return 0
}

// parseThreshold reads --threshold: a duration, a percentage, or both
// comma-separated ("1h,5%"); what is not given keeps its default.
func parseThreshold(s string, opt *verifier.CrossCheckOptions) error {
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if p, ok := strings.CutSuffix(part, "%"); ok {
			v, err := strconv.ParseFloat(p, 64)
			if err != nil || v < 0 || v > 100 {
				return fmt.Errorf("%q is not a percentage between 0 and 100", part)
			}
			opt.ThresholdPercent = v
			continue
		}
		d, err := time.ParseDuration(part)
		if err != nil || d < 0 {
			return fmt.Errorf("%q is neither a duration (90m) nor a percentage (5%%)", part)
		}
		opt.Threshold = d
	}
	return nil
}

// auditCrossCheckCmd compares the verified exists with the record store.
func auditCrossCheckCmd(ctx context.Context, args []string, env Env) int {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("audit crosscheck", flag.ContinueOnError)
	path := commonFlags(fs, &cfg)
	from := fs.String("from", "", "start of the compared period (`time`, RFC 3339 or YYYY-MM-DD); required")
	to := fs.String("to", "", "end of the compared period (`time`, exclusive); required")
	project := fs.String("project", "", "compare one `project` only")
	threshold := fs.String("threshold", "1h,5%", "report wall-time differences above both a `duration` and a percentage of the larger wall time")
	asJSON := fs.Bool("json", false, "print JSON (the default when stdout is not a terminal)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: tally audit crosscheck --from T --to T [flags]

Compares, per project, the usage the verified exists notifications prove
(instance, tenant, launched_at, deleted_at over their audit periods) with
the cloud records the Nova extractor put in the record store, and reports
the VMs only one of them knows and the wall times that differ by more than
--threshold. The comparison stops where either source stops (the last
extraction window, the last verified audit period). Exits 3 when it found a
mismatch.

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := loadAuditConfig(fs, &cfg, path, args, env, "tally audit crosscheck"); !ok {
		return code
	}
	if *from == "" || *to == "" {
		fmt.Fprintln(env.Stderr, "tally audit crosscheck: --from and --to are required")
		return 2
	}
	_, begin, end, err := auditPeriod("", "", *from, *to)
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally audit crosscheck: %v\n", err)
		return 2
	}
	opt := verifier.DefaultCrossCheckOptions()
	opt.Project = *project
	if err := parseThreshold(*threshold, &opt); err != nil {
		fmt.Fprintf(env.Stderr, "tally audit crosscheck: --threshold: %v\n", err)
		return 2
	}
	store, ok := openVerifierStore(ctx, &cfg, env, "tally audit crosscheck")
	if !ok {
		return 1
	}
	defer store.Close()
	if cfg.Query.Store == "" {
		if p := filepath.Join(cfg.DataDir, "query.db"); fileMissing(p) {
			fmt.Fprintf(env.Stderr, "tally audit crosscheck: the record store %s does not exist (is the query service running with this --data-dir, or is query.store set?)\n", p)
			return 1
		}
	}
	records, err := query.OpenStore(ctx, cfg.Query.Store, cfg.DataDir)
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally audit crosscheck: record store: %v\n", err)
		return 1
	}
	defer records.Close()
	r, err := verifier.CrossCheck(ctx, store, recordSource{records}, begin, end, opt)
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally audit crosscheck: %v\n", err)
		return 1
	}
	code := 0
	if r.Mismatches > 0 {
		code = 3
	}
	if wantJSON(*asJSON, env.Stdout) {
		if printJSON(env.Stdout, r) != 0 {
			return 1
		}
		return code
	}
	printCrossCheck(env.Stdout, r)
	return code
}

func fileMissing(p string) bool {
	_, err := os.Stat(p)
	return os.IsNotExist(err)
}

func printCrossCheck(w io.Writer, r *verifier.CrossCheckReport) {
	fmt.Fprintf(w, "cross-check, %s to %s (compared until %s; threshold %s and %g%%): %d mismatches\n\n",
		r.PeriodBegin.Format(time.RFC3339), r.PeriodEnd.Format(time.RFC3339), r.ComparedUntil.Format(time.RFC3339),
		time.Duration(r.ThresholdSeconds)*time.Second, r.ThresholdPercent, r.Mismatches)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "project\tnotified VMs\trecorded VMs\tnotified hours\trecorded hours\tmismatches")
	for _, p := range r.Projects {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f\t%d\n", p.Project, p.NotifiedVMs, p.RecordedVMs, p.NotifiedHours, p.RecordedHours, len(p.Mismatches))
	}
	tw.Flush()
	if r.Mismatches == 0 {
		return
	}
	fmt.Fprintln(w, "\nmismatches:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "project\tvm\tkind\tnotified\trecorded\tdifference")
	for _, p := range r.Projects {
		for _, m := range p.Mismatches {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Project, m.VM, m.Kind, time.Duration(m.NotifiedSeconds)*time.Second,
				time.Duration(m.RecordedSeconds)*time.Second, time.Duration(m.DifferenceSeconds)*time.Second)
		}
	}
	tw.Flush()
}

// recordSource reads the cloud records of the record store through its
// read interface (see verifier.RecordSource for why not RecordQuery).
type recordSource struct{ store query.Store }

// CloudUsage implements verifier.RecordSource.
func (s recordSource) CloudUsage(ctx context.Context, from, to time.Time, project string) ([]verifier.CloudUsage, error) {
	f := &tallyv1.RecordFilter{Types: []tallyv1.RecordType{tallyv1.RecordType_RECORD_TYPE_CLOUD},
		Start: timestamppb.New(from), End: timestamppb.New(to)}
	if project != "" {
		f.ProjectIds = []string{project}
	}
	var out []verifier.CloudUsage
	var after *query.Cursor
	for {
		recs, next, err := s.store.List(ctx, f, after, query.MaxPageSize)
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			if u, ok := verifier.CloudUsageOf(r); ok {
				out = append(out, u)
			}
		}
		if next == nil {
			return out, nil
		}
		after = next
	}
}
