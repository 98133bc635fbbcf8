package energy

import (
	"io"
	"log/slog"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tally-accounting/tally/pkg/extract"
	"github.com/tally-accounting/tally/pkg/openstack"
	"github.com/tally-accounting/tally/services/sim"
	"github.com/tally-accounting/tally/services/sim/simtest"
)

// power is the simulator's documented draw (services/sim/prometheus.go).
func power(state string, vcpus int) float64 {
	switch state {
	case "active", "resized":
		return 20 + 8*float64(vcpus)
	case "stopped", "error", "building":
		return 2
	}
	return 0
}

func TestAgainstTheSimulator(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	cfg := sim.DefaultConfig()
	cfg.Now = now
	cloud := simtest.Start(t, cfg)
	truth := cloud.Truth(t)
	w := extract.Window{From: now.Add(-24 * time.Hour), To: now}
	step := 5 * time.Minute

	vcpus := map[string]int{}
	for _, f := range truth.Flavors {
		vcpus[f.ID] = f.VCPUs
	}
	tagged := map[string]bool{}
	for _, p := range truth.Projects {
		tagged[p.ID] = slices.Contains(p.Tags, "caso")
	}
	// Expected Wh per VM: the samples on the query's grid from the
	// window's start, in the VM's state at each instant.
	want := map[string]float64{}
	for _, s := range truth.Servers {
		if !tagged[s.ProjectID] || !s.Created.Before(w.To) {
			continue
		}
		start := s.Created
		if w.From.After(start) {
			start = w.From
		}
		var wh float64
		for at := w.From; !at.After(w.To); at = at.Add(step) {
			if at.Before(start) {
				continue
			}
			for _, sp := range s.Spans {
				if !at.Before(sp.From) && (sp.To == nil || at.Before(*sp.To)) && s.LaunchedAt != nil && !at.Before(*s.LaunchedAt) {
					wh += power(sp.VMState, vcpus[sp.FlavorID]) * step.Seconds() / 3600
				}
			}
		}
		if wh > 0 {
			want[s.ID] = wh
		}
	}
	if len(want) == 0 {
		t.Fatal("no server drew power in the window: the test would prove nothing")
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, user := range []string{"admin", "accounting"} {
		t.Run(user, func(t *testing.T) {
			env := cloud.Env(t, user)
			auth := openstack.FromEnv(func(k string) string { return env[k] })
			ecfg := DefaultConfig()
			ecfg.Endpoint = "http://" + cloud.Config.Listen + "/prometheus"
			ecfg.MetricName, ecfg.Unit, ecfg.Labels, ecfg.Step, ecfg.ProjectLabel = "vm_power_watts", "watts", nil, step, "project_id"
			if err := ecfg.Validate(); err != nil {
				t.Fatal(err)
			}
			r := extract.NewRunner(NewSource(ecfg, logger), ecfg.Config, auth, extract.Deps{Logger: logger})
			recs, _, err := extract.DryRunRecords(t.Context(), r, extract.Options{From: w.From, To: w.To})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]float64{}
			for _, rec := range recs {
				e := rec.GetEnergy()
				got[e.GetExecUnitId()] = e.GetEnergyWh()
				if e.GetWallClockTimeS() != int64(w.To.Sub(e.GetStartExecTime().AsTime())/time.Second) || e.GetCpuDurationS() < e.GetWallClockTimeS() {
					t.Errorf("durations of %s: %v", e.GetExecUnitId(), e)
				}
			}
			for id, wh := range want {
				g, ok := got[id]
				if !ok {
					if user == "admin" {
						t.Errorf("VM %s missing (want %.3f Wh)", id, wh)
					}
					continue
				}
				if math.Abs(g-wh) > 1e-6*math.Max(1, wh) {
					t.Errorf("VM %s: %.6f Wh, want %.6f", id, g, wh)
				}
			}
			for id := range got {
				if _, ok := want[id]; !ok {
					t.Errorf("VM %s reported but drew nothing in the window or is not in a tagged project", id)
				}
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		key    string
	}{
		{"default", func(*Config) {}, ""},
		{"endpoint", func(c *Config) { c.Endpoint = "prometheus:9090" }, "prometheus_endpoint"},
		{"unit", func(c *Config) { c.Unit = "kW" }, "unit"},
		{"labels", func(c *Config) { c.Labels = []string{"novalue"} }, "labels"},
		{"factor", func(c *Config) { c.CPUNormalizationFactor = 0 }, "cpu_normalization_factor"},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		tt.mutate(&c)
		err := c.Validate()
		if (err == nil) != (tt.key == "") || (err != nil && !strings.Contains(err.Error(), tt.key)) {
			t.Errorf("%s: Validate() = %v, want key %q", tt.name, err, tt.key)
		}
	}
}
