package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func run(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(context.Background(), args, Env{Stdout: &out, Stderr: &errb, Environ: env})
	return code, out.String(), errb.String()
}

func TestHelpAndVersion(t *testing.T) {
	tests := []struct {
		args     []string
		code     int
		contains string
	}{
		{[]string{"--help"}, 0, "tally serve"},
		{[]string{}, 2, "Commands:"},
		{[]string{"version"}, 0, "tally "},
		{[]string{"--version"}, 0, "tally "},
		{[]string{"serve", "--help"}, 0, "-target services"},
		{[]string{"bogus"}, 2, `unknown command "bogus"`},
	}
	for _, tt := range tests {
		code, stdout, stderr := run(t, nil, tt.args...)
		if code != tt.code || !strings.Contains(stdout+stderr, tt.contains) {
			t.Errorf("tally %q = %d, output lacks %q:\n%s%s", tt.args, code, tt.contains, stdout, stderr)
		}
	}
}

func TestServeConfigErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("nats:\n  url: http://nats:4222\n"), 0o600)
	typo := filepath.Join(dir, "typo.yaml")
	os.WriteFile(typo, []byte("enricher:\n  wokers: 3\n"), 0o600)
	tests := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"bad url in file", nil, []string{"--config", bad}, "nats.url"},
		{"unknown key", nil, []string{"--config", typo}, "wokers"},
		{"config from env", []string{"TALLY_CONFIG=" + bad}, nil, "nats.url"},
		{"bad env", []string{"TALLY_SHUTDOWN_TIMEOUT=forever"}, nil, "TALLY_SHUTDOWN_TIMEOUT"},
		{"bad level flag", nil, []string{"--log-level", "loud"}, "log.level"},
		{"bad listen", nil, []string{"--listen", "50051"}, "listen"},
		{"unknown target", nil, []string{"--target", "extractor-foo"}, `unknown target "extractor-foo"`},
		{"split without nats", nil, []string{"--target", "enricher"}, "--nats-url"},
		{"extractor without nats", nil, []string{"--target", "extractor-nova"}, "--nats-url"},
		{"energy to ssm", []string{"TALLY_MESSENGERS_SSM_RECORD_TYPES=cloud,energy"}, nil, "messengers.ssm.record_types"},
		{"bad access mode", []string{"TALLY_EXTRACTORS_NOVA_ACCESS_MODE=admin"}, nil, "extractors.nova.access_mode"},
		{"all plus more", nil, []string{"--target", "all,api"}, `"all" cannot be combined`},
		{"bad record type", []string{"TALLY_MESSENGERS_NOOP_ENABLED=true", "TALLY_MESSENGERS_NOOP_RECORD_TYPES=cloud,vm"}, nil, "messengers.noop.record_types"},
		{"no site name", nil, []string{"--target", "enricher", "--nats-url", "nats://127.0.0.1:1"}, "enricher.site_name"},
		{"no credentials", nil, []string{"--target", "extractor-nova", "--nats-url", "nats://127.0.0.1:1"}, "OpenStack credentials"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"serve", "--data-dir", t.TempDir()}, tt.args...)
			if !strings.Contains(tt.name, "site") {
				args = append(args, "--site-name", "TEST")
			}
			code, _, stderr := run(t, tt.env, args...)
			if code != 2 || !strings.Contains(stderr, tt.want) {
				t.Errorf("code %d, stderr %q, want 2 and %q", code, stderr, tt.want)
			}
		})
	}
}

func TestResolveTargets(t *testing.T) {
	tests := []struct {
		spec    string
		natsURL string
		noop    bool
		want    []string
	}{
		{"all", "", true, []string{TargetAPI, TargetQuery, TargetMessengerNoop, TargetMessengerSSM, TargetEnricher, TargetExtractorNova}},
		{"all", "", false, []string{TargetAPI, TargetQuery, TargetMessengerSSM, TargetEnricher, TargetExtractorNova}},
		{"enricher,api", "nats://n:4222", true, []string{TargetAPI, TargetEnricher}},
		{"extractor-nova,messenger-ssm", "nats://n:4222", true, []string{TargetMessengerSSM, TargetExtractorNova}},
		{"messenger-noop", "", false, []string{TargetMessengerNoop}},
		{"query", "", false, []string{TargetAPI, TargetQuery}},
	}
	for _, tt := range tests {
		cfg := DefaultConfig()
		cfg.NATS.URL = tt.natsURL
		cfg.Messengers.Noop.Enabled = tt.noop
		got, err := ResolveTargets(tt.spec, &cfg)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("ResolveTargets(%q) = %q, %v; want %q", tt.spec, got, err, tt.want)
		}
	}
}
