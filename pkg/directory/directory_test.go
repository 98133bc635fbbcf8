package directory_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/tally-accounting/tally/pkg/bus/bustest"
	"github.com/tally-accounting/tally/pkg/directory"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestWriterAndReaderShareTheBucket(t *testing.T) {
	b, _ := bustest.Start(t, nil)
	w, err := directory.Open(t.Context(), b.JS)
	if err != nil {
		t.Fatal(err)
	}
	r, err := directory.Open(t.Context(), b.JS)
	if err != nil {
		t.Fatal(err)
	}
	p := directory.Project{ID: "p1", Name: "atlas-prod", Tags: []string{"caso"}, Properties: map[string]string{"VO": "atlas"}}
	if err := w.PutProject(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	if err := w.PutUser(t.Context(), directory.User{ID: "u1", Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	got, ok, err := r.Project(t.Context(), "p1")
	if err != nil || !ok {
		t.Fatalf("Project: %v %v", ok, err)
	}
	if diff := cmp.Diff(p, got); diff != "" {
		t.Errorf("project (-want +got):\n%s", diff)
	}
	if u, ok, _ := r.User(t.Context(), "u1"); !ok || u.Name != "alice" {
		t.Errorf("User = %v, %v", u, ok)
	}
	if _, ok, err := r.User(t.Context(), "nobody"); ok || err != nil {
		t.Errorf("unknown user: %v %v", ok, err)
	}
	// A VO set later is seen after Refresh.
	p.Properties["VO"] = "atlas2"
	if err := w.PutProject(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := r.Project(t.Context(), "p1"); got.Properties["VO"] != "atlas" {
		t.Errorf("cached read changed without Refresh: %v", got.Properties)
	}
	r.Refresh("p1")
	if got, _, _ := r.Project(t.Context(), "p1"); got.Properties["VO"] != "atlas2" {
		t.Errorf("after Refresh: %v", got.Properties)
	}
}
