package logging

import (
	"bytes"
	"strings"
	"testing"

	"github.com/tally-accounting/tally/pkg/config"
)

func TestNewRedactsSecrets(t *testing.T) {
	const secret = "hunter2-XYZ"
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			l, err := New(&buf, Config{Level: "debug", Format: format})
			if err != nil {
				t.Fatal(err)
			}
			l.Info("auth", "password", secret, "os_token", secret, "app_credential_secret", secret)
			l.Info("connect", "url", "amqp://guest:"+secret+"@127.0.0.1:5672/")
			l.Info("typed", "cfg", struct{ Pass config.Secret }{config.Secret(secret)})
			l.Debug("kept", "project_id", "p1")
			if strings.Contains(buf.String(), secret) {
				t.Errorf("log shows the secret:\n%s", buf.String())
			}
			if !strings.Contains(buf.String(), "p1") {
				t.Errorf("debug line missing:\n%s", buf.String())
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		c       Config
		wantErr bool
	}{
		{DefaultConfig(), false},
		{Config{Level: "debug", Format: "json"}, false},
		{Config{Level: "loud", Format: "json"}, true},
		{Config{Level: "info", Format: "xml"}, true},
	}
	for _, tt := range tests {
		if err := tt.c.Validate(); (err != nil) != tt.wantErr {
			t.Errorf("Validate(%+v) = %v, wantErr %v", tt.c, err, tt.wantErr)
		}
	}
}
