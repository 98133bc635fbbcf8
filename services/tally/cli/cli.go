// Package cli is the tally command line: the all-in-one server and the
// tools around it. main only wires signals to Main.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"strings"

	"github.com/tally-accounting/tally/services/query"
)

// Env is the process environment a command runs in.
type Env struct {
	Stdout, Stderr io.Writer
	Environ        []string
}

func (e Env) getenv(key string) string {
	for _, kv := range e.Environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// version is set at build time with -ldflags "-X ...cli.version=v1.2.3".
var version = ""

// Version is tally's version: the build's, or the module's.
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, env Env) int
}

func commands() []command {
	return []command{
		{"serve", "run tally's services (all in one process by default)", serve},
		{"extract", "extract one window and deliver it, then exit (for cron)", extractCmd},
		{"caso", "switch from cASO: import its config and lastrun files (\"caso import --help\")", casoCmd},
		{"doctor", "check what a run needs: credentials, policies, VOs, spool (exit 1 on FAIL)", doctorCmd},
		{"audit", "StackTach's usage audit of the verified exists (nova|glance), instance hours (hours), the cross-check with the records (crosscheck)", auditCmd},
		{"query", "read the delivered records: records, get, summary, watch (\"query --help\")", func(ctx context.Context, args []string, env Env) int {
			return query.Command(ctx, args, env.Stdout, env.Stderr, env.getenv)
		}},
		{"sim", "run the OpenStack simulator (\"sim env\" prints its OS_* variables)", simCmd},
		{"version", "print the version", func(_ context.Context, _ []string, env Env) int {
			fmt.Fprintln(env.Stdout, "tally", Version())
			return 0
		}},
	}
}

// Main runs the command named by args[0] and returns the exit status.
func Main(ctx context.Context, args []string, env Env) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(env.Stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "-version" {
		args[0] = "version"
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], env)
		}
	}
	fmt.Fprintf(env.Stderr, "tally: unknown command %q\n\n", args[0])
	usage(env.Stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `tally: OpenStack usage accounting and usage verification.

Usage:
  tally <command> [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Run "tally <command> --help" for a command's flags.
Quick start: "tally serve" runs every service in one process with an
embedded NATS server under ./var; the gRPC API listens on 127.0.0.1:50051.
`)
}

// parseFlags parses args, printing help on -h and errors clearly. ok false
// means return code.
func parseFlags(fs *flag.FlagSet, args []string, env Env) (code int, ok bool) {
	fs.SetOutput(env.Stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(env.Stderr, "tally %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2, false
	}
	return 0, true
}
