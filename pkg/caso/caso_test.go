package caso

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tally-accounting/tally/pkg/openstack"
)

func td(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join("testdata", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("fixture missing: %v", err)
	}
	return p
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name  string
		files []string
		dir   string
		// edit turns cASO's defaults into the expected config; nil skips
		// the comparison (the config is refused).
		edit      func(c *Config)
		wantWarns []string
		wantErrs  []string
	}{
		{name: "sample", files: []string{"sample.conf"}, edit: func(c *Config) {
			c.SiteName = "EXAMPLE-SITE"
			c.Projects = []string{"6b0a6d3e2d8f4a8e9b1c7d5e4f3a2b10", "physics-lab"}
			c.Messengers = []string{"ssm"}
			c.Auth = openstack.AuthConfig{AuthType: "password", AuthURL: "https://keystone.example.org:5000/v3", Username: "caso",
				Password: "s3cret", UserDomainName: "Default", ProjectName: "admin", ProjectDomainName: "Default"}
		}},
		{name: "deprecated keys", files: []string{"deprecated.conf"}, edit: func(c *Config) {
			c.SiteName = "OLD-SITE"
			c.Projects = []string{"legacy-project"}
			c.Benchmark = Benchmark{NameKey: "hs06:type", ValueKey: "accounting:hs23"} // the new name wins
			c.Accelerator.TypeKey, c.Accelerator.VendorKey = "gpu:type", "gpu:vendor"
			c.Debug, c.DryRun = true, true
			c.Auth = openstack.AuthConfig{AuthType: "token", AuthURL: "https://keystone.old.example.org/v3", Token: "tok",
				ProjectID: "9a8b", UserDomainID: "default", ProjectDomainID: "default"}
		}, wantWarns: []string{
			"deprecated.conf: [DEFAULT] tenants: deprecated (removed in cASO 4.1), use projects instead",
			"[DEFAULT] benchmark_name_key: deprecated (removed in cASO 4.1), use [benchmark] name_key instead",
			"[DEFAULT] benchmark_value_key", "[DEFAULT] accelerator_type_key", "[DEFAULT] accelerator_vendor_key",
		}},
		{name: "multi-region, one file", files: []string{"region-one.conf"}, edit: func(c *Config) {
			c.SiteName, c.RegionName, c.Messengers, c.Extractors = "MULTI-SITE", "RegionOne", []string{"ssm"}, []string{"nova"}
			c.SpoolDir, c.SSM.OutputPath = "/var/spool/caso/RegionOne", "/var/spool/apel/outgoing/RegionOne"
			c.Auth = openstack.AuthConfig{AuthType: "password", AuthURL: "https://keystone.multi.example.org/v3", UserID: "2f1e",
				Password: "pw", SystemScope: "all", Region: "RegionOne"}
		}},
		{name: "multi-region, the later file overrides", files: []string{"region-one.conf", "region-two.conf"}, edit: func(c *Config) {
			c.SiteName, c.RegionName, c.Messengers, c.Extractors = "MULTI-SITE", "RegionTwo", []string{"ssm"}, []string{"nova"}
			c.Projects = []string{"project2"}
			c.SpoolDir, c.SSM = "/var/spool/caso/RegionTwo", SSM{OutputPath: "/var/spool/apel/outgoing/RegionTwo", MaxSize: 500}
			c.Auth = openstack.AuthConfig{AuthType: "password", AuthURL: "https://keystone.multi.example.org/v3", UserID: "2f1e",
				Password: "pw", SystemScope: "all", Region: "RegionTwo"}
		}},
		{name: "config dir after the files", files: []string{"region-two.conf"}, dir: "caso.conf.d", edit: func(c *Config) {
			c.SiteName, c.RegionName, c.Messengers, c.Projects = "DIR-SITE", "RegionTwo", []string{"ssm"}, []string{"project2"}
			c.SpoolDir, c.SSM = "/var/spool/caso/RegionTwo", SSM{OutputPath: "/var/spool/apel/outgoing/RegionTwo", MaxSize: 42}
		}},
		{name: "misspelled keys warn", files: []string{"typo.conf"}, edit: func(c *Config) {
			c.SiteName, c.Messengers = "TYPO-SITE", []string{"ssm"}
			c.Auth = openstack.AuthConfig{AuthType: "password", AuthURL: "https://keystone.example.org/v3", Username: "caso", Password: "pw"}
		}, wantWarns: []string{
			"typo.conf: [DEFAULT] site_nme: unknown key, ignored (did you mean site_name?)",
			"typo.conf: [keystone_auth] usename: unknown key, ignored (did you mean username?)",
			`typo.conf: [keystone_auth] trust_id = "abc": not supported by tally`,
			"typo.conf: [sssm]: unknown section, ignored (did you mean ssm?)",
		}},
		{name: "bad values are errors", files: []string{"badvalue.conf"}, wantErrs: []string{
			`badvalue.conf: [DEFAULT] extractor = "nova, ceilometer": unknown name "ceilometer"`,
			`badvalue.conf: [DEFAULT] dry_run = "maybe": is not a boolean`,
			`badvalue.conf: [ssm] max_size = "abc": is not an integer`,
			`badvalue.conf: [messenger_logstash] record_types = "cloud, vm"`,
			`badvalue.conf: [keystone_auth] auth_type = "v3oidcaccesstoken": the keystoneauth plugin "v3oidcaccesstoken" cannot be used by tally`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var files []string
			for _, f := range tt.files {
				files = append(files, td(t, f))
			}
			dir := ""
			if tt.dir != "" {
				dir = td(t, tt.dir)
			}
			got, warns, err := Load(files, dir)
			var ws []string
			for _, w := range warns {
				ws = append(ws, w.Error())
			}
			all := strings.Join(ws, "\n")
			for _, w := range tt.wantWarns {
				if !strings.Contains(all, w) {
					t.Errorf("warnings lack %q:\n%s", w, all)
				}
			}
			if len(tt.wantWarns) == 0 && len(ws) > 0 {
				t.Errorf("unexpected warnings:\n%s", all)
			}
			if len(tt.wantErrs) > 0 {
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tt.wantErrs {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error lacks %q:\n%v", w, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := Default()
			tt.edit(&want)
			if want.Auth.Region == "" && !want.Auth.IsZero() {
				want.Auth.Region = want.RegionName
			}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("config (-want +got):\n%s", d)
			}
		})
	}
}

func TestLoadReferencesAndQuotes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "caso.conf")
	os.WriteFile(p, []byte("[DEFAULT]\nsite_name = \"SITE-A\"\nservice_name = $site_name-cloud\nspooldir = ${DEFAULT.site_name}/spool\nvo_property = VO # not a comment in oslo\n"), 0o600)
	c, _, err := Load([]string{p}, "")
	if err != nil {
		t.Fatal(err)
	}
	if c.SiteName != "SITE-A" || c.ServiceName != "SITE-A-cloud" || c.SpoolDir != "SITE-A/spool" || c.VOProperty != "VO # not a comment in oslo" {
		t.Errorf("got site %q service %q spool %q vo_property %q", c.SiteName, c.ServiceName, c.SpoolDir, c.VOProperty)
	}
}

func TestParseLastRun(t *testing.T) {
	utc := func(s string) time.Time { t, _ := time.Parse(time.RFC3339Nano, s); return t }
	tests := []struct {
		in   string
		want time.Time
		ok   bool
	}{
		// cASO 5.2: str(extract_to + 1 s), an aware datetime.
		{"2026-11-01 10:00:01.532111+00:00", utc("2026-11-01T10:00:01.532111Z"), true},
		{"2026-11-01 10:00:01+00:00\n", utc("2026-11-01T10:00:01Z"), true},
		{"2026-11-01 12:00:01+02:00", utc("2026-11-01T10:00:01Z"), true},
		{"2026-11-01T10:00:01Z", utc("2026-11-01T10:00:01Z"), true},
		{"2026-11-01 10:00:01", utc("2026-11-01T10:00:01Z"), true}, // naive is UTC
		{"1970-01-01", utc("1970-01-01T00:00:00Z"), true},
		{"", time.Time{}, false},
		{"  \n", time.Time{}, false},
		{"garbage", time.Time{}, false},
		{"2026-11-01 10:00", time.Time{}, false},
	}
	for _, tt := range tests {
		got, err := ParseLastRun(tt.in)
		if (err == nil) != tt.ok || !got.Equal(tt.want) {
			t.Errorf("ParseLastRun(%q) = %v, %v; want %v ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestReadLastRuns(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"lastrun":              "2026-10-01 00:00:00+00:00",
		"lastrun.atlas-prod":   "2026-11-01 10:00:01.5+00:00",
		"lastrun.0a00000000b2": "",
		"lastrun.future":       "2099-01-01 00:00:00+00:00",
		"lastrun.junk":         "not a date",
		"caso-lock":            "",
		"outgoing":             "x",
	} {
		os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600)
	}
	got, err := ReadLastRuns(dir, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	want := []LastRun{{Project: "atlas-prod", Time: time.Date(2026, 11, 1, 10, 0, 1, 5e8, time.UTC), File: filepath.Join(dir, "lastrun.atlas-prod")}}
	if d := cmp.Diff(want, got.Projects); d != "" {
		t.Errorf("projects (-want +got):\n%s", d)
	}
	if got.Site == nil || !got.Site.Time.Equal(time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("site file = %+v", got.Site)
	}
	var probs []string
	for _, p := range got.Problems {
		probs = append(probs, p.Error())
	}
	for _, w := range []string{"lastrun.0a00000000b2: the file is empty: treated as missing", "lastrun.future", "is in the future", `lastrun.junk: "not a date" is not a date and time: treated as missing`} {
		if !strings.Contains(strings.Join(probs, "\n"), w) {
			t.Errorf("problems lack %q:\n%s", w, strings.Join(probs, "\n"))
		}
	}
}
