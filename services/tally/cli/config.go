package cli

import (
	"flag"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"time"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/config"
	"github.com/tally-accounting/tally/pkg/extract"
	"github.com/tally-accounting/tally/pkg/logging"
	"github.com/tally-accounting/tally/pkg/openstack"
	"github.com/tally-accounting/tally/pkg/record"
	"github.com/tally-accounting/tally/services/enricher"
	cinder "github.com/tally-accounting/tally/services/extractor-cinder"
	energy "github.com/tally-accounting/tally/services/extractor-energy"
	neutron "github.com/tally-accounting/tally/services/extractor-neutron"
	nova "github.com/tally-accounting/tally/services/extractor-nova"
	logstash "github.com/tally-accounting/tally/services/messenger-logstash"
	ssm "github.com/tally-accounting/tally/services/messenger-ssm"
	"github.com/tally-accounting/tally/services/query"
	"github.com/tally-accounting/tally/services/verifier"
	"github.com/tally-accounting/tally/services/verifier/bridge"
)

// Default listen addresses; README "Ports" lists them.
const (
	DefaultListen         = "127.0.0.1:50051"
	DefaultMetricsListen  = "127.0.0.1:9464"
	DefaultNoopListen     = "127.0.0.1:50064"
	DefaultSSMListen      = "127.0.0.1:50061"
	DefaultLogstashListen = "127.0.0.1:50062"
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
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// MemoryLimitMiB is a soft limit of the Go runtime's memory, as
	// GOMEMLIMIT (which wins when set): the garbage collector works harder
	// near it, nothing fails. 0: tally extract uses DefaultExtractMemoryMiB,
	// tally serve none.
	MemoryLimitMiB int        `yaml:"memory_limit_mib"`
	NATS           bus.Config `yaml:"nats"`
	// OpenStack holds the credentials of the extractors; empty means the
	// OS_* environment (or OS_CLOUD and clouds.yaml).
	OpenStack  openstack.AuthConfig `yaml:"openstack"`
	Extractors Extractors           `yaml:"extractors"`
	Enricher   enricher.Config      `yaml:"enricher"`
	Messengers Messengers           `yaml:"messengers"`
	// NotifyBridge and Verifier are StackTach's usage verification; off
	// by default (they need the cloud's RabbitMQ).
	Query        QueryConfig    `yaml:"query"`
	NotifyBridge BridgeConfig   `yaml:"notify_bridge"`
	Verifier     VerifierConfig `yaml:"verifier"`
}

// QueryConfig is the record store and its RecordQuery API.
type QueryConfig struct {
	Enabled      bool `yaml:"enabled"`
	query.Config `yaml:",inline"`
}

// BridgeConfig is notify-bridge's section.
type BridgeConfig struct {
	Enabled       bool `yaml:"enabled"`
	bridge.Config `yaml:",inline"`
}

// VerifierConfig is the verifier's section (StackTach's key names).
type VerifierConfig struct {
	Enabled         bool `yaml:"enabled"`
	verifier.Config `yaml:",inline"`
}

// Extractors configures each extractor service.
type Extractors struct {
	Nova    NovaConfig      `yaml:"nova"`
	Cinder  ExtractorConfig `yaml:"cinder"`
	Neutron NeutronConfig   `yaml:"neutron"`
	Energy  EnergyConfig    `yaml:"energy"`
}

// EnergyConfig is the energy extractor's section (cASO's [prometheus]).
type EnergyConfig struct {
	Enabled       bool `yaml:"enabled"`
	energy.Config `yaml:",inline"`
}

// ExtractorConfig is an extractor's section with only the common keys.
type ExtractorConfig struct {
	Enabled        bool `yaml:"enabled"`
	extract.Config `yaml:",inline"`
}

// NeutronConfig is the Neutron extractor's section: the common keys and
// per_user (count floating IPs per owning user, or per project as cASO).
type NeutronConfig struct {
	Enabled        bool `yaml:"enabled"`
	neutron.Config `yaml:",inline"`
}

// NovaConfig is the Nova extractor's section.
type NovaConfig struct {
	Enabled     bool `yaml:"enabled"`
	nova.Config `yaml:",inline"`
}

// Messengers configures each messenger service.
type Messengers struct {
	Noop     MessengerConfig `yaml:"noop"`
	SSM      SSMConfig       `yaml:"ssm"`
	Logstash LogstashConfig  `yaml:"logstash"`
}

// LogstashConfig is the Logstash messenger's section.
type LogstashConfig struct {
	Enabled bool `yaml:"enabled"`
	// Listen is the messenger's internal gRPC address.
	Listen          string `yaml:"listen"`
	logstash.Config `yaml:",inline"`
}

// SSMConfig is the SSM messenger's section.
type SSMConfig struct {
	Enabled bool `yaml:"enabled"`
	// Listen is the messenger's internal gRPC address.
	Listen     string `yaml:"listen"`
	ssm.Config `yaml:",inline"`
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
		Extractors: Extractors{
			Nova:    NovaConfig{Enabled: true, Config: nova.DefaultConfig()},
			Cinder:  ExtractorConfig{Config: extract.DefaultConfig()},
			Neutron: NeutronConfig{Config: neutron.DefaultConfig()},
			Energy:  EnergyConfig{Config: energy.DefaultConfig()},
		},
		Enricher:     enricher.DefaultConfig(),
		Query:        QueryConfig{Enabled: true, Config: query.DefaultConfig()},
		NotifyBridge: BridgeConfig{Config: bridge.DefaultConfig()},
		Verifier:     VerifierConfig{Config: verifierDefaults()},
		Messengers: Messengers{
			Noop:     MessengerConfig{Listen: DefaultNoopListen},
			SSM:      SSMConfig{Enabled: true, Listen: DefaultSSMListen, Config: ssmDefaults()},
			Logstash: LogstashConfig{Listen: DefaultLogstashListen, Config: logstash.DefaultConfig()},
		},
	}
}

// verifierDefaults leaves the store empty: it follows data_dir unless set.
func verifierDefaults() verifier.Config {
	c := verifier.DefaultConfig()
	c.Store.Path = ""
	return c
}

// ssmDefaults leaves the spool empty: it follows data_dir unless set.
func ssmDefaults() ssm.Config {
	c := ssm.DefaultConfig()
	c.Spool = ""
	return c
}

// derive fills the defaults that depend on other keys.
func (c *Config) derive() {
	if c.Messengers.SSM.Spool == "" {
		c.Messengers.SSM.Spool = filepath.Join(c.DataDir, "spool", "ssm")
	}
	if c.Verifier.Store.Path == "" {
		c.Verifier.Store.Path = filepath.Join(c.DataDir, "verifier.db")
	}
	if c.Messengers.Logstash.BufferDir == "" {
		c.Messengers.Logstash.BufferDir = filepath.Join(c.DataDir, "logstash-buffer")
	}
}

// Auth returns the OpenStack credentials: the config file's, else the
// environment's.
func (c *Config) Auth(getenv func(string) string) openstack.AuthConfig {
	if !c.OpenStack.IsZero() {
		return c.OpenStack
	}
	return openstack.FromEnv(getenv)
}

// Validate implements config.Validator.
func (c *Config) Validate() error {
	c.derive()
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
	if c.MemoryLimitMiB < 0 {
		return config.Errorf("memory_limit_mib", "%d is negative", c.MemoryLimitMiB)
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
	if c.Messengers.SSM.Enabled {
		if err := validAddr(c.Messengers.SSM.Listen); err != nil {
			return config.Errorf("messengers.ssm.listen", "%v", err)
		}
		if err := c.Messengers.SSM.Config.Validate(); err != nil {
			return config.Prefix("messengers.ssm", err)
		}
	}
	if c.Messengers.Logstash.Enabled {
		if err := validAddr(c.Messengers.Logstash.Listen); err != nil {
			return config.Errorf("messengers.logstash.listen", "%v", err)
		}
		if err := c.Messengers.Logstash.Config.Validate(); err != nil {
			return config.Prefix("messengers.logstash", err)
		}
	}
	if c.Extractors.Nova.Enabled {
		if err := c.Extractors.Nova.Config.Validate(); err != nil {
			return config.Prefix("extractors.nova", err)
		}
	}
	if c.Query.Enabled {
		if err := c.Query.Config.Validate(); err != nil {
			return config.Prefix("query", err)
		}
	}
	if c.NotifyBridge.Enabled {
		if err := c.NotifyBridge.Config.Validate(); err != nil {
			return config.Prefix("notify_bridge", err)
		}
	}
	if c.Verifier.Enabled {
		if err := c.Verifier.Config.Validate(); err != nil {
			return config.Prefix("verifier", err)
		}
	}
	if c.Extractors.Energy.Enabled {
		if err := c.Extractors.Energy.Config.Validate(); err != nil {
			return config.Prefix("extractors.energy", err)
		}
	}
	neutronSection := ExtractorConfig{Enabled: c.Extractors.Neutron.Enabled, Config: c.Extractors.Neutron.Config.Config}
	for name, e := range map[string]ExtractorConfig{"cinder": c.Extractors.Cinder, "neutron": neutronSection} {
		if e.Enabled {
			if err := e.Config.Validate(); err != nil {
				return config.Prefix("extractors."+name, err)
			}
		}
	}
	if !c.OpenStack.IsZero() {
		if err := c.OpenStack.Validate(); err != nil {
			return config.Prefix("openstack", err)
		}
	}
	return nil
}

func validAddr(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port", s)
	}
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
	fs.StringVar(&cfg.Enricher.SiteName, "site-name", cfg.Enricher.SiteName, "GOCDB site `name` every record carries (enricher.site_name)")
	fs.StringVar(&cfg.Messengers.SSM.Spool, "ssm-spool", cfg.Messengers.SSM.Spool, "SSM outgoing `directory` (default <data-dir>/spool/ssm)")
	fs.StringVar(&cfg.OpenStack.Cloud, "os-cloud", cfg.OpenStack.Cloud, "clouds.yaml `cloud` to use (also OS_CLOUD); default: the OS_* environment")
	return path
}

// ledgerPath is where a messenger keeps its delivered batch ids.
func (c *Config) ledgerPath(messenger string) string {
	return filepath.Join(c.DataDir, "ledger", messenger+".ids")
}

// checkTargets validates what only the services that will run need.
func (c *Config) checkTargets(targets []string, getenv func(string) string) error {
	if slices.Contains(targets, TargetEnricher) && c.Enricher.SiteName == "" {
		return config.Errorf("enricher.site_name", "is empty: APEL requires a SiteName on every record (set it, TALLY_ENRICHER_SITE_NAME or --site-name)")
	}
	if slices.ContainsFunc(targets, isExtractor) {
		if _, _, _, err := c.Auth(getenv).Options(); err != nil {
			return fmt.Errorf("OpenStack credentials for the extractors: %w (set OS_* or OS_CLOUD, or the openstack section)", err)
		}
	}
	return nil
}

// runnable drops from targets the services whose configuration is not
// complete, with the reason for each.
func (c *Config) runnable(targets []string, getenv func(string) string) (keep, off []string) {
	_, _, _, authErr := c.Auth(getenv).Options()
	for _, t := range targets {
		switch {
		case t == TargetEnricher && c.Enricher.SiteName == "":
			off = append(off, "the enricher is off: enricher.site_name is empty (--site-name); extracted records wait on the bus")
		case isExtractor(t) && authErr != nil:
			off = append(off, fmt.Sprintf("%s is off: no OpenStack credentials (%v)", t, authErr))
		default:
			keep = append(keep, t)
		}
	}
	return keep, off
}

// source returns an extractor target's source and common configuration.
func (c *Config) source(target string, logger *slog.Logger) (extract.Source, extract.Config) {
	switch target {
	case TargetExtractorCinder:
		return cinder.NewSource(c.Extractors.Cinder.Config), c.Extractors.Cinder.Config
	case TargetExtractorNeutron:
		return neutron.NewSource(c.Extractors.Neutron.Config, logger), c.Extractors.Neutron.Config.Config
	case TargetExtractorEnergy:
		return energy.NewSource(c.Extractors.Energy.Config, logger), c.Extractors.Energy.Config.Config
	}
	return nova.NewSource(c.Extractors.Nova.Config, CloudType(), logger), c.Extractors.Nova.Config.Config
}

// extractors lists the enabled extractor targets.
func (c *Config) extractors() []string {
	return slices.DeleteFunc(enabledTargets(c), func(t string) bool { return !isExtractor(t) })
}
