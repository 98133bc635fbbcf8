// Package metrics exposes tally's Prometheus metrics.
//
// Prometheus, not OTel metrics: accounting sites already scrape Prometheus,
// the pull model needs no collector in the all-in-one mode, and the
// Prometheus client is what the energy extractor uses anyway. Traces go
// through OTel.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the collectors every service shares, registered on one
// registry per process.
type Metrics struct {
	Registry *prometheus.Registry
	// RecordsIn counts records a service received, by service and type.
	RecordsIn *prometheus.CounterVec
	// RecordsOut counts records a service delivered, by service,
	// destination and type.
	RecordsOut *prometheus.CounterVec
	// Errors counts failures by service and kind.
	Errors *prometheus.CounterVec
	// DeadLetters counts messages sent to a dead-letter subject.
	DeadLetters *prometheus.CounterVec
	// ConsumerPending is the consumer lag: messages not yet delivered.
	ConsumerPending *prometheus.GaugeVec
	// ConsumerAckPending counts messages delivered but not yet acked.
	ConsumerAckPending *prometheus.GaugeVec
}

// New registers tally's collectors, plus Go and process metrics, on a new
// registry.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		RecordsIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_records_in_total", Help: "Records received, by service and record type.",
		}, []string{"service", "type"}),
		RecordsOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_records_out_total", Help: "Records delivered, by service, destination and record type.",
		}, []string{"service", "destination", "type"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_errors_total", Help: "Errors, by service and kind.",
		}, []string{"service", "kind"}),
		DeadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_dead_letters_total", Help: "Messages sent to a dead-letter subject, by service.",
		}, []string{"service"}),
		ConsumerPending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_consumer_pending_messages", Help: "Bus consumer lag: messages not yet delivered, by service.",
		}, []string{"service"}),
		ConsumerAckPending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_consumer_ack_pending_messages", Help: "Messages delivered to a bus consumer and not yet acknowledged, by service.",
		}, []string{"service"}),
	}
	reg.MustRegister(m.RecordsIn, m.RecordsOut, m.Errors, m.DeadLetters, m.ConsumerPending, m.ConsumerAckPending,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handled implements bus.ConsumerObserver.
func (m *Metrics) Handled(stage string, err error, deadLettered bool) {
	if m == nil {
		return
	}
	switch {
	case deadLettered:
		m.DeadLetters.WithLabelValues(stage).Inc()
	case err != nil:
		m.Errors.WithLabelValues(stage, "retry").Inc()
	}
}

// Pending implements bus.ConsumerObserver.
func (m *Metrics) Pending(stage string, numPending uint64, numAckPending int) {
	if m == nil {
		return
	}
	m.ConsumerPending.WithLabelValues(stage).Set(float64(numPending))
	m.ConsumerAckPending.WithLabelValues(stage).Set(float64(numAckPending))
}

// Server serves /metrics over HTTP with the service lifecycle.
type Server struct {
	addr   string
	srv    *http.Server
	lis    net.Listener
	served chan error
	logger *slog.Logger
}

// NewServer returns a /metrics server for addr.
func NewServer(addr string, m *Metrics, logger *slog.Logger) *Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	return &Server{addr: addr, logger: logger, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
}

// Name implements service.Service.
func (s *Server) Name() string { return "metrics" }

// Addr is the bound address after Start.
func (s *Server) Addr() string {
	if s.lis == nil {
		return s.addr
	}
	return s.lis.Addr().String()
}

// Start implements service.Service.
func (s *Server) Start(ctx context.Context) error {
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", s.addr)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w", s.addr, err)
	}
	s.lis = lis
	s.served = make(chan error, 1)
	go func() { s.served <- s.srv.Serve(lis) }()
	s.logger.Info("metrics listening", "addr", "http://"+s.Addr()+"/metrics")
	return nil
}

// Run implements service.Service.
func (s *Server) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-s.served:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("metrics: %w", err)
	}
}

// Stop implements service.Service.
func (s *Server) Stop(ctx context.Context) error { return s.srv.Shutdown(ctx) }
