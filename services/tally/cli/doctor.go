package cli

import (
	"context"
	"flag"
	"fmt"

	"github.com/tally-accounting/tally/pkg/config"
	nova "github.com/tally-accounting/tally/services/extractor-nova"
	"github.com/tally-accounting/tally/services/tally/doctor"
)

// doctorCmd is the preflight: what a run of tally extract needs, checked
// against the configured cloud and this machine.
func doctorCmd(ctx context.Context, args []string, env Env) int {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	path := commonFlags(fs, &cfg)
	casoFlags(fs)
	var projects []string
	fs.Var(config.ListFlag{P: &projects}, "projects", "comma-separated project ids or names, instead of the configured ones and the tagged ones")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: tally doctor [flags]

Checks, against the cloud and the configuration tally extract would use
(the same --caso-config, --config, TALLY_* and OS_* / clouds.yaml), everything
a run needs:
the credentials and their scope, Keystone's project and user listings,
Nova (all tenants, or each selected project), the usage API, the flavors'
benchmark and accelerator keys, Glance, Cinder, Neutron and Prometheus for
the enabled extractors, a VO for every selected project, the SSM spool and
Logstash. It prints one line per check: ok, warn or FAIL, what was found,
and the fix.

It only reads: nothing in the cloud changes. It exits 1 when a run would
lose or hold records (any FAIL), 0 with only warnings, 2 on a bad
configuration.

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
	// A cASO site checks its caso.conf before switching: the same layering
	// as tally extract.
	if _, ok := layerCaso(&cfg, fs, env, "doctor"); !ok {
		return 2
	}
	if _, err := config.Layer(&cfg, fs, *path, env.Environ); err != nil {
		fmt.Fprintf(env.Stderr, "tally doctor: %v\n", err)
		return 2
	}
	rep := doctor.Run(ctx, cfg.doctorConfig(projects, env.getenv))
	write := rep.WriteText
	if *asJSON {
		write = rep.WriteJSON
	}
	if err := write(env.Stdout); err != nil {
		fmt.Fprintf(env.Stderr, "tally doctor: %v\n", err)
		return 2
	}
	if rep.Failed() {
		return 1
	}
	return 0
}

// doctorConfig is what the checks need of c.
func (c *Config) doctorConfig(projects []string, getenv func(string) string) doctor.Config {
	x := c.Extractors
	sel := x.Nova.Config
	if !x.Nova.Enabled {
		// The projects and retry policy of the first enabled extractor.
		sel = nova.DefaultConfig()
		switch {
		case x.Energy.Enabled:
			sel.Config = x.Energy.Config.Config
		case x.Cinder.Enabled:
			sel.Config = x.Cinder.Config
		case x.Neutron.Enabled:
			sel.Config = x.Neutron.Config.Config
		}
	}
	return doctor.Config{
		Auth: c.Auth(getenv), Nova: sel, Projects: projects,
		NovaEnabled: x.Nova.Enabled, CinderEnabled: x.Cinder.Enabled, NeutronEnabled: x.Neutron.Enabled,
		EnergyEnabled: x.Energy.Enabled, Energy: x.Energy.Config,
		// With an external bus the enricher runs elsewhere.
		SiteName: c.Enricher.SiteName, SiteRequired: c.NATS.URL == "",
		VOProperty: c.Enricher.VOProperty, MappingFile: c.Enricher.MappingFile, DefaultVO: c.Enricher.DefaultVO,
		SSM:      doctor.SSM{Enabled: c.Messengers.SSM.Enabled, Spool: c.Messengers.SSM.Spool, StateDir: c.Messengers.SSM.StateDir},
		Logstash: doctor.Logstash{Enabled: c.Messengers.Logstash.Enabled, Host: c.Messengers.Logstash.Host, Port: c.Messengers.Logstash.Port},
	}
}
