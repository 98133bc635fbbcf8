package neutron

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tally-accounting/tally/pkg/extract"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/openstack"
	"github.com/tally-accounting/tally/services/sim"
	"github.com/tally-accounting/tally/services/sim/simtest"
)

type key struct {
	project, user string
	version       int32
}

var now = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// expected computes the counts from the simulator's ground truth alone:
// an IP belongs to the user of the server whose port it is on at now, if
// that server still has its port (built on a host, not deleted); any other
// IP is its project's user-less count. perUser false folds every user into
// the user-less count, as cASO does.
func expected(t *testing.T, truth sim.Truth, to time.Time, perUser bool) (want map[key]int32, owned, userless, otherPorts int) {
	t.Helper()
	want = map[key]int32{}
	for _, p := range truth.Projects {
		if slices.Contains(p.Tags, "caso") {
			want[key{p.ID, "", 4}], want[key{p.ID, "", 6}] = 0, 0
		}
	}
	servers := map[string]sim.TruthServer{}
	for _, s := range truth.Servers {
		servers[s.ID] = s
	}
	for _, ip := range truth.FloatingIPs {
		if _, tagged := want[key{ip.ProjectID, "", 4}]; !tagged || ip.Created.After(to) || (ip.Deleted != nil && !ip.Deleted.After(truth.Now)) {
			continue
		}
		var last sim.IPEvent
		for _, e := range ip.Associations {
			if !e.At.After(truth.Now) {
				last = e
			}
		}
		if last.PortID != "" {
			otherPorts++
		}
		user := ""
		if s, ok := servers[last.ServerID]; ok && s.Host != "" && (s.DeletedAt == nil || s.DeletedAt.After(truth.Now)) {
			user = s.UserID
		}
		if user == "" {
			userless++
		} else {
			owned++
		}
		if !perUser {
			user = ""
		}
		want[key{ip.ProjectID, user, int32(ip.Version)}]++
	}
	return want, owned, userless, otherPorts
}

// logBuffer collects a run's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type runResult struct {
	got  map[key]int32
	sum  extract.Summary
	logs string
}

func run(t *testing.T, cloud *simtest.Cloud, user string, cfg Config, w extract.Window) runResult {
	t.Helper()
	env := cloud.Env(t, user)
	auth := openstack.FromEnv(func(k string) string { return env[k] })
	var logs logBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	runner := extract.NewRunner(NewSource(cfg, logger), cfg.Config, auth, extract.Deps{Logger: logger})
	recs, sum, err := extract.DryRunRecords(t.Context(), runner, extract.Options{From: w.From, To: w.To})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, logs.String())
	}
	if want := map[string]string{"admin": extract.AccessAllTenants, "accounting": extract.AccessPerProject}[user]; sum.Mode != want {
		t.Errorf("mode = %s, want %s", sum.Mode, want)
	}
	got := map[key]int32{}
	keys := map[string]bool{}
	for _, r := range recs {
		ip := r.GetIp()
		k := key{ip.GetLocalGroup(), ip.GetLocalUser(), ip.GetIpVersion()}
		if !ip.GetMeasurementTime().AsTime().Equal(w.To) || r.GetKey() != Key(k.project, k.user, int(k.version), w.To) ||
			r.GetProvenance().GetOwnerUserId() != k.user || r.GetProvenance().GetProjectId() != k.project {
			t.Errorf("record %v", r)
		}
		if k.user != "" && ip.GetIpCount() == 0 {
			t.Errorf("record of user %s with no IP: %v", k.user, r)
		}
		if keys[r.GetKey()] {
			t.Errorf("two records with key %s", r.GetKey())
		}
		keys[r.GetKey()] = true
		got[k] = ip.GetIpCount()
	}
	return runResult{got: got, sum: sum, logs: logs.String()}
}

// seen keeps want's counts of the projects the run reported: the
// accounting user extracts only the projects it has a role on.
func seen(t *testing.T, want, got map[key]int32) map[key]int32 {
	t.Helper()
	projects := map[string]bool{}
	for k := range got {
		projects[k.project] = true
	}
	out := map[key]int32{}
	for k, v := range want {
		if projects[k.project] {
			out[k] = v
		}
	}
	if len(out) == 0 {
		t.Fatal("nothing counted")
	}
	return out
}

func simConfig() sim.Config {
	cfg := sim.DefaultConfig()
	cfg.Now = now
	cfg.FloatingIPsPerProj = 6
	return cfg
}

func window() extract.Window { return extract.Window{From: now.Add(-24 * time.Hour), To: now} }

func TestPerUserAgainstTheSimulator(t *testing.T) {
	for _, details := range []bool{true, false} {
		t.Run(fmt.Sprintf("port_details=%v", details), func(t *testing.T) {
			scfg := simConfig()
			scfg.NeutronNoFIPPortDetails = !details
			cloud := simtest.Start(t, scfg)
			truth := cloud.Truth(t)
			w := window()
			want, owned, userless, otherPorts := expected(t, truth, w.To, true)
			if owned == 0 || userless == 0 || otherPorts == 0 {
				t.Fatalf("%d IPs with an owner, %d without (%d on ports no server owns) in tagged projects: the test would prove little",
					owned, userless, otherPorts)
			}
			cASO, _, _, _ := expected(t, truth, w.To, false)
			for _, user := range []string{"admin", "accounting"} {
				t.Run(user, func(t *testing.T) {
					on, off := DefaultConfig(), DefaultConfig()
					off.PerUser = false
					perUser := run(t, cloud, user, on, w)
					if diff := cmp.Diff(seen(t, want, perUser.got), perUser.got, cmp.AllowUnexported(key{})); diff != "" {
						t.Errorf("per-user counts (-want +got):\n%s", diff)
					}
					if strings.Contains(perUser.logs, "without their owners") {
						t.Errorf("owners not found:\n%s", perUser.logs)
					}
					perProject := run(t, cloud, user, off, w)
					if diff := cmp.Diff(seen(t, cASO, perProject.got), perProject.got, cmp.AllowUnexported(key{})); diff != "" {
						t.Errorf("per_user: false counts (-want +got):\n%s", diff)
					}
					// The owners cost one server listing per run (per
					// project without all-tenants rights), plus one port
					// listing when Neutron does not embed port_details,
					// whatever the number of IPs.
					listings := int64(1)
					if !details {
						listings = 2
					}
					if user == "accounting" {
						listings *= int64(perProject.sum.Projects)
					}
					extra := perUser.sum.APICalls - perProject.sum.APICalls
					t.Logf("%d IPs with an owner, %d without; %d extra API calls", owned, userless, extra)
					if extra > listings {
						t.Errorf("per-user counting made %d more API calls than per-project, want at most %d", extra, listings)
					}
				})
			}
		})
	}
}

// TestPolicyRefusals: where a site's policy hides what the join needs,
// the IPs are counted per project, as cASO does, and the log says why.
func TestPolicyRefusals(t *testing.T) {
	for _, tt := range []struct {
		name    string
		forbid  string
		details bool
		warning string
	}{
		{"nova refuses to list servers", "os_compute_api:servers:detail", true, "Nova refuses to list servers"},
		{"neutron hides ports", "get_port", false, "does not show the ports"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			scfg := simConfig()
			scfg.Forbid = []string{tt.forbid}
			scfg.NeutronNoFIPPortDetails = !tt.details
			cloud := simtest.Start(t, scfg)
			truth := cloud.Truth(t)
			w := window()
			cASO, _, _, _ := expected(t, truth, w.To, false)
			perUser, _, _, _ := expected(t, truth, w.To, true)

			res := run(t, cloud, "accounting", DefaultConfig(), w)
			if diff := cmp.Diff(seen(t, cASO, res.got), res.got, cmp.AllowUnexported(key{})); diff != "" {
				t.Errorf("counts (-want +got):\n%s", diff)
			}
			if n := strings.Count(res.logs, tt.warning); n != 1 {
				t.Errorf("%d warnings %q, want 1:\n%s", n, tt.warning, res.logs)
			}
			// Admins are not bound by the site's policy.
			admin := run(t, cloud, "admin", DefaultConfig(), w)
			if diff := cmp.Diff(perUser, admin.got, cmp.AllowUnexported(key{})); diff != "" {
				t.Errorf("admin counts (-want +got):\n%s", diff)
			}
		})
	}
}

func TestOwner(t *testing.T) {
	users := map[string]string{"vm1": "alice", "vm2": "bob"}
	for _, tt := range []struct {
		name string
		ip   held
		want string
	}{
		{"unassociated", held{}, ""},
		{"on a server", held{portID: "p1", device: &device{ID: "vm1", Owner: "compute:nova"}}, "alice"},
		{"on a server of another zone", held{portID: "p2", device: &device{ID: "vm2", Owner: "compute:az-2"}}, "bob"},
		{"on a server Nova did not list", held{portID: "p3", device: &device{ID: "vm3", Owner: "compute:nova"}}, ""},
		{"on a load balancer", held{portID: "p4", device: &device{ID: "lb-vm1", Owner: "Octavia"}}, ""},
		{"on a bare port", held{portID: "p5", device: &device{}}, ""},
		{"on a router port", held{portID: "p6", device: &device{ID: "vm1", Owner: "network:router_interface"}}, ""},
		{"on a port nobody could read", held{portID: "p7"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := owner(tt.ip, users); got != tt.want {
				t.Errorf("owner = %q, want %q", got, tt.want)
			}
		})
	}
	if got := owner(held{portID: "p1", device: &device{ID: "vm1", Owner: "compute:nova"}}, nil); got != "" {
		t.Errorf("owner without a server listing = %q, want none", got)
	}
}

func TestEmitCounts(t *testing.T) {
	w := extract.Window{From: now.Add(-time.Hour), To: now}
	windows := map[string]extract.Window{"p1": w, "p2": w}
	c := counts{"p1": {{"bob", 6}: 1, {"alice", 4}: 2, {"", 4}: 1, {"alice", 6}: 1}}
	var got []string
	emit := func(_ context.Context, project string, r *tallyv1.Record) error {
		ip := r.GetIp()
		if ip.GetLocalGroup() != project {
			t.Errorf("record of %s emitted for %s", ip.GetLocalGroup(), project)
		}
		got = append(got, fmt.Sprintf("%s %s=%d user=%q owner=%q", r.GetKey(), project, ip.GetIpCount(), ip.GetLocalUser(), r.GetProvenance().GetOwnerUserId()))
		return nil
	}
	if err := emitCounts(t.Context(), windows, c, emit); err != nil {
		t.Fatal(err)
	}
	ts := now.Unix()
	want := []string{
		fmt.Sprintf(`ip/p1/-/4/%d p1=1 user="" owner=""`, ts),
		fmt.Sprintf(`ip/p1/-/6/%d p1=0 user="" owner=""`, ts),
		fmt.Sprintf(`ip/p1/alice/4/%d p1=2 user="alice" owner="alice"`, ts),
		fmt.Sprintf(`ip/p1/alice/6/%d p1=1 user="alice" owner="alice"`, ts),
		fmt.Sprintf(`ip/p1/bob/6/%d p1=1 user="bob" owner="bob"`, ts),
		fmt.Sprintf(`ip/p2/-/4/%d p2=0 user="" owner=""`, ts),
		fmt.Sprintf(`ip/p2/-/6/%d p2=0 user="" owner=""`, ts),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
}
