package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/tally-accounting/tally/pkg/caso"
	"github.com/tally-accounting/tally/pkg/config"
	"github.com/tally-accounting/tally/pkg/directory"
	"github.com/tally-accounting/tally/pkg/extract"
	"github.com/tally-accounting/tally/pkg/logging"
	"github.com/tally-accounting/tally/pkg/state"
	"github.com/tally-accounting/tally/pkg/telemetry"
)

// casoCmd is "tally caso": what a cASO site needs to switch.
func casoCmd(ctx context.Context, args []string, env Env) int {
	if len(args) == 0 || (args[0] != "import" && args[0] != "-h" && args[0] != "--help") {
		fmt.Fprintln(env.Stderr, "Usage: tally caso import [flags]  (\"tally caso import --help\")")
		return 2
	}
	if args[0] != "import" {
		fmt.Fprintln(env.Stdout, "Usage: tally caso import [flags]  (\"tally caso import --help\")")
		return 0
	}
	return casoImport(ctx, args[1:], env)
}

// defaultCasoConfig is where cASO finds its file when given none (the
// first of oslo.config's search path that exists).
func defaultCasoConfig(getenv func(string) string) []string {
	var places []string
	if home := getenv("HOME"); home != "" {
		places = append(places, filepath.Join(home, ".caso", "caso.conf"), filepath.Join(home, "caso.conf"))
	}
	for _, p := range append(places, "/etc/caso/caso.conf", "/etc/caso.conf") {
		if _, err := os.Stat(p); err == nil {
			return []string{p}
		}
	}
	return nil
}

func casoImport(ctx context.Context, args []string, env Env) int {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("caso import", flag.ContinueOnError)
	casoFlags(fs)
	out := fs.String("out", "", "write the equivalent tally YAML config to this `file` (default: print it)")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "`directory` of the embedded NATS store the state goes into (without --nats-url)")
	fs.StringVar(&cfg.NATS.URL, "nats-url", cfg.NATS.URL, "external NATS `URL` to import the state into; empty: the embedded store under --data-dir")
	spool := fs.String("spooldir", "", "cASO's spool `directory` with the lastrun files (default: cASO's spooldir)")
	dryRun := fs.Bool("dry-run", false, "print the config and what would be imported; write nothing")
	force := fs.Bool("force", false, "overwrite a newer state already on the bus")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: tally caso import [flags]

Reads cASO's configuration (--caso-config, repeatable, and --caso-config-dir,
layered as oslo.config layers them; default /etc/caso/caso.conf), writes the
equivalent tally YAML config, and imports cASO's lastrun files (from its
spooldir) into tally's state on the bus, so that tally's first window of
every project starts exactly where cASO's next one would have. A newer state
already on the bus is kept unless --force. Project names in lastrun file
names are resolved to ids through Keystone, with cASO's credentials.

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, env); !ok {
		return code
	}
	files, dir := casoSources(fs)
	if len(files) == 0 && dir == "" {
		if files = defaultCasoConfig(env.getenv); len(files) == 0 {
			fmt.Fprintln(env.Stderr, "tally caso import: no cASO configuration: give --caso-config FILE (none of cASO's default places has caso.conf)")
			return 2
		}
	}
	c, warns, err := caso.Load(files, dir)
	for _, w := range warns {
		fmt.Fprintf(env.Stderr, "tally caso import: warning: %v\n", w)
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally caso import: cASO configuration:\n%s\n", indent(err.Error()))
		return 2
	}
	for _, w := range applyCaso(&cfg, c) {
		fmt.Fprintf(env.Stderr, "tally caso import: warning: %s\n", w)
	}
	if c.DryRun {
		fmt.Fprintln(env.Stderr, "tally caso import: warning: cASO's dry_run is true: tally has it as a flag only (tally extract --dry-run)")
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(env.Stderr, "tally caso import: the imported configuration is not valid for tally: %v\n", err)
		return 2
	}
	data, err := renderConfig(&cfg, append(files, dir))
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally caso import: %v\n", err)
		return 1
	}
	switch {
	case *dryRun || *out == "":
		env.Stdout.Write(data)
	default:
		// The file holds cASO's Keystone password, as caso.conf did.
		if err := os.WriteFile(*out, data, 0o600); err != nil {
			fmt.Fprintf(env.Stderr, "tally caso import: %v\n", err)
			return 1
		}
		fmt.Fprintf(env.Stdout, "tally caso import: wrote %s (run tally with --config %s)\n", *out, *out)
	}

	if *spool == "" {
		*spool = c.SpoolDir
	}
	logger, err := logging.New(env.Stderr, cfg.Log)
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally caso import: %v\n", err)
		return 2
	}
	rows, err := importLastRuns(ctx, &cfg, *spool, lastRunOptions{DryRun: *dryRun, Force: *force, Getenv: env.getenv}, logger, env)
	printImport(env.Stdout, rows, *dryRun)
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally caso import: %v\n", err)
		return 1
	}
	return 0
}

// renderConfig writes the keys of cfg that differ from tally's defaults,
// secrets included, and checks that the file loads back to cfg.
func renderConfig(cfg *Config, sources []string) ([]byte, error) {
	got, err := toTree(cfg)
	if err != nil {
		return nil, err
	}
	def := DefaultConfig()
	def.DataDir = cfg.DataDir
	def.derive()
	base, err := toTree(&def)
	if err != nil {
		return nil, err
	}
	diff, _ := treeDiff(got, base).(map[string]any)
	if diff == nil {
		diff = map[string]any{}
	}
	// The state was imported there: tally must run on the same store.
	if cfg.DataDir != DefaultConfig().DataDir {
		diff["data_dir"] = cfg.DataDir
	}
	// Secrets print as [redacted] everywhere else; this file must work.
	if ost, ok := diff["openstack"].(map[string]any); ok {
		for k, v := range map[string]config.Secret{"password": cfg.OpenStack.Password,
			"application_credential_secret": cfg.OpenStack.ApplicationCredentialSecret, "token": cfg.OpenStack.Token} {
			if v != "" {
				ost[k] = v.Reveal()
			}
		}
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "# tally configuration imported from cASO's %q by tally caso import %s.\n", slices.DeleteFunc(slices.Clone(sources), func(s string) bool { return s == "" }), Version())
	fmt.Fprintln(&buf, "# Only what differs from tally's defaults is here; README \"Configuration\" lists every key.")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(diff); err != nil {
		return nil, err
	}
	enc.Close()

	// Load it back as tally will.
	f, err := os.CreateTemp("", "tally-caso-*.yaml")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		return nil, err
	}
	f.Close()
	back := DefaultConfig()
	if err := config.LoadFile(&back, f.Name()); err != nil {
		return nil, fmt.Errorf("the generated config does not load: %w", err)
	}
	if err := back.Validate(); err != nil {
		return nil, fmt.Errorf("the generated config is not valid: %w", err)
	}
	if d := cmp.Diff(*cfg, back); d != "" {
		return nil, fmt.Errorf("the generated config does not load back to the imported one (-imported +loaded):\n%s", d)
	}
	return buf.Bytes(), nil
}

func toTree(v any) (any, error) {
	b, err := yaml.Marshal(v)
	if err != nil {
		return nil, err
	}
	var t any
	if err := yaml.Unmarshal(b, &t); err != nil {
		return nil, err
	}
	return t, nil
}

// treeDiff returns the parts of got that differ from base, nil when none.
func treeDiff(got, base any) any {
	gm, ok1 := got.(map[string]any)
	bm, ok2 := base.(map[string]any)
	if !ok1 || !ok2 {
		if cmp.Equal(got, base) {
			return nil
		}
		return got
	}
	out := map[string]any{}
	for k, v := range gm {
		if d := treeDiff(v, bm[k]); d != nil {
			out[k] = d
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

type lastRunOptions struct {
	DryRun, Force bool
	Getenv        func(string) string
	Now           time.Time // zero: now
}

// importRow is one project's line of the summary.
type importRow struct {
	Project string // id, with the name when known
	Time    time.Time
	File    string
	Status  string
	Failed  bool
}

var projectIDPattern = regexp.MustCompile(`^[0-9a-fA-F]{32}$|^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// importLastRuns writes cASO's lastrun instants as the state of every
// enabled extractor of cfg's region. cASO's next run starts at the file's
// instant (it holds the last window's end plus one second) and tally's
// next window starts at its state's instant, so the instant is copied as
// it is: nothing is skipped and nothing reported twice.
func importLastRuns(ctx context.Context, cfg *Config, spooldir string, o lastRunOptions, logger *slog.Logger, env Env) ([]importRow, error) {
	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}
	lrs, err := caso.ReadLastRuns(spooldir, now)
	if errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(env.Stderr, "tally caso import: warning: cASO's spooldir %s does not exist: no lastrun to import (tally starts at 1970-01-01, as cASO would)\n", spooldir)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rows []importRow
	for _, p := range lrs.Problems {
		rows = append(rows, importRow{File: p.File, Status: "not imported: " + p.Msg, Project: projectOfFile(p.File)})
		fmt.Fprintf(env.Stderr, "tally caso import: warning: %v\n", p)
	}

	// cASO names a lastrun file after its project list's entry (an id or
	// a name) or a tagged project's id; tally's state is by id.
	auth := cfg.Auth(o.Getenv)
	var visible []directory.Project
	resolved := false
	if _, _, _, aerr := auth.Options(); aerr == nil {
		var warns []string
		visible, warns, err = extract.ListProjects(ctx, auth, cfg.Extractors.Nova.Retry)
		for _, w := range warns {
			fmt.Fprintf(env.Stderr, "tally caso import: warning: %s\n", w)
		}
		resolved = err == nil
	} else {
		err = aerr
	}
	if !resolved {
		fmt.Fprintf(env.Stderr, "tally caso import: warning: cannot list Keystone projects (%v): lastrun files are taken to be named by project id\n", err)
	}
	byKey := map[string]directory.Project{}
	for _, p := range visible {
		byKey[p.ID] = p
	}
	for _, p := range visible {
		if _, taken := byKey[p.Name]; !taken {
			byKey[p.Name] = p
		}
	}
	resolve := func(s string) (directory.Project, bool) {
		if p, ok := byKey[s]; ok {
			return p, true
		}
		if !resolved && projectIDPattern.MatchString(s) {
			return directory.Project{ID: s}, true
		}
		return directory.Project{}, false
	}

	type item struct {
		p  directory.Project
		lr caso.LastRun
	}
	var items []item
	done := map[string]bool{}
	for _, lr := range lrs.Projects {
		p, ok := resolve(lr.Project)
		switch {
		case !ok && resolved:
			rows = append(rows, importRow{Project: lr.Project, Time: lr.Time, File: lr.File, Failed: true,
				Status: "not imported: no such project in Keystone (by id or name)"})
		case !ok:
			rows = append(rows, importRow{Project: lr.Project, Time: lr.Time, File: lr.File, Failed: true,
				Status: "not imported: a project name, and Keystone could not be asked for its id"})
		case done[p.ID]:
			rows = append(rows, importRow{Project: label(p), Time: lr.Time, File: lr.File, Failed: true,
				Status: "not imported: the project has another lastrun file (by id and by name); remove the stale one and import again"})
		default:
			done[p.ID] = true
			items = append(items, item{p, lr})
		}
	}
	// The pre-2.0 per-site file stands for every project with no file of
	// its own, as cASO 2.0 to 4.0 read it.
	if lrs.Site != nil {
		var selected []directory.Project
		for _, p := range visible {
			if cfg.Extractors.Nova.Tag != "" && slices.Contains(p.Tags, cfg.Extractors.Nova.Tag) {
				selected = append(selected, p)
			}
		}
		for _, name := range cfg.Extractors.Nova.Projects {
			if p, ok := resolve(name); ok {
				selected = append(selected, p)
			} else {
				rows = append(rows, importRow{Project: name, Time: lrs.Site.Time, File: lrs.Site.File, Failed: true,
					Status: "not imported: a project name, and Keystone could not be asked for its id"})
			}
		}
		for _, p := range selected {
			if !done[p.ID] {
				done[p.ID] = true
				items = append(items, item{p, *lrs.Site})
			}
		}
	}

	var store *state.Store
	if !o.DryRun && len(items) > 0 {
		st, stop, err := openState(ctx, cfg, logger)
		if err != nil {
			return rows, err
		}
		defer stop()
		store = st
	}
	region := stateRegion(auth.Region)
	for _, it := range items {
		rows = append(rows, importOne(ctx, store, cfg.extractors(), region, it.p, it.lr, o))
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Project < rows[j].Project })
	failed := 0
	for _, r := range rows {
		if r.Failed {
			failed++
		}
	}
	if failed > 0 {
		return rows, fmt.Errorf("%d lastrun file(s) not imported: those projects would start at 1970-01-01 (see the table)", failed)
	}
	return rows, nil
}

// importOne writes one project's instant for every extractor, keeping a
// newer state unless forced.
func importOne(ctx context.Context, store *state.Store, extractors []string, region string, p directory.Project, lr caso.LastRun, o lastRunOptions) importRow {
	row := importRow{Project: label(p), Time: lr.Time, File: lr.File, Status: "imported"}
	if store == nil {
		row.Status = "would be imported"
		return row
	}
	var kept []string
	for _, t := range extractors {
		key := state.Key(t, region, p.ID)
		prev, ok, err := store.LastRun(ctx, key)
		if err == nil && ok && prev.After(lr.Time) && !o.Force {
			kept = append(kept, fmt.Sprintf("%s at %s", t, prev.UTC().Format(time.RFC3339Nano)))
			continue
		}
		if err == nil {
			err = store.SetLastRun(ctx, key, lr.Time, true)
		}
		if err != nil {
			row.Status, row.Failed = "not imported: "+err.Error(), true
			return row
		}
	}
	switch {
	case len(kept) == len(extractors):
		row.Status = "kept the newer state on the bus (--force overwrites)"
	case len(kept) > 0:
		row.Status = "imported; kept the newer state of " + strings.Join(kept, ", ")
	}
	return row
}

// stateRegion is the region state keys carry, as extract.NewRunner names it.
func stateRegion(region string) string {
	if region == "" {
		return "default"
	}
	return region
}

func label(p directory.Project) string {
	if p.Name == "" || p.Name == p.ID {
		return p.ID
	}
	return p.ID + " (" + p.Name + ")"
}

func projectOfFile(path string) string {
	base := filepath.Base(path)
	if base == caso.SiteLastRun {
		return "(every project)"
	}
	return base[len(caso.SiteLastRun)+1:]
}

// openState connects to the bus of cfg (the embedded store under data_dir
// without nats.url) and opens the extractors' state.
func openState(ctx context.Context, cfg *Config, logger *slog.Logger) (*state.Store, func(), error) {
	tel, err := telemetry.Setup(ctx, "tally-caso-import", Version())
	if err != nil {
		return nil, nil, err
	}
	b := &busService{cfg: cfg, tel: tel, logger: logger}
	if err := b.Start(ctx); err != nil {
		return nil, nil, err
	}
	stop := func() {
		b.Stop(context.WithoutCancel(ctx))
		tel.Shutdown(context.WithoutCancel(ctx))
	}
	host, _ := os.Hostname()
	st, err := state.Open(ctx, b.Bus().JS, fmt.Sprintf("%s/%d caso-import", host, os.Getpid()), extract.LeaseTTL)
	if err != nil {
		stop()
		return nil, nil, err
	}
	return st, stop, nil
}

func printImport(w io.Writer, rows []importRow, dryRun bool) {
	if len(rows) == 0 {
		fmt.Fprintln(w, "tally caso import: no lastrun file to import")
		return
	}
	head := "lastrun imported"
	if dryRun {
		head = "lastrun (dry run)"
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "project\t%s\tsource file\tstatus\n", head)
	for _, r := range rows {
		t := "-"
		if !r.Time.IsZero() {
			t = r.Time.UTC().Format(time.RFC3339Nano)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Project, t, r.File, r.Status)
	}
	tw.Flush()
}
