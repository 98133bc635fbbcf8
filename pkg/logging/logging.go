// Package logging builds tally's structured logger.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/tally-accounting/tally/pkg/config"
)

// Config selects the log level and format.
type Config struct {
	// Level is debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is text or json.
	Format string `yaml:"format"`
}

// DefaultConfig logs info and above as text.
func DefaultConfig() Config { return Config{Level: "info", Format: "text"} }

// Validate implements config.Validator.
func (c Config) Validate() error {
	if _, err := parseLevel(c.Level); err != nil {
		return config.Errorf("level", "%v", err)
	}
	switch c.Format {
	case "text", "json":
		return nil
	}
	return config.Errorf("format", "%q is not text or json", c.Format)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q is not debug, info, warn or error", s)
	}
	return l, nil
}

// sensitiveKeys are attribute keys whose values are never logged, whatever
// their type: a plain string that slipped past config.Secret is still caught.
var sensitiveKeys = []string{"password", "secret", "token", "credential"}

// New returns a logger writing to w. Attributes whose key names a secret are
// redacted, and URLs with passwords in them are masked.
func New(w io.Writer, c Config) (*slog.Logger, error) {
	level, err := parseLevel(c.Level)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: redact}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

func redact(_ []string, a slog.Attr) slog.Attr {
	key := strings.ToLower(a.Key)
	for _, s := range sensitiveKeys {
		if strings.Contains(key, s) && a.Value.Kind() == slog.KindString && a.Value.String() != "" {
			return slog.String(a.Key, "[redacted]")
		}
	}
	if a.Value.Kind() == slog.KindString && strings.Contains(a.Value.String(), "://") {
		return slog.String(a.Key, config.RedactURL(a.Value.String()))
	}
	return a
}
