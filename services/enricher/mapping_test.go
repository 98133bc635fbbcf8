package enricher

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/bus/bustest"
	"github.com/tally-accounting/tally/pkg/directory"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

func TestLoadMappingFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "voms.json")
	os.WriteFile(good, []byte(`{"atlas": {"projects": ["p-atlas"]}, "cms": {"tenants": ["cms-dev"]}, "lhcb": {"tenant": "p-lhcb"}}`), 0o600)
	clash := filepath.Join(dir, "clash.json")
	os.WriteFile(clash, []byte(`{"a": {"projects": ["p"]}, "b": {"projects": ["p"]}}`), 0o600)
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"a": `), 0o600)

	m, err := LoadMappingFile(good)
	if err != nil {
		t.Fatal(err)
	}
	for p, vo := range map[string]string{"p-atlas": "atlas", "cms-dev": "cms", "p-lhcb": "lhcb"} {
		if m[p] != vo {
			t.Errorf("mapping[%s] = %q, want %q", p, m[p], vo)
		}
	}
	for _, f := range []string{clash, bad, filepath.Join(dir, "missing.json")} {
		if _, err := LoadMappingFile(f); err == nil {
			t.Errorf("LoadMappingFile(%s): no error", filepath.Base(f))
		}
	}
}

func TestEnrich(t *testing.T) {
	b, _ := bustest.Start(t, nil)
	dir, err := directory.Open(t.Context(), b.JS)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []directory.Project{
		{ID: "p-vo", Name: "atlas-prod", Properties: map[string]string{"egi.VO": "atlas"}},
		{ID: "p-file", Name: "cms-dev"},
		{ID: "p-none", Name: "orphan"},
	} {
		if err := dir.PutProject(t.Context(), p); err != nil {
			t.Fatal(err)
		}
	}
	if err := dir.PutUser(t.Context(), directory.User{ID: "u1", Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	cloud := func(project string) *tallyv1.Record {
		return &tallyv1.Record{Key: "k", Provenance: &tallyv1.Provenance{ProjectId: project},
			Payload: &tallyv1.Record_Cloud{Cloud: &tallyv1.CloudRecord{VmUuid: "vm", LocalUserId: "u1"}}}
	}
	tests := []struct {
		name      string
		project   string
		defaultVO string
		wantVO    string
		wantPerm  bool
	}{
		{"keystone property", "p-vo", "", "atlas", false},
		{"mapping file by name", "p-file", "", "cms", false},
		{"default VO", "p-none", "ops", "ops", false},
		{"no VO anywhere", "p-none", "", "", true},
		{"project never seen", "p-unknown", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &mapper{
				cfg:      Config{SiteName: "SITE", ServiceName: "SITE-cloud", VOProperty: "egi.VO", DefaultVO: tt.defaultVO},
				dir:      dir,
				mapping:  map[string]string{"cms-dev": "cms"},
				logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
				unmapped: map[string]bool{},
			}
			r := cloud(tt.project)
			err := m.enrich(t.Context(), r)
			var perm *bus.PermanentError
			if tt.wantPerm {
				if !errors.As(err, &perm) {
					t.Fatalf("enrich() = %v, want a permanent error", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := r.GetCloud()
			if c.Fqan != tt.wantVO || c.SiteName != "SITE" || c.CloudComputeService != "SITE-cloud" || c.GetGlobalUserName() != "alice" {
				t.Errorf("enriched = %v", c)
			}
			if r.GetProvenance().GetSite() != "SITE" {
				t.Errorf("provenance site = %q", r.GetProvenance().GetSite())
			}
		})
	}
}

// TestLookupsLastOneBatch: a batch looks each project up once, and the
// next batch sees a VO set in between.
func TestLookupsLastOneBatch(t *testing.T) {
	b, _ := bustest.Start(t, nil)
	writer, err := directory.Open(t.Context(), b.JS)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := directory.Open(t.Context(), b.JS)
	if err != nil {
		t.Fatal(err)
	}
	p := directory.Project{ID: "p1", Name: "late"}
	if err := writer.PutProject(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	m := &mapper{cfg: Config{SiteName: "SITE", VOProperty: "VO"}, dir: dir,
		logger: slog.New(slog.NewTextHandler(io.Discard, nil)), unmapped: map[string]bool{}}
	rec := func() *tallyv1.Record {
		return &tallyv1.Record{Key: "k", Provenance: &tallyv1.Provenance{ProjectId: "p1"},
			Payload: &tallyv1.Record_Cloud{Cloud: &tallyv1.CloudRecord{VmUuid: "vm", LocalUserId: "nobody"}}}
	}
	first := m.batch()
	var perm *bus.PermanentError
	if err := first.enrich(t.Context(), rec()); !errors.As(err, &perm) {
		t.Fatalf("no VO: %v, want a permanent error", err)
	}
	p.Properties = map[string]string{"VO": "atlas"}
	if err := writer.PutProject(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	if err := first.enrich(t.Context(), rec()); !errors.As(err, &perm) {
		t.Errorf("same batch after the VO was set: %v, want the batch's answer", err)
	}
	r := rec()
	if err := m.batch().enrich(t.Context(), r); err != nil || r.GetCloud().GetFqan() != "atlas" {
		t.Errorf("next batch: %v, FQAN %q, want atlas", err, r.GetCloud().GetFqan())
	}
	if r.GetCloud().GlobalUserName != nil {
		t.Errorf("unknown user named %q", r.GetCloud().GetGlobalUserName())
	}
}
