package sim

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"strings"
	"time"
)

// DefaultPassword is every simulated user's password, so that `sim env` run in
// another process prints credentials the running simulator accepts.
const DefaultPassword = "secret"

// Config holds every knob of the simulator. The zero value is not useful;
// start from DefaultConfig.
type Config struct {
	Listen string
	Seed   int64

	// Population (ignored with Scenario).
	Projects           int
	ServersPerProject  int
	UsersPerProject    int
	VolumesPerProject  int
	FloatingIPsPerProj int
	Images             int
	Months             int
	Regions            []string
	Churn              Churn

	// Now freezes the simulated clock at this instant; zero follows the wall
	// clock.
	Now time.Time

	Scenario     string
	DumpTruth    string
	NotifyAMQP   string
	NotifyFaults NotifyFaults
	// AuditPeriod is nova-compute's instance_usage_audit_period: hour or day.
	AuditPeriod string
	// GetUserRole, when set, is a role that also grants identity:get_user
	// (on any project): the Keystone policy line cASO's docs have sites add
	// for the accounting role, which leaves identity:list_users admin-only.
	GetUserRole string
	// Forbid lists policy rules refused to every token without the admin
	// role, as a site's stricter policy file does: get_port (Neutron then
	// leaves the ports out of listings) and os_compute_api:servers:detail
	// or os_compute_api:servers:index (Nova answers 403).
	Forbid []string
	// NeutronNoFIPPortDetails serves floating IPs without port_details, as
	// a Neutron without the fip-port-details extension (before Rocky, or a
	// plugin that does not load it) does.
	NeutronNoFIPPortDetails bool

	// Faults, all off by default.
	Latency       time.Duration
	Jitter        time.Duration
	ErrorRate     float64
	RateLimitRate float64
	RetryAfter    time.Duration
	MalformedRate float64
	TokenTTL      time.Duration
	SlowBody      time.Duration
}

// Churn is the share of servers that go through each lifecycle change.
type Churn struct {
	Delete         float64
	Resize         float64
	Stop           float64
	Shelve         float64
	Error          float64
	NoTerminatedAt float64
}

// DefaultConfig gives a small, varied cloud on a loopback port.
func DefaultConfig() Config {
	return Config{
		Listen:             "127.0.0.1:8786",
		Seed:               1,
		Projects:           6,
		ServersPerProject:  8,
		UsersPerProject:    3,
		VolumesPerProject:  3,
		FloatingIPsPerProj: 2,
		Images:             6,
		Months:             3,
		Regions:            []string{"RegionOne"},
		Churn: Churn{Delete: 0.3, Resize: 0.1, Stop: 0.2, Shelve: 0.05, Error: 0.03,
			NoTerminatedAt: 0.02},
		AuditPeriod: "hour",
		RetryAfter:  time.Second,
		TokenTTL:    24 * time.Hour,
	}
}

type timeFlag struct{ t *time.Time }

func (f timeFlag) String() string {
	if f.t == nil || f.t.IsZero() {
		return ""
	}
	return f.t.Format(time.RFC3339)
}

func (f timeFlag) Set(s string) error {
	if s == "" {
		*f.t = time.Time{}
		return nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return fmt.Errorf("want an RFC 3339 time such as 2026-11-23T12:00:00Z")
	}
	*f.t = t.UTC()
	return nil
}

type listFlag struct{ l *[]string }

func (f listFlag) String() string {
	if f.l == nil {
		return ""
	}
	return strings.Join(*f.l, ",")
}

func (f listFlag) Set(s string) error {
	*f.l = nil
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*f.l = append(*f.l, p)
		}
	}
	return nil
}

// RegisterFlags registers every knob on fs, with defaults taken from c.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", c.Listen, "`host:port` to serve every API on (port 0 picks a free one)")
	fs.Int64Var(&c.Seed, "seed", c.Seed, "seed of the generated population: the same seed gives the same cloud")
	fs.IntVar(&c.Projects, "projects", c.Projects, "number of generated projects")
	fs.IntVar(&c.ServersPerProject, "servers-per-project", c.ServersPerProject, "servers created per project over the history (live and deleted)")
	fs.IntVar(&c.UsersPerProject, "users-per-project", c.UsersPerProject, "users with the member role per project")
	fs.IntVar(&c.VolumesPerProject, "volumes-per-project", c.VolumesPerProject, "Cinder volumes created per project over the history")
	fs.IntVar(&c.FloatingIPsPerProj, "floating-ips-per-project", c.FloatingIPsPerProj, "Neutron floating IPs per project (IPv4 and IPv6)")
	fs.IntVar(&c.Images, "images", c.Images, "number of Glance images (some deleted, some with vmcatcher_event_ad_mpuri)")
	fs.IntVar(&c.Months, "months", c.Months, "months of history before now")
	fs.Var(listFlag{&c.Regions}, "regions", "comma-separated region names; each gets its own endpoints in the catalog")
	fs.Var(timeFlag{&c.Now}, "now", "freeze the simulated clock at this RFC 3339 time (advance it with POST /sim/clock); empty follows the wall clock")
	fs.StringVar(&c.Scenario, "scenario", c.Scenario, "YAML `file` scripting the exact cloud (replaces the generated population)")
	fs.StringVar(&c.DumpTruth, "dump-truth", c.DumpTruth, "write the ground truth (every server, volume and IP lifecycle) as JSON to this `file` at start")
	fs.StringVar(&c.NotifyAMQP, "notify-amqp", c.NotifyAMQP, "RabbitMQ `URL` to publish oslo.messaging notifications to (exchange nova); empty disables")
	fs.StringVar(&c.GetUserRole, "keystone-get-user-role", c.GetUserRole, "a `role` that may also GET any user (identity:get_user), as cASO's documented Keystone policy change does; e.g. accounting")
	fs.Var(listFlag{&c.Forbid}, "forbid-policy", "comma-separated policy `rules` refused to non-admin tokens: get_port, os_compute_api:servers:detail, os_compute_api:servers:index")
	fs.BoolVar(&c.NeutronNoFIPPortDetails, "neutron-no-fip-port-details", c.NeutronNoFIPPortDetails, "serve floating IPs without port_details (a Neutron without the fip-port-details extension)")
	fs.StringVar(&c.AuditPeriod, "audit-period", c.AuditPeriod, "period of the compute.instance.exists audit notifications: hour or day")
	fs.Float64Var(&c.NotifyFaults.DropExists, "notify-drop-exists", c.NotifyFaults.DropExists, "share of exists notifications never sent (listed in /sim/truth)")
	fs.Float64Var(&c.NotifyFaults.DropLaunch, "notify-drop-launch", c.NotifyFaults.DropLaunch, "share of launches whose create.end notifications are never sent (listed in /sim/truth)")
	fs.Float64Var(&c.NotifyFaults.CorruptExists, "notify-corrupt-exists", c.NotifyFaults.CorruptExists, "share of exists notifications sent with launched_at or the flavor damaged (listed in /sim/truth)")
	fs.Float64Var(&c.NotifyFaults.Duplicate, "notify-duplicate", c.NotifyFaults.Duplicate, "share of notifications sent twice (listed in /sim/truth)")
	fs.Float64Var(&c.NotifyFaults.Reorder, "notify-reorder", c.NotifyFaults.Reorder, "share of notifications swapped with the next one (listed in /sim/truth)")
	fs.Float64Var(&c.Churn.Delete, "churn-delete", c.Churn.Delete, "share of generated servers deleted before now")
	fs.Float64Var(&c.Churn.Resize, "churn-resize", c.Churn.Resize, "share of generated servers resized once (launched_at is rewritten, as Nova does)")
	fs.Float64Var(&c.Churn.Stop, "churn-stop", c.Churn.Stop, "share of generated servers stopped (some started again)")
	fs.Float64Var(&c.Churn.Shelve, "churn-shelve", c.Churn.Shelve, "share of generated servers shelved (offloaded)")
	fs.Float64Var(&c.Churn.Error, "churn-error", c.Churn.Error, "share of generated servers that fail to build (ERROR, never launched)")
	fs.Float64Var(&c.Churn.NoTerminatedAt, "churn-no-terminated-at", c.Churn.NoTerminatedAt, "share of deleted servers left without terminated_at")
	fs.DurationVar(&c.Latency, "latency", c.Latency, "fixed delay added to every API response (e.g. 10ms)")
	fs.DurationVar(&c.Jitter, "jitter", c.Jitter, "random extra delay, uniform in [0, jitter), added to --latency")
	fs.Float64Var(&c.ErrorRate, "error-rate", c.ErrorRate, "share of API requests answered 500, 502 or 503 (0 to 1)")
	fs.Float64Var(&c.RateLimitRate, "rate-limit-rate", c.RateLimitRate, "share of API requests answered 429 with Retry-After (0 to 1)")
	fs.DurationVar(&c.RetryAfter, "retry-after", c.RetryAfter, "Retry-After sent with 429 answers (rounded up to seconds)")
	fs.Float64Var(&c.MalformedRate, "malformed-rate", c.MalformedRate, "share of 200 answers whose JSON body is truncated (0 to 1)")
	fs.DurationVar(&c.TokenTTL, "token-ttl", c.TokenTTL, "lifetime of Keystone tokens in simulated time; short values expire tokens mid-run (401)")
	fs.DurationVar(&c.SlowBody, "slow-body", c.SlowBody, "stream response bodies slowly, spreading each over this duration")
}

// Validate checks the knobs; errors name the flag.
func (c Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("--listen %q: want host:port: %w", c.Listen, err))
	}
	ints := []struct {
		name string
		v    int
		min  int
	}{
		{"--projects", c.Projects, 0}, {"--servers-per-project", c.ServersPerProject, 0},
		{"--users-per-project", c.UsersPerProject, 0}, {"--volumes-per-project", c.VolumesPerProject, 0},
		{"--floating-ips-per-project", c.FloatingIPsPerProj, 0}, {"--images", c.Images, 0}, {"--months", c.Months, 1},
	}
	for _, i := range ints {
		if i.v < i.min {
			errs = append(errs, fmt.Errorf("%s %d: must be at least %d", i.name, i.v, i.min))
		}
	}
	rates := []struct {
		name string
		v    float64
	}{
		{"--churn-delete", c.Churn.Delete}, {"--churn-resize", c.Churn.Resize}, {"--churn-stop", c.Churn.Stop},
		{"--churn-shelve", c.Churn.Shelve}, {"--churn-error", c.Churn.Error},
		{"--churn-no-terminated-at", c.Churn.NoTerminatedAt}, {"--error-rate", c.ErrorRate},
		{"--rate-limit-rate", c.RateLimitRate}, {"--malformed-rate", c.MalformedRate},
		{"--notify-drop-exists", c.NotifyFaults.DropExists}, {"--notify-corrupt-exists", c.NotifyFaults.CorruptExists},
		{"--notify-drop-launch", c.NotifyFaults.DropLaunch}, {"--notify-duplicate", c.NotifyFaults.Duplicate}, {"--notify-reorder", c.NotifyFaults.Reorder},
	}
	for _, r := range rates {
		if r.v < 0 || r.v > 1 {
			errs = append(errs, fmt.Errorf("%s %g: must be between 0 and 1", r.name, r.v))
		}
	}
	if c.AuditPeriod != "hour" && c.AuditPeriod != "day" {
		errs = append(errs, fmt.Errorf("--audit-period %q: want hour or day", c.AuditPeriod))
	}
	for _, r := range c.Forbid {
		if !slicesContains(forbiddable, r) {
			errs = append(errs, fmt.Errorf("--forbid-policy %q: want one of %s", r, strings.Join(forbiddable, ", ")))
		}
	}
	if len(c.Regions) == 0 {
		errs = append(errs, errors.New("--regions: at least one region is needed"))
	}
	for _, r := range c.Regions {
		if strings.ContainsAny(r, "/ ?#") {
			errs = append(errs, fmt.Errorf("--regions: %q may not contain '/', '?', '#' or spaces", r))
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--latency", c.Latency}, {"--jitter", c.Jitter}, {"--retry-after", c.RetryAfter}, {"--slow-body", c.SlowBody}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %s: must not be negative", d.name, d.v))
		}
	}
	if c.TokenTTL <= 0 {
		errs = append(errs, fmt.Errorf("--token-ttl %s: must be positive", c.TokenTTL))
	}
	return errors.Join(errs...)
}

// forbiddable are the policy rules --forbid-policy knows.
var forbiddable = []string{"get_port", "os_compute_api:servers:detail", "os_compute_api:servers:index"}

func (c Config) auditPeriod() time.Duration {
	if c.AuditPeriod == "day" {
		return 24 * time.Hour
	}
	return time.Hour
}
