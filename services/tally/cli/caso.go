package cli

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/tally-accounting/tally/pkg/caso"
)

// casoFiles is the repeatable --caso-config flag.
type casoFiles []string

func (c *casoFiles) String() string { return strings.Join(*c, ",") }

// Set implements flag.Value: each flag adds a file, as --config-file does.
func (c *casoFiles) Set(s string) error {
	*c = append(*c, s)
	return nil
}

// casoFlags adds --caso-config and --caso-config-dir to fs.
func casoFlags(fs *flag.FlagSet) {
	fs.Var(&casoFiles{}, "caso-config", "cASO configuration `file` (caso.conf) read under tally's own; repeatable, a later file overrides an earlier one")
	fs.String("caso-config-dir", "", "cASO configuration `directory`: its *.conf files, sorted, after the --caso-config files")
}

// casoSources returns what the flags of casoFlags hold.
func casoSources(fs *flag.FlagSet) (files []string, dir string) {
	if f := fs.Lookup("caso-config"); f != nil {
		files = *f.Value.(*casoFiles)
	}
	if f := fs.Lookup("caso-config-dir"); f != nil {
		dir = f.Value.String()
	}
	return files, dir
}

// layerCaso loads cASO's configuration, when the flags name one, into cfg
// as the layer under tally's file, environment and flags, and prints the
// warnings. dryRun is cASO's dry_run.
func layerCaso(cfg *Config, fs *flag.FlagSet, env Env, cmd string) (dryRun bool, ok bool) {
	files, dir := casoSources(fs)
	if len(files) == 0 && dir == "" {
		return false, true
	}
	c, warns, err := caso.Load(files, dir)
	for _, w := range warns {
		fmt.Fprintf(env.Stderr, "tally %s: warning: caso: %v\n", cmd, w)
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally %s: caso configuration:\n%s\n", cmd, indent(err.Error()))
		return false, false
	}
	for _, w := range applyCaso(cfg, c) {
		fmt.Fprintf(env.Stderr, "tally %s: warning: caso: %s\n", cmd, w)
	}
	return c.DryRun, true
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}

// applyCaso sets in cfg what c configures, cASO's defaults included: a
// cASO site gets the extractors and messengers cASO ran. It returns what
// could not be carried over.
func applyCaso(cfg *Config, c caso.Config) (warnings []string) {
	e := &cfg.Enricher
	e.SiteName = c.SiteName
	if c.ServiceName != c.SiteName {
		e.ServiceName = c.ServiceName
	}
	e.VOProperty = c.VOProperty
	if _, err := os.Stat(c.MappingFile); err == nil {
		e.MappingFile = c.MappingFile
	} else if c.MappingFileSet {
		warnings = append(warnings, fmt.Sprintf("mapping_file %s: %v: not used (cASO ignores a missing mapping file too)", c.MappingFile, err))
	}

	x := &cfg.Extractors
	x.Nova.Enabled = slices.Contains(c.Extractors, "nova")
	x.Cinder.Enabled = slices.Contains(c.Extractors, "cinder")
	x.Neutron.Enabled = slices.Contains(c.Extractors, "neutron")
	x.Energy.Enabled = slices.Contains(c.Extractors, "prometheus")
	for _, ec := range []*struct {
		P *[]string
		T *string
	}{{&x.Nova.Projects, &x.Nova.Tag}, {&x.Cinder.Projects, &x.Cinder.Tag}, {&x.Neutron.Projects, &x.Neutron.Tag}, {&x.Energy.Projects, &x.Energy.Tag}} {
		*ec.P, *ec.T = slices.Clone(c.Projects), c.CasoTag
	}
	x.Nova.BenchmarkTypeKey, x.Nova.BenchmarkValueKey = c.Benchmark.NameKey, c.Benchmark.ValueKey
	x.Nova.AcceleratorTypeKey, x.Nova.AcceleratorVendorKey = c.Accelerator.TypeKey, c.Accelerator.VendorKey
	x.Nova.AcceleratorModelKey, x.Nova.AcceleratorNumberKey = c.Accelerator.ModelKey, c.Accelerator.NumberKey
	p := c.Prometheus
	x.Energy.Endpoint, x.Energy.MetricName, x.Energy.UUIDLabel = p.Endpoint, p.MetricName, p.UUIDLabel
	x.Energy.Labels, x.Energy.Step = slices.Clone(p.Labels), time.Duration(p.StepSeconds)*time.Second
	x.Energy.VerifySSL, x.Energy.CPUNormalizationFactor = p.VerifySSL, p.CPUNormalizationFactor

	if !c.Auth.IsZero() {
		cfg.OpenStack = c.Auth
	} else if c.RegionName != "" {
		warnings = append(warnings, fmt.Sprintf("region_name %q is set but [keystone_auth] is empty: the credentials come from the OS_* environment, so set OS_REGION_NAME=%s there", c.RegionName, c.RegionName))
	}

	m := &cfg.Messengers
	m.SSM.Enabled = slices.Contains(c.Messengers, "ssm") || slices.Contains(c.Messengers, "ssmv4")
	if m.SSM.Enabled {
		m.SSM.Spool, m.SSM.MaxSize = c.SSM.OutputPath, c.SSM.MaxSize
		for _, name := range []string{"ssmv4", "ssm"} {
			if t, ok := c.RecordTypes[name]; ok && slices.Contains(c.Messengers, name) {
				m.SSM.RecordTypes = t
			}
		}
	}
	m.Logstash.Enabled = slices.Contains(c.Messengers, "logstash")
	if m.Logstash.Enabled {
		m.Logstash.Host, m.Logstash.Port = c.Logstash.Host, c.Logstash.Port
		if t, ok := c.RecordTypes["logstash"]; ok {
			m.Logstash.RecordTypes = t
		}
	}
	m.Noop.Enabled = slices.Contains(c.Messengers, "noop")
	if t, ok := c.RecordTypes["noop"]; ok {
		m.Noop.RecordTypes = t
	}
	if c.Debug {
		cfg.Log.Level = "debug"
	}
	return warnings
}

// flagSet reports whether the command line set the flag name.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
