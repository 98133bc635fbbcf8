package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The windows of testdata/two-months.yaml.
var (
	t0 = mustTime("2026-08-15T00:00:00Z")
	t1 = mustTime("2026-09-10T00:00:00Z")
	t2 = mustTime("2026-09-25T00:00:00Z")
	t3 = mustTime("2026-10-12T00:00:00Z")
)

const (
	novoProject   = "0a0000000000000000000000000000b2" // tagged caso, no VO
	scenarioTwoMo = "testdata/two-months.yaml"
)

// lifecycles is what each server of the scenario must be in each window's
// records ("" = no record): it pins the scenario's coverage, so that a
// change to the scenario or to the expectation code cannot quietly test
// less. Servers of novo-lab appear only with a default VO.
var lifecycles = []struct {
	name    string
	novo    bool
	windows [3]string
}{
	{"run-all", false, [3]string{"started", "started", "started"}},
	{"short-w1", false, [3]string{"completed", "", ""}},
	{"del-noterm", false, [3]string{"started", "completed", ""}},
	{"never-launched", false, [3]string{"", "error", ""}},
	{"only-w2", false, [3]string{"", "completed", ""}},
	{"stopped", false, [3]string{"started", "started", "started"}},
	{"shelved", false, [3]string{"started", "unknown", "unknown"}},
	{"resized", false, [3]string{"started", "started", "started"}},
	{"gpu-span", false, [3]string{"started", "started", "completed"}},
	{"bfv", false, [3]string{"started", "started", "started"}},
	{"vm-café ☕ 計算", false, [3]string{"", "", "started"}},
	{"old-deleted", false, [3]string{"", "", ""}},
	{"future", false, [3]string{"", "", ""}},
	{"local-vm", false, [3]string{"", "", ""}},
	{"novo-vm", true, [3]string{"started", "started", "started"}},
	{"novo-gone", true, [3]string{"", "completed", ""}},
}

// accelMonths is how many accelerator records each window holds (gpu-span:
// August and September, September to date, September and October).
var accelMonths = [3]int{2, 1, 2}

func TestIncrementalWindowsMatchTheTruth(t *testing.T) {
	scenario, err := filepath.Abs(scenarioTwoMo)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		defaultVO string
	}{
		{"default VO set", "ops.example.org"},
		{"no default VO", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := startSim(t, "--scenario", scenario, "--now", rfc(t1))
			env := s.env(t, "admin")
			if tc.defaultVO != "" {
				env = append(env, "TALLY_ENRICHER_DEFAULT_VO="+tc.defaultVO)
			}
			dir := t.TempDir()
			spool := newSpoolReader(dir)
			windows := []struct {
				from, to time.Time
				args     []string
			}{
				{t0, t1, []string{"--from", rfc(t0), "--to", rfc(t1)}},
				{t1, t2, []string{"--to", rfc(t2)}}, // resumes
				{t2, t3, []string{"--to", rfc(t3)}},
			}
			var prevGot map[string]map[string]string
			var prev expectation
			for i, w := range windows {
				s.setClock(t, w.to)
				tr := s.truth(t)
				ex := expect(tr, twoMonths, w.from, w.to, tc.defaultVO, true)
				checkCoverage(t, i, tr, ex, tc.defaultVO != "")

				res := extract(t, 90*time.Second, dir, env, w.args...)
				if tc.defaultVO != "" {
					if res.code != 0 {
						t.Fatalf("window %d: exit %d\n%s\n%s", i+1, res.code, res.stdout, res.stderr)
					}
					// Every project's window chains on the previous one.
					if want := "window " + rfc(w.from) + " to " + rfc(w.to); !strings.Contains(res.stdout, want) {
						t.Errorf("window %d: summary does not say %q:\n%s", i+1, want, res.stdout)
					}
				} else {
					// novo-lab has no VO: held, reported, exit 1; the
					// others are delivered all the same.
					if res.code != 1 || !strings.Contains(res.stdout, "FAILED "+novoProject) {
						t.Fatalf("window %d: want exit 1 naming %s as failed, got exit %d\n%s\n%s", i+1, novoProject, res.code, res.stdout, res.stderr)
					}
				}
				got := spool.readNew(t)
				gotCloud := byVM(t, got.cloud)
				if diff := cmp.Diff(ex.cloud, gotCloud); diff != "" {
					t.Errorf("window %d [%s, %s]: cloud records (-want +got):\n%s", i+1, rfc(w.from), rfc(w.to), diff)
				}
				if diff := cmp.Diff(ex.accel, byVMMonth(t, got.accel)); diff != "" {
					t.Errorf("window %d: accelerator records (-want +got):\n%s", i+1, diff)
				}
				// Nothing is reported again except VMs that were running
				// at the previous window's end (APEL upserts those).
				for vm := range gotCloud {
					if _, before := prevGot[vm]; before && !prev.running[vm] {
						t.Errorf("window %d: VM %s re-reported although it had ended in window %d", i+1, vm, i)
					}
				}
				prevGot, prev = gotCloud, ex
			}
		})
	}
}

// checkCoverage checks the expectation of window i against the lifecycle
// table.
func checkCoverage(t *testing.T, i int, tr truth, ex expectation, withNovo bool) {
	t.Helper()
	ids := map[string]string{}
	for _, s := range tr.Servers {
		ids[s.Name] = s.ID
	}
	for _, l := range lifecycles {
		id, ok := ids[l.name]
		if !ok {
			t.Fatalf("scenario has no server %q", l.name)
		}
		want := l.windows[i]
		if l.novo && !withNovo {
			want = ""
		}
		got := ex.cloud[id]["Status"]
		if got != want {
			t.Fatalf("expectation of window %d: %s has status %q, the lifecycle table says %q", i+1, l.name, got, want)
		}
	}
	if len(ex.accel) != accelMonths[i] {
		t.Fatalf("expectation of window %d: %d accelerator records, want %d", i+1, len(ex.accel), accelMonths[i])
	}
}
