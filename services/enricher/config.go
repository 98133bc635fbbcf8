package enricher

import (
	"fmt"

	"github.com/tally-accounting/tally/pkg/config"
)

// Config configures the enricher.
type Config struct {
	// Workers handle bus messages concurrently.
	Workers int `yaml:"workers"`
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
func DefaultConfig() Config { return Config{Workers: 4} }

// Validate implements config.Validator.
func (c Config) Validate() error {
	if c.Workers < 1 || c.Workers > 256 {
		return config.Errorf("workers", "must be between 1 and 256, got %d", c.Workers)
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
