package cli

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/tally-accounting/tally/pkg/logging"
	"github.com/tally-accounting/tally/pkg/service"
	"github.com/tally-accounting/tally/services/sim"
)

// simCmd runs the OpenStack simulator, or with "env" prints how to reach it.
func simCmd(ctx context.Context, args []string, env Env) int {
	if len(args) > 0 && args[0] == "env" {
		return simEnv(args[1:], env)
	}
	cfg := sim.DefaultConfig()
	logCfg := logging.DefaultConfig()
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	fs.StringVar(&logCfg.Level, "log-level", logCfg.Level, "log `level`: debug, info, warn or error")
	fs.StringVar(&logCfg.Format, "log-format", logCfg.Format, "log `format`: text or json")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: tally sim [flags]
       tally sim env [flags] [--user admin|accounting|accounting-sys] [--clouds-yaml]

Runs an OpenStack simulator: Keystone, Nova, Glance, Cinder, Neutron and a
Prometheus query API on one address, answering like the recorded Zed cloud,
over a deterministic population (--seed) or a scripted --scenario. Every
password is "secret". In another shell:

  eval "$(tally sim env)"          # OS_* for the admin user
  eval "$(tally sim env --user accounting)"

"tally sim env" takes the same flags as "tally sim" (at least --listen and
any --scenario/--seed/--projects) so it describes the same cloud.

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, env); !ok {
		return code
	}
	if err := logCfg.Validate(); err != nil {
		fmt.Fprintf(env.Stderr, "tally sim: %v\n", err)
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(env.Stderr, "tally sim: %v\n", err)
		return 2
	}
	logger, err := logging.New(env.Stderr, logCfg)
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally sim: %v\n", err)
		return 2
	}
	srv, err := sim.New(cfg, logger)
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally sim: %v\n", err)
		return 2
	}
	if err := service.NewManager(logger, 8*time.Second, srv).Run(ctx); err != nil {
		logger.Error("tally sim failed", "error", err)
		return 1
	}
	return 0
}

func simEnv(args []string, env Env) int {
	cfg := sim.DefaultConfig()
	fs := flag.NewFlagSet("sim env", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	user := fs.String("user", "admin", "whose credentials: admin, accounting (only the accounting and reader roles on the caso projects), or accounting-sys (reader on the system and on every caso project but the last; a system-scoped token)")
	cloudsYAML := fs.Bool("clouds-yaml", false, "print a clouds.yaml with both users instead of export lines")
	if code, ok := parseFlags(fs, args, env); !ok {
		return code
	}
	var err error
	if *cloudsYAML {
		err = sim.WriteCloudsYAML(env.Stdout, cfg)
	} else {
		err = sim.WriteEnv(env.Stdout, cfg, *user)
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally sim env: %v\n", err)
		return 2
	}
	return 0
}
