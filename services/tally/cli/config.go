package cli

import (
	"flag"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/config"
	"github.com/tally-accounting/tally/pkg/logging"
	"github.com/tally-accounting/tally/pkg/record"
	"github.com/tally-accounting/tally/services/enricher"
)

// Default listen addresses; README "Ports" lists them.
const (
	DefaultListen        = "127.0.0.1:50051"
	DefaultMetricsListen = "127.0.0.1:9464"
	DefaultNoopListen    = "127.0.0.1:50064"
)

// Config is the configuration of every tally service, one file for all;
// each service reads its own section.
type Config struct {
	Log logging.Config `yaml:"log"`
	// DataDir holds the embedded NATS store, ledgers and spools.
	DataDir string `yaml:"data_dir"`
	// Listen is the public gRPC API (query, verification, health, reflection).
	Listen string `yaml:"listen"`
	// MetricsListen serves Prometheus /metrics; empty turns it off.
	MetricsListen string `yaml:"metrics_listen"`
	// ShutdownTimeout bounds a graceful stop.
	ShutdownTimeout time.Duration   `yaml:"shutdown_timeout"`
	NATS            bus.Config      `yaml:"nats"`
	Enricher        enricher.Config `yaml:"enricher"`
	Messengers      Messengers      `yaml:"messengers"`
}

// Messengers configures each messenger service.
type Messengers struct {
	Noop MessengerConfig `yaml:"noop"`
}

// MessengerConfig is what every messenger has.
type MessengerConfig struct {
	Enabled bool `yaml:"enabled"`
	// Listen is the messenger's internal gRPC address (Messenger.Push).
	Listen string `yaml:"listen"`
	// RecordTypes it takes; empty means all.
	RecordTypes []string `yaml:"record_types"`
}

// Validate checks the messenger's own keys.
func (m MessengerConfig) Validate() error {
	if !m.Enabled {
		return nil
	}
	if err := validAddr(m.Listen); err != nil {
		return config.Errorf("listen", "%v", err)
	}
	if _, err := record.ParseTypes(m.RecordTypes); err != nil {
		return config.Errorf("record_types", "%v", err)
	}
	return nil
}

// DefaultConfig is what tally runs with when nothing is configured: every
// service in one process on an embedded NATS server.
func DefaultConfig() Config {
	return Config{
		Log:             logging.DefaultConfig(),
		DataDir:         "./var",
		Listen:          DefaultListen,
		MetricsListen:   DefaultMetricsListen,
		ShutdownTimeout: 8 * time.Second,
		NATS:            bus.DefaultConfig(),
		Enricher:        enricher.DefaultConfig(),
		Messengers: Messengers{
			Noop: MessengerConfig{Enabled: true, Listen: DefaultNoopListen},
		},
	}
}

// Validate implements config.Validator.
func (c *Config) Validate() error {
	if err := c.Log.Validate(); err != nil {
		return config.Prefix("log", err)
	}
	if c.DataDir == "" {
		return config.Errorf("data_dir", "is empty")
	}
	if err := validAddr(c.Listen); err != nil {
		return config.Errorf("listen", "%v", err)
	}
	if c.MetricsListen != "" {
		if err := validAddr(c.MetricsListen); err != nil {
			return config.Errorf("metrics_listen", "%v", err)
		}
	}
	if c.ShutdownTimeout < time.Second || c.ShutdownTimeout > 10*time.Minute {
		return config.Errorf("shutdown_timeout", "must be between 1s and 10m, got %v", c.ShutdownTimeout)
	}
	if err := c.NATS.Validate(); err != nil {
		return config.Prefix("nats", err)
	}
	if err := c.Enricher.Validate(); err != nil {
		return config.Prefix("enricher", err)
	}
	if err := c.Messengers.Noop.Validate(); err != nil {
		return config.Prefix("messengers.noop", err)
	}
	return nil
}

func validAddr(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port", s)
	}
	_ = host
	if port == "" {
		return fmt.Errorf("%q has no port", s)
	}
	return nil
}

// commonFlags binds the flags every service command shares to cfg and
// returns a pointer to the --config path.
func commonFlags(fs *flag.FlagSet, cfg *Config) *string {
	path := fs.String("config", "", "YAML config `file` (also TALLY_CONFIG)")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "`directory` for the embedded NATS store, ledgers and spools")
	fs.StringVar(&cfg.NATS.URL, "nats-url", cfg.NATS.URL, "external NATS `URL` (nats://host:4222); empty runs an embedded server")
	fs.StringVar(&cfg.Log.Level, "log-level", cfg.Log.Level, "log `level`: debug, info, warn or error")
	fs.StringVar(&cfg.Log.Format, "log-format", cfg.Log.Format, "log `format`: text or json")
	return path
}

// ledgerPath is where a messenger keeps its delivered batch ids.
func (c *Config) ledgerPath(messenger string) string {
	return filepath.Join(c.DataDir, "ledger", messenger+".ids")
}
