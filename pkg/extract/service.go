package extract

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/directory"
	"github.com/tally-accounting/tally/pkg/metrics"
	"github.com/tally-accounting/tally/pkg/openstack"
	"github.com/tally-accounting/tally/pkg/state"
)

// LeaseTTL bounds how long a crashed extractor keeps others off a project.
const LeaseTTL = 2 * time.Minute

// OpenDeps opens the state and directory buckets on b.
func OpenDeps(ctx context.Context, b *bus.Bus, m *metrics.Metrics, logger *slog.Logger) (Deps, error) {
	host, _ := os.Hostname()
	st, err := state.Open(ctx, b.JS, fmt.Sprintf("%s/%d", host, os.Getpid()), LeaseTTL)
	if err != nil {
		return Deps{}, err
	}
	dir, err := directory.Open(ctx, b.JS)
	if err != nil {
		return Deps{}, err
	}
	return Deps{Bus: b, State: st, Directory: dir, Metrics: m, Logger: logger}, nil
}

// Service runs an extractor on a schedule, in tally serve: once at start,
// then every Interval.
type Service struct {
	src     Source
	cfg     Config
	auth    openstack.AuthConfig
	bus     func() *bus.Bus
	metrics *metrics.Metrics
	logger  *slog.Logger
	runner  *Runner
}

// NewService returns the scheduled extractor of src.
func NewService(src Source, cfg Config, auth openstack.AuthConfig, b func() *bus.Bus, m *metrics.Metrics, logger *slog.Logger) *Service {
	return &Service{src: src, cfg: cfg, auth: auth, bus: b, metrics: m, logger: logger}
}

// Name implements service.Service.
func (s *Service) Name() string { return s.src.Name() }

// Start opens the buckets and checks the credentials are complete.
func (s *Service) Start(ctx context.Context) error {
	if _, _, _, err := s.auth.Options(); err != nil {
		return fmt.Errorf("openstack credentials: %w", err)
	}
	deps, err := OpenDeps(ctx, s.bus(), s.metrics, s.logger)
	if err != nil {
		return err
	}
	s.runner = NewRunner(s.src, s.cfg, s.auth, deps)
	return nil
}

// Run extracts now and then every Interval until ctx ends. A failed run is
// logged and counted; the next one retries its windows.
func (s *Service) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		sum, err := s.runner.Run(ctx, Options{})
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && !errors.Is(err, ErrPartial):
			s.metrics.Errors.WithLabelValues(s.src.Name(), "run").Inc()
			s.logger.Error("extraction failed", "extractor", s.src.Name(), "error", err)
		default:
			if err != nil {
				s.metrics.Errors.WithLabelValues(s.src.Name(), "project").Add(float64(len(sum.Failed)))
			}
			s.logger.Info("extraction done", "extractor", s.src.Name(), "mode", sum.Mode, "projects", sum.Projects,
				"failed", len(sum.Failed), "records", sum.Records, "api_calls", sum.APICalls, "seconds", sum.Duration.Seconds())
		}
		t.Reset(s.cfg.Interval)
	}
}

// Stop implements service.Service; an interrupted run moved no window.
func (s *Service) Stop(context.Context) error { return nil }
