package cli

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tally-accounting/tally/services/verifier"
)

func TestAudit(t *testing.T) {
	dir := t.TempDir()
	// An empty store, as the verifier creates it.
	store, err := verifier.OpenSQLite(t.Context(), filepath.Join(dir, "verifier.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	store.Close()

	code, stdout, stderr := run(t, nil, "audit", "nova", "--data-dir", dir, "--period", "day", "--at", "2026-11-24", "--json")
	if code != 0 {
		t.Fatalf("audit: %d %s", code, stderr)
	}
	var report verifier.AuditReport
	if err := json.Unmarshal([]byte(stdout), &report); err != nil {
		t.Fatalf("audit --json printed %q: %v", stdout, err)
	}
	if report.Service != "nova" || !report.PeriodBegin.Equal(time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)) || report.Summary["periodic"].Count != 0 {
		t.Errorf("report = %+v", report)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"audit"}, "Usage: tally audit nova|glance"},
		{[]string{"audit", "cinder"}, "Usage: tally audit nova|glance"},
		{[]string{"audit", "nova", "--period", "week", "--data-dir", dir}, "--period"},
		{[]string{"audit", "glance", "--data-dir", t.TempDir()}, "is the verifier running"},
	} {
		if code, _, stderr := run(t, nil, tt.args...); code == 0 || !strings.Contains(stderr, tt.want) {
			t.Errorf("tally %q = %d, stderr %q; want an error with %q", tt.args, code, stderr, tt.want)
		}
	}
}
