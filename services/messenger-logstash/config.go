package logstash

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/tally-accounting/tally/pkg/config"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/record"
)

// Config configures the Logstash messenger.
type Config struct {
	// Host and Port of Logstash's tcp input (json_lines codec); cASO's
	// [logstash] host and port, with its defaults.
	Host string `yaml:"host"`
	Port int    `yaml:"port"`
	// BufferDir holds the on-disk buffer (segments and the send cursor).
	// Empty means the caller sets it to <data_dir>/logstash-buffer.
	BufferDir string `yaml:"buffer_dir"`
	// MaxBufferBytes bounds the backlog not yet delivered to Logstash.
	// When it is reached Write fails (the enricher retries later) rather
	// than drop anything. Disk use may exceed it by one segment.
	MaxBufferBytes int64 `yaml:"max_buffer_bytes"`
	TLS            TLS   `yaml:"tls"`
	// DialTimeout bounds one connection attempt, TLS handshake included.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// WriteTimeout bounds one write to the socket: a Logstash that stops
	// reading for that long is treated as gone and reconnected to.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// MinBackoff and MaxBackoff bound the wait between reconnects, which
	// doubles after each failure, with jitter.
	MinBackoff time.Duration `yaml:"min_backoff"`
	MaxBackoff time.Duration `yaml:"max_backoff"`
	// RecordTypes this messenger takes; empty means all of them.
	RecordTypes []string `yaml:"record_types"`
}

// TLS configures the connection to Logstash (its tcp input's ssl_*).
type TLS struct {
	Enabled bool `yaml:"enabled"`
	// CAFile verifies Logstash's certificate; empty means the system pool.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the client certificate, for a Logstash
	// that requires one (ssl_client_authentication).
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
	// ServerName to verify; empty means Host.
	ServerName string `yaml:"server_name"`
}

// DefaultConfig returns cASO's host and port and tally's buffer and
// timing defaults.
func DefaultConfig() Config {
	return Config{
		Host:           "localhost",
		Port:           5000,
		MaxBufferBytes: 1 << 30,
		DialTimeout:    10 * time.Second,
		WriteTimeout:   30 * time.Second,
		MinBackoff:     500 * time.Millisecond,
		MaxBackoff:     time.Minute,
	}
}

// minBufferBytes is the smallest max_buffer_bytes accepted: below it a
// single ordinary batch would not fit.
const minBufferBytes = 64 << 10

// Validate implements config.Validator.
func (c Config) Validate() error {
	if c.Host == "" {
		return config.Errorf("host", "is empty")
	}
	if c.Port < 1 || c.Port > 65535 {
		return config.Errorf("port", "must be between 1 and 65535, got %d", c.Port)
	}
	if c.BufferDir == "" {
		return config.Errorf("buffer_dir", "is empty (the default is <data_dir>/logstash-buffer)")
	}
	if c.MaxBufferBytes < minBufferBytes {
		return config.Errorf("max_buffer_bytes", "must be at least %d, got %d", minBufferBytes, c.MaxBufferBytes)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"dial_timeout", c.DialTimeout}, {"write_timeout", c.WriteTimeout}, {"min_backoff", c.MinBackoff}, {"max_backoff", c.MaxBackoff}} {
		if d.v <= 0 {
			return config.Errorf(d.key, "must be positive, got %s", d.v)
		}
	}
	if c.MaxBackoff < c.MinBackoff {
		return config.Errorf("max_backoff", "%s is below min_backoff %s", c.MaxBackoff, c.MinBackoff)
	}
	if err := c.TLS.validate(); err != nil {
		return config.Prefix("tls", err)
	}
	if _, err := c.Types(); err != nil {
		return err
	}
	return nil
}

func (t TLS) validate() error {
	if !t.Enabled {
		return nil
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return config.Errorf("cert_file", "cert_file and key_file go together")
	}
	for _, f := range []struct{ key, path string }{{"ca_file", t.CAFile}, {"cert_file", t.CertFile}, {"key_file", t.KeyFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return config.Errorf(f.key, "%v", err)
		}
	}
	return nil
}

// Types returns the record types to pass to messenger.NewServer.
func (c Config) Types() (map[tallyv1.RecordType]bool, error) {
	ts, err := record.ParseTypes(c.RecordTypes)
	if err != nil {
		return nil, config.Errorf("record_types", "%v", err)
	}
	return ts, nil
}

func (c Config) addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

func (c Config) String() string { return fmt.Sprintf("logstash %s", c.addr()) }
