package cli

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestSimAndEnv runs "tally sim" and checks that "tally sim env" with the
// same flags points an OpenStack client at it.
func TestSimAndEnv(t *testing.T) {
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"sim", "--listen", addr, "--now", "2026-11-24T00:00:00Z", "--log-level", "warn"},
			Env{Stdout: io.Discard, Stderr: io.Discard})
	}()

	code, stdout, stderr := run(t, nil, "sim", "env", "--listen", addr, "--user", "accounting")
	if code != 0 {
		t.Fatalf("sim env: %d %s", code, stderr)
	}
	authURL := ""
	for line := range strings.Lines(stdout) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "export OS_AUTH_URL="); ok {
			authURL = strings.Trim(v, "'")
		}
	}
	if authURL != "http://"+addr+"/v3" {
		t.Fatalf("OS_AUTH_URL = %q, want http://%s/v3\n%s", authURL, addr, stdout)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(authURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s never answered 200: %v", authURL, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, _, stderr := run(t, nil, "sim", "env", "--user", "nobody"); code == 0 {
		t.Errorf("sim env --user nobody succeeded: %s", stderr)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("sim exited %d", code)
	}
}
