package openstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
)

func fastRetry() RetryConfig {
	return RetryConfig{MaxAttempts: 4, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond, RequestTimeout: 5 * time.Second}
}

func TestRetryTransport(t *testing.T) {
	tests := []struct {
		name       string
		failures   int // answers before the good one
		fail       func(w http.ResponseWriter)
		wantStatus int
		wantErr    bool
		wantCalls  int64
	}{
		{"503 then ok", 2, func(w http.ResponseWriter) { w.WriteHeader(503) }, 200, false, 3},
		{"429 with Retry-After", 1, func(w http.ResponseWriter) {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(429)
		}, 200, false, 2},
		{"truncated JSON", 1, func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"servers": [{"id": "a"`)
		}, 200, false, 2},
		{"gives up with the last status", 10, func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(502)
			io.WriteString(w, `{"badGateway": {"message": "upstream down"}}`)
		}, 502, false, 4},
		{"404 is not retried", 10, func(w http.ResponseWriter) { w.WriteHeader(404) }, 404, false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if int(n.Add(1)) <= tt.failures {
					tt.fail(w)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"servers": []}`)
			}))
			defer srv.Close()
			stats := &Stats{}
			c := &http.Client{Transport: &retryTransport{next: http.DefaultTransport, cfg: fastRetry(), stats: stats}}
			resp, err := c.Get(srv.URL)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tt.wantStatus {
					t.Errorf("status = %d, want %d (%s)", resp.StatusCode, tt.wantStatus, body)
				}
			}
			if got := stats.Calls.Load(); got != tt.wantCalls {
				t.Errorf("calls = %d, want %d", got, tt.wantCalls)
			}
		})
	}
}

func TestRetryTransportStopsWithTheContext(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "60")
		w.WriteHeader(429)
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	c := &http.Client{Transport: &retryTransport{next: http.DefaultTransport, cfg: fastRetry(), stats: &Stats{}}}
	start := time.Now()
	_, err := c.Do(req)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want the context's deadline", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Error("waited out Retry-After instead of the context")
	}
}

func TestAuthOptions(t *testing.T) {
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	tests := []struct {
		name    string
		getenv  func(string) string
		check   func(t *testing.T, ao gophercloud.AuthOptions, eo gophercloud.EndpointOpts)
		wantErr string
	}{
		{"password, project scope", env("OS_AUTH_URL", "http://k/v3", "OS_USERNAME", "caso", "OS_PASSWORD", "pw",
			"OS_USER_DOMAIN_NAME", "Default", "OS_PROJECT_NAME", "atlas", "OS_PROJECT_DOMAIN_NAME", "Default", "OS_REGION_NAME", "R1"),
			func(t *testing.T, ao gophercloud.AuthOptions, eo gophercloud.EndpointOpts) {
				if ao.Username != "caso" || ao.Password != "pw" || ao.DomainName != "Default" ||
					ao.Scope == nil || ao.Scope.ProjectName != "atlas" || ao.Scope.DomainName != "Default" || !ao.AllowReauth {
					t.Errorf("auth options %+v scope %+v", ao, ao.Scope)
				}
				if eo.Region != "R1" || eo.Availability != gophercloud.AvailabilityPublic {
					t.Errorf("endpoint options %+v", eo)
				}
			}, ""},
		{"system scope", env("OS_AUTH_URL", "http://k/v3", "OS_USERNAME", "admin", "OS_PASSWORD", "pw", "OS_SYSTEM_SCOPE", "all"),
			func(t *testing.T, ao gophercloud.AuthOptions, _ gophercloud.EndpointOpts) {
				if ao.Scope == nil || !ao.Scope.System {
					t.Errorf("scope %+v, want system", ao.Scope)
				}
			}, ""},
		{"application credential", env("OS_AUTH_URL", "http://k/v3", "OS_AUTH_TYPE", "v3applicationcredential",
			"OS_APPLICATION_CREDENTIAL_ID", "ac1", "OS_APPLICATION_CREDENTIAL_SECRET", "s", "OS_INTERFACE", "internal"),
			func(t *testing.T, ao gophercloud.AuthOptions, eo gophercloud.EndpointOpts) {
				if ao.ApplicationCredentialID != "ac1" || ao.ApplicationCredentialSecret != "s" || ao.Scope != nil {
					t.Errorf("auth options %+v", ao)
				}
				if eo.Availability != gophercloud.AvailabilityInternal {
					t.Errorf("availability %v", eo.Availability)
				}
			}, ""},
		{"no auth url", env("OS_USERNAME", "u", "OS_PASSWORD", "p"), nil, "auth_url"},
		{"no password", env("OS_AUTH_URL", "http://k/v3", "OS_USERNAME", "u"), nil, "password"},
		{"unsupported plugin", env("OS_AUTH_URL", "http://k/v3", "OS_AUTH_TYPE", "v3oidcpassword"), nil, "auth_type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ao, eo, _, err := FromEnv(tt.getenv).Options()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, ao, eo)
		})
	}
}

func TestSecretsStayOutOfMessages(t *testing.T) {
	a := AuthConfig{AuthURL: "http://k/v3", Username: "u", Password: "hunter2", ApplicationCredentialSecret: "acsecret"}
	for _, s := range []string{fmt.Sprintf("%v", a), fmt.Sprintf("%+v", a), fmt.Sprintf("%#v", a)} {
		if strings.Contains(s, "hunter2") || strings.Contains(s, "acsecret") {
			t.Errorf("secret printed: %s", s)
		}
	}
}

func TestBodyMessage(t *testing.T) {
	tests := map[string]string{
		`{"forbidden": {"code": 403, "message": "Policy doesn't allow os_compute_api:servers:detail:get_all_tenants to be performed."}}`:          "Policy doesn't allow os_compute_api:servers:detail:get_all_tenants to be performed.",
		`{"error": {"code": 403, "message": "You are not authorized to perform the requested action: identity:get_user.", "title": "Forbidden"}}`: "You are not authorized to perform the requested action: identity:get_user.",
		`{"message": "flat"}`: "flat",
		`plain text`:          "plain text",
	}
	for in, want := range tests {
		if got := bodyMessage([]byte(in)); got != want {
			t.Errorf("bodyMessage(%s) = %q, want %q", in, got, want)
		}
	}
}
