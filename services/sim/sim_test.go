package sim

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		want   string // substring of the error, "" for none
	}{
		{"defaults", func(*Config) {}, ""},
		{"bad listen", func(c *Config) { c.Listen = "nope" }, "--listen"},
		{"negative projects", func(c *Config) { c.Projects = -1 }, "--projects -1"},
		{"zero months", func(c *Config) { c.Months = 0 }, "--months 0"},
		{"rate above 1", func(c *Config) { c.ErrorRate = 2 }, "--error-rate 2"},
		{"no region", func(c *Config) { c.Regions = nil }, "--regions"},
		{"slash in region", func(c *Config) { c.Regions = []string{"a/b"} }, "--regions"},
		{"negative latency", func(c *Config) { c.Latency = -time.Second }, "--latency"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.change(&cfg)
			err := cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate() = %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func TestRegisterFlags(t *testing.T) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	err := fs.Parse([]string{"--listen", "127.0.0.1:9999", "--seed", "7", "--projects", "3", "--servers-per-project", "4",
		"--months", "2", "--regions", "A, B", "--now", "2026-11-23T12:00:00Z", "--latency", "10ms",
		"--notify-amqp", "amqp://guest:guest@127.0.0.1:5672/", "--scenario", "s.yaml", "--dump-truth", "t.json"})
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.Listen, want.Seed, want.Projects, want.ServersPerProject, want.Months = "127.0.0.1:9999", 7, 3, 4, 2
	want.Regions, want.Now, want.Latency = []string{"A", "B"}, testNow, 10*time.Millisecond
	want.NotifyAMQP, want.Scenario, want.DumpTruth = "amqp://guest:guest@127.0.0.1:5672/", "s.yaml", "t.json"
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("parsed config (-want +got):\n%s", diff)
	}
	fs.VisitAll(func(f *flag.Flag) {
		if len(f.Usage) < 15 {
			t.Errorf("--%s has no useful help: %q", f.Name, f.Usage)
		}
	})
}

func TestGenerateDeterministic(t *testing.T) {
	cfg := scaleConfig(8, 10, 6)
	a, err := Generate(cfg, testNow)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Generate(cfg, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(a.Truth(testNow), b.Truth(testNow)); diff != "" {
		t.Fatalf("same seed, different cloud (-a +b):\n%s", diff)
	}
	cfg.Seed++
	c, _ := Generate(cfg, testNow)
	if c.Servers[0].ID == a.Servers[0].ID {
		t.Error("another seed gave the same server ids")
	}
	// The variety the issue asks for.
	kinds := map[string]bool{}
	for _, s := range a.Servers {
		for _, e := range s.Events {
			kinds[e.Kind] = true
			if e.NoTerminatedAt {
				kinds["no_terminated_at"] = true
			}
		}
	}
	for _, k := range []string{EvLaunch, EvDelete, EvResize, EvStop, EvTouch} {
		if !kinds[k] {
			t.Errorf("no server went through %s", k)
		}
	}
	var tagged, untagged, noVO, deletedFlavor, nonASCII bool
	for _, p := range a.Projects {
		switch {
		case len(p.Tags) == 0:
			untagged = true
		case p.Extra["VO"] == "":
			noVO = true
		default:
			tagged = true
		}
	}
	for _, u := range a.Users {
		nonASCII = nonASCII || strings.ContainsFunc(u.Name, func(r rune) bool { return r > 127 })
	}
	for _, s := range a.Servers {
		deletedFlavor = deletedFlavor || a.flavByID[s.FlavorID].Deleted
	}
	for name, ok := range map[string]bool{"tagged with VO": tagged, "untagged": untagged, "tagged without VO": noVO,
		"non-ASCII user": nonASCII, "server with deleted flavor": deletedFlavor} {
		if !ok {
			t.Errorf("population has no %s", name)
		}
	}
}

func doJSON(t *testing.T, method, url, token string, body any) (int, map[string]any) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, r)
	if token != "" {
		req.Header.Set("X-Auth-Token", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// TestIncremental runs two changes-since extractions with scripted changes
// and a clock advance in between, through the admin endpoints.
func TestIncremental(t *testing.T) {
	s := startSim(t, scenarioConfig("testdata/zed.yaml", time.Date(2026, 11, 23, 12, 5, 0, 0, time.UTC)))
	base := "http://" + s.Addr()
	tok := login(t, base, "admin", "admin")
	list := func(since string) []string {
		code, body := doJSON(t, "GET", base+"/compute/v2.1/servers/detail?all_tenants=1&changes-since="+since, tok, nil)
		if code != 200 {
			t.Fatalf("list: %d %v", code, body)
		}
		var out []string
		for _, s := range body["servers"].([]any) {
			m := s.(map[string]any)
			out = append(out, fmt.Sprint(m["name"], "/", m["status"]))
		}
		return out
	}
	if got := list("2026-11-23T12:04:00Z"); len(got) != 0 {
		t.Fatalf("first window: %v, want nothing", got)
	}
	code, body := doJSON(t, "POST", base+"/sim/events", "", []map[string]string{
		{"server": "vm-local-1", "kind": "stop", "at": "2026-11-23T12:10:00Z"},
		{"server": "vm-cms-1", "kind": "delete", "at": "2026-11-23T12:20:00Z"},
	})
	if code != 200 {
		t.Fatalf("events: %d %v", code, body)
	}
	if got := list("2026-11-23T12:04:00Z"); len(got) != 0 {
		t.Fatalf("before the clock moves: %v, want nothing", got)
	}
	if code, body := doJSON(t, "POST", base+"/sim/clock", "", map[string]string{"advance": "1h"}); code != 200 || body["now"] != "2026-11-23T13:05:00Z" {
		t.Fatalf("advance: %d %v", code, body)
	}
	want := []string{"vm-local-1/SHUTOFF", "vm-cms-1/DELETED"}
	if diff := cmp.Diff(want, list("2026-11-23T12:04:00Z")); diff != "" {
		t.Errorf("second window (-want +got):\n%s", diff)
	}
	// Tokens live in simulated time.
	if code, _ := doJSON(t, "POST", base+"/sim/clock", "", map[string]string{"advance": "25h"}); code != 200 {
		t.Fatal("advance")
	}
	if code, _ := doJSON(t, "GET", base+"/compute/v2.1/flavors/detail", tok, nil); code != 401 {
		t.Errorf("expired token: %d, want 401", code)
	}
}

func TestEnvAndDumpTruth(t *testing.T) {
	dir := t.TempDir()
	cfg := scaleConfig(3, 4, 2)
	cfg.DumpTruth = filepath.Join(dir, "truth.json")
	s := startSim(t, cfg)
	raw, err := os.ReadFile(cfg.DumpTruth)
	if err != nil {
		t.Fatal(err)
	}
	var truth Truth
	if err := json.Unmarshal(raw, &truth); err != nil {
		t.Fatal(err)
	}
	if len(truth.Servers) != 12 {
		t.Errorf("truth has %d servers, want 12", len(truth.Servers))
	}
	// The env of another process (same flags, the real port) must log in.
	envCfg := cfg
	envCfg.Listen = s.Addr()
	for _, user := range []string{"admin", "accounting"} {
		var b bytes.Buffer
		if err := WriteEnv(&b, envCfg, user); err != nil {
			t.Fatal(err)
		}
		env := map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
			k, v, _ := strings.Cut(strings.TrimPrefix(line, "export "), "=")
			env[k] = strings.Trim(v, "'")
		}
		if env["OS_AUTH_URL"] != "http://"+s.Addr()+"/v3" {
			t.Errorf("%s: OS_AUTH_URL %q", user, env["OS_AUTH_URL"])
		}
		tok := login(t, "http://"+s.Addr(), env["OS_USERNAME"], env["OS_PROJECT_NAME"])
		code, _ := doJSON(t, "GET", "http://"+s.Addr()+"/v3/projects?tags=caso", tok, nil)
		wantCode := map[string]int{"admin": 200, "accounting": 403}[user]
		if code != wantCode {
			t.Errorf("%s lists projects: %d, want %d", user, code, wantCode)
		}
	}
	var y bytes.Buffer
	if err := WriteCloudsYAML(&y, envCfg); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sim-admin:", "sim-accounting:", "auth_url: \"http://" + s.Addr() + "/v3\""} {
		if !strings.Contains(y.String(), want) {
			t.Errorf("clouds.yaml lacks %q:\n%s", want, y.String())
		}
	}
	if err := WriteEnv(io.Discard, DefaultConfig(), "nobody"); err == nil {
		t.Error("WriteEnv accepted an unknown user")
	}
}

func TestFaults(t *testing.T) {
	cfg := scaleConfig(1, 1, 1)
	cfg.RateLimitRate = 1
	cfg.RetryAfter = 1500 * time.Millisecond
	s := startSim(t, cfg)
	resp, err := http.Get("http://" + s.Addr() + "/compute/v2.1/flavors")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "2" {
		t.Errorf("got %d Retry-After %q, want 429 and 2", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

func TestNotifyFaults(t *testing.T) {
	w, err := LoadScenario("testdata/zed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	from := time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC)
	msgs := w.Notifications(from, from.Add(2*time.Hour), "http://img")
	exists := 0
	for _, m := range msgs {
		if strings.HasSuffix(m.EventType, "exists") {
			exists++
		}
	}
	tests := []struct {
		name       string
		faults     NotifyFaults
		wantLen    int
		wantFaults int
	}{
		{"none", NotifyFaults{}, len(msgs), 0},
		{"drop every exists", NotifyFaults{DropExists: 1}, len(msgs) - exists, exists},
		{"duplicate all", NotifyFaults{Duplicate: 1}, 2 * len(msgs), len(msgs)},
		{"corrupt every exists", NotifyFaults{CorruptExists: 1}, len(msgs), exists},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fresh := w.Notifications(from, from.Add(2*time.Hour), "http://img")
			out, faults := applyNotifyFaults(1, tc.faults, fresh)
			if len(out) != tc.wantLen || len(faults) != tc.wantFaults {
				t.Errorf("%d messages and %d faults, want %d and %d", len(out), len(faults), tc.wantLen, tc.wantFaults)
			}
		})
	}
	a, fa := applyNotifyFaults(3, NotifyFaults{Reorder: 0.3, DropExists: 0.3}, w.Notifications(from, from.Add(2*time.Hour), "x"))
	b, fb := applyNotifyFaults(3, NotifyFaults{Reorder: 0.3, DropExists: 0.3}, w.Notifications(from, from.Add(2*time.Hour), "x"))
	if len(a) != len(b) || !cmp.Equal(fa, fb) {
		t.Error("the same seed damaged different messages")
	}
}

func TestRegions(t *testing.T) {
	cfg := scaleConfig(4, 3, 2)
	cfg.Regions = []string{"north", "south"}
	s := startSim(t, cfg)
	base := "http://" + s.Addr()
	tok := login(t, base, "admin", "admin")
	count := func(prefix string) int {
		code, body := doJSON(t, "GET", base+prefix+"/compute/v2.1/servers/detail?all_tenants=1&changes-since=2000-01-01T00:00:00Z", tok, nil)
		if code != 200 {
			t.Fatalf("%s: %d %v", prefix, code, body)
		}
		return len(body["servers"].([]any))
	}
	north, south := count(""), count("/regions/south")
	if north != 6 || south != 6 {
		t.Errorf("north %d, south %d servers, want 6 and 6", north, south)
	}
	if code, _ := doJSON(t, "GET", base+"/regions/west/compute/v2.1/flavors", tok, nil); code != 404 {
		t.Errorf("unknown region: %d, want 404", code)
	}
	code, body := doJSON(t, "POST", base+"/v3/auth/tokens", "", map[string]any{"auth": map[string]any{
		"identity": map[string]any{"methods": []string{"password"}, "password": map[string]any{"user": map[string]any{
			"name": "admin", "domain": map[string]string{"name": "Default"}, "password": "secret"}}},
		"scope": map[string]any{"project": map[string]any{"name": "admin", "domain": map[string]string{"name": "Default"}}}}})
	if code != 201 {
		t.Fatalf("auth: %d", code)
	}
	regions := map[string]string{}
	for _, svc := range body["token"].(map[string]any)["catalog"].([]any) {
		svc := svc.(map[string]any)
		if svc["type"] != "compute" {
			continue
		}
		for _, ep := range svc["endpoints"].([]any) {
			ep := ep.(map[string]any)
			regions[ep["region_id"].(string)] = ep["url"].(string)
		}
	}
	want := map[string]string{"north": base + "/compute/v2.1", "south": base + "/regions/south/compute/v2.1"}
	if diff := cmp.Diff(want, regions); diff != "" {
		t.Errorf("compute endpoints (-want +got):\n%s", diff)
	}
}

func TestHTTPFaults(t *testing.T) {
	tests := []struct {
		name  string
		set   func(*Config)
		check func(*http.Response, []byte) string
	}{
		{"error rate", func(c *Config) { c.ErrorRate = 1 }, func(r *http.Response, _ []byte) string {
			if r.StatusCode < 500 {
				return fmt.Sprintf("status %d, want 5xx", r.StatusCode)
			}
			return ""
		}},
		{"malformed", func(c *Config) { c.MalformedRate = 1 }, func(r *http.Response, b []byte) string {
			if json.Valid(b) {
				return "body is valid JSON"
			}
			return ""
		}},
		{"latency", func(c *Config) { c.Latency = 50 * time.Millisecond }, func(*http.Response, []byte) string { return "" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := scaleConfig(1, 1, 1)
			tc.set(&cfg)
			s := startSim(t, cfg)
			start := time.Now()
			resp, err := http.Get("http://" + s.Addr() + "/v3")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if msg := tc.check(resp, b); msg != "" {
				t.Error(msg)
			}
			if time.Since(start) < cfg.Latency {
				t.Errorf("answered in %s, before the latency %s", time.Since(start), cfg.Latency)
			}
		})
	}
}

func TestPrometheusQueryRange(t *testing.T) {
	s := startSim(t, scenarioConfig("testdata/zed.yaml", time.Date(2026, 11, 23, 12, 5, 0, 0, time.UTC)))
	base := "http://" + s.Addr() + "/prometheus/api/v1/query_range?step=60&start=2026-11-23T11:55:00Z&end=2026-11-23T12:05:00Z&query="
	tests := []struct {
		query      string
		wantCode   int
		wantSeries int
	}{
		{"vm_power_watts", 200, 7},
		{`vm_power_watts{uuid="82aeab58-b6a5-47cf-a4eb-0756e2fa4011"}`, 200, 1},
		{"other_metric", 200, 0},
		{"rate(vm_power_watts[5m])", 400, 0},
	}
	for _, tc := range tests {
		code, body := doJSON(t, "GET", base+url.QueryEscape(tc.query), "", nil)
		if code != tc.wantCode {
			t.Errorf("%s: status %d, want %d (%v)", tc.query, code, tc.wantCode, body)
			continue
		}
		if code != 200 {
			continue
		}
		result := body["data"].(map[string]any)["result"].([]any)
		if len(result) != tc.wantSeries {
			t.Errorf("%s: %d series, want %d", tc.query, len(result), tc.wantSeries)
		}
	}
	// vm-atlas-2 ran 11:56:53-12:00:41: samples at 11:57..12:00 only.
	_, body := doJSON(t, "GET", base+url.QueryEscape(`vm_power_watts{uuid="82aeab58-b6a5-47cf-a4eb-0756e2fa4011"}`), "", nil)
	values := body["data"].(map[string]any)["result"].([]any)[0].(map[string]any)["values"].([]any)
	if len(values) != 4 {
		t.Errorf("vm-atlas-2 has %d samples, want 4: %v", len(values), values)
	}
}
