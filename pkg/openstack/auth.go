// Package openstack connects tally's extractors to an OpenStack cloud with
// gophercloud: credentials from clouds.yaml, OS_* variables or the config
// file; retries with back-off on 5xx, 429 and truncated bodies; re-auth on
// 401; and errors that name the refused policy on 403.
package openstack

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"

	"github.com/tally-accounting/tally/pkg/config"
)

// AuthConfig says how to authenticate. With Cloud set, the clouds.yaml entry
// of that name is used; otherwise the keys below; otherwise the OS_*
// environment.
type AuthConfig struct {
	// Cloud names a clouds.yaml entry (also OS_CLOUD).
	Cloud   string `yaml:"cloud"`
	AuthURL string `yaml:"auth_url"`
	// AuthType is password, v3applicationcredential or token; empty guesses
	// from the keys that are set.
	AuthType          string        `yaml:"auth_type"`
	Username          string        `yaml:"username"`
	UserID            string        `yaml:"user_id"`
	Password          config.Secret `yaml:"password"`
	UserDomainName    string        `yaml:"user_domain_name"`
	UserDomainID      string        `yaml:"user_domain_id"`
	ProjectName       string        `yaml:"project_name"`
	ProjectID         string        `yaml:"project_id"`
	ProjectDomainName string        `yaml:"project_domain_name"`
	ProjectDomainID   string        `yaml:"project_domain_id"`
	// DomainName/DomainID request a domain-scoped token.
	DomainName string `yaml:"domain_name"`
	DomainID   string `yaml:"domain_id"`
	// SystemScope "all" requests a system-scoped token.
	SystemScope                 string        `yaml:"system_scope"`
	ApplicationCredentialID     string        `yaml:"application_credential_id"`
	ApplicationCredentialName   string        `yaml:"application_credential_name"`
	ApplicationCredentialSecret config.Secret `yaml:"application_credential_secret"`
	Token                       config.Secret `yaml:"token"`
	Region                      string        `yaml:"region_name"`
	// Interface is public, internal or admin.
	Interface string `yaml:"interface"`
	CACert    string `yaml:"cacert"`
	Insecure  bool   `yaml:"insecure"`
}

// IsZero reports whether nothing was configured.
func (a AuthConfig) IsZero() bool { return a == AuthConfig{} }

// FromEnv reads the OS_* variables the OpenStack clients use.
func FromEnv(getenv func(string) string) AuthConfig {
	first := func(keys ...string) string {
		for _, k := range keys {
			if v := getenv(k); v != "" {
				return v
			}
		}
		return ""
	}
	return AuthConfig{
		Cloud:                       getenv("OS_CLOUD"),
		AuthURL:                     getenv("OS_AUTH_URL"),
		AuthType:                    getenv("OS_AUTH_TYPE"),
		Username:                    getenv("OS_USERNAME"),
		UserID:                      getenv("OS_USER_ID"),
		Password:                    config.Secret(getenv("OS_PASSWORD")),
		UserDomainName:              first("OS_USER_DOMAIN_NAME", "OS_DOMAIN_NAME"),
		UserDomainID:                first("OS_USER_DOMAIN_ID", "OS_DOMAIN_ID"),
		ProjectName:                 first("OS_PROJECT_NAME", "OS_TENANT_NAME"),
		ProjectID:                   first("OS_PROJECT_ID", "OS_TENANT_ID"),
		ProjectDomainName:           getenv("OS_PROJECT_DOMAIN_NAME"),
		ProjectDomainID:             getenv("OS_PROJECT_DOMAIN_ID"),
		SystemScope:                 getenv("OS_SYSTEM_SCOPE"),
		ApplicationCredentialID:     getenv("OS_APPLICATION_CREDENTIAL_ID"),
		ApplicationCredentialName:   getenv("OS_APPLICATION_CREDENTIAL_NAME"),
		ApplicationCredentialSecret: config.Secret(getenv("OS_APPLICATION_CREDENTIAL_SECRET")),
		Token:                       config.Secret(getenv("OS_TOKEN")),
		Region:                      getenv("OS_REGION_NAME"),
		Interface:                   first("OS_INTERFACE", "OS_ENDPOINT_TYPE"),
		CACert:                      getenv("OS_CACERT"),
		Insecure:                    strings.EqualFold(getenv("OS_INSECURE"), "true"),
	}
}

// Validate implements config.Validator for a config that does not use
// clouds.yaml.
func (a AuthConfig) Validate() error {
	if a.Cloud != "" {
		return nil
	}
	if a.AuthURL == "" {
		return config.Errorf("auth_url", "is empty (set it, OS_AUTH_URL, or a clouds.yaml cloud)")
	}
	switch a.authType() {
	case "password":
		if a.Username == "" && a.UserID == "" {
			return config.Errorf("username", "is empty (password auth needs username or user_id)")
		}
		if a.Password == "" {
			return config.Errorf("password", "is empty")
		}
	case "v3applicationcredential":
		if a.ApplicationCredentialID == "" && a.ApplicationCredentialName == "" {
			return config.Errorf("application_credential_id", "is empty")
		}
		if a.ApplicationCredentialSecret == "" {
			return config.Errorf("application_credential_secret", "is empty")
		}
	case "token", "v3token":
		if a.Token == "" {
			return config.Errorf("token", "is empty")
		}
	default:
		return config.Errorf("auth_type", "%q is not supported (password, v3password, v3applicationcredential, token)", a.AuthType)
	}
	if a.SystemScope != "" && a.SystemScope != "all" {
		return config.Errorf("system_scope", "must be \"all\" or empty, got %q", a.SystemScope)
	}
	return nil
}

func (a AuthConfig) authType() string {
	switch t := strings.ToLower(a.AuthType); t {
	case "v3password", "password":
		return "password"
	case "v3applicationcredential", "applicationcredential":
		return "v3applicationcredential"
	case "":
		switch {
		case a.ApplicationCredentialID != "" || a.ApplicationCredentialName != "":
			return "v3applicationcredential"
		case a.Token != "" && a.Password == "":
			return "token"
		}
		return "password"
	default:
		return t
	}
}

// Options returns gophercloud's auth and endpoint options and the TLS
// config for a.
func (a AuthConfig) Options() (gophercloud.AuthOptions, gophercloud.EndpointOpts, *tls.Config, error) {
	if a.Cloud != "" {
		opts := []clouds.ParseOption{clouds.WithCloudName(a.Cloud)}
		if a.Region != "" {
			opts = append(opts, clouds.WithRegion(a.Region))
		}
		ao, eo, tlsCfg, err := clouds.Parse(opts...)
		if err != nil {
			return ao, eo, nil, fmt.Errorf("clouds.yaml cloud %q: %w", a.Cloud, err)
		}
		ao.AllowReauth = true
		return ao, eo, tlsCfg, nil
	}
	if err := a.Validate(); err != nil {
		return gophercloud.AuthOptions{}, gophercloud.EndpointOpts{}, nil, err
	}
	ao := gophercloud.AuthOptions{
		IdentityEndpoint: a.AuthURL,
		Username:         a.Username,
		UserID:           a.UserID,
		DomainName:       a.UserDomainName,
		DomainID:         a.UserDomainID,
		AllowReauth:      true,
	}
	switch a.authType() {
	case "password":
		ao.Password = a.Password.Reveal()
	case "v3applicationcredential":
		ao.ApplicationCredentialID = a.ApplicationCredentialID
		ao.ApplicationCredentialName = a.ApplicationCredentialName
		ao.ApplicationCredentialSecret = a.ApplicationCredentialSecret.Reveal()
	default:
		ao.TokenID = a.Token.Reveal()
	}
	switch {
	case a.authType() == "v3applicationcredential":
		// An application credential carries its own scope.
	case a.SystemScope == "all":
		ao.Scope = &gophercloud.AuthScope{System: true}
	case a.ProjectID != "":
		ao.Scope = &gophercloud.AuthScope{ProjectID: a.ProjectID}
	case a.ProjectName != "":
		ao.Scope = &gophercloud.AuthScope{ProjectName: a.ProjectName, DomainName: a.ProjectDomainName, DomainID: a.ProjectDomainID}
		if ao.Scope.DomainName == "" && ao.Scope.DomainID == "" {
			ao.Scope.DomainName, ao.Scope.DomainID = a.UserDomainName, a.UserDomainID
		}
	case a.DomainName != "" || a.DomainID != "":
		ao.Scope = &gophercloud.AuthScope{DomainName: a.DomainName, DomainID: a.DomainID}
	}
	eo := gophercloud.EndpointOpts{Region: a.Region, Availability: availability(a.Interface)}
	var tlsCfg *tls.Config
	if a.CACert != "" || a.Insecure {
		tlsCfg = &tls.Config{InsecureSkipVerify: a.Insecure} //nolint:gosec // the operator asked for it
		if a.CACert != "" {
			pem, err := os.ReadFile(a.CACert)
			if err != nil {
				return ao, eo, nil, config.Errorf("cacert", "%v", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return ao, eo, nil, config.Errorf("cacert", "%s holds no PEM certificate", a.CACert)
			}
			tlsCfg.RootCAs = pool
		}
	}
	return ao, eo, tlsCfg, nil
}

func availability(iface string) gophercloud.Availability {
	switch strings.ToLower(strings.TrimSuffix(iface, "URL")) {
	case "internal":
		return gophercloud.AvailabilityInternal
	case "admin":
		return gophercloud.AvailabilityAdmin
	}
	return gophercloud.AvailabilityPublic
}

// Cloud is an authenticated connection to one region.
type Cloud struct {
	Provider *gophercloud.ProviderClient
	Endpoint gophercloud.EndpointOpts
	Stats    *Stats
}

// Connect authenticates. The HTTP transport retries per retry and counts
// calls in the returned Cloud's Stats.
func Connect(ctx context.Context, a AuthConfig, retry RetryConfig) (*Cloud, error) {
	return ConnectCounting(ctx, a, retry, &Stats{})
}

// ConnectCounting is Connect counting calls in stats, shared by the
// connections of one run (one per project in per-project mode).
func ConnectCounting(ctx context.Context, a AuthConfig, retry RetryConfig, stats *Stats) (*Cloud, error) {
	ao, eo, tlsCfg, err := a.Options()
	if err != nil {
		return nil, err
	}
	base := http.DefaultTransport.(*http.Transport).Clone()
	if tlsCfg != nil {
		base.TLSClientConfig = tlsCfg
	}
	pc, err := gopenstack.NewClient(ao.IdentityEndpoint)
	if err != nil {
		return nil, fmt.Errorf("auth url %q: %w", ao.IdentityEndpoint, err)
	}
	pc.HTTPClient = http.Client{Transport: &retryTransport{next: base, cfg: retry, stats: stats}, Timeout: retry.RequestTimeout}
	if err := gopenstack.Authenticate(ctx, pc, ao); err != nil {
		return nil, fmt.Errorf("authenticate at %s: %w", ao.IdentityEndpoint, Explain(err))
	}
	return &Cloud{Provider: pc, Endpoint: eo, Stats: stats}, nil
}

// APIError is an OpenStack API refusal, with the message from its body.
type APIError struct {
	Method, URL string
	Status      int
	Message     string
	err         error
}

func (e *APIError) Error() string {
	hint := ""
	switch e.Status {
	case http.StatusForbidden:
		hint = " (the policy named is what the role lacks)"
	case http.StatusUnauthorized:
		hint = " (check the credentials)"
	}
	return fmt.Sprintf("%s %s: HTTP %d: %s%s", e.Method, e.URL, e.Status, e.Message, hint)
}

func (e *APIError) Unwrap() error { return e.err }

// Explain turns gophercloud's HTTP errors into an *APIError that says what
// was refused: Keystone and Nova name the policy in their 403 bodies.
func Explain(err error) error {
	var uerr gophercloud.ErrUnexpectedResponseCode
	if !errors.As(err, &uerr) {
		return err
	}
	return &APIError{Method: uerr.Method, URL: uerr.URL, Status: uerr.Actual, Message: bodyMessage(uerr.Body), err: err}
}

// StatusOf returns the HTTP status of an API error, or 0.
func StatusOf(err error) int {
	var aerr *APIError
	if errors.As(err, &aerr) {
		return aerr.Status
	}
	var uerr gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &uerr) {
		return uerr.Actual
	}
	return 0
}

// Roles returns the role names of the cloud's token.
func (c *Cloud) Roles() []string {
	res, ok := c.Provider.GetAuthResult().(tokens.CreateResult)
	if !ok {
		return nil
	}
	roles, err := res.ExtractRoles()
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(roles))
	for _, r := range roles {
		out = append(out, r.Name)
	}
	return out
}
