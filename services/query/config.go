package query

import (
	"net"

	"github.com/tally-accounting/tally/pkg/config"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/record"
)

// Config configures the query service.
type Config struct {
	// Store is where records are kept: empty for SQLite at
	// <data_dir>/query.db, sqlite:///path, or postgres://user@host/db.
	Store string `yaml:"store"`
	// Listen is the internal Messenger gRPC address the enricher pushes to.
	Listen string `yaml:"listen"`
	// RecordTypes this messenger takes; empty means all.
	RecordTypes []string `yaml:"record_types"`
	// Auth guards the public RecordQuery API.
	Auth Auth `yaml:"auth"`
	// CacheMiB is SQLite's page cache per connection (0: DefaultCacheMiB).
	// Larger keeps more of a big store's indexes in memory; tally extract,
	// a short run, uses a small one so its memory stays bounded.
	CacheMiB int `yaml:"cache_mib"`
}

// DefaultCacheMiB is SQLite's page cache per connection by default.
const DefaultCacheMiB = 64

func (c Config) cacheMiB() int {
	if c.CacheMiB > 0 {
		return c.CacheMiB
	}
	return DefaultCacheMiB
}

// Auth says who may call the RecordQuery API.
type Auth struct {
	// Token, when set, is accepted as "authorization: Bearer <token>".
	Token config.Secret `yaml:"token"`
	// TLSCert and TLSKey (PEM files) turn TLS on for the listener.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// ClientCA (PEM) makes client certificates signed by it a credential
	// (mutual TLS); it needs TLSCert and TLSKey.
	ClientCA string `yaml:"client_ca"`
	// AllowUnauthenticatedLoopback lets callers on 127.0.0.1 or ::1 read
	// without a credential, as a local grpcurl or tally query does.
	AllowUnauthenticatedLoopback bool `yaml:"allow_unauthenticated_loopback"`
}

// DefaultListen is the query messenger's internal address.
const DefaultListen = "127.0.0.1:50063"

// DefaultConfig returns the defaults: SQLite under the data dir, reads
// without credentials from loopback only.
func DefaultConfig() Config {
	return Config{Listen: DefaultListen, Auth: Auth{AllowUnauthenticatedLoopback: true}}
}

// Validate implements config.Validator.
func (c Config) Validate() error {
	if c.Store != "" {
		if _, _, err := parseStore(c.Store, ""); err != nil {
			return config.Errorf("store", "%v", err)
		}
	}
	if c.CacheMiB < 0 {
		return config.Errorf("cache_mib", "%d is negative", c.CacheMiB)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return config.Errorf("listen", "%q is not host:port: %v", c.Listen, err)
	}
	if _, err := c.Types(); err != nil {
		return err
	}
	return config.Prefix("auth", c.Auth.Validate())
}

// Types returns the record types to pass to messenger.NewServer.
func (c Config) Types() (map[tallyv1.RecordType]bool, error) {
	ts, err := record.ParseTypes(c.RecordTypes)
	if err != nil {
		return nil, config.Errorf("record_types", "%v", err)
	}
	return ts, nil
}

// Validate implements config.Validator.
func (a Auth) Validate() error {
	if (a.TLSCert == "") != (a.TLSKey == "") {
		return config.Errorf("tls_cert", "tls_cert and tls_key go together")
	}
	if a.ClientCA != "" && a.TLSCert == "" {
		return config.Errorf("client_ca", "mutual TLS needs the server's tls_cert and tls_key")
	}
	if a.Token == "" && a.ClientCA == "" && !a.AllowUnauthenticatedLoopback {
		return config.Errorf("token", "no token, no client_ca and allow_unauthenticated_loopback false: nobody could call the API")
	}
	if a.Token != "" && len(a.Token.Reveal()) < 16 {
		return config.Errorf("token", "shorter than 16 characters")
	}
	return nil
}
