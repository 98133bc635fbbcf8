// Package extract is what every extractor shares: the projects to extract
// (Keystone tag and list), each project's window and its lease, the access
// mode, batching records onto the bus, and moving a window only once every
// record of it reached every messenger. An extractor supplies a Source that
// knows its API.
package extract

import (
	"time"

	"github.com/tally-accounting/tally/pkg/config"
	"github.com/tally-accounting/tally/pkg/openstack"
)

// Access modes.
const (
	AccessAuto       = "auto"
	AccessAllTenants = "all_tenants"
	AccessPerProject = "per_project"
)

// Config is what every extractor is configured with.
type Config struct {
	// Projects to extract (ids or names), besides the tagged ones.
	Projects []string `yaml:"projects"`
	// Tag selects every Keystone project carrying it (cASO's caso_tag);
	// empty selects only Projects.
	Tag string `yaml:"caso_tag"`
	// AccessMode is auto (all_tenants when the credentials may, else per
	// project), all_tenants or per_project.
	AccessMode string `yaml:"access_mode"`
	// Concurrency bounds projects extracted at once in per-project mode.
	Concurrency int `yaml:"concurrency"`
	// PageSize is the limit asked of list calls.
	PageSize int `yaml:"page_size"`
	// BatchSize is records per bus message.
	BatchSize int `yaml:"batch_size"`
	// Interval between runs in tally serve.
	Interval time.Duration `yaml:"interval"`
	// DeliveryTimeout bounds the wait for every batch to reach every
	// messenger before a run gives up on moving its windows.
	DeliveryTimeout time.Duration `yaml:"delivery_timeout"`
	// MaxPendingBatches bounds the batches published and not yet
	// delivered: past it the listing waits, so a slow messenger holds the
	// extractor back instead of the bus and its caches filling up. 0 is
	// DefaultMaxPendingBatches.
	MaxPendingBatches int                   `yaml:"max_pending_batches"`
	Retry             openstack.RetryConfig `yaml:"retry"`
}

// DefaultMaxPendingBatches keeps the enricher's workers and prefetch busy
// (4 workers, 8 fetched ahead) while a few more batches are on their way.
const DefaultMaxPendingBatches = 16

// DefaultConfig returns cASO's defaults where cASO has them.
func DefaultConfig() Config {
	return Config{
		Tag:               "caso",
		AccessMode:        AccessAuto,
		Concurrency:       4,
		PageSize:          1000,
		BatchSize:         500,
		Interval:          time.Hour,
		DeliveryTimeout:   5 * time.Minute,
		MaxPendingBatches: DefaultMaxPendingBatches,
		Retry:             openstack.DefaultRetry(),
	}
}

// Validate implements config.Validator.
func (c Config) Validate() error {
	switch {
	case c.AccessMode != AccessAuto && c.AccessMode != AccessAllTenants && c.AccessMode != AccessPerProject:
		return config.Errorf("access_mode", "%q is not auto, all_tenants or per_project", c.AccessMode)
	case c.Concurrency < 1 || c.Concurrency > 64:
		return config.Errorf("concurrency", "must be between 1 and 64, got %d", c.Concurrency)
	case c.PageSize < 1 || c.PageSize > 10000:
		return config.Errorf("page_size", "must be between 1 and 10000, got %d", c.PageSize)
	case c.BatchSize < 1 || c.BatchSize > 5000:
		return config.Errorf("batch_size", "must be between 1 and 5000, got %d", c.BatchSize)
	case c.Interval < time.Minute:
		return config.Errorf("interval", "must be at least 1m, got %v", c.Interval)
	case c.DeliveryTimeout < time.Second:
		return config.Errorf("delivery_timeout", "must be at least 1s")
	case c.MaxPendingBatches < 0 || c.MaxPendingBatches > 10000:
		return config.Errorf("max_pending_batches", "must be between 1 and 10000 (0 for the default), got %d", c.MaxPendingBatches)
	case c.Tag == "" && len(c.Projects) == 0:
		return config.Errorf("projects", "no projects and no caso_tag: nothing would be extracted")
	case c.Retry.MaxAttempts < 1:
		return config.Errorf("retry.max_attempts", "must be at least 1")
	}
	return nil
}
