package neutron

import (
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tally-accounting/tally/pkg/extract"
	"github.com/tally-accounting/tally/pkg/openstack"
	"github.com/tally-accounting/tally/services/sim"
	"github.com/tally-accounting/tally/services/sim/simtest"
)

type key struct {
	project string
	version int32
}

func TestAgainstTheSimulator(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	cfg := sim.DefaultConfig()
	cfg.Now = now
	cloud := simtest.Start(t, cfg)
	truth := cloud.Truth(t)
	w := extract.Window{From: now.Add(-24 * time.Hour), To: now}

	expected := map[key]int32{}
	for _, p := range truth.Projects {
		if slices.Contains(p.Tags, "caso") {
			expected[key{p.ID, 4}], expected[key{p.ID, 6}] = 0, 0
		}
	}
	live := 0
	for _, ip := range truth.FloatingIPs {
		if _, tagged := expected[key{ip.ProjectID, 4}]; !tagged || ip.Created.After(w.To) || (ip.Deleted != nil && !ip.Deleted.After(now)) {
			continue
		}
		expected[key{ip.ProjectID, int32(ip.Version)}]++
		live++
	}
	if live == 0 {
		t.Fatal("no live floating IP in a tagged project: the test would prove nothing")
	}
	for _, user := range []string{"admin", "accounting"} {
		t.Run(user, func(t *testing.T) {
			env := cloud.Env(t, user)
			auth := openstack.FromEnv(func(k string) string { return env[k] })
			ecfg := extract.DefaultConfig()
			runner := extract.NewRunner(NewSource(ecfg), ecfg, auth, extract.Deps{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			recs, sum, err := extract.DryRunRecords(t.Context(), runner, extract.Options{From: w.From, To: w.To})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if want := map[string]string{"admin": extract.AccessAllTenants, "accounting": extract.AccessPerProject}[user]; sum.Mode != want {
				t.Errorf("mode = %s, want %s", sum.Mode, want)
			}
			got := map[key]int32{}
			for _, r := range recs {
				ip := r.GetIp()
				if !ip.GetMeasurementTime().AsTime().Equal(w.To) || r.GetKey() != Key(ip.GetLocalGroup(), int(ip.GetIpVersion()), w.To) {
					t.Errorf("record %v", &r)
				}
				got[key{ip.GetLocalGroup(), ip.GetIpVersion()}] = ip.GetIpCount()
			}
			want := expected
			if user == "accounting" {
				want = map[key]int32{}
				for k, v := range expected {
					if _, seen := got[k]; seen {
						want[k] = v
					}
				}
				if len(want) == 0 {
					t.Fatal("accounting user counted nothing")
				}
			}
			if diff := cmp.Diff(want, got, cmp.AllowUnexported(key{})); diff != "" {
				t.Errorf("counts (-want +got):\n%s", diff)
			}
		})
	}
}
