package nova

import (
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/tally-accounting/tally/pkg/extract"
	"github.com/tally-accounting/tally/pkg/openstack"
	"github.com/tally-accounting/tally/services/sim"
	"github.com/tally-accounting/tally/services/sim/simtest"
)

// TestSourceAgainstTheSimulator checks which servers are reported, in both
// access modes, and that the run costs a fixed number of API calls, not one
// per server.
func TestSourceAgainstTheSimulator(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	cfg := sim.DefaultConfig()
	cfg.Now = now
	cloud := simtest.Start(t, cfg)
	truth := cloud.Truth(t)
	w := extract.Window{From: now.Add(-10 * 24 * time.Hour), To: now}

	tagged := map[string]bool{}
	for _, p := range truth.Projects {
		tagged[p.ID] = slices.Contains(p.Tags, "caso")
	}
	want := map[string]bool{}
	for _, s := range truth.Servers {
		if !tagged[s.ProjectID] || s.Created.After(w.To) {
			continue
		}
		var end *time.Time
		switch {
		case s.TerminatedAt != nil:
			end = s.TerminatedAt
		case s.LaunchedAt == nil:
			end = &s.Created
		case s.DeletedAt != nil:
			end = s.DeletedAt
		}
		if end == nil || !end.Before(w.From) {
			want[s.ID] = true
		}
	}
	if len(want) == 0 {
		t.Fatal("no server in the window: the test would prove nothing")
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tt := range []struct {
		user, mode string
		maxCalls   int64
	}{
		// auth, projects, users, images, probe, two listings.
		{"admin", extract.AccessAllTenants, 8},
		// plus a token and two listings per project.
		{"accounting", extract.AccessPerProject, 8 + 3*int64(len(tagged))},
	} {
		t.Run(tt.user, func(t *testing.T) {
			env := cloud.Env(t, tt.user)
			auth := openstack.FromEnv(func(k string) string { return env[k] })
			ncfg := DefaultConfig()
			r := extract.NewRunner(NewSource(ncfg, "tally/test", logger), ncfg.Config, auth, extract.Deps{Logger: logger})
			recs, sum, err := extract.DryRunRecords(t.Context(), r, extract.Options{From: w.From, To: w.To})
			if err != nil {
				t.Fatal(err)
			}
			if sum.Mode != tt.mode {
				t.Errorf("mode = %s, want %s", sum.Mode, tt.mode)
			}
			if sum.APICalls > tt.maxCalls {
				t.Errorf("%d API calls, want at most %d", sum.APICalls, tt.maxCalls)
			}
			got := map[string]bool{}
			for _, rec := range recs {
				if c := rec.GetCloud(); c != nil {
					if got[c.GetVmUuid()] {
						t.Errorf("server %s reported twice", c.GetVmUuid())
					}
					got[c.GetVmUuid()] = true
				}
				if a := rec.GetAccelerator(); a != nil && rec.GetProvenance().GetOwnerUserId() == "" {
					t.Errorf("accelerator record %s has no owner for the enricher to name", rec.GetKey())
				}
			}
			for id := range want {
				if !got[id] && tt.user == "admin" {
					t.Errorf("server %s missing", id)
				}
			}
			for id := range got {
				if !want[id] {
					t.Errorf("server %s reported but outside the window or the tagged projects", id)
				}
			}
		})
	}
}
