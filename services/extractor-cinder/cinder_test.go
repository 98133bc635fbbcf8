package cinder

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

type want struct {
	Project, User string
	Bytes         int64
	Start         time.Time
	Status        string
	Attached      string
}

// TestAgainstTheSimulator extracts a generated cloud's volumes in both
// access modes and checks each record against the ground truth.
func TestAgainstTheSimulator(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	cfg := sim.DefaultConfig()
	cfg.Now = now
	cloud := simtest.Start(t, cfg)
	truth := cloud.Truth(t)

	w := extract.Window{From: now.Add(-7 * 24 * time.Hour), To: now}
	tagged := map[string]bool{}
	for _, p := range truth.Projects {
		if slices.Contains(p.Tags, "caso") {
			tagged[p.ID] = true
		}
	}
	expected := map[string]want{}
	for _, v := range truth.Volumes {
		if v.DeletedAt != nil || !tagged[v.ProjectID] || v.Created.After(w.To) {
			continue
		}
		start := v.Created
		if w.From.After(start) {
			start = w.From
		}
		size, status, attached := v.Size, "available", ""
		for _, e := range v.Events {
			if e.At.After(now) {
				continue
			}
			switch e.Kind {
			case "extend":
				size = e.Size
			case "attach":
				status, attached = "in-use", e.ServerID
			case "detach":
				status, attached = "available", ""
			case "error":
				status = "error"
			case "available":
				status = "available"
			}
		}
		expected[v.ID] = want{v.ProjectID, v.UserID, int64(size) << 30, start, status, attached}
	}
	if len(expected) == 0 {
		t.Fatal("the generated cloud has no live volume in a tagged project: the test would prove nothing")
	}

	for _, user := range []string{"admin", "accounting"} {
		t.Run(user, func(t *testing.T) {
			env := cloud.Env(t, user)
			auth := openstack.FromEnv(func(k string) string { return env[k] })
			ecfg := extract.DefaultConfig()
			runner := extract.NewRunner(NewSource(ecfg), ecfg, auth, extract.Deps{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			recs, sum, err := extract.DryRunRecords(t.Context(), runner, extract.Options{From: w.From, To: w.To})
			if err != nil {
				t.Fatalf("Run: %v (%+v)", err, sum)
			}
			wantMode := map[string]string{"admin": extract.AccessAllTenants, "accounting": extract.AccessPerProject}[user]
			if sum.Mode != wantMode {
				t.Errorf("mode = %s, want %s", sum.Mode, wantMode)
			}
			got := map[string]want{}
			for _, r := range recs {
				s := r.GetStorage()
				if r.GetKey() != Key(s.GetRecordId(), w.To) || r.GetProvenance().GetProjectId() != s.GetLocalGroup() {
					t.Errorf("key %q / provenance %v do not match record %v", r.GetKey(), r.GetProvenance(), s)
				}
				if s.GetActiveDuration() != int64(w.To.Sub(s.GetStartTime().AsTime())/time.Second) || !s.GetEndTime().AsTime().Equal(w.To) ||
					s.GetStorageType() != StorageType {
					t.Errorf("durations or type wrong: %v", s)
				}
				got[s.GetRecordId()] = want{s.GetLocalGroup(), s.GetLocalUser(), s.GetResourceCapacityUsed(), s.GetStartTime().AsTime(),
					s.GetVolumeStatus(), s.GetAttachedTo()}
			}
			if user == "accounting" {
				// The accounting user sees only the projects it has a role on.
				for id, v := range expected {
					if _, ok := got[id]; !ok && v.Project != "" {
						delete(expected, id)
					}
				}
				if len(got) == 0 {
					t.Fatal("accounting user extracted nothing")
				}
			}
			if diff := cmp.Diff(expected, got); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
		})
	}
}
