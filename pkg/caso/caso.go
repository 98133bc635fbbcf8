// Package caso reads a cASO site's configuration (oslo.config INI files)
// and its lastrun files, so a site can switch to tally without rewriting
// its configuration or losing its place. cASO's option names, defaults and
// layering are the reference; what tally cannot do is a warning or an
// error that names the file, the section and the key.
package caso

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/ini.v1"

	"github.com/tally-accounting/tally/pkg/config"
	"github.com/tally-accounting/tally/pkg/openstack"
	"github.com/tally-accounting/tally/pkg/record"
)

// cASO's defaults (cASO 5.2).
const (
	DefaultSpoolDir    = "/var/spool/caso"
	DefaultMappingFile = "/etc/caso/voms.json"
	DefaultSSMOutput   = "/var/spool/apel/outgoing/openstack"
)

// Extractor and messenger names cASO knows.
var (
	Extractors = []string{"nova", "cinder", "neutron", "prometheus"}
	Messengers = []string{"noop", "ssm", "ssmv4", "logstash", "greendigit_cim"}
)

// Config is a cASO configuration with cASO's defaults filled in.
type Config struct {
	SiteName    string
	ServiceName string // "" means the site name, as cASO's $site_name default
	RegionName  string
	Projects    []string
	CasoTag     string
	VOProperty  string
	MappingFile string
	// MappingFileSet says mapping_file was in a file, not cASO's default.
	MappingFileSet bool
	Extractors     []string
	Messengers     []string
	SpoolDir       string
	DryRun         bool
	Debug          bool
	Benchmark      Benchmark
	Accelerator    Accelerator
	// Auth is [keystone_auth] in tally's terms; zero when the section is
	// empty (cASO would then fail to authenticate).
	Auth        openstack.AuthConfig
	SSM         SSM
	Logstash    Logstash
	Prometheus  Prometheus
	RecordTypes map[string][]string // [messenger_<name>] record_types, where set
}

// Benchmark is [benchmark]: the flavor extra-spec keys of the benchmark.
type Benchmark struct{ NameKey, ValueKey string }

// Accelerator is [accelerator]: the flavor extra-spec keys of accelerators.
type Accelerator struct{ TypeKey, VendorKey, ModelKey, NumberKey string }

// SSM is [ssm].
type SSM struct {
	OutputPath string
	MaxSize    int
}

// Logstash is [logstash].
type Logstash struct {
	Host string
	Port int
}

// Prometheus is [prometheus], the energy extractor's.
type Prometheus struct {
	Endpoint               string
	MetricName             string
	UUIDLabel              string
	Labels                 []string
	StepSeconds            int
	VerifySSL              bool
	CPUNormalizationFactor float64
}

// Default returns cASO 5.2's defaults.
func Default() Config {
	return Config{
		CasoTag: "caso", VOProperty: "VO", MappingFile: DefaultMappingFile,
		Extractors: []string{"nova", "cinder", "neutron"}, Messengers: []string{"noop"},
		SpoolDir:    DefaultSpoolDir,
		Benchmark:   Benchmark{NameKey: "accounting:benchmark_type", ValueKey: "accounting:benchmark_value"},
		Accelerator: Accelerator{TypeKey: "Accelerator:Type", VendorKey: "Accelerator:Vendor", ModelKey: "Accelerator:Model", NumberKey: "Accelerator:Number"},
		SSM:         SSM{OutputPath: DefaultSSMOutput, MaxSize: 100},
		Logstash:    Logstash{Host: "localhost", Port: 5000},
		Prometheus: Prometheus{Endpoint: "http://localhost:9090", MetricName: "prometheus_value", UUIDLabel: "uuid",
			Labels: []string{"type_instance:scaph_process_power_microwatts"}, StepSeconds: 30, VerifySSL: true, CPUNormalizationFactor: 1},
		RecordTypes: map[string][]string{},
	}
}

// Problem is something wrong with one key of one file: a warning (tally
// goes on) or an error (the configuration is refused).
type Problem struct {
	File, Section, Key, Value string
	Msg                       string
	Err                       bool
}

func (p Problem) Error() string {
	var parts []string
	if p.File != "" {
		parts = append(parts, p.File)
	}
	where := ""
	if p.Section != "" {
		where = "[" + p.Section + "]"
	}
	if p.Key != "" {
		where = strings.TrimSpace(where + " " + p.Key)
		if p.Value != "" {
			where += fmt.Sprintf(" = %q", p.Value)
		}
	}
	if where != "" {
		parts = append(parts, where)
	}
	return strings.Join(append(parts, p.Msg), ": ")
}

// kind is how an option's value is parsed.
type kind int

const (
	str kind = iota
	list
	boolean
	integer
	float
	ignored    // oslo.log and oslo.config's own options: nothing to do in tally
	deprecated // an old name, honoured with a warning
	unsupported
)

type opt struct {
	kind kind
	// note is the deprecated option's new name, or why tally ignores it.
	note string
}

// options lists every key cASO 5.2 (and the oslo libraries it loads)
// understands, by section; messenger_<name> sections are added below.
var options = map[string]map[string]opt{
	"DEFAULT": {
		"site_name": {kind: str}, "service_name": {kind: str}, "region_name": {kind: str},
		"projects": {kind: list}, "caso_tag": {kind: str}, "vo_property": {kind: str}, "mapping_file": {kind: str},
		"extractor": {kind: list}, "messengers": {kind: list}, "spooldir": {kind: str},
		"dry_run": {kind: boolean}, "debug": {kind: boolean},
		"lock_path":    {kind: ignored, note: "tally keeps leases on the bus"},
		"extract_from": {kind: unsupported, note: "use tally extract --from"},
		"extract_to":   {kind: unsupported, note: "use tally extract --to"},
		// Removed from cASO in 4.1 but still found in old files.
		"tenants":                {kind: deprecated, note: "projects"},
		"benchmark_name_key":     {kind: deprecated, note: "benchmark.name_key"},
		"benchmark_value_key":    {kind: deprecated, note: "benchmark.value_key"},
		"accelerator_type_key":   {kind: deprecated, note: "accelerator.type_key"},
		"accelerator_vendor_key": {kind: deprecated, note: "accelerator.vendor_key"},
		"accelerator_model_key":  {kind: deprecated, note: "accelerator.model_key"},
		"accelerator_number_key": {kind: deprecated, note: "accelerator.number_key"},
	},
	"benchmark":   {"name_key": {kind: str}, "value_key": {kind: str}},
	"accelerator": {"type_key": {kind: str}, "vendor_key": {kind: str}, "model_key": {kind: str}, "number_key": {kind: str}},
	"keystone_auth": {
		"auth_type": {kind: str}, "auth_url": {kind: str}, "system_scope": {kind: str},
		"domain_id": {kind: str}, "domain_name": {kind: str}, "project_id": {kind: str}, "project_name": {kind: str},
		"project_domain_id": {kind: str}, "project_domain_name": {kind: str},
		"default_domain_id": {kind: str}, "default_domain_name": {kind: str},
		"user_id": {kind: str}, "username": {kind: str}, "user_domain_id": {kind: str}, "user_domain_name": {kind: str},
		"password": {kind: str}, "application_credential_id": {kind: str}, "application_credential_name": {kind: str},
		"application_credential_secret": {kind: str}, "token": {kind: str},
		"cafile": {kind: str}, "insecure": {kind: boolean},
		"timeout":        {kind: ignored, note: "tally's extractors.*.retry.request_timeout bounds a request"},
		"collect_timing": {kind: ignored}, "split_loggers": {kind: ignored},
		"certfile":     {kind: unsupported, note: "tally cannot present a client certificate to Keystone"},
		"keyfile":      {kind: unsupported, note: "tally cannot present a client certificate to Keystone"},
		"trust_id":     {kind: unsupported, note: "tally cannot scope a token to a trust"},
		"auth_section": {kind: unsupported, note: "copy the referenced section's keys into [keystone_auth]"},
		// The OpenID Connect plugins' keys: known, refused with auth_type.
		"identity_provider": {kind: ignored}, "protocol": {kind: ignored}, "access_token": {kind: ignored},
		"client_id": {kind: ignored}, "client_secret": {kind: ignored}, "access_token_endpoint": {kind: ignored},
		"discovery_endpoint": {kind: ignored}, "openid_scope": {kind: ignored}, "access_token_type": {kind: ignored},
	},
	"ssm":      {"output_path": {kind: str}, "max_size": {kind: integer}},
	"logstash": {"host": {kind: str}, "port": {kind: integer}},
	"prometheus": {
		"prometheus_endpoint": {kind: str}, "prometheus_metric_name": {kind: str}, "vm_uuid_label_name": {kind: str},
		"labels": {kind: list}, "prometheus_step_seconds": {kind: integer}, "prometheus_verify_ssl": {kind: boolean},
		"cpu_normalization_factor": {kind: float},
	},
	"oslo_concurrency": {"lock_path": {kind: ignored}, "disable_process_locking": {kind: ignored}},
}

// osloDefaults are oslo.log's and oslo.config's own [DEFAULT] options, which
// cASO accepts and tally ignores (it logs with its own log settings).
var osloDefaults = []string{
	"config_file", "config_dir", "config_source", "log_config_append", "log_date_format", "log_file", "log_dir",
	"watch_log_file", "use_syslog", "use_journal", "syslog_log_facility", "use_json", "use_stderr", "use_eventlog",
	"log_color", "log_rotate_interval", "log_rotate_interval_type", "max_logfile_count", "max_logfile_size_mb",
	"log_rotation_type", "logging_context_format_string", "logging_default_format_string",
	"logging_debug_format_suffix", "logging_exception_prefix", "logging_user_identity_format", "default_log_levels",
	"publish_errors", "instance_format", "instance_uuid_format", "rate_limit_interval", "rate_limit_burst",
	"rate_limit_except_level", "fatal_deprecations", "verbose",
}

func init() {
	for _, k := range osloDefaults {
		options["DEFAULT"][k] = opt{kind: ignored}
	}
	for _, m := range Messengers {
		options["messenger_"+m] = map[string]opt{"record_types": {kind: list}}
	}
}

// entry is one key's value and the file it came from.
type entry struct {
	file, value string
}

// Files returns the files of --config-file and --config-dir in oslo.config's
// order: the files as given, then the directory's *.conf sorted by name.
func Files(files []string, dir string) ([]string, error) {
	out := slices.Clone(files)
	if dir != "" {
		matches, err := filepath.Glob(filepath.Join(dir, "*.conf"))
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("caso config dir: %w", err)
		}
		sort.Strings(matches)
		out = append(out, matches...)
	}
	return out, nil
}

// Load reads cASO's configuration from files and the *.conf files of dir,
// layered as oslo.config layers --config-file and --config-dir: a key in a
// later file replaces the earlier one. It returns the warnings (unknown
// keys, deprecated or unsupported options) and, when a value is bad, an
// error joining one Problem per bad key.
func Load(files []string, dir string) (Config, []Problem, error) {
	paths, err := Files(files, dir)
	if err != nil {
		return Config{}, nil, err
	}
	if len(paths) == 0 {
		return Config{}, nil, errors.New("caso: no configuration file given")
	}
	values := map[string]map[string]entry{}
	var warns []Problem
	for _, path := range paths {
		f, err := ini.LoadSources(ini.LoadOptions{
			AllowPythonMultilineValues: true,
			// oslo.config has no inline comments and no backslash continuation.
			IgnoreInlineComment: true,
			IgnoreContinuation:  true,
		}, path)
		if err != nil {
			return Config{}, nil, fmt.Errorf("caso: %s: %w", path, err)
		}
		for _, sec := range f.Sections() {
			name := sec.Name()
			known, ok := options[name]
			if !ok {
				if len(sec.Keys()) > 0 {
					warns = append(warns, Problem{File: path, Section: name, Msg: "unknown section, ignored" + suggest(name, sectionNames())})
				}
				continue
			}
			for _, k := range sec.Keys() {
				key := strings.ReplaceAll(k.Name(), "-", "_")
				o, ok := known[key]
				if !ok {
					warns = append(warns, Problem{File: path, Section: name, Key: k.Name(), Msg: "unknown key, ignored" + suggest(key, keyNames(name))})
					continue
				}
				switch o.kind {
				case ignored:
					continue
				case unsupported:
					warns = append(warns, Problem{File: path, Section: name, Key: k.Name(), Value: k.Value(), Msg: "not supported by tally, ignored: " + o.note})
					continue
				case deprecated:
					warns = append(warns, Problem{File: path, Section: name, Key: k.Name(), Msg: "deprecated (removed in cASO 4.1), use " + newName(o.note) + " instead; honoured unless that is set"})
				}
				if values[name] == nil {
					values[name] = map[string]entry{}
				}
				values[name][key] = entry{file: path, value: k.Value()}
			}
		}
	}
	p := &parser{values: values}
	c := p.config()
	for _, w := range p.warns {
		warns = append(warns, w)
	}
	return c, warns, errors.Join(p.errs...)
}

func newName(dotted string) string {
	sec, key, _ := strings.Cut(dotted, ".")
	if key == "" {
		return dotted
	}
	return "[" + sec + "] " + key
}

func sectionNames() []string {
	out := make([]string, 0, len(options))
	for s := range options {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

func keyNames(section string) []string {
	out := make([]string, 0, len(options[section]))
	for k := range options[section] {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// suggest names the known name nearest to s, when one is near enough to be
// a likely misspelling.
func suggest(s string, known []string) string {
	best, bestD := "", len(s)/2+2
	for _, k := range known {
		if d := distance(strings.ToLower(s), k); d < bestD {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

// distance is the Levenshtein distance.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// parser turns the layered values into a Config, collecting problems.
type parser struct {
	values map[string]map[string]entry
	warns  []Problem
	errs   []error
}

func (p *parser) bad(section, key string, e entry, format string, args ...any) {
	p.errs = append(p.errs, Problem{File: e.file, Section: section, Key: key, Value: e.value, Msg: fmt.Sprintf(format, args...), Err: true})
}

func (p *parser) warn(section, key string, e entry, format string, args ...any) {
	p.warns = append(p.warns, Problem{File: e.file, Section: section, Key: key, Value: e.value, Msg: fmt.Sprintf(format, args...)})
}

var reference = regexp.MustCompile(`\$(\$|\{[A-Za-z0-9_.]+\}|[A-Za-z0-9_]+)`)

// raw returns a key's value with oslo.config's $name and ${group.name}
// references substituted; ok is false when the key is not set.
func (p *parser) raw(section, key string) (string, entry, bool) {
	e, ok := p.values[section][key]
	if !ok {
		return "", e, false
	}
	return p.substitute(section, key, e, 0), e, true
}

func (p *parser) substitute(section, key string, e entry, depth int) string {
	if !strings.Contains(e.value, "$") {
		return e.value
	}
	if depth > 8 {
		p.bad(section, key, e, "references nest too deep (a loop?)")
		return e.value
	}
	return reference.ReplaceAllStringFunc(e.value, func(m string) string {
		if m == "$$" {
			return "$"
		}
		name := strings.Trim(m[1:], "{}")
		sec, k := "DEFAULT", name
		if s, kk, ok := strings.Cut(name, "."); ok {
			sec, k = s, kk
		}
		if ref, ok := p.values[sec][k]; ok {
			return p.substitute(sec, k, ref, depth+1)
		}
		if sec == "DEFAULT" && k == "spooldir" {
			return DefaultSpoolDir
		}
		if _, known := options[sec][k]; !known {
			p.bad(section, key, e, "references %s, which is not an option", m)
		}
		return ""
	})
}

func (p *parser) str(section, key string, dst *string) bool {
	v, _, ok := p.raw(section, key)
	if ok {
		*dst = strings.TrimSpace(v)
	}
	return ok
}

func (p *parser) list(section, key string, dst *[]string) bool {
	v, _, ok := p.raw(section, key)
	if ok {
		*dst = config.SplitList(v)
	}
	return ok
}

// boolean accepts what oslo.config's Boolean type accepts.
func (p *parser) boolean(section, key string, dst *bool) {
	v, e, ok := p.raw(section, key)
	if !ok {
		return
	}
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "1", "on", "yes":
		*dst = true
	case "false", "0", "off", "no":
		*dst = false
	default:
		p.bad(section, key, e, "is not a boolean (true/false, yes/no, on/off, 1/0)")
	}
}

func (p *parser) integer(section, key string, dst *int, lo, hi int) {
	v, e, ok := p.raw(section, key)
	if !ok {
		return
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	switch {
	case err != nil:
		p.bad(section, key, e, "is not an integer")
	case n < lo || n > hi:
		p.bad(section, key, e, "must be between %d and %d", lo, hi)
	default:
		*dst = n
	}
}

func (p *parser) float(section, key string, dst *float64) {
	v, e, ok := p.raw(section, key)
	if !ok {
		return
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil {
		p.bad(section, key, e, "is not a number")
		return
	}
	*dst = f
}

// deprecatedStr applies a removed [DEFAULT] name unless its new name is set.
func (p *parser) deprecatedStr(oldKey, section, key string, dst *string) {
	if _, set := p.values[section][key]; set {
		return
	}
	p.str("DEFAULT", oldKey, dst)
}

// oneOf checks every item of a list option against the known names.
func (p *parser) oneOf(section, key string, items, known []string) {
	e := p.values[section][key]
	for _, it := range items {
		if !slices.Contains(known, it) {
			p.bad(section, key, e, "unknown name %q (cASO knows %s)", it, strings.Join(known, ", "))
		}
	}
}

func (p *parser) config() Config {
	c := Default()
	d := "DEFAULT"
	p.str(d, "site_name", &c.SiteName)
	p.str(d, "service_name", &c.ServiceName)
	p.str(d, "region_name", &c.RegionName)
	if !p.list(d, "projects", &c.Projects) {
		p.list(d, "tenants", &c.Projects)
	}
	p.str(d, "caso_tag", &c.CasoTag)
	p.str(d, "vo_property", &c.VOProperty)
	c.MappingFileSet = p.str(d, "mapping_file", &c.MappingFile)
	if p.list(d, "extractor", &c.Extractors) {
		p.oneOf(d, "extractor", c.Extractors, Extractors)
	}
	if p.list(d, "messengers", &c.Messengers) {
		p.oneOf(d, "messengers", c.Messengers, Messengers)
	}
	p.str(d, "spooldir", &c.SpoolDir)
	p.boolean(d, "dry_run", &c.DryRun)
	p.boolean(d, "debug", &c.Debug)
	if c.VOProperty == "" {
		p.bad(d, "vo_property", p.values[d]["vo_property"], "is empty: no project would have a VO")
	}

	p.deprecatedStr("benchmark_name_key", "benchmark", "name_key", &c.Benchmark.NameKey)
	p.deprecatedStr("benchmark_value_key", "benchmark", "value_key", &c.Benchmark.ValueKey)
	p.str("benchmark", "name_key", &c.Benchmark.NameKey)
	p.str("benchmark", "value_key", &c.Benchmark.ValueKey)
	for _, k := range []struct {
		name string
		dst  *string
	}{{"type", &c.Accelerator.TypeKey}, {"vendor", &c.Accelerator.VendorKey}, {"model", &c.Accelerator.ModelKey}, {"number", &c.Accelerator.NumberKey}} {
		p.deprecatedStr("accelerator_"+k.name+"_key", "accelerator", k.name+"_key", k.dst)
		p.str("accelerator", k.name+"_key", k.dst)
	}

	p.str("ssm", "output_path", &c.SSM.OutputPath)
	p.integer("ssm", "max_size", &c.SSM.MaxSize, 1, 1<<20)
	p.str("logstash", "host", &c.Logstash.Host)
	p.integer("logstash", "port", &c.Logstash.Port, 1, 65535)

	pr := "prometheus"
	p.str(pr, "prometheus_endpoint", &c.Prometheus.Endpoint)
	p.str(pr, "prometheus_metric_name", &c.Prometheus.MetricName)
	p.str(pr, "vm_uuid_label_name", &c.Prometheus.UUIDLabel)
	p.list(pr, "labels", &c.Prometheus.Labels)
	p.integer(pr, "prometheus_step_seconds", &c.Prometheus.StepSeconds, 1, 86400)
	p.boolean(pr, "prometheus_verify_ssl", &c.Prometheus.VerifySSL)
	p.float(pr, "cpu_normalization_factor", &c.Prometheus.CPUNormalizationFactor)

	for _, m := range Messengers {
		sec := "messenger_" + m
		var types []string
		if p.list(sec, "record_types", &types) {
			if _, err := record.ParseTypes(types); err != nil {
				p.bad(sec, "record_types", p.values[sec]["record_types"], "%v", err)
				continue
			}
			c.RecordTypes[m] = types
		}
	}
	for _, m := range c.Messengers {
		if m == "greendigit_cim" {
			p.warn(d, "messengers", p.values[d]["messengers"], "the greendigit_cim messenger is not supported by tally: its records go nowhere")
		}
	}
	if c.Auth = p.auth(); !c.Auth.IsZero() {
		c.Auth.Region = c.RegionName
	}
	return c
}

// auth maps [keystone_auth] onto the authentication gophercloud can do.
func (p *parser) auth() openstack.AuthConfig {
	const ks = "keystone_auth"
	if len(p.values[ks]) == 0 {
		return openstack.AuthConfig{}
	}
	var a openstack.AuthConfig
	var defDomainID, defDomainName, password, secret, token string
	p.str(ks, "auth_url", &a.AuthURL)
	p.str(ks, "system_scope", &a.SystemScope)
	p.str(ks, "domain_id", &a.DomainID)
	p.str(ks, "domain_name", &a.DomainName)
	p.str(ks, "project_id", &a.ProjectID)
	p.str(ks, "project_name", &a.ProjectName)
	p.str(ks, "project_domain_id", &a.ProjectDomainID)
	p.str(ks, "project_domain_name", &a.ProjectDomainName)
	p.str(ks, "user_id", &a.UserID)
	p.str(ks, "username", &a.Username)
	p.str(ks, "user_domain_id", &a.UserDomainID)
	p.str(ks, "user_domain_name", &a.UserDomainName)
	p.str(ks, "default_domain_id", &defDomainID)
	p.str(ks, "default_domain_name", &defDomainName)
	p.str(ks, "password", &password)
	p.str(ks, "application_credential_id", &a.ApplicationCredentialID)
	p.str(ks, "application_credential_name", &a.ApplicationCredentialName)
	p.str(ks, "application_credential_secret", &secret)
	p.str(ks, "token", &token)
	p.str(ks, "cafile", &a.CACert)
	p.boolean(ks, "insecure", &a.Insecure)
	a.Password, a.ApplicationCredentialSecret, a.Token = config.Secret(password), config.Secret(secret), config.Secret(token)
	// keystoneauth's default domain stands in for the user's and the
	// project's when they are not given.
	if a.UserDomainID == "" && a.UserDomainName == "" {
		a.UserDomainID, a.UserDomainName = defDomainID, defDomainName
	}
	if a.ProjectDomainID == "" && a.ProjectDomainName == "" {
		a.ProjectDomainID, a.ProjectDomainName = defDomainID, defDomainName
	}

	t, e, ok := p.raw(ks, "auth_type")
	t = strings.TrimSpace(t)
	switch strings.ToLower(t) {
	case "password", "v3password":
		a.AuthType = "password"
	case "v3applicationcredential", "applicationcredential":
		a.AuthType = "v3applicationcredential"
	case "token", "v3token":
		a.AuthType = "token"
	case "":
		if !ok {
			e = entry{file: p.anyFile(ks)}
		}
		p.bad(ks, "auth_type", e, "is not set: cASO (keystoneauth) needs it; tally supports password, v3password, v3applicationcredential and token")
	default:
		p.bad(ks, "auth_type", e, "the keystoneauth plugin %q cannot be used by tally (gophercloud supports password, v3password, v3applicationcredential and token); an application credential is the usual replacement for %s", t, t)
	}
	return a
}

// anyFile names a file that has section, for a problem about a missing key.
func (p *parser) anyFile(section string) string {
	var files []string
	for _, e := range p.values[section] {
		files = append(files, e.file)
	}
	sort.Strings(files)
	if len(files) == 0 {
		return ""
	}
	return files[0]
}
