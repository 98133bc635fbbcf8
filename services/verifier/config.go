package verifier

import (
	"time"

	"github.com/tally-accounting/tally/pkg/config"
	"github.com/tally-accounting/tally/pkg/openstack"
)

// Validation levels (validation_level), as StackTach's nova verifier.
const (
	LevelNone  = "none"
	LevelBasic = "basic"
	LevelAll   = "all"
)

// Config configures the verifier. The keys and their meaning are
// StackTach's (stacktach_verifier_config.json, see
// shared/docs/stacktach-verification.md §1.5); where StackTach required a
// key, the default is its sample configuration's value unless said
// otherwise.
type Config struct {
	// TickTime is the pause, in seconds, between verification passes.
	TickTime float64 `yaml:"tick_time"`
	// SettleTime and SettleUnits: only exists whose audit_period_ending is
	// at least this old are verified, so late usage events can arrive.
	SettleTime  int    `yaml:"settle_time"`
	SettleUnits string `yaml:"settle_units"`
	// PoolSize is the number of verification workers.
	PoolSize int `yaml:"pool_size"`
	// BatchSize is the most exists taken per pass and kind.
	BatchSize int `yaml:"batchsize"`
	// ValidationLevel is none, basic or all (see verify.go).
	ValidationLevel string `yaml:"validation_level"`
	// FlavorFieldName is instance_type_id or instance_flavor_id: the flavor
	// attribute compared between an exists and its launch. Default
	// instance_flavor_id (StackTach's sample had instance_type_id), because
	// versioned notifications carry only the flavor id; with
	// instance_type_id a versioned exists is compared on the flavor id.
	FlavorFieldName string `yaml:"flavor_field_name"`
	// RequiredImageMeta lists the image metadata fields (os_architecture,
	// os_distro, os_version, rax_options) that validation_level all
	// requires. StackTach required all four, which only Rackspace images
	// carry; default none, the format checks still apply to present values.
	RequiredImageMeta []string `yaml:"required_image_meta"`
	// EnableNotifications publishes a verified notification for every
	// verified exists (default off: it needs rabbit).
	EnableNotifications bool   `yaml:"enable_notifications"`
	NovaEventType       string `yaml:"nova_event_type"`
	GlanceEventType     string `yaml:"glance_event_type"`
	// ExponentialBackoffLimit bounds the retries of a publish.
	ExponentialBackoffLimit int `yaml:"exponential_backoff_limit"`
	// ProcessTimeout, in seconds, bounds one verification pass; StackTach's
	// parent restarted a child silent for this long.
	ProcessTimeout int `yaml:"process_timeout"`
	// Rabbit is where verified notifications go.
	Rabbit Rabbit `yaml:"rabbit"`
	// Store keeps the tracked usage and the exists.
	Store StoreConfig `yaml:"store"`
	// Workers ingest batches of bus messages concurrently: while one
	// batch commits, the next ones are read.
	Workers int `yaml:"workers"`
	// IngestBatch is the most bus messages applied in one store
	// transaction (and acked after it).
	IngestBatch int `yaml:"ingest_batch"`
	// Reconcile asks Nova's API about an instance whose exists fails for
	// want of tracked state or against it (StackTach's reconcile; see
	// reconcile.go). Default off.
	Reconcile bool `yaml:"reconcile"`
	// Reconciler configures it: StackTach's reconciler_config file, as a
	// section.
	Reconciler ReconcilerConfig `yaml:"reconciler"`
}

// ReconcilerConfig says how the reconciler reaches Nova. StackTach's
// reconciler read Nova's database through a JSON bridge with a client
// section and a region_mapping; tally asks Nova's API with admin
// credentials, one region per verifier.
type ReconcilerConfig struct {
	// Region is the Nova region asked; empty uses client.region_name.
	Region string `yaml:"region"`
	// Client are credentials allowed to see every project's servers,
	// deleted ones included (admin): pkg/openstack's keys (auth_url,
	// username, password, project_name, ... or cloud for clouds.yaml).
	Client openstack.AuthConfig `yaml:"client"`
	// PoolSize bounds the concurrent calls to Nova.
	PoolSize int `yaml:"pool_size"`
	// Retry bounds the retries of one call (5xx, 429, cut bodies).
	Retry openstack.RetryConfig `yaml:"retry"`
}

// Rabbit is StackTach's rabbit section. Topics maps an exchange (nova,
// glance) to the routing keys verified notifications are published with;
// the exchanges listed are also the ones verified.
type Rabbit struct {
	Host         string              `yaml:"host"`
	Port         int                 `yaml:"port"`
	UserID       string              `yaml:"userid"`
	Password     config.Secret       `yaml:"password"`
	VirtualHost  string              `yaml:"virtual_host"`
	DurableQueue bool                `yaml:"durable_queue"`
	Topics       map[string][]string `yaml:"topics"`
	// NovaExchange and GlanceExchange name the exchanges (keys of Topics)
	// Nova's and Glance's verified notifications go to; StackTach used the
	// service names.
	NovaExchange   string `yaml:"nova_exchange"`
	GlanceExchange string `yaml:"glance_exchange"`
}

// StoreConfig selects the store: sqlite (a file, one verifier) or
// postgres (shared by several verifier replicas).
type StoreConfig struct {
	Driver string `yaml:"driver"`
	// Path is the SQLite database file.
	Path string `yaml:"path"`
	// CacheMiB is SQLite's page cache per connection. The indexes on
	// message keys and instance ids take their entries at random places,
	// so with SQLite's default of 2 MiB a store of millions of exists
	// reads a page from the file for most writes.
	CacheMiB int `yaml:"cache_mib"`
	// DSN is the PostgreSQL connection URL (postgres://user@host/db).
	DSN config.Secret `yaml:"dsn"`
}

// DefaultConfig returns StackTach's sample values (see Config).
func DefaultConfig() Config {
	return Config{
		TickTime: 30, SettleTime: 5, SettleUnits: "minutes", PoolSize: 2, BatchSize: 1000,
		ValidationLevel: LevelBasic, FlavorFieldName: "instance_flavor_id",
		NovaEventType: "compute.instance.exists.verified", GlanceEventType: "image.exists.verified",
		ExponentialBackoffLimit: 10, ProcessTimeout: 3600, Workers: 4, IngestBatch: 500,
		Rabbit: Rabbit{Host: "127.0.0.1", Port: 5672, UserID: "guest", Password: "guest", VirtualHost: "/",
			Topics:       map[string][]string{"nova": {"notifications.info"}, "glance": {"notifications.info"}},
			NovaExchange: "nova", GlanceExchange: "glance"},
		Store: StoreConfig{Driver: "sqlite", Path: "var/verifier.db", CacheMiB: DefaultCacheMiB},
		Reconciler: ReconcilerConfig{PoolSize: 4, Retry: openstack.RetryConfig{MaxAttempts: 3, BaseDelay: 500 * time.Millisecond,
			MaxDelay: 5 * time.Second, RequestTimeout: 30 * time.Second}},
	}
}

var settleUnits = map[string]time.Duration{
	"microseconds": time.Microsecond, "milliseconds": time.Millisecond, "seconds": time.Second,
	"minutes": time.Minute, "hours": time.Hour, "days": 24 * time.Hour, "weeks": 7 * 24 * time.Hour,
}

// Settle is settle_time in settle_units (Python timedelta keywords).
func (c Config) Settle() time.Duration {
	return time.Duration(c.SettleTime) * settleUnits[c.SettleUnits]
}

// Tick is tick_time as a duration.
func (c Config) Tick() time.Duration { return time.Duration(c.TickTime * float64(time.Second)) }

// Validate implements config.Validator.
func (c Config) Validate() error {
	switch {
	case c.TickTime <= 0:
		return config.Errorf("tick_time", "must be positive seconds, got %v", c.TickTime)
	case c.SettleTime < 0:
		return config.Errorf("settle_time", "must not be negative, got %d", c.SettleTime)
	case settleUnits[c.SettleUnits] == 0:
		return config.Errorf("settle_units", "must be one of days, hours, minutes, seconds, milliseconds, microseconds, weeks; got %q", c.SettleUnits)
	case c.PoolSize < 1 || c.PoolSize > 256:
		return config.Errorf("pool_size", "must be between 1 and 256, got %d", c.PoolSize)
	case c.BatchSize < 1:
		return config.Errorf("batchsize", "must be positive, got %d", c.BatchSize)
	case c.ValidationLevel != LevelNone && c.ValidationLevel != LevelBasic && c.ValidationLevel != LevelAll:
		return config.Errorf("validation_level", "must be none, basic or all; got %q", c.ValidationLevel)
	case c.FlavorFieldName != "instance_type_id" && c.FlavorFieldName != "instance_flavor_id":
		return config.Errorf("flavor_field_name", "must be instance_type_id or instance_flavor_id; got %q", c.FlavorFieldName)
	case c.ExponentialBackoffLimit < 0:
		return config.Errorf("exponential_backoff_limit", "must not be negative, got %d", c.ExponentialBackoffLimit)
	case c.ProcessTimeout < 1:
		return config.Errorf("process_timeout", "must be positive seconds, got %d", c.ProcessTimeout)
	case c.Workers < 1 || c.Workers > 256:
		return config.Errorf("workers", "must be between 1 and 256, got %d", c.Workers)
	case c.IngestBatch < 1 || c.IngestBatch > 10000:
		return config.Errorf("ingest_batch", "must be between 1 and 10000, got %d", c.IngestBatch)
	case len(c.Rabbit.Topics) == 0:
		return config.Errorf("rabbit.topics", "is empty: no exchange would be verified")
	case c.Store.Driver != "sqlite" && c.Store.Driver != "postgres":
		return config.Errorf("store.driver", "must be sqlite or postgres, got %q", c.Store.Driver)
	case c.Store.Driver == "sqlite" && c.Store.Path == "":
		return config.Errorf("store.path", "is empty")
	case c.Store.CacheMiB < 0 || c.Store.CacheMiB > 1<<16:
		return config.Errorf("store.cache_mib", "must be between 0 (SQLite's default) and 65536, got %d", c.Store.CacheMiB)
	case c.Store.Driver == "postgres" && c.Store.DSN == "":
		return config.Errorf("store.dsn", "is empty (postgres://user@host:5432/database)")
	case c.Reconcile && c.Reconciler.Client.IsZero():
		return config.Errorf("reconciler.client", "is empty: reconcile needs Nova admin credentials (auth_url, username, password, project_name, or cloud)")
	case c.Reconcile && (c.Reconciler.PoolSize < 1 || c.Reconciler.PoolSize > 64):
		return config.Errorf("reconciler.pool_size", "must be between 1 and 64, got %d", c.Reconciler.PoolSize)
	case c.EnableNotifications && c.Rabbit.NovaExchange == "":
		return config.Errorf("rabbit.nova_exchange", "is empty")
	case c.EnableNotifications && c.Rabbit.GlanceExchange == "":
		return config.Errorf("rabbit.glance_exchange", "is empty")
	case c.EnableNotifications && (c.Rabbit.Host == "" || c.Rabbit.Port < 1):
		return config.Errorf("rabbit.host", "and rabbit.port are needed with enable_notifications")
	}
	for _, f := range c.RequiredImageMeta {
		switch f {
		case "os_architecture", "os_distro", "os_version", "rax_options":
		default:
			return config.Errorf("required_image_meta", "unknown field %q", f)
		}
	}
	if c.Reconcile {
		if err := c.Reconciler.Client.Validate(); err != nil {
			return config.Prefix("reconciler.client", err)
		}
	}
	for ex := range c.Rabbit.Topics {
		if ex == "" {
			return config.Errorf("rabbit.topics", "has an empty exchange name")
		}
	}
	return nil
}
