package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/tally-accounting/tally/services/verifier"
)

// auditCmd prints StackTach's usage audit of the verifier's store.
func auditCmd(ctx context.Context, args []string, env Env) int {
	if len(args) > 0 {
		switch args[0] {
		case "hours":
			return auditHoursCmd(ctx, args[1:], env)
		case "crosscheck":
			return auditCrossCheckCmd(ctx, args[1:], env)
		}
	}
	if len(args) == 0 || (args[0] != "nova" && args[0] != "glance") {
		fmt.Fprintln(env.Stderr, "Usage: tally audit nova|glance [--period hour|day|month|year] [--at T] [--store] [--json] [--config FILE]")
		fmt.Fprintln(env.Stderr, "       tally audit hours [--period hour|day|month|year] [--at T] [--from T --to T] [--json]")
		fmt.Fprintln(env.Stderr, "       tally audit crosscheck --from T --to T [--project ID] [--threshold 1h,5%] [--json]")
		return 2
	}
	service := args[0]
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	path := commonFlags(fs, &cfg)
	period := fs.String("period", "day", "audited `period`: the whole hour, day, month or year before --at")
	at := fs.String("at", "", "audit the period before this `time` (RFC 3339 or YYYY-MM-DD); default now")
	asJSON := fs.Bool("json", false, "print JSON (the default when stdout is not a terminal)")
	keep := fs.Bool("store", false, "also keep the report in the verifier's store, for the Verification API's GetAudit and ListAudits")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: tally audit nova|glance [flags]

Reports, for the last whole period, StackTach's usage audit from the
verifier's store: exists notifications by status (periodic and
instantaneous), each failed exists with the field, the expected and the
actual value, and every instance or image in use without an exists.

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := loadAuditConfig(fs, &cfg, path, args[1:], env, "tally audit"); !ok {
		return code
	}
	_, begin, end, err := auditPeriod(*period, *at, "", "")
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally audit: %v\n", err)
		return 2
	}
	store, ok := openVerifierStore(ctx, &cfg, env, "tally audit")
	if !ok {
		return 1
	}
	defer store.Close()
	report, err := verifier.Audit(ctx, store, service, begin, end)
	if err != nil {
		fmt.Fprintf(env.Stderr, "tally audit: %v\n", err)
		return 1
	}
	if *keep {
		id, err := storeAudit(ctx, store, *period, report)
		if err != nil {
			fmt.Fprintf(env.Stderr, "tally audit: --store: %v\n", err)
			return 1
		}
		// On stderr: stdout stays the report alone, for JSON readers.
		fmt.Fprintf(env.Stderr, "tally audit: stored as audit report %d\n", id)
	}
	if wantJSON(*asJSON, env.Stdout) {
		return printJSON(env.Stdout, report)
	}
	printAudit(env.Stdout, report)
	return 0
}

func printAudit(w io.Writer, r *verifier.AuditReport) {
	fmt.Fprintf(w, "%s usage audit, %s to %s\n\n", r.Service, r.PeriodBegin.Format(time.RFC3339), r.PeriodEnd.Format(time.RFC3339))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "exists\tcount\tverified\tfailed\tpending\tverifying")
	for _, k := range []string{"periodic", "instantaneous"} {
		c := r.Summary[k]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\n", k, c.Count, c.Verified, c.Failed, c.Pending, c.Verifying)
	}
	tw.Flush()
	if len(r.ExistFails) > 0 {
		fmt.Fprintln(w, "\nfailed exists:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "uuid\tfield\texpected\tactual")
		for _, f := range r.ExistFails {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.UUID, f.Field, f.Expected, f.Actual)
		}
		tw.Flush()
	}
	if len(r.MissingExists) > 0 {
		fmt.Fprintln(w, "\nin use without an exists:")
		for _, m := range r.MissingExists {
			fmt.Fprintf(w, "  %s  %s\n", m.UUID, m.Reason)
		}
	}
}
