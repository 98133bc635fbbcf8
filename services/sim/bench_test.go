package sim

import (
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"
)

func scaleConfig(projects, servers, months int) Config {
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Now = testNow
	cfg.Projects, cfg.ServersPerProject, cfg.Months = projects, servers, months
	return cfg
}

// BenchmarkStartup builds the population and the first snapshot, which is
// what Start does before listening. The target: 1,000 projects x 100
// servers x 24 months in under 30 s and 1 GiB.
func BenchmarkStartup(b *testing.B) {
	for _, sc := range []struct {
		name                      string
		projects, servers, months int
	}{
		{"10x10x3", 10, 10, 3},
		{"1000x100x24", 1000, 100, 24},
	} {
		b.Run(sc.name, func(b *testing.B) {
			cfg := scaleConfig(sc.projects, sc.servers, sc.months)
			var heap uint64
			for b.Loop() {
				w, err := Generate(cfg, testNow)
				if err != nil {
					b.Fatal(err)
				}
				sn := w.snapshotAt(testNow, 0)
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				heap = ms.HeapInuse
				runtime.KeepAlive(sn)
				runtime.KeepAlive(w)
			}
			b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
		})
	}
}

// BenchmarkServersPage serves one full page of 1,000 servers (all tenants,
// changes-since) from the 100,000-server cloud; the target is under 50 ms.
func BenchmarkServersPage(b *testing.B) {
	s, err := New(scaleConfig(1000, 100, 24), nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer s.Stop(ctx)
	h := s.Handler()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/v3/auth/tokens", strings.NewReader(
		`{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"id":"default"},"password":"secret"}}},"scope":{"project":{"name":"admin","domain":{"id":"default"}}}}}`))
	h.ServeHTTP(rec, req)
	tok := rec.Header().Get("X-Subject-Token")
	since := testNow.AddDate(0, -6, 0).Format(time.RFC3339)
	// Warm the state snapshot, as the first request after Start does.
	s.view(s.Now())
	for _, mv := range []string{"2.1", "2.93"} {
		b.Run("mv"+mv, func(b *testing.B) {
			for b.Loop() {
				rec := httptest.NewRecorder()
				req := httptest.NewRequest("GET", "/compute/v2.1/servers/detail?all_tenants=1&limit=1000&changes-since="+since, nil)
				req.Header.Set("X-Auth-Token", tok)
				req.Header.Set("OpenStack-API-Version", "compute "+mv)
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "servers_links") {
					b.Fatalf("status %d, body %.200s", rec.Code, rec.Body.String())
				}
			}
		})
	}
}
