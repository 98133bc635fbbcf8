package verifiertest

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// Recorded is one notification recorded from the Zed cloud.
type Recorded struct {
	// Name is the file's, which starts with the arrival order
	// (0327_nova_notifications.info_compute.instance.exists.json).
	Name string
	Body []byte
}

// RecordedDir is where the recorded notifications are
// (shared/fixtures/openstack-zed/notifications beside the checkout),
// found from this file's own place so that every package's tests read
// the same files whatever their directory.
func RecordedDir() string {
	_, here, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(here), "../../../../shared/fixtures/openstack-zed/notifications")
}

// RecordedNotifications reads the recorded notifications whose file names
// match pattern (filepath.Match), in arrival order; the test fails if
// fewer than atLeast are there.
func RecordedNotifications(tb testing.TB, pattern string, atLeast int) []Recorded {
	tb.Helper()
	dir := RecordedDir()
	files, err := filepath.Glob(filepath.Join(dir, pattern))
	if err != nil || len(files) < atLeast {
		tb.Fatalf("recorded notifications missing in %s: %d files match %s, want at least %d (%v)", dir, len(files), pattern, atLeast, err)
	}
	out := make([]Recorded, 0, len(files))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, Recorded{Name: filepath.Base(f), Body: b})
	}
	return out
}
