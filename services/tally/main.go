// Command tally is the all-in-one binary and the command-line tool.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/tally-accounting/tally/services/tally/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Environ: os.Environ()})
	stop()
	os.Exit(code)
}
