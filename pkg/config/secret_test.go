package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const theSecret = "s3cr3t-Pa55"

type withSecret struct {
	User     string `yaml:"user" json:"user"`
	Password Secret `yaml:"password" json:"password"`
}

func TestSecretNeverPrints(t *testing.T) {
	v := withSecret{User: "caso", Password: theSecret}
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("config", "cfg", v, "password", v.Password)
	slog.New(slog.NewTextHandler(&logs, nil)).Info("config", "cfg", v, "password", v.Password)
	js, _ := json.Marshal(v)
	ym, _ := yaml.Marshal(v)
	outputs := map[string]string{
		"%v":   fmt.Sprintf("%v", v),
		"%+v":  fmt.Sprintf("%+v", v),
		"%#v":  fmt.Sprintf("%#v", v),
		"%s":   fmt.Sprintf("%s", v.Password),
		"err":  fmt.Errorf("auth as %v with %v failed", v.User, v.Password).Error(),
		"slog": logs.String(),
		"json": string(js),
		"yaml": string(ym),
	}
	for how, out := range outputs {
		if strings.Contains(out, theSecret) {
			t.Errorf("%s shows the secret: %s", how, out)
		}
	}
	if v.Password.Reveal() != theSecret {
		t.Error("Reveal does not return the value")
	}
	// Decoding still works: the secret comes in through YAML.
	var back withSecret
	if err := yaml.Unmarshal([]byte("password: "+theSecret), &back); err != nil || back.Password.Reveal() != theSecret {
		t.Errorf("yaml decode = %q, %v", back.Password.Reveal(), err)
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nats://user:" + theSecret + "@host:4222", "nats://user:xxxxx@host:4222"},
		{"nats://host:4222", "nats://host:4222"},
		{"nats://token@host:4222", "nats://token@host:4222"},
		{"::not a url", "::not a url"},
	}
	for _, tt := range tests {
		if got := RedactURL(tt.in); got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
