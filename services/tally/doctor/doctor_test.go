package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tally-accounting/tally/pkg/directory"
	energy "github.com/tally-accounting/tally/services/extractor-energy"
)

func TestReportText(t *testing.T) {
	var r Report
	r.add(OK, "auth", "ignored for ok", "user %s", "u")
	r.add(Fail, "vo", "set a VO", "2 projects have none")
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := "ok    auth  user u\n" +
		"FAIL  vo    2 projects have none -- fix: set a VO\n" +
		"1 ok, 0 warn, 1 FAIL: a run would lose or hold records: fix the FAIL lines\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	if !r.Failed() {
		t.Error("a report with a FAIL is not failed")
	}
	b.Reset()
	if err := (Report{}).WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var got struct {
		OK     bool              `json:"ok"`
		Checks []json.RawMessage `json:"checks"`
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil || !got.OK || got.Checks == nil {
		t.Errorf("empty report as JSON: %s (%v)", b.String(), err)
	}
}

func TestVO(t *testing.T) {
	dir := t.TempDir()
	mapping := filepath.Join(dir, "voms.json")
	os.WriteFile(mapping, []byte(`{"cms": {"projects": ["p2"]}, "atlas": {"tenant": "three"}}`), 0o600)
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"cms": [`), 0o600)
	projects := []directory.Project{
		{ID: "p1", Name: "one", Properties: map[string]string{"egi.VO": "lhcb"}},
		{ID: "p2", Name: "two"},
		{ID: "p3", Name: "three"},
	}
	tests := []struct {
		name                    string
		prop, mapping, fallback string
		status                  Status
		has                     string
	}{
		{"all from property or mapping", "egi.VO", mapping, "", OK, "1 from property \"egi.VO\", 2 from the mapping file"},
		{"wrong property name", "VO", mapping, "", Fail, "1 of 3 selected projects have no VO"},
		{"no mapping", "egi.VO", "", "", Fail, "two (p2), three (p3)"},
		{"default VO", "egi.VO", "", "ops", OK, `2 get default_vo "ops"`},
		{"unreadable mapping", "egi.VO", bad, "ops", Fail, "bad.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &cloudCheck{doctor: &doctor{cfg: Config{VOProperty: tt.prop, MappingFile: tt.mapping, DefaultVO: tt.fallback}}}
			c.vo(projects)
			if len(c.rep.Checks) != 1 {
				t.Fatalf("%d lines, want 1: %+v", len(c.rep.Checks), c.rep.Checks)
			}
			got := c.rep.Checks[0]
			if got.Status != tt.status || !strings.Contains(got.Detail, tt.has) {
				t.Errorf("%s %s, want %s with %q", got.Status, got.Detail, tt.status, tt.has)
			}
			if got.Status == Fail && got.Fix == "" {
				t.Error("a FAIL without a fix")
			}
		})
	}
}

func TestSpool(t *testing.T) {
	old := time.Now().Add(-48 * time.Hour).Unix()
	oldDir := strconv.FormatInt(old-old%60, 16)
	tests := []struct {
		name   string
		setup  func(t *testing.T, spool string) string // returns the spool_dir to check
		status Status
		has    string
	}{
		{"missing but creatable", func(t *testing.T, s string) string { return filepath.Join(s, "a", "b") }, OK, "first run creates it"},
		{"empty", func(t *testing.T, s string) string { return s }, OK, "0 messages waiting in 0 directories"},
		{"messages and tally's state", func(t *testing.T, s string) string {
			mkfile(t, s, "6470e3ec/6470e3fa1e2407")
			mkfile(t, s, "6470e3ec/6470e3fb1e2407.tmp")
			mkfile(t, s, ".tally-ssm/done")
			return s
		}, Warn, "1 messages wait for ssmsend, the oldest since 2023"},
		{"a file, not a directory", func(t *testing.T, s string) string { return mkfile(t, s, "spool") }, Fail, "is not a directory"},
		{"foreign entries", func(t *testing.T, s string) string {
			mkfile(t, s, "lastrun.p1")
			return s
		}, Warn, "not dirq messages (lastrun.p1)"},
		{"the parent of the queue", func(t *testing.T, s string) string {
			mkfile(t, s, "openstack/"+oldDir+"/0000000000000a")
			return s
		}, Warn, "holds other dirq queues (openstack)"},
		{"stale lock", func(t *testing.T, s string) string {
			p := mkfile(t, s, oldDir+"/0000000000000a.lck")
			at := time.Now().Add(-time.Hour)
			os.Chtimes(p, at, at)
			return s
		}, Warn, "locked by ssmsend"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &doctor{cfg: Config{SSM: SSM{Enabled: true, Spool: tt.setup(t, t.TempDir())}}}
			d.spool()
			if len(d.rep.Checks) != 1 {
				t.Fatalf("%d lines, want 1: %+v", len(d.rep.Checks), d.rep.Checks)
			}
			got := d.rep.Checks[0]
			if got.Status != tt.status || !strings.Contains(got.Detail, tt.has) {
				t.Errorf("%s %s, want %s with %q", got.Status, got.Detail, tt.status, tt.has)
			}
			if got.Status != OK && got.Fix == "" {
				t.Error("no fix")
			}
		})
	}
	if os.Geteuid() != 0 {
		ro := t.TempDir()
		os.Chmod(ro, 0o500)
		defer os.Chmod(ro, 0o700)
		d := &doctor{cfg: Config{SSM: SSM{Enabled: true, Spool: ro}}}
		d.spool()
		if c := d.rep.Checks[0]; c.Status != Fail || !strings.Contains(c.Detail, "not writable") {
			t.Errorf("read-only spool: %+v", c)
		}
	}
}

func mkfile(t *testing.T, dir, rel string) string {
	t.Helper()
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLogstash(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := l.Addr().(*net.TCPAddr).Port
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	for _, tt := range []struct {
		port   int
		status Status
	}{{port, OK}, {closedPort, Fail}} {
		d := &doctor{cfg: Config{Timeout: 5 * time.Second, Logstash: Logstash{Enabled: true, Host: "127.0.0.1", Port: tt.port}}}
		d.logstash(context.Background())
		if got := d.rep.Checks[0]; got.Status != tt.status {
			t.Errorf("port %d: %+v, want %s", tt.port, got, tt.status)
		}
	}
}

func TestPrometheus(t *testing.T) {
	tests := []struct {
		name, body string
		status     Status
		has        string
	}{
		{"series", `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"uuid":"vm1"},"values":[]}]}}`, OK, "1 VMs report"},
		{"no series", `{"status":"success","data":{"resultType":"matrix","result":[]}}`, Warn, "no series in the last hour"},
		{"no uuid label", `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"vm":"x"}}]}}`, Warn, `none with the label "uuid"`},
		{"bad query", `{"status":"error","errorType":"bad_data","error":"parse error"}`, Fail, "parse error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var query string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				query = r.URL.Query().Get("query")
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			cfg := energy.DefaultConfig()
			cfg.Endpoint = srv.URL
			d := &doctor{cfg: Config{Timeout: 5 * time.Second, Energy: cfg}}
			d.prometheus(context.Background())
			got := d.rep.Checks[0]
			if got.Status != tt.status || !strings.Contains(got.Detail, tt.has) {
				t.Errorf("%s %s, want %s with %q", got.Status, got.Detail, tt.status, tt.has)
			}
			if want := `prometheus_value{type_instance="scaph_process_power_microwatts"}`; query != want {
				t.Errorf("query %q, want %q", query, want)
			}
		})
	}
	cfg := energy.DefaultConfig()
	cfg.Endpoint = "http://127.0.0.1:1"
	d := &doctor{cfg: Config{Timeout: 5 * time.Second, Energy: cfg}}
	d.prometheus(context.Background())
	if got := d.rep.Checks[0]; got.Status != Fail || !strings.Contains(got.Detail, "unreachable") {
		t.Errorf("unreachable Prometheus: %+v", got)
	}
}
