package cli

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tally-accounting/tally/services/sim"
	"github.com/tally-accounting/tally/services/sim/simtest"
)

// line is one check the report must (or must not) have.
type line struct {
	status, check string
	has           []string // substrings of the line
}

// TestDoctorAgainstTheSimulator runs tally doctor as the simulator's three
// kinds of accounting user and checks the lines and the exit status: a
// FAIL must name what is missing.
func TestDoctorAgainstTheSimulator(t *testing.T) {
	cfg := sim.DefaultConfig()
	cfg.Now = time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	cloud := simtest.Start(t, cfg)
	world, err := sim.Generate(cfg, cfg.Now)
	if err != nil {
		t.Fatal(err)
	}
	noVO, unreadable, nCaso := doctorFixtures(t, world)
	// The same cloud with the Keystone policy cASO's docs give: get_user
	// for the accounting role, the user listing still refused.
	pcfg := cfg
	pcfg.GetUserRole = "accounting"
	policyCloud := simtest.Start(t, pcfg)

	tests := []struct {
		name          string
		user          string
		getUserPolicy bool
		env           []string
		args          []string
		code          int
		want          []line
		never         []line // status+check pairs that must not appear
	}{
		{
			name: "accounting user: projects without a VO fail", user: "accounting", code: 1,
			want: []line{
				{"ok", "auth", []string{"user accounting", "roles accounting, reader"}},
				{"warn", "keystone.projects", []string{"identity:list_projects", "openstack role add --system all --user accounting reader"}},
				{"FAIL", "vo", []string{noVO[0].Name, noVO[0].ID, "openstack project set --property VO=<vo>"}},
				{"ok", "nova.all_tenants", []string{"os_compute_api:servers:detail:get_all_tenants refused", "project by project"}},
				{"ok", "nova.project", []string{fmt.Sprintf("%d of %d projects", nCaso, nCaso)}},
				{"ok", "nova.usage", []string{"os-simple-tenant-usage:show allowed", "os-simple-tenant-usage:list refused"}},
				{"warn", "flavors.benchmark", []string{"accounting:benchmark_type", "m1.tiny"}},
				{"ok", "flavors.accelerator", []string{"g1.a100x2"}},
				{"warn", "keystone.list_users", []string{"identity:list_users refused", "no GlobalUserName"}},
				{"warn", "keystone.get_user", []string{"identity:get_user", "or role:accounting"}},
				{"ok", "ssm.spool", []string{"the first run creates it"}},
			},
		},
		{
			name: "accounting user with a default VO: only warnings", user: "accounting", code: 0,
			env:   []string{"TALLY_ENRICHER_DEFAULT_VO=ops"},
			want:  []line{{"ok", "vo", []string{`get default_vo "ops"`}}},
			never: []line{{status: "FAIL"}},
		},
		{
			name: "admin", user: "admin", code: 0,
			env: []string{"TALLY_ENRICHER_DEFAULT_VO=ops", "TALLY_EXTRACTORS_CINDER_ENABLED=true", "TALLY_EXTRACTORS_NEUTRON_ENABLED=true"},
			want: []line{
				{"ok", "auth", []string{"user admin", "admin, member, reader"}},
				{"ok", "keystone.projects", []string{"identity:list_projects allowed", fmt.Sprintf("%d projects tagged \"caso\"", nCaso)}},
				{"ok", "nova.all_tenants", []string{"get_all_tenants allowed"}},
				{"ok", "nova.usage", []string{"os-simple-tenant-usage:list allowed"}},
				{"ok", "cinder", []string{"admin role"}},
				{"ok", "neutron", []string{"admin role"}},
				{"ok", "keystone.list_users", []string{"identity:list_users allowed"}},
				{"ok", "keystone.get_user", []string{"identity:get_user allowed"}},
			},
			never: []line{{status: "FAIL"}, {"warn", "keystone.projects", nil}, {"ok", "nova.project", nil}},
		},
		{
			name: "system reader missing the reader role on one project", user: sim.SysReaderUser, code: 1,
			env: []string{"TALLY_ENRICHER_DEFAULT_VO=ops", "TALLY_EXTRACTORS_CINDER_ENABLED=true"},
			want: []line{
				{"ok", "auth", []string{"scoped to the system", "roles reader"}},
				{"ok", "keystone.projects", []string{"identity:list_projects allowed"}},
				{"ok", "nova.all_tenants", []string{"refused"}},
				{"FAIL", "nova.project", []string{unreadable.Name, "has no role there",
					"openstack role add --user " + sim.SysReaderUser + " --project " + unreadable.ID + " reader"}},
				{"ok", "nova.project", []string{fmt.Sprintf("%d of %d projects", nCaso-1, nCaso)}},
				{"FAIL", "cinder.project", []string{unreadable.ID, "reader"}},
				{"ok", "keystone.list_users", nil},
				{"ok", "keystone.get_user", nil},
			},
			never: []line{{"FAIL", "vo", nil}},
		},
		{
			name: "all_tenants forced without the right", user: "accounting", code: 1,
			env:  []string{"TALLY_ENRICHER_DEFAULT_VO=ops", "TALLY_EXTRACTORS_NOVA_ACCESS_MODE=all_tenants"},
			want: []line{{"FAIL", "nova.all_tenants", []string{"os_compute_api:servers:detail:get_all_tenants", "access_mode: auto"}}},
		},
		{
			name: "accounting user with cASO's get_user policy: names come from get_user", user: "accounting", code: 0,
			getUserPolicy: true, env: []string{"TALLY_ENRICHER_DEFAULT_VO=ops"},
			want: []line{
				{"ok", "keystone.list_users", []string{"identity:list_users refused", "identity:get_user instead"}},
				{"ok", "keystone.get_user", []string{"identity:get_user allowed"}},
			},
			never: []line{{status: "FAIL"}, {"warn", "keystone.get_user", nil}},
		},
		{
			name: "a configured project that is not visible", user: "accounting", code: 1,
			args: []string{"--projects", "nosuch-project"},
			want: []line{{"FAIL", "keystone.projects", []string{`"nosuch-project" does not exist or is not visible`}}},
		},
		{
			name: "logstash down and no site name", user: "admin", code: 1,
			env:  []string{"TALLY_ENRICHER_DEFAULT_VO=ops", "TALLY_MESSENGERS_LOGSTASH_ENABLED=true", "TALLY_MESSENGERS_LOGSTASH_HOST=127.0.0.1", "TALLY_MESSENGERS_LOGSTASH_PORT=" + closedPort(t)},
			args: []string{"--site-name="},
			want: []line{
				{"FAIL", "config.site_name", []string{"enricher.site_name is empty"}},
				{"FAIL", "logstash", []string{"cannot connect to 127.0.0.1:"}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cloud
			if tt.getUserPolicy {
				c = policyCloud
			}
			env := append(envList(c.Env(t, tt.user)), tt.env...)
			args := append([]string{"doctor", "--data-dir", t.TempDir(), "--site-name", "TEST-SITE"}, tt.args...)
			code, stdout, stderr := run(t, env, args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d\n%s%s", code, tt.code, stdout, stderr)
			}
			lines := strings.Split(strings.TrimSpace(stdout), "\n")
			for _, w := range tt.want {
				if !slices.ContainsFunc(lines, w.matches) {
					t.Errorf("no line %s %s with %q in:\n%s", w.status, w.check, w.has, stdout)
				}
			}
			for _, n := range tt.never {
				if i := slices.IndexFunc(lines, n.matches); i >= 0 {
					t.Errorf("unexpected line %q", lines[i])
				}
			}
		})
	}
}

func (w line) matches(s string) bool {
	f := strings.Fields(s)
	if len(f) < 2 || f[0] != w.status || (w.check != "" && f[1] != w.check) {
		return false
	}
	for _, h := range w.has {
		if !strings.Contains(s, h) {
			return false
		}
	}
	return true
}

// TestDoctorJSON checks the --json report against the text one.
func TestDoctorJSON(t *testing.T) {
	cfg := sim.DefaultConfig()
	cfg.Now = time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	cloud := simtest.Start(t, cfg)
	env := envList(cloud.Env(t, "accounting"))
	code, stdout, stderr := run(t, env, "doctor", "--json", "--data-dir", t.TempDir(), "--site-name", "S")
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s", code, stderr)
	}
	var rep struct {
		OK     bool           `json:"ok"`
		Counts map[string]int `json:"counts"`
		Checks []struct {
			Status, Check, Detail, Fix string
		} `json:"checks"`
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, stdout)
	}
	if rep.OK || rep.Counts["FAIL"] != 1 || rep.Counts["ok"] == 0 {
		t.Errorf("ok %v, counts %v", rep.OK, rep.Counts)
	}
	i := slices.IndexFunc(rep.Checks, func(c struct{ Status, Check, Detail, Fix string }) bool { return c.Status == "FAIL" })
	if i < 0 || rep.Checks[i].Check != "vo" || !strings.Contains(rep.Checks[i].Fix, "default_vo") {
		t.Errorf("the FAIL is not the vo check with its fix: %+v", rep.Checks)
	}
}

func TestDoctorRefusesBadConfig(t *testing.T) {
	code, _, stderr := run(t, []string{"TALLY_EXTRACTORS_NOVA_PAGE_SIZE=0"}, "doctor", "--data-dir", t.TempDir())
	if code != 2 || !strings.Contains(stderr, "extractors.nova.page_size") {
		t.Errorf("code %d, stderr %q; want 2 naming the key", code, stderr)
	}
	code, stdout, _ := run(t, nil, "doctor", "--data-dir", t.TempDir(), "--site-name", "S")
	if code != 1 || !strings.Contains(stdout, "FAIL  auth") || !strings.Contains(stdout, "auth_url") {
		t.Errorf("without credentials: code %d, want 1 and a FAIL auth line naming auth_url:\n%s", code, stdout)
	}
}

// doctorFixtures returns the generated world's caso projects without a VO
// and the one the system reader has no role on.
func doctorFixtures(t *testing.T, w *sim.World) (noVO []*sim.Project, unreadable *sim.Project, caso int) {
	t.Helper()
	var sys string
	for _, u := range w.Users {
		if u.Name == sim.SysReaderUser {
			sys = u.ID
		}
	}
	granted := map[string]bool{}
	for _, a := range w.Assignments {
		if a.UserID == sys && !a.System {
			granted[a.ProjectID] = true
		}
	}
	for _, p := range w.Projects {
		if !slices.Contains(p.Tags, "caso") {
			continue
		}
		caso++
		if p.Extra["VO"] == "" {
			noVO = append(noVO, p)
		}
		if !granted[p.ID] {
			unreadable = p
		}
	}
	if len(noVO) == 0 || unreadable == nil || sys == "" {
		t.Fatalf("the simulator's population changed: caso projects without VO %d, system reader %q, project it cannot read %v",
			len(noVO), sys, unreadable)
	}
	return noVO, unreadable, caso
}

func envList(m map[string]string) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, k+"="+m[k])
	}
	return out
}

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	addr := freeAddr(t)
	return addr[strings.LastIndex(addr, ":")+1:]
}

// A cASO site checks its caso.conf as it is, before switching: the
// credentials, site name and spool come from it, with no OS_* set.
func TestDoctorReadsCasoConf(t *testing.T) {
	cfg := sim.DefaultConfig()
	cfg.Now = time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	cloud := simtest.Start(t, cfg)
	acct := cloud.Env(t, "accounting")
	dir := t.TempDir()
	conf := fmt.Sprintf(`[DEFAULT]
site_name = CASO-SITE
messengers = ssm
vo_property = VO
extractor = nova

[keystone_auth]
auth_type = password
auth_url = %s
username = %s
password = %s
user_domain_name = Default
project_name = %s
project_domain_name = Default

[ssm]
output_path = %s/outgoing
`, acct["OS_AUTH_URL"], acct["OS_USERNAME"], acct["OS_PASSWORD"], acct["OS_PROJECT_NAME"], dir)
	path := dir + "/caso.conf"
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := run(t, []string{"TALLY_ENRICHER_DEFAULT_VO=ops"}, "doctor", "--caso-config", path, "--data-dir", dir+"/var")
	if code != 0 {
		t.Fatalf("exit %d, want 0\n%s%s", code, stdout, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	for _, w := range []line{
		{"ok", "config.site_name", []string{"CASO-SITE"}},
		{"ok", "auth", []string{"user accounting"}},
		{"ok", "ssm.spool", []string{dir + "/outgoing"}},
	} {
		if !slices.ContainsFunc(lines, w.matches) {
			t.Errorf("no line %s %s with %q in:\n%s", w.status, w.check, w.has, stdout)
		}
	}
}
