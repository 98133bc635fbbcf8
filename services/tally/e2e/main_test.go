// Package e2e runs bin/tally as real processes (the OpenStack simulator and
// tally extract) and checks what lands in the SSM spool against the
// simulator's ground truth, with readers and expectations written here,
// independently of the extractor and of pkg/apel.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// tallyBin is bin/tally, built once by TestMain; tallyVersion is what it
// reports, which CloudType carries.
var (
	tallyBin     string
	tallyVersion string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tally-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	tallyBin = filepath.Join(dir, "tally")
	build := exec.Command("go", "build", "-o", tallyBin, "github.com/tally-accounting/tally/services/tally")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build bin/tally: %v\n%s", err, out)
		return 1
	}
	out, err := exec.Command(tallyBin, "version").Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "tally version: %v\n", err)
		return 1
	}
	f := strings.Fields(string(out))
	if len(f) != 2 || f[0] != "tally" {
		fmt.Fprintf(os.Stderr, "tally version printed %q\n", out)
		return 1
	}
	tallyVersion = f[1]
	return m.Run()
}

// testingTB is what the helpers need of *testing.T and *testing.B.
type testingTB interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// forbiddenPorts are the well-known ports of NATS, Postgres, RabbitMQ and
// the simulator's default: never used by these tests.
var forbiddenPorts = map[int]bool{4222: true, 5432: true, 5672: true, 8786: true}

// freePort returns a loopback port nothing listens on right now.
func freePort(t testingTB) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !forbiddenPorts[port] {
			return port
		}
	}
	t.Fatalf("no free port")
	return 0
}

// sim is a running "tally sim" process.
type sim struct {
	addr string   // host:port
	args []string // the flags describing its cloud, for "sim env"
	cmd  *exec.Cmd
	logs *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startSim runs the simulator with args (its cloud: --scenario, --projects,
// --now, --latency, ...) on a free port, waits until it answers and stops
// it at cleanup.
func startSim(t testingTB, args ...string) *sim {
	t.Helper()
	s := &sim{addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), args: args, logs: &syncBuffer{}}
	s.cmd = exec.Command(tallyBin, append([]string{"sim", "--listen", s.addr, "--log-level", "warn"}, args...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start sim: %v", err)
	}
	exited := make(chan struct{})
	go func() { s.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("sim exited at start: %s", s.logs)
		default:
		}
		resp, err := http.Get("http://" + s.addr + "/sim/clock")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("sim did not answer within 60 s: %s", s.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// env returns the OS_* variables "tally sim env" prints for user.
func (s *sim) env(t testingTB, user string) []string {
	t.Helper()
	args := append([]string{"sim", "env", "--listen", s.addr, "--user", user}, s.args...)
	out, err := exec.Command(tallyBin, args...).Output()
	if err != nil {
		t.Fatalf("tally sim env: %v", err)
	}
	var env []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "export ")
		if !ok {
			t.Fatalf("tally sim env printed %q", sc.Text())
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(k, "OS_") {
			t.Fatalf("tally sim env printed %q", sc.Text())
		}
		env = append(env, k+"="+shellUnquote(t, v))
	}
	if len(env) == 0 {
		t.Fatalf("tally sim env printed nothing")
	}
	return env
}

// shellUnquote reads one single-quoted shell word (a quote inside it is
// written as quote, backslash, quote, quote).
func shellUnquote(t testingTB, s string) string {
	t.Helper()
	var b strings.Builder
	for s != "" {
		switch {
		case strings.HasPrefix(s, `\'`):
			b.WriteByte('\'')
			s = s[2:]
		case s[0] == '\'':
			end := strings.IndexByte(s[1:], '\'')
			if end < 0 {
				t.Fatalf("unterminated quote in %q", s)
			}
			b.WriteString(s[1 : 1+end])
			s = s[2+end:]
		default:
			b.WriteByte(s[0])
			s = s[1:]
		}
	}
	return b.String()
}

func (s *sim) post(t testingTB, path string, body any) {
	t.Helper()
	data, _ := json.Marshal(body)
	resp, err := http.Post("http://"+s.addr+path, "application/json", bytes.NewReader(data))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		msg, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST %s: %s: %s", path, resp.Status, msg)
	}
}

// setClock moves the simulated clock.
func (s *sim) setClock(t testingTB, at time.Time) {
	t.Helper()
	s.post(t, "/sim/clock", map[string]string{"set": at.Format(time.RFC3339)})
}

// truth is the part of GET /sim/truth the expectations use.
type truth struct {
	Now      time.Time `json:"now"`
	Projects []struct {
		ID    string            `json:"id"`
		Name  string            `json:"name"`
		Tags  []string          `json:"tags"`
		Extra map[string]string `json:"extra"`
	} `json:"projects"`
	Flavors []truthFlavor `json:"flavors"`
	Servers []truthServer `json:"servers"`
}

type truthFlavor struct {
	ID         string            `json:"id"`
	VCPUs      int64             `json:"vcpus"`
	RAM        int64             `json:"ram_mb"`
	Disk       int64             `json:"disk_gb"`
	Ephemeral  int64             `json:"ephemeral_gb"`
	ExtraSpecs map[string]string `json:"extra_specs"`
}

type truthServer struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	ProjectID string    `json:"project_id"`
	UserID    string    `json:"user_id"`
	ImageID   string    `json:"image_id"`
	Created   time.Time `json:"created"`
	Events    []struct {
		At             time.Time `json:"at"`
		Kind           string    `json:"kind"`
		NoTerminatedAt bool      `json:"no_terminated_at"`
	} `json:"events"`
	VMState      string     `json:"vm_state"`
	FlavorID     string     `json:"flavor_id"`
	LaunchedAt   *time.Time `json:"launched_at"`
	TerminatedAt *time.Time `json:"terminated_at"`
}

func (s *sim) truth(t testingTB) truth {
	t.Helper()
	resp, err := http.Get("http://" + s.addr + "/sim/truth")
	if err != nil {
		t.Fatalf("GET /sim/truth: %v", err)
	}
	defer resp.Body.Close()
	var tr truth
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil {
		t.Fatalf("GET /sim/truth: %v", err)
	}
	return tr
}

// extractResult is one finished "tally extract".
type extractResult struct {
	code           int
	stdout, stderr string
	wall           time.Duration
	maxRSSKiB      int64
}

// apiCalls parses "API calls: N" from the summary.
func (r extractResult) apiCalls() (int64, bool) {
	m := regexp.MustCompile(`API calls: (\d+)`).FindStringSubmatch(r.stdout)
	if m == nil {
		return 0, false
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n, true
}

// cleanEnv is the test process's environment without OpenStack or tally
// settings, so a developer's shell cannot change what the tests see.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "OS_") || strings.HasPrefix(kv, "TALLY_") || strings.HasPrefix(kv, "OTEL_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// extractCmd prepares "tally extract --data-dir dir --site-name TEST-SITE
// args..." with env (OS_* and TALLY_*) added to a clean environment.
func extractCmd(ctx context.Context, dir string, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, tallyBin, append([]string{"extract", "--data-dir", dir, "--site-name", siteName}, args...)...)
	cmd.Env = append(cleanEnv(), env...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// extract runs tally extract to its end (at most timeout).
func extract(t testingTB, timeout time.Duration, dir string, env []string, args ...string) extractResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := extractCmd(ctx, dir, env, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	began := time.Now()
	err := cmd.Start()
	var hwm int64
	if err == nil {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			hwm = watchHWM(cmd.Process.Pid, stop)
		}()
		err = cmd.Wait()
		close(stop)
		<-done
	}
	res := extractResult{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String(), wall: time.Since(began), maxRSSKiB: hwm}
	if ctx.Err() != nil {
		t.Fatalf("tally extract %v did not finish within %v\nstdout:\n%s\nstderr:\n%s", args, timeout, res.stdout, res.stderr)
	}
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("tally extract: %v", err)
	}
	return res
}

// mustExtract runs tally extract and fails unless it exits 0.
func mustExtract(t testingTB, timeout time.Duration, dir string, env []string, args ...string) extractResult {
	t.Helper()
	res := extract(t, timeout, dir, env, args...)
	if res.code != 0 {
		t.Fatalf("tally extract %v: exit %d\nstdout:\n%s\nstderr:\n%s", args, res.code, res.stdout, res.stderr)
	}
	return res
}

const siteName = "TEST-SITE"

func rfc(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func mustTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

// watchHWM polls the peak resident set (VmHWM) of pid until stop closes
// and returns the last value read, in KiB. Not getrusage's ru_maxrss: a
// child exec'd by Go (vfork, the parent's memory shared) inherits the
// parent's high-water mark at exec, so it would report at least the size
// of this test process.
func watchHWM(pid int, stop <-chan struct{}) int64 {
	path := fmt.Sprintf("/proc/%d/status", pid)
	var peak int64
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if b, err := os.ReadFile(path); err == nil {
			for line := range strings.Lines(string(b)) {
				if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
					if n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64); err == nil {
						peak = max(peak, n)
					}
				}
			}
		}
		select {
		case <-stop:
			return peak
		case <-tick.C:
		}
	}
}
