package enricher

import (
	"fmt"

	"github.com/tally-accounting/tally/pkg/config"
)

// Config configures the enricher.
type Config struct {
	// Workers handle bus messages concurrently.
	Workers int `yaml:"workers"`
	// SiteName is the GOCDB site name every record carries.
	SiteName string `yaml:"site_name"`
	// ServiceName is the CloudComputeService; empty means SiteName.
	ServiceName string `yaml:"service_name"`
	// VOProperty is the Keystone project property holding the VO (EGI
	// sites use egi.VO).
	VOProperty string `yaml:"vo_property"`
	// MappingFile is cASO's deprecated voms.json, used when a project has
	// no VO property.
	MappingFile string `yaml:"mapping_file"`
	// CloudType names the producer on every record (APEL CloudType); the
	// binary sets it to its own name and version.
	CloudType string `yaml:"-"`
	// DefaultVO is used for projects with no VO anywhere; empty holds their
	// records (dead-lettered, window not moved) until one is set.
	DefaultVO string `yaml:"default_vo"`
	// Messengers are the destinations every batch is pushed to. In the
	// all-in-one mode they default to every enabled messenger.
	Messengers []MessengerTarget `yaml:"messengers"`
}

// MessengerTarget is one messenger's gRPC address.
type MessengerTarget struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
}

// DefaultConfig returns the enricher's defaults.
func DefaultConfig() Config { return Config{Workers: 4, VOProperty: "VO"} }

// Service returns the CloudComputeService name.
func (c Config) Service() string {
	if c.ServiceName != "" {
		return c.ServiceName
	}
	return c.SiteName
}

// Validate implements config.Validator.
func (c Config) Validate() error {
	if c.Workers < 1 || c.Workers > 256 {
		return config.Errorf("workers", "must be between 1 and 256, got %d", c.Workers)
	}
	if c.VOProperty == "" {
		return config.Errorf("vo_property", "is empty (cASO's default is VO; EGI sites use egi.VO)")
	}
	if c.MappingFile != "" {
		if _, err := LoadMappingFile(c.MappingFile); err != nil {
			return config.Errorf("mapping_file", "%v", err)
		}
	}
	names := map[string]bool{}
	for i, m := range c.Messengers {
		switch {
		case m.Name == "":
			return config.Errorf(fmt.Sprintf("messengers[%d]", i)+".name", "is empty")
		case names[m.Name]:
			return config.Errorf(fmt.Sprintf("messengers[%d]", i)+".name", "%q is listed twice", m.Name)
		case m.Address == "":
			return config.Errorf(fmt.Sprintf("messengers[%d]", i)+".address", "is empty")
		}
		names[m.Name] = true
	}
	return nil
}
