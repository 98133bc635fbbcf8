package sim

import (
	"bytes"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// faults injects the misbehaviour of real clouds into the API (never into the
// /sim admin endpoints): latency, 5xx, 429 with Retry-After, truncated bodies
// and slow bodies. All off by default.
type faults struct {
	cfg Config
	mu  sync.Mutex
	rnd *rand.Rand
}

func newFaults(cfg Config) *faults {
	return &faults{cfg: cfg, rnd: rand.New(rand.NewPCG(uint64(cfg.Seed), 0x5eed))}
}

func (f *faults) float() float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rnd.Float64()
}

func (f *faults) active() bool {
	c := f.cfg
	return c.Latency > 0 || c.Jitter > 0 || c.ErrorRate > 0 || c.RateLimitRate > 0 || c.MalformedRate > 0 || c.SlowBody > 0
}

func (f *faults) wrap(h http.Handler) http.Handler {
	if !f.active() {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/sim/") {
			h.ServeHTTP(w, r)
			return
		}
		delay := f.cfg.Latency
		if f.cfg.Jitter > 0 {
			delay += time.Duration(f.float() * float64(f.cfg.Jitter))
		}
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		if f.cfg.RateLimitRate > 0 && f.float() < f.cfg.RateLimitRate {
			secs := int((f.cfg.RetryAfter + time.Second - 1) / time.Second)
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			writeJSON(w, http.StatusTooManyRequests, obj{{"overLimit", obj{{"code", 429},
				{"message", "This request was rate-limited."}, {"retryAfter", strconv.Itoa(secs)}}}})
			return
		}
		if f.cfg.ErrorRate > 0 && f.float() < f.cfg.ErrorRate {
			codes := []int{500, 502, 503}
			code := codes[int(f.float()*3)%3]
			writeJSON(w, code, obj{{"computeFault", obj{{"code", code},
				{"message", "The server has either erred or is incapable of performing the requested operation."}}}})
			return
		}
		malformed := f.cfg.MalformedRate > 0 && f.float() < f.cfg.MalformedRate
		if !malformed && f.cfg.SlowBody == 0 {
			h.ServeHTTP(w, r)
			return
		}
		rec := &recorder{header: w.Header(), status: 200}
		h.ServeHTTP(rec, r)
		body := rec.body.Bytes()
		if malformed && rec.status < 300 && len(body) > 1 {
			body = body[:len(body)/2]
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.status)
		if f.cfg.SlowBody == 0 {
			_, _ = w.Write(body)
			return
		}
		const chunks = 10
		fl, _ := w.(http.Flusher)
		for i := 0; i < chunks; i++ {
			lo, hi := len(body)*i/chunks, len(body)*(i+1)/chunks
			_, _ = w.Write(body[lo:hi])
			if fl != nil {
				fl.Flush()
			}
			select {
			case <-time.After(f.cfg.SlowBody / chunks):
			case <-r.Context().Done():
				return
			}
		}
	})
}

type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(code int)        { r.status = code }
