// Package doctor is tally's preflight ("tally doctor"): against the
// configured cloud and this machine it checks what a run of tally extract
// needs, and for each thing says what it found and how to fix it.
//
// A FAIL is what would make a run lose or hold records (a project it
// cannot read, a project without a VO, a spool it cannot write); a warn is
// what makes records poorer or a run slower (no user names, flavors
// without benchmark keys). The checks only read: nothing in the cloud
// changes, and on disk only short-lived probe files are created and
// removed.
package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tally-accounting/tally/pkg/openstack"
	energy "github.com/tally-accounting/tally/services/extractor-energy"
	nova "github.com/tally-accounting/tally/services/extractor-nova"
)

// Status is a check's outcome.
type Status string

// Statuses, worst last.
const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "FAIL"
)

// Check is one line of the report.
type Check struct {
	Status Status `json:"status"`
	// Name says what was checked: keystone.projects, nova.project, ...
	Name string `json:"check"`
	// Detail is what was found.
	Detail string `json:"detail"`
	// Fix is what to do about a warn or a FAIL.
	Fix string `json:"fix,omitempty"`
}

// Report is every check, in the order they ran.
type Report struct {
	Checks []Check `json:"checks"`
}

func (r *Report) add(s Status, name, fix, format string, args ...any) {
	if s == OK {
		fix = ""
	}
	r.Checks = append(r.Checks, Check{Status: s, Name: name, Detail: fmt.Sprintf(format, args...), Fix: fix})
}

// Count returns how many checks have status s.
func (r Report) Count(s Status) int {
	n := 0
	for _, c := range r.Checks {
		if c.Status == s {
			n++
		}
	}
	return n
}

// Failed reports whether a run would lose or hold records.
func (r Report) Failed() bool { return r.Count(Fail) > 0 }

// WriteText prints one line per check: status, check, what was found and
// the fix, then a summary line.
func (r Report) WriteText(w io.Writer) error {
	width := 0
	for _, c := range r.Checks {
		width = max(width, len(c.Name))
	}
	var b strings.Builder
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "%-4s  %-*s  %s", c.Status, width, c.Name, c.Detail)
		if c.Fix != "" {
			fmt.Fprintf(&b, " -- fix: %s", c.Fix)
		}
		b.WriteByte('\n')
	}
	verdict := "a run would deliver every record"
	if r.Failed() {
		verdict = "a run would lose or hold records: fix the FAIL lines"
	}
	fmt.Fprintf(&b, "%d ok, %d warn, %d FAIL: %s\n", r.Count(OK), r.Count(Warn), r.Count(Fail), verdict)
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints the report as one JSON object.
func (r Report) WriteJSON(w io.Writer) error {
	checks := r.Checks
	if checks == nil {
		checks = []Check{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		OK     bool    `json:"ok"`
		Counts any     `json:"counts"`
		Checks []Check `json:"checks"`
	}{!r.Failed(), map[Status]int{OK: r.Count(OK), Warn: r.Count(Warn), Fail: r.Count(Fail)}, checks})
}

// Config is what the checks need of tally's configuration.
type Config struct {
	Auth openstack.AuthConfig
	// Nova carries the selection (caso_tag, projects, access_mode,
	// concurrency, retry) and the flavor keys; it is the selection of
	// whichever extractor is enabled.
	Nova nova.Config
	// Projects replaces the configured selection, as extract --projects.
	Projects []string
	// Which extractors run.
	NovaEnabled, CinderEnabled, NeutronEnabled, EnergyEnabled bool
	Energy                                                    energy.Config
	// SiteName must be set when this process runs the enricher.
	SiteName     string
	SiteRequired bool
	VOProperty   string
	MappingFile  string
	DefaultVO    string
	SSM          SSM
	Logstash     Logstash
	// Timeout bounds each network probe that has no retry policy of its
	// own (Prometheus, Logstash).
	Timeout time.Duration
}

// SSM is the SSM messenger's spool.
type SSM struct {
	Enabled  bool
	Spool    string
	StateDir string
}

// Logstash is the Logstash messenger's endpoint.
type Logstash struct {
	Enabled bool
	Host    string
	Port    int
}

// Run runs every check that applies to cfg.
func Run(ctx context.Context, cfg Config) Report {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	d := &doctor{cfg: cfg, owners: map[string]bool{}}
	d.site()
	if cfg.NovaEnabled || cfg.CinderEnabled || cfg.NeutronEnabled || cfg.EnergyEnabled {
		d.cloud(ctx)
	}
	if cfg.EnergyEnabled {
		d.prometheus(ctx)
	}
	if cfg.SSM.Enabled {
		d.spool()
	}
	if cfg.Logstash.Enabled {
		d.logstash(ctx)
	}
	return d.rep
}

type doctor struct {
	cfg Config
	rep Report
	// owners are user ids seen on servers: get_user is tried on one.
	owners map[string]bool
}

func (d *doctor) site() {
	if !d.cfg.SiteRequired {
		return
	}
	if d.cfg.SiteName == "" {
		d.rep.add(Fail, "config.site_name", "set enricher.site_name (TALLY_ENRICHER_SITE_NAME or --site-name) to the site's GOCDB name",
			"enricher.site_name is empty: APEL requires a SiteName on every record, so tally extract refuses to run")
		return
	}
	d.rep.add(OK, "config.site_name", "", "records carry SiteName %s", d.cfg.SiteName)
}
