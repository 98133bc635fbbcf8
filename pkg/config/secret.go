package config

import (
	"encoding/json"
	"log/slog"
	"net/url"
)

const redacted = "[redacted]"

// Secret holds a password, token or application credential secret. Every
// way of printing it (fmt, slog, JSON, YAML) shows "[redacted]"; only Reveal
// gives the value, at the one place that sends it.
type Secret string

// Reveal returns the secret's value.
func (s Secret) Reveal() string { return string(s) }

func (s Secret) mask() string {
	if s == "" {
		return ""
	}
	return redacted
}

// String implements fmt.Stringer.
func (s Secret) String() string { return s.mask() }

// GoString implements fmt.GoStringer, for %#v.
func (s Secret) GoString() string { return `config.Secret("` + s.mask() + `")` }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.mask()) }

// MarshalJSON implements json.Marshaler.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.mask()) }

// MarshalYAML implements yaml.Marshaler.
func (s Secret) MarshalYAML() (any, error) { return s.mask(), nil }

// MarshalText implements encoding.TextMarshaler, which slog's JSON handler
// and many encoders fall back to.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.mask()), nil }

// RedactURL returns raw with any password in its user info replaced, for
// logging URLs such as nats://user:pass@host:4222.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
