package cli

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/bus/bustest"
	"github.com/tally-accounting/tally/pkg/caso"
	"github.com/tally-accounting/tally/pkg/directory"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/openstack"
	"github.com/tally-accounting/tally/pkg/state"
	"github.com/tally-accounting/tally/pkg/telemetry"
	nova "github.com/tally-accounting/tally/services/extractor-nova"
)

const casoTestdata = "../../../pkg/caso/testdata"

func casoFixture(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(casoTestdata, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("fixture missing: %v", err)
	}
	return p
}

// TestCasoConfigToTally loads each cASO configuration and checks the tally
// configuration it becomes.
func TestCasoConfigToTally(t *testing.T) {
	novaOnly := func(c *Config) {
		c.Extractors.Nova.Enabled, c.Extractors.Cinder.Enabled, c.Extractors.Neutron.Enabled = true, false, false
	}
	cASODefaults := func(c *Config) {
		// cASO runs nova, cinder and neutron, and pushes to noop, unless told.
		c.Extractors.Cinder.Enabled, c.Extractors.Neutron.Enabled = true, true
		c.Messengers.SSM.Enabled, c.Messengers.Noop.Enabled = false, true
	}
	ssm := func(c *Config, spool string, max int) {
		c.Messengers.Noop.Enabled, c.Messengers.SSM.Enabled = false, true
		c.Messengers.SSM.Spool, c.Messengers.SSM.MaxSize = spool, max
	}
	projects := func(c *Config, tag string, p ...string) {
		for _, e := range []*[]string{&c.Extractors.Nova.Projects, &c.Extractors.Cinder.Projects, &c.Extractors.Neutron.Projects, &c.Extractors.Energy.Projects} {
			*e = p
		}
		c.Extractors.Nova.Tag, c.Extractors.Cinder.Tag, c.Extractors.Neutron.Tag, c.Extractors.Energy.Tag = tag, tag, tag, tag
	}
	tests := []struct {
		name  string
		files []string
		edit  func(c *Config)
	}{
		{"sample", []string{"sample.conf"}, func(c *Config) {
			cASODefaults(c)
			ssm(c, "/var/spool/apel/outgoing/openstack", 100)
			c.Enricher.SiteName = "EXAMPLE-SITE"
			projects(c, "caso", "6b0a6d3e2d8f4a8e9b1c7d5e4f3a2b10", "physics-lab")
			c.OpenStack = openstack.AuthConfig{AuthType: "password", AuthURL: "https://keystone.example.org:5000/v3", Username: "caso",
				Password: "s3cret", UserDomainName: "Default", ProjectName: "admin", ProjectDomainName: "Default"}
		}},
		{"EGI site", []string{"egi.conf"}, func(c *Config) {
			cASODefaults(c)
			ssm(c, "/var/spool/apel/outgoing/openstack", 100)
			c.Extractors.Energy.Enabled = true
			c.Enricher.SiteName, c.Enricher.ServiceName, c.Enricher.VOProperty = "EGI-SITE", "EGI-SITE-cloud", "egi.VO"
			projects(c, "egi")
			c.Messengers.SSM.RecordTypes = []string{"cloud", "ip", "accelerator", "storage"}
			c.Messengers.Logstash.Enabled, c.Messengers.Logstash.Host, c.Messengers.Logstash.Port = true, "logstash.egi.example.org", 5044
			c.Messengers.Logstash.RecordTypes = []string{"cloud", "energy"}
			c.Extractors.Energy.Endpoint, c.Extractors.Energy.Step = "https://prometheus.egi.example.org", time.Minute
			c.Extractors.Energy.Labels = []string{"type_instance:scaph_process_power_microwatts", "job:scaphandre"}
			c.Extractors.Energy.CPUNormalizationFactor = 2.5
			c.OpenStack = openstack.AuthConfig{AuthType: "v3applicationcredential", AuthURL: "https://keystone.egi.example.org/v3",
				ApplicationCredentialID: "0123456789abcdef", ApplicationCredentialSecret: "app-secret",
				CACert: "/etc/grid-security/certificates/ca.pem", Region: "RegionOne"}
		}},
		{"region one", []string{"region-one.conf"}, func(c *Config) {
			novaOnly(c)
			ssm(c, "/var/spool/apel/outgoing/RegionOne", 100)
			c.Enricher.SiteName = "MULTI-SITE"
			projects(c, "caso")
			c.OpenStack = openstack.AuthConfig{AuthType: "password", AuthURL: "https://keystone.multi.example.org/v3", UserID: "2f1e",
				Password: "pw", SystemScope: "all", Region: "RegionOne"}
		}},
		{"region two over region one", []string{"region-one.conf", "region-two.conf"}, func(c *Config) {
			novaOnly(c)
			ssm(c, "/var/spool/apel/outgoing/RegionTwo", 500)
			c.Enricher.SiteName = "MULTI-SITE"
			projects(c, "caso", "project2")
			c.OpenStack = openstack.AuthConfig{AuthType: "password", AuthURL: "https://keystone.multi.example.org/v3", UserID: "2f1e",
				Password: "pw", SystemScope: "all", Region: "RegionTwo"}
		}},
		{"deprecated keys", []string{"deprecated.conf"}, func(c *Config) {
			cASODefaults(c)
			c.Log.Level = "debug"
			c.Enricher.SiteName = "OLD-SITE"
			projects(c, "caso", "legacy-project")
			c.Extractors.Nova.BenchmarkTypeKey, c.Extractors.Nova.BenchmarkValueKey = "hs06:type", "accounting:hs23"
			c.Extractors.Nova.AcceleratorTypeKey, c.Extractors.Nova.AcceleratorVendorKey = "gpu:type", "gpu:vendor"
			c.OpenStack = openstack.AuthConfig{AuthType: "token", AuthURL: "https://keystone.old.example.org/v3", Token: "tok",
				ProjectID: "9a8b", UserDomainID: "default", ProjectDomainID: "default"}
		}},
		{"misspelled keys", []string{"typo.conf"}, func(c *Config) {
			cASODefaults(c)
			ssm(c, "/var/spool/apel/outgoing/openstack", 100)
			c.Enricher.SiteName = "TYPO-SITE"
			projects(c, "caso")
			c.OpenStack = openstack.AuthConfig{AuthType: "password", AuthURL: "https://keystone.example.org/v3", Username: "caso", Password: "pw"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var files []string
			for _, f := range tt.files {
				files = append(files, casoFixture(t, f))
			}
			c, _, err := caso.Load(files, "")
			if err != nil {
				t.Fatal(err)
			}
			got := DefaultConfig()
			applyCaso(&got, c)
			want := DefaultConfig()
			tt.edit(&want)
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("tally config (-want +got):\n%s", d)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
			// The YAML that caso import writes loads back to the same.
			if _, err := renderConfig(&got, files); err != nil {
				t.Errorf("renderConfig: %v", err)
			}
		})
	}
}

// TestCasoConfigLayering checks that tally's file, environment and flags
// override cASO's configuration, and that cASO's problems reach the user.
func TestCasoConfigLayering(t *testing.T) {
	dir := t.TempDir()
	yml := filepath.Join(dir, "tally.yaml")
	os.WriteFile(yml, []byte("enricher:\n  site_name: FROM-YAML\nmessengers:\n  ssm:\n    spool_dir: "+dir+"/spool\n"), 0o600)
	cfg, _, code, ok := LoadServeConfig([]string{"--caso-config", casoFixture(t, "region-one.conf"), "--caso-config", casoFixture(t, "region-two.conf"),
		"--config", yml, "--data-dir", dir, "--log-level", "warn"}, Env{Stdout: io.Discard, Stderr: io.Discard, Environ: []string{"TALLY_MESSENGERS_SSM_MAX_SIZE=7"}})
	if !ok {
		t.Fatalf("LoadServeConfig: code %d", code)
	}
	if cfg.Enricher.SiteName != "FROM-YAML" || cfg.Messengers.SSM.Spool != dir+"/spool" || cfg.Messengers.SSM.MaxSize != 7 ||
		cfg.Log.Level != "warn" || cfg.OpenStack.Region != "RegionTwo" || cfg.Extractors.Nova.Projects[0] != "project2" {
		t.Errorf("layers: site %q spool %q max_size %d level %q region %q projects %q", cfg.Enricher.SiteName, cfg.Messengers.SSM.Spool,
			cfg.Messengers.SSM.MaxSize, cfg.Log.Level, cfg.OpenStack.Region, cfg.Extractors.Nova.Projects)
	}

	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"extract warns", []string{"extract", "--caso-config", casoFixture(t, "typo.conf"), "--from", "2026-11-02", "--to", "2026-11-01"},
			[]string{"warning: caso: " + casoFixture(t, "typo.conf") + ": [DEFAULT] site_nme: unknown key, ignored (did you mean site_name?)", "is not before --to"}},
		{"extract refuses a bad value", []string{"extract", "--caso-config", casoFixture(t, "badvalue.conf")},
			[]string{`[ssm] max_size = "abc": is not an integer`, `"v3oidcaccesstoken" cannot be used by tally`}},
		{"serve refuses a bad value", []string{"serve", "--caso-config-dir", t.TempDir(), "--caso-config", casoFixture(t, "badvalue.conf")},
			[]string{`unknown name "ceilometer"`}},
		{"serve refuses cASO's dry run", []string{"serve", "--caso-config", casoFixture(t, "deprecated.conf")},
			[]string{"deprecated (removed in cASO 4.1)", "cASO's dry_run is true"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, nil, append(tt.args, "--data-dir", t.TempDir())...)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
}

// TestCasoImportBus imports into an embedded NATS server: a newer state on
// the bus is kept unless forced, an older one is moved forward.
func TestCasoImportBus(t *testing.T) {
	b, _ := bustest.Start(t, nil)
	st, err := state.Open(t.Context(), b.JS, "test", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	newer := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	older := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const idNew, idOld = "0a0000000000000000000000000000a1", "0a0000000000000000000000000000b2"
	st.SetLastRun(t.Context(), state.Key(nova.Name, "RegionOne", idNew), newer, true)
	st.SetLastRun(t.Context(), state.Key(nova.Name, "RegionOne", idOld), older, true)
	imported := time.Date(2026, 11, 1, 10, 0, 1, 532111000, time.UTC)
	lr := caso.LastRun{Project: "x", Time: imported, File: "lastrun.x"}
	extractors := []string{nova.Name}
	for _, tt := range []struct {
		id     string
		force  bool
		want   time.Time
		status string
	}{
		{idNew, false, newer, "kept the newer state"},
		{idOld, false, imported, "imported"},
		{idNew, true, imported, "imported"},
	} {
		row := importOne(t.Context(), st, extractors, "RegionOne", directory.Project{ID: tt.id}, lr, lastRunOptions{Force: tt.force})
		got, _, _ := st.LastRun(t.Context(), state.Key(nova.Name, "RegionOne", tt.id))
		if !got.Equal(tt.want) || !strings.HasPrefix(row.Status, tt.status) {
			t.Errorf("%s force=%v: state %v (%s), want %v (%s)", tt.id, tt.force, got, row.Status, tt.want, tt.status)
		}
	}
}

// TestCasoImportThenExtract is the switch itself: cASO's lastrun files are
// imported, then tally extracts from the simulator, and every project's
// window starts exactly at the instant cASO would have started from.
func TestCasoImportThenExtract(t *testing.T) {
	scenario := "../e2e/testdata/two-months.yaml"
	if _, err := os.Stat(scenario); err != nil {
		t.Fatalf("fixture missing: %v", err)
	}
	const (
		atlas = "0a0000000000000000000000000000a1" // atlas-prod, tagged caso
		novo  = "0a0000000000000000000000000000b2" // novo-lab, tagged caso
	)
	simArgs := []string{"--listen", freeAddr(t), "--scenario", scenario, "--now", "2026-09-10T00:00:00Z"}
	ctx, cancel := context.WithCancel(context.Background())
	simDone := make(chan int, 1)
	go func() {
		simDone <- Main(ctx, append([]string{"sim", "--log-level", "warn"}, simArgs...), Env{Stdout: io.Discard, Stderr: io.Discard})
	}()
	defer func() { cancel(); <-simDone }()
	code, envOut, stderr := run(t, nil, append([]string{"sim", "env"}, simArgs...)...)
	if code != 0 {
		t.Fatalf("sim env: %s", stderr)
	}
	osEnv := map[string]string{}
	for line := range strings.Lines(envOut) {
		if k, v, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "export "), "="); ok {
			osEnv[k] = strings.Trim(v, "'")
		}
	}
	waitHTTP(t, osEnv["OS_AUTH_URL"])

	dir := t.TempDir()
	spool := filepath.Join(dir, "caso-spool")
	os.Mkdir(spool, 0o750)
	// atlas-prod's file is named by project name (from cASO's projects
	// list); novo-lab has none, so the pre-2.0 site file stands for it.
	atlasFrom := time.Date(2026, 8, 20, 6, 30, 1, 250000000, time.UTC)
	novoFrom := time.Date(2026, 8, 25, 0, 0, 1, 0, time.UTC)
	for name, body := range map[string]string{
		"lastrun.atlas-prod":  "2026-08-20 06:30:01.250000+00:00",
		"lastrun":             "2026-08-25 00:00:01+00:00",
		"lastrun.local-users": "",
	} {
		os.WriteFile(filepath.Join(spool, name), []byte(body), 0o600)
	}
	conf := filepath.Join(dir, "caso.conf")
	os.WriteFile(conf, []byte(`[DEFAULT]
site_name = SIM-SITE
projects = atlas-prod
extractor = nova
spooldir = `+spool+`
region_name = `+osEnv["OS_REGION_NAME"]+`

[keystone_auth]
auth_type = `+osEnv["OS_AUTH_TYPE"]+`
auth_url = `+osEnv["OS_AUTH_URL"]+`
username = `+osEnv["OS_USERNAME"]+`
password = `+osEnv["OS_PASSWORD"]+`
user_domain_name = `+osEnv["OS_USER_DOMAIN_NAME"]+`
project_name = `+osEnv["OS_PROJECT_NAME"]+`
project_domain_name = `+osEnv["OS_PROJECT_DOMAIN_NAME"]+`
`), 0o600)
	data, out := filepath.Join(dir, "var"), filepath.Join(dir, "tally.yaml")
	env := []string{"TALLY_ENRICHER_DEFAULT_VO=ops", "TALLY_QUERY_ENABLED=false"}

	code, stdout, stderr := run(t, env, "caso", "import", "--caso-config", conf, "--data-dir", data, "--out", out)
	if code != 0 {
		t.Fatalf("caso import exited %d:\n%s\n%s", code, stdout, stderr)
	}
	var table []string
	for line := range strings.Lines(stdout) {
		table = append(table, strings.Join(strings.Fields(line), " "))
	}
	for _, w := range []string{
		atlas + " (atlas-prod) 2026-08-20T06:30:01.25Z " + filepath.Join(spool, "lastrun.atlas-prod") + " imported",
		novo + " (novo-lab) 2026-08-25T00:00:01Z " + filepath.Join(spool, "lastrun") + " imported",
		"local-users - " + filepath.Join(spool, "lastrun.local-users") + " not imported: the file is empty: treated as missing",
	} {
		if !slices.Contains(table, w) {
			t.Errorf("import table lacks %q:\n%s", w, stdout)
		}
	}
	if !strings.Contains(stderr, "lastrun.local-users: the file is empty: treated as missing") {
		t.Errorf("the empty lastrun file is not reported:\n%s", stderr)
	}

	code, stdout, stderr = run(t, env, "extract", "--config", out, "--data-dir", data, "--to", "2026-09-10T00:00:00Z")
	if code != 0 {
		t.Fatalf("extract exited %d:\n%s\n%s", code, stdout, stderr)
	}

	// What the extractor published, and the state it left.
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	emb, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: filepath.Join(data, "nats")}, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer emb.Shutdown()
	b, err := bus.Connect(t.Context(), bus.DefaultConfig(), emb, t.Name(), telemetry.WithSpanProcessors(nil), logger)
	if err != nil {
		t.Fatal(err)
	}
	defer b.NC.Close()
	froms := map[string]map[time.Time]int{}
	cons, err := b.JS.OrderedConsumer(t.Context(), bus.RecordsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"tally.records.raw.>"}})
	if err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			break
		}
		var batch tallyv1.RecordBatch
		if err := proto.Unmarshal(msg.Data(), &batch); err != nil {
			t.Fatal(err)
		}
		for _, r := range batch.GetRecords() {
			p := r.GetProvenance()
			if froms[p.GetProjectId()] == nil {
				froms[p.GetProjectId()] = map[time.Time]int{}
			}
			froms[p.GetProjectId()][p.GetWindowFrom().AsTime()]++
		}
	}
	for project, want := range map[string]time.Time{atlas: atlasFrom, novo: novoFrom} {
		if len(froms[project]) != 1 || froms[project][want] == 0 {
			t.Errorf("project %s: records' windows start at %v, want only %v", project, froms[project], want)
		}
	}
	st, err := state.Open(t.Context(), b.JS, "test", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	to := time.Date(2026, 9, 10, 0, 0, 0, 0, time.UTC)
	for _, project := range []string{atlas, novo} {
		got, _, err := st.LastRun(t.Context(), state.Key(nova.Name, osEnv["OS_REGION_NAME"], project))
		if err != nil || !got.Equal(to) {
			t.Errorf("state of %s after the run = %v, %v; want %v", project, got, err, to)
		}
	}
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s never answered 200: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
