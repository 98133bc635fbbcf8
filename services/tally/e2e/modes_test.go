package e2e

import (
	"bufio"
	"encoding/json"
	"maps"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Both access modes, and the accounting user (no all_tenants, no Keystone
// user listing), give the same records for the tagged projects.
func TestAccessModesGiveTheSameRecords(t *testing.T) {
	scenario, err := filepath.Abs(scenarioTwoMo)
	if err != nil {
		t.Fatal(err)
	}
	s := startSim(t, "--scenario", scenario, "--now", rfc(t3))
	tr := s.truth(t)
	const vo = "ops.example.org"
	cases := []struct {
		name, user, mode string
		wantMode         string
		wantLog          string // a line the run must log
		names            bool   // whether Keystone lets it read user names
	}{
		{"admin auto", "admin", "", "all_tenants", "", true},
		{"admin all tenants", "admin", "all_tenants", "all_tenants", "", true},
		{"accounting auto", "accounting", "", "per_project", "extracting project by project", false},
		// Per-project mode needs a role on each project (a token scoped to
		// it), which the accounting user has and admin has not.
		{"accounting per project", "accounting", "per_project", "per_project", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := append(s.env(t, tc.user), "TALLY_ENRICHER_DEFAULT_VO="+vo)
			if tc.mode != "" {
				env = append(env, "TALLY_EXTRACTORS_NOVA_ACCESS_MODE="+tc.mode)
			}
			dir := t.TempDir()
			res := mustExtract(t, 90*time.Second, dir, env, "--from", rfc(t0), "--to", rfc(t3))
			if want := " " + tc.wantMode + " mode, window"; !strings.Contains(res.stdout, want) {
				t.Errorf("summary does not say %q:\n%s", want, res.stdout)
			}
			if tc.wantLog != "" && !strings.Contains(res.stderr, tc.wantLog) {
				t.Errorf("log does not say %q:\n%s", tc.wantLog, res.stderr)
			}
			if !tc.names && !strings.Contains(res.stderr, "identity:list_users") {
				t.Errorf("no warning naming the refused policy identity:list_users:\n%s", res.stderr)
			}
			got := newSpoolReader(dir).readNew(t)
			ex := expect(tr, twoMonths, t0, t3, vo, tc.names)
			if diff := cmp.Diff(ex.cloud, byVM(t, got.cloud)); diff != "" {
				t.Errorf("cloud records (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(ex.accel, byVMMonth(t, got.accel)); diff != "" {
				t.Errorf("accelerator records (-want +got):\n%s", diff)
			}
			if len(ex.cloud) < 12 || len(ex.accel) != 3 {
				t.Fatalf("the expectation is too thin to compare anything: %d cloud, %d accelerator", len(ex.cloud), len(ex.accel))
			}
		})
	}
}

// Forcing all_tenants on credentials that may not use it fails with the
// policy named, and spools nothing.
func TestAllTenantsRefusedNamesThePolicy(t *testing.T) {
	scenario, err := filepath.Abs(scenarioTwoMo)
	if err != nil {
		t.Fatal(err)
	}
	s := startSim(t, "--scenario", scenario, "--now", rfc(t1))
	env := append(s.env(t, "accounting"), "TALLY_ENRICHER_DEFAULT_VO=ops", "TALLY_EXTRACTORS_NOVA_ACCESS_MODE=all_tenants")
	dir := t.TempDir()
	res := extract(t, 60*time.Second, dir, env, "--from", rfc(t0), "--to", rfc(t1))
	if res.code == 0 {
		t.Fatalf("exit 0 without the right to list all tenants:\n%s", res.stdout)
	}
	if !strings.Contains(res.stdout+res.stderr, "os_compute_api:servers:detail:get_all_tenants") {
		t.Errorf("the error does not name os_compute_api:servers:detail:get_all_tenants:\n%s\n%s", res.stdout, res.stderr)
	}
	if els := spoolElements(t, filepath.Join(dir, "spool", "ssm")); len(els) != 0 {
		t.Errorf("%d elements spooled", len(els))
	}
}

// A dry run prints the records as JSON lines, spools nothing and moves no
// window: the next real run, resuming, still starts from the beginning.
func TestDryRunPublishesNothing(t *testing.T) {
	scenario, err := filepath.Abs(scenarioTwoMo)
	if err != nil {
		t.Fatal(err)
	}
	s := startSim(t, "--scenario", scenario, "--now", rfc(t1))
	tr := s.truth(t)
	env := append(s.env(t, "admin"), "TALLY_ENRICHER_DEFAULT_VO=ops")
	dir := t.TempDir()

	dry := mustExtract(t, 60*time.Second, dir, env, "--dry-run", "--from", rfc(t0), "--to", rfc(t1))
	if els := spoolElements(t, filepath.Join(dir, "spool", "ssm")); len(els) != 0 {
		t.Fatalf("dry run spooled %d elements", len(els))
	}
	// What the extractor alone knows (no site, VO or user name yet).
	gotCloud, nAccel := parseDryRun(t, dry.stdout)
	ex := expect(tr, twoMonths, t0, t1, "ops", false)
	want := map[string]map[string]string{}
	for vm, rec := range ex.cloud {
		rec = maps.Clone(rec)
		for _, k := range []string{"SiteName", "CloudComputeService", "FQAN", "GlobalUserName"} {
			delete(rec, k)
		}
		rec["MachineName"] = twoMonthsNames[vm]
		want[vm] = rec
	}
	if diff := cmp.Diff(want, gotCloud); diff != "" {
		t.Errorf("dry-run cloud records (-want +got):\n%s", diff)
	}
	if nAccel != len(ex.accel) {
		t.Errorf("dry run printed %d accelerator records, want %d", nAccel, len(ex.accel))
	}

	// The window did not move: resuming starts at 1970 (no last run).
	res := mustExtract(t, 60*time.Second, dir, env, "--to", rfc(t1))
	if want := "window 1970-01-01T00:00:00Z to " + rfc(t1); !strings.Contains(res.stdout, want) {
		t.Errorf("the run after the dry run does not say %q:\n%s", want, res.stdout)
	}
	got := newSpoolReader(dir).readNew(t)
	exAll := expect(tr, twoMonths, time.Unix(0, 0).UTC(), t1, "ops", true)
	if diff := cmp.Diff(exAll.cloud, byVM(t, got.cloud)); diff != "" {
		t.Errorf("cloud records after the dry run (-want +got):\n%s", diff)
	}
	if _, ok := exAll.cloud["4e000000-0000-4000-8000-00000000000c"]; !ok {
		t.Errorf("expectation from 1970 lacks old-deleted: the resumed window is not from 1970")
	}
}

// twoMonthsNames are the scenario's server names, as Nova returns them.
var twoMonthsNames = map[string]string{}

func init() {
	for i, name := range []string{"run-all", "short-w1", "del-noterm", "never-launched", "only-w2", "stopped", "shelved",
		"resized", "gpu-span", "bfv", "vm-café ☕ 計算"} {
		twoMonthsNames["4e000000-0000-4000-8000-"+strconv.FormatInt(0x1000000000000+int64(i+1), 16)[1:]] = name
	}
	twoMonthsNames["4e000000-0000-4000-8000-0000000000b1"] = "novo-vm"
	twoMonthsNames["4e000000-0000-4000-8000-0000000000b2"] = "novo-gone"
}

// parseDryRun reads the JSON lines of a dry run (protojson Records) into
// cloud records keyed by VM, with APEL's field names and value forms, and
// counts the accelerator records.
func parseDryRun(t *testing.T, out string) (map[string]map[string]string, int) {
	t.Helper()
	cloud := map[string]map[string]string{}
	accel := 0
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var rec struct {
			Key         string                     `json:"key"`
			Cloud       map[string]json.RawMessage `json:"cloud"`
			Accelerator map[string]json.RawMessage `json:"accelerator"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("dry run printed %q: %v", sc.Text(), err)
		}
		if rec.Accelerator != nil {
			accel++
			continue
		}
		if rec.Cloud == nil {
			t.Fatalf("dry run printed a record that is neither cloud nor accelerator: %s", sc.Text())
		}
		str := func(k string) string {
			var s string
			if raw, ok := rec.Cloud[k]; ok {
				if err := json.Unmarshal(raw, &s); err != nil {
					s = string(raw) // a number
				}
			}
			return s
		}
		epochOf := func(k string) string {
			if str(k) == "" {
				return "0"
			}
			ts, err := time.Parse(time.RFC3339, str(k))
			if err != nil {
				t.Fatalf("%s: %v", k, err)
			}
			return epoch(ts)
		}
		orZero := func(k string) string {
			if v := str(k); v != "" {
				return v
			}
			return "0"
		}
		r := map[string]string{
			"VMUUID": str("vmUuid"), "CloudType": str("cloudType"), "MachineName": str("machineName"),
			"LocalUserId": str("localUserId"), "LocalGroupId": str("localGroupId"), "Status": str("status"),
			"StartTime": epochOf("startTime"), "EndTime": epochOf("endTime"), "WallDuration": str("wallDuration"),
			"CpuDuration": str("cpuDuration"), "CpuCount": str("cpuCount"), "Memory": str("memory"), "Disk": str("disk"),
			"PublicIPCount": orZero("publicIpCount"),
		}
		for apelKey, k := range map[string]string{"ImageId": "imageId", "BenchmarkType": "benchmarkType", "Benchmark": "benchmark"} {
			if v := str(k); v != "" {
				r[apelKey] = v
			}
		}
		if rec.Key != "cloud/"+r["VMUUID"] {
			t.Errorf("record key %q for VM %s", rec.Key, r["VMUUID"])
		}
		cloud[r["VMUUID"]] = r
	}
	return cloud, accel
}

// With the Keystone policy cASO's docs give (identity:get_user for the
// accounting role, user listing still admin-only), the accounting user's
// records carry user names: tally fetches each owner once, as cASO does.
func TestGetUserPolicyNamesUsers(t *testing.T) {
	scenario, err := filepath.Abs(scenarioTwoMo)
	if err != nil {
		t.Fatal(err)
	}
	s := startSim(t, "--scenario", scenario, "--now", rfc(t3), "--keystone-get-user-role", "accounting")
	tr := s.truth(t)
	const vo = "ops.example.org"
	env := append(s.env(t, "accounting"), "TALLY_ENRICHER_DEFAULT_VO="+vo)
	dir := t.TempDir()
	res := mustExtract(t, 90*time.Second, dir, env, "--from", rfc(t0), "--to", rfc(t3))
	if !strings.Contains(res.stderr, "identity:get_user, as cASO does") {
		t.Errorf("log does not say it falls back to identity:get_user:\n%s", res.stderr)
	}
	if strings.Contains(res.stderr, "carry no user name") {
		t.Errorf("a user went unnamed:\n%s", res.stderr)
	}
	got := newSpoolReader(dir).readNew(t)
	ex := expect(tr, twoMonths, t0, t3, vo, true)
	if diff := cmp.Diff(ex.cloud, byVM(t, got.cloud)); diff != "" {
		t.Errorf("cloud records (-want +got):\n%s", diff)
	}
	if len(ex.cloud) < 12 {
		t.Fatalf("the expectation is too thin to compare anything: %d cloud records", len(ex.cloud))
	}
}
