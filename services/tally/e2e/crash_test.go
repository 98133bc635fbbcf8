package e2e

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// A tally extract killed (SIGKILL) in the middle of delivering, twice, then
// run again on the same data dir: the spool ends up with every record a
// clean run gives, each once.
func TestKilledMidRunLosesNothingDuplicatesNothing(t *testing.T) {
	now := mustTime("2026-11-20T00:00:00Z")
	s := startSim(t, "--projects", "40", "--servers-per-project", "50", "--latency", "5ms", "--now", rfc(now))
	window := []string{"--from", rfc(now.AddDate(0, -1, 0)), "--to", rfc(now)}
	for _, tc := range []struct {
		name, user string
	}{
		{"all_tenants", "admin"},
		{"per_project", "accounting"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Small batches: many spool elements, written over a while.
			// The bus messages a killed enricher had taken stay
			// unacknowledged for nats.ack_wait (default 2m) and block
			// the durable consumer until then (max_ack_pending): a short
			// ack_wait keeps the rerun within the test's time.
			env := append(s.env(t, tc.user), "TALLY_ENRICHER_DEFAULT_VO=ops", "TALLY_EXTRACTORS_NOVA_BATCH_SIZE=10",
				"TALLY_NATS_ACK_WAIT=3s")

			clean := t.TempDir()
			res := mustExtract(t, 90*time.Second, clean, env, window...)
			want := newSpoolReader(clean).readNew(t)
			wantVMs := sortedVMs(t, want.cloud)
			if len(wantVMs) < 500 {
				t.Fatalf("a clean run gave only %d cloud records:\n%s", len(wantVMs), res.stdout)
			}

			dir := t.TempDir()
			spool := filepath.Join(dir, "spool", "ssm")
			// Kill once the first elements are in, then again a little
			// further on.
			for i, after := range []int{1, 60} {
				n0 := len(spoolElements(t, spool))
				killWhen(t, dir, env, window, func() bool { return len(spoolElements(t, spool)) >= n0+after })
				t.Logf("kill %d: %d elements in the spool (clean run: %d)", i+1, len(spoolElements(t, spool)), want.elements)
			}
			if n := len(spoolElements(t, spool)); n >= want.elements {
				t.Fatalf("the killed runs had already spooled everything (%d elements): nothing was tested", n)
			}
			res = extract(t, 90*time.Second, dir, env, window...)
			if res.code != 0 {
				t.Fatalf("the run after the kills: exit %d\n%s\n%s", res.code, res.stdout, res.stderr)
			}
			got := newSpoolReader(dir).readNew(t)
			gotVMs := sortedVMs(t, got.cloud) // fails on a VM spooled twice
			if diff := cmp.Diff(wantVMs, gotVMs); diff != "" {
				t.Errorf("VMs in the spool after the crashes (-clean run +got):\n%s", diff)
			}
			byVMMonth(t, got.accel) // fails on an accelerator record spooled twice
			if len(got.accel) != len(want.accel) {
				t.Errorf("%d accelerator records after the crashes, %d in a clean run", len(got.accel), len(want.accel))
			}
		})
	}
}

// killWhen starts tally extract and SIGKILLs it as soon as ready() holds
// (polled), failing if it finished first.
func killWhen(t *testing.T, dir string, env, args []string, ready func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := extractCmd(ctx, dir, env, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !ready() {
		select {
		case <-exited:
			t.Fatalf("tally extract finished (exit %d) before it could be killed mid-run:\n%s", cmd.ProcessState.ExitCode(), out.String())
		case <-ctx.Done():
			t.Fatalf("tally extract spooled nothing within 90 s:\n%s", out.String())
		case <-tick.C:
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	<-exited
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("tally extract was not killed by SIGKILL (%v):\n%s", cmd.ProcessState, out.String())
	}
}

// sortedVMs lists the VMUUIDs of recs, failing on one listed twice.
func sortedVMs(t *testing.T, recs []map[string]string) []string {
	t.Helper()
	var out []string
	for vm := range byVM(t, recs) {
		out = append(out, vm)
	}
	sort.Strings(out)
	return slices.Clip(out)
}
