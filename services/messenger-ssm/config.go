package ssm

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"

	"github.com/tally-accounting/tally/pkg/apel"
	"github.com/tally-accounting/tally/pkg/config"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/record"
)

// Config configures the SSM messenger.
type Config struct {
	// Spool is the SSM outgoing directory, the dirq queue ssmsend reads
	// (its `path`; cASO's default is /var/spool/apel/outgoing/openstack).
	Spool string `yaml:"spool_dir"`
	// StateDir holds the write journal and the record of finished
	// batches. It must be on the spool's filesystem (elements are hard
	// links); the default, <spool_dir>/.tally-ssm, always is, and dirq
	// readers ignore it (its name is not 8 hex digits).
	StateDir string `yaml:"state_dir"`
	// MaxSize is the most records per message (cASO's [ssm] max_size).
	MaxSize int `yaml:"max_size"`
	// MaxBytes is the largest message, unsigned; AMS refuses signed
	// messages over 1 MB.
	MaxBytes int `yaml:"max_bytes"`
	// FileMode (octal) of the message files; group-writable so that
	// ssmsend, running as another user in the group, can lock them.
	FileMode string `yaml:"file_mode"`
	// DirMode (octal) of the intermediate directories ssmsend must write.
	DirMode string `yaml:"dir_mode"`
	// RecordTypes this messenger takes; empty means every type SSM can
	// carry (cloud, accelerator, ip, storage).
	RecordTypes []string `yaml:"record_types"`
}

// DefaultConfig returns the defaults: cASO's max_size and record types.
func DefaultConfig() Config {
	return Config{
		Spool:       "./var/spool/ssm",
		MaxSize:     apel.DefaultMaxRecords,
		MaxBytes:    apel.DefaultMaxBytes,
		FileMode:    "0660",
		DirMode:     "0770",
		RecordTypes: []string{record.Cloud, record.IP, record.Accelerator, record.Storage},
	}
}

// Validate implements config.Validator.
func (c Config) Validate() error {
	if c.Spool == "" {
		return config.Errorf("spool_dir", "is empty")
	}
	if c.MaxSize < 1 || c.MaxSize > apel.MaxRecordsLimit {
		return config.Errorf("max_size", "must be between 1 and %d (APEL's limit per message), got %d", apel.MaxRecordsLimit, c.MaxSize)
	}
	if c.MaxBytes < 16<<10 || c.MaxBytes > 1<<20 {
		return config.Errorf("max_bytes", "must be between 16384 and 1048576 (AMS refuses messages over 1 MB), got %d", c.MaxBytes)
	}
	if m, err := parseMode(c.FileMode); err != nil {
		return config.Errorf("file_mode", "%v", err)
	} else if m&0o600 != 0o600 {
		return config.Errorf("file_mode", "%s does not let the owner read and write", c.FileMode)
	}
	if m, err := parseMode(c.DirMode); err != nil {
		return config.Errorf("dir_mode", "%v", err)
	} else if m&0o700 != 0o700 {
		return config.Errorf("dir_mode", "%s does not give the owner rwx", c.DirMode)
	}
	if _, err := c.types(); err != nil {
		return err
	}
	return nil
}

// Types returns the record types to pass to messenger.NewServer.
func (c Config) Types() (map[tallyv1.RecordType]bool, error) { return c.types() }

func (c Config) types() (map[tallyv1.RecordType]bool, error) {
	if len(c.RecordTypes) == 0 {
		return map[tallyv1.RecordType]bool{
			tallyv1.RecordType_RECORD_TYPE_CLOUD: true, tallyv1.RecordType_RECORD_TYPE_ACCELERATOR: true,
			tallyv1.RecordType_RECORD_TYPE_IP: true, tallyv1.RecordType_RECORD_TYPE_STORAGE: true,
		}, nil
	}
	ts, err := record.ParseTypes(c.RecordTypes)
	if err != nil {
		return nil, config.Errorf("record_types", "%v", err)
	}
	if ts[tallyv1.RecordType_RECORD_TYPE_ENERGY] {
		return nil, config.Errorf("record_types", "energy cannot go to SSM: APEL has no energy record and cASO's SSM "+
			"messenger fails on one (send energy to the GreenDIGIT or Logstash messenger)")
	}
	return ts, nil
}

func (c Config) stateDir() string {
	if c.StateDir != "" {
		return c.StateDir
	}
	return filepath.Join(c.Spool, ".tally-ssm")
}

func parseMode(s string) (fs.FileMode, error) {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("%q is not an octal permission mode like 0660", s)
	}
	return fs.FileMode(m), nil
}
