package openstack

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// RetryConfig bounds retries of failed API calls.
type RetryConfig struct {
	// MaxAttempts per request, the first included.
	MaxAttempts int `yaml:"max_attempts"`
	// BaseDelay doubles on each retry, with jitter, up to MaxDelay.
	BaseDelay time.Duration `yaml:"base_delay"`
	MaxDelay  time.Duration `yaml:"max_delay"`
	// RequestTimeout bounds one HTTP request, body included.
	RequestTimeout time.Duration `yaml:"request_timeout"`
}

// DefaultRetry retries 6 times over about a minute.
func DefaultRetry() RetryConfig {
	return RetryConfig{MaxAttempts: 6, BaseDelay: 500 * time.Millisecond, MaxDelay: 30 * time.Second, RequestTimeout: 2 * time.Minute}
}

// Stats counts API calls.
type Stats struct {
	Calls   atomic.Int64
	Retries atomic.Int64
}

// retryTransport retries what a later attempt can fix: 5xx, 429 (after its
// Retry-After) and a 2xx JSON body cut short. Each attempt reads the whole
// body, so a truncated page is caught here rather than in a decoder that
// cannot retry.
type retryTransport struct {
	next  http.RoundTripper
	cfg   RetryConfig
	stats *Stats
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	attempts := max(t.cfg.MaxAttempts, 1)
	var lastErr error
	for attempt := 1; ; attempt++ {
		r := req
		if attempt > 1 {
			if req.Body != nil && req.GetBody == nil {
				return nil, lastErr // cannot replay the body
			}
			r = req.Clone(req.Context())
			if req.GetBody != nil {
				body, err := req.GetBody()
				if err != nil {
					return nil, err
				}
				r.Body = body
			}
		}
		t.stats.Calls.Add(1)
		resp, err := t.next.RoundTrip(r)
		wait, retry := time.Duration(0), false
		switch {
		case err != nil:
			lastErr, retry = err, req.Context().Err() == nil
		case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
			wait = retryAfter(resp.Header.Get("Retry-After"))
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			lastErr = fmt.Errorf("%s %s: HTTP %d: %s", req.Method, req.URL.Path, resp.StatusCode, bodyMessage(body))
			retry = true
			if attempt >= attempts {
				// Give the caller the real response so gophercloud reports
				// the status.
				resp.Body = io.NopCloser(bytes.NewReader(body))
				return resp, nil
			}
		case resp.StatusCode < 300 && isJSON(resp):
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && (len(body) == 0 || json.Valid(body)) {
				resp.Body = io.NopCloser(bytes.NewReader(body))
				return resp, nil
			}
			lastErr, retry = fmt.Errorf("%s %s: response body cut short or not JSON (%d bytes)", req.Method, req.URL.Path, len(body)), true
			if rerr != nil {
				lastErr = fmt.Errorf("%s %s: reading body: %w", req.Method, req.URL.Path, rerr)
			}
		default:
			return resp, nil
		}
		if !retry || attempt >= attempts {
			return nil, fmt.Errorf("after %d attempts: %w", attempt, lastErr)
		}
		if wait == 0 {
			wait = t.backoff(attempt)
		}
		t.stats.Retries.Add(1)
		timer := time.NewTimer(wait)
		select {
		case <-req.Context().Done():
			timer.Stop()
			return nil, req.Context().Err()
		case <-timer.C:
		}
	}
}

func (t *retryTransport) backoff(attempt int) time.Duration {
	d := t.cfg.BaseDelay << min(attempt-1, 10)
	if t.cfg.MaxDelay > 0 && d > t.cfg.MaxDelay {
		d = t.cfg.MaxDelay
	}
	// Full jitter: replicas retrying together spread out.
	return d/2 + rand.N(d/2+1)
}

func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

func isJSON(resp *http.Response) bool {
	return strings.Contains(resp.Header.Get("Content-Type"), "json")
}

// bodyMessage digs the human message out of an OpenStack error body, whose
// shape differs per service ({"error": {"message"}} for Keystone,
// {"forbidden": {"message"}} for Nova, {"NeutronError": {"message"}}, ...).
func bodyMessage(body []byte) string {
	var top map[string]json.RawMessage
	if json.Unmarshal(body, &top) == nil {
		for _, v := range top {
			var inner struct {
				Message string `json:"message"`
			}
			if json.Unmarshal(v, &inner) == nil && inner.Message != "" {
				return inner.Message
			}
		}
		var flat struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(body, &flat) == nil && flat.Message != "" {
			return flat.Message
		}
	}
	s := strings.TrimSpace(string(body))
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}
