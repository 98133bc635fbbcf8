package nova

import (
	"fmt"

	"github.com/tally-accounting/tally/pkg/config"
	"github.com/tally-accounting/tally/pkg/extract"
)

// Config configures the Nova extractor of one region: the keys every
// extractor has, plus Nova's.
type Config struct {
	extract.Config `yaml:",inline"`
	// Microversion of the compute API; 2.47 or later embeds the flavor
	// (with its extra specs as at boot) in each server.
	Microversion         string `yaml:"microversion"`
	BenchmarkTypeKey     string `yaml:"benchmark_name_key"`
	BenchmarkValueKey    string `yaml:"benchmark_value_key"`
	AcceleratorTypeKey   string `yaml:"accelerator_type_key"`
	AcceleratorVendorKey string `yaml:"accelerator_vendor_key"`
	AcceleratorModelKey  string `yaml:"accelerator_model_key"`
	AcceleratorNumberKey string `yaml:"accelerator_number_key"`
}

// DefaultConfig returns cASO's defaults where cASO has them.
func DefaultConfig() Config {
	k := DefaultKeys()
	return Config{
		Config:               extract.DefaultConfig(),
		Microversion:         "2.79",
		BenchmarkTypeKey:     k.BenchmarkType,
		BenchmarkValueKey:    k.BenchmarkValue,
		AcceleratorTypeKey:   k.AcceleratorType,
		AcceleratorVendorKey: k.AcceleratorVendor,
		AcceleratorModelKey:  k.AcceleratorModel,
		AcceleratorNumberKey: k.AcceleratorNumber,
	}
}

// Keys returns the extra-spec keys.
func (c Config) Keys() Keys {
	return Keys{
		BenchmarkType: c.BenchmarkTypeKey, BenchmarkValue: c.BenchmarkValueKey,
		AcceleratorType: c.AcceleratorTypeKey, AcceleratorVendor: c.AcceleratorVendorKey,
		AcceleratorModel: c.AcceleratorModelKey, AcceleratorNumber: c.AcceleratorNumberKey,
	}
}

// Validate implements config.Validator.
func (c Config) Validate() error {
	if err := c.Config.Validate(); err != nil {
		return err
	}
	if !atLeast247(c.Microversion) {
		return config.Errorf("microversion", "%q: tally needs 2.47 or later (the flavor embedded in the server)", c.Microversion)
	}
	return nil
}

func atLeast247(mv string) bool {
	var major, minor int
	if n, _ := fmt.Sscanf(mv, "%d.%d", &major, &minor); n != 2 {
		return mv == "latest"
	}
	return major > 2 || (major == 2 && minor >= 47)
}
