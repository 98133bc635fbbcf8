// Package simtest runs the OpenStack simulator inside a test.
package simtest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tally-accounting/tally/services/sim"
)

// Cloud is a running simulator.
type Cloud struct {
	Server *sim.Server
	Config sim.Config
}

// Start runs the simulator on a free loopback port until the test ends.
// cfg.Listen is replaced.
func Start(t testing.TB, cfg sim.Config) *Cloud {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	srv, err := sim.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("sim: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := srv.Start(ctx); err != nil {
		cancel()
		t.Fatalf("sim start: %v", err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = srv.Stop(sctx)
	})
	cfg.Listen = srv.Addr()
	return &Cloud{Server: srv, Config: cfg}
}

// Env returns the OS_* variables of user ("admin" or "accounting").
func (c *Cloud) Env(t testing.TB, user string) map[string]string {
	t.Helper()
	var b bytes.Buffer
	if err := sim.WriteEnv(&b, c.Config, user); err != nil {
		t.Fatalf("sim env: %v", err)
	}
	env := map[string]string{}
	for line := range strings.Lines(b.String()) {
		k, v, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "export "), "=")
		if ok {
			env[k] = strings.Trim(v, "'")
		}
	}
	return env
}

// Truth fetches the ground truth as of the simulated now.
func (c *Cloud) Truth(t testing.TB) sim.Truth {
	t.Helper()
	resp, err := http.Get("http://" + c.Config.Listen + "/sim/truth")
	if err != nil {
		t.Fatalf("truth: %v", err)
	}
	defer resp.Body.Close()
	var truth sim.Truth
	if err := json.NewDecoder(resp.Body).Decode(&truth); err != nil {
		t.Fatalf("truth: %v", err)
	}
	return truth
}
