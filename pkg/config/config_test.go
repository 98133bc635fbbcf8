package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

type natsCfg struct {
	URL     string        `yaml:"url"`
	AckWait time.Duration `yaml:"ack_wait"`
}

type inner struct {
	PageSize int `yaml:"page_size"`
}

type withInline struct {
	Enabled bool  `yaml:"enabled"`
	Inner   inner `yaml:",inline"`
}

type testCfg struct {
	Nova     withInline `yaml:"nova"`
	Listen   string     `yaml:"listen"`
	Workers  int        `yaml:"workers"`
	Debug    bool       `yaml:"debug"`
	Types    []string   `yaml:"record_types"`
	Password Secret     `yaml:"password"`
	NATS     natsCfg    `yaml:"nats"`
}

func (c *testCfg) Validate() error {
	if c.Workers < 1 {
		return Errorf("workers", "must be at least 1, got %d", c.Workers)
	}
	return Prefix("nats", c.NATS.validate())
}

func (n natsCfg) validate() error {
	if n.AckWait < time.Second {
		return Errorf("ack_wait", "must be at least 1s")
	}
	return nil
}

func defaults() *testCfg {
	return &testCfg{Listen: "127.0.0.1:1", Workers: 1, NATS: natsCfg{AckWait: time.Minute}}
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tally.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLayerPrecedence(t *testing.T) {
	file := writeFile(t, "listen: 127.0.0.1:2\nworkers: 3\nrecord_types: [cloud]\nnats:\n  url: nats://file:4222\n  ack_wait: 30s\n")
	tests := []struct {
		name string
		env  []string
		args []string
		want testCfg
	}{
		{"file over defaults", nil, nil,
			testCfg{Listen: "127.0.0.1:2", Workers: 3, Types: []string{"cloud"}, NATS: natsCfg{URL: "nats://file:4222", AckWait: 30 * time.Second}}},
		{"env over file", []string{"TALLY_WORKERS=5", "TALLY_NATS_URL=nats://env:4222", "TALLY_RECORD_TYPES=cloud, ip", "TALLY_DEBUG=true", "HOME=/x"}, nil,
			testCfg{Listen: "127.0.0.1:2", Workers: 5, Debug: true, Types: []string{"cloud", "ip"}, NATS: natsCfg{URL: "nats://env:4222", AckWait: 30 * time.Second}}},
		{"flags over env", []string{"TALLY_WORKERS=5", "TALLY_LISTEN=127.0.0.1:3"}, []string{"--workers", "7", "--record-types", "storage"},
			testCfg{Listen: "127.0.0.1:3", Workers: 7, Types: []string{"storage"}, NATS: natsCfg{URL: "nats://file:4222", AckWait: 30 * time.Second}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := defaults()
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			fs.IntVar(&cfg.Workers, "workers", cfg.Workers, "")
			fs.Var(ListFlag{&cfg.Types}, "record-types", "")
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			if _, err := Layer(cfg, fs, file, tt.env); err != nil {
				t.Fatalf("Layer: %v", err)
			}
			if cfg.Listen != tt.want.Listen || cfg.Workers != tt.want.Workers || cfg.Debug != tt.want.Debug ||
				!slices.Equal(cfg.Types, tt.want.Types) || cfg.NATS != tt.want.NATS {
				t.Errorf("got %+v, want %+v", *cfg, tt.want)
			}
		})
	}
}

func TestLayerErrorsNameTheKey(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		env     []string
		wantKey string
		wantSub string
	}{
		{"validation", "workers: 0\n", nil, "workers", ""},
		{"nested validation", "nats:\n  ack_wait: 10ms\n", nil, "nats.ack_wait", ""},
		{"bad env value", "", []string{"TALLY_WORKERS=many"}, "TALLY_WORKERS", ""},
		{"bad env duration", "", []string{"TALLY_NATS_ACK_WAIT=soon"}, "TALLY_NATS_ACK_WAIT", ""},
		{"unknown file key", "wrokers: 2\n", nil, "", "wrokers"},
		{"wrong type in file", "workers: lots\n", nil, "", "lots"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := defaults()
			_, err := Layer(cfg, nil, writeFile(t, tt.file), tt.env)
			if err == nil {
				t.Fatal("Layer: no error")
			}
			var fe *FieldError
			if tt.wantKey != "" {
				if !errors.As(err, &fe) || fe.Key != tt.wantKey {
					t.Errorf("error %q does not name key %q", err, tt.wantKey)
				}
			}
			if tt.wantSub != "" && !strings.Contains(err.Error(), tt.wantSub) {
				t.Errorf("error %q does not mention %q", err, tt.wantSub)
			}
		})
	}
}

func TestInlineStructs(t *testing.T) {
	cfg := defaults()
	file := writeFile(t, "nova:\n  enabled: true\n  page_size: 50\n")
	if _, err := Layer(cfg, nil, file, []string{"TALLY_NOVA_PAGE_SIZE=70"}); err != nil {
		t.Fatal(err)
	}
	if !cfg.Nova.Enabled || cfg.Nova.Inner.PageSize != 70 {
		t.Errorf("inline config = %+v", cfg.Nova)
	}
}

func TestUnknownEnvIsReported(t *testing.T) {
	cfg := defaults()
	unknown, err := Layer(cfg, nil, "", []string{"TALLY_WROKERS=2", "TALLY_WORKERS=2"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(unknown, []string{"TALLY_WROKERS"}) {
		t.Errorf("unknown = %q", unknown)
	}
	if !slices.Contains(EnvNames(cfg), "TALLY_NATS_ACK_WAIT") {
		t.Errorf("EnvNames lacks TALLY_NATS_ACK_WAIT: %q", EnvNames(cfg))
	}
}

func TestEmptyFileKeepsDefaults(t *testing.T) {
	cfg := defaults()
	if _, err := Layer(cfg, nil, writeFile(t, ""), nil); err != nil {
		t.Fatal(err)
	}
	if cfg.Workers != 1 || cfg.Listen != "127.0.0.1:1" {
		t.Errorf("defaults changed: %+v", cfg)
	}
	if _, err := Layer(cfg, nil, filepath.Join(t.TempDir(), "missing.yaml"), nil); err == nil {
		t.Error("a missing config file gave no error")
	}
}
