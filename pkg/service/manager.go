package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Manager runs services as one group: it starts them in order, runs them
// together, and stops them in reverse order when its context ends or when
// any of them fails.
type Manager struct {
	services []Service
	logger   *slog.Logger
	// StopTimeout bounds the whole stop phase.
	StopTimeout time.Duration

	mu        sync.Mutex
	states    map[string]State
	listeners []func(name string, s State)
}

// NewManager returns a manager for services, started in the order given.
func NewManager(logger *slog.Logger, stopTimeout time.Duration, services ...Service) *Manager {
	m := &Manager{
		services:    services,
		logger:      logger,
		StopTimeout: stopTimeout,
		states:      make(map[string]State, len(services)),
	}
	for _, s := range services {
		m.states[s.Name()] = New
	}
	return m
}

// OnStateChange registers f to be called on every state change, e.g. to
// drive the gRPC health service. Register before Run.
func (m *Manager) OnStateChange(f func(name string, s State)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.listeners = append(m.listeners, f)
}

// States returns a copy of every service's current state.
func (m *Manager) States() map[string]State {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]State, len(m.states))
	for k, v := range m.states {
		out[k] = v
	}
	return out
}

func (m *Manager) set(name string, s State) {
	m.mu.Lock()
	m.states[name] = s
	ls := append([]func(string, State){}, m.listeners...)
	m.mu.Unlock()
	for _, f := range ls {
		f(name, s)
	}
}

// Run starts every service, runs them until ctx ends or one fails, then stops
// them all. It returns nil after a clean stop caused by ctx, and otherwise
// the errors that ended the run.
func (m *Manager) Run(ctx context.Context) error {
	started := make([]Service, 0, len(m.services))
	var errs []error
	for _, s := range m.services {
		if ctx.Err() != nil {
			break
		}
		m.set(s.Name(), Starting)
		m.logger.Debug("starting service", "service", s.Name())
		if err := s.Start(ctx); err != nil {
			m.set(s.Name(), Failed)
			errs = append(errs, fmt.Errorf("start %s: %w", s.Name(), err))
			break
		}
		started = append(started, s)
	}

	if len(errs) == 0 && ctx.Err() == nil {
		errs = append(errs, m.runAll(ctx, started)...)
	}

	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.StopTimeout)
	defer cancel()
	for i := len(started) - 1; i >= 0; i-- {
		s := started[i]
		if m.state(s.Name()) != Failed {
			m.set(s.Name(), Stopping)
		}
		if err := s.Stop(stopCtx); err != nil {
			m.set(s.Name(), Failed)
			errs = append(errs, fmt.Errorf("stop %s: %w", s.Name(), err))
			continue
		}
		if m.state(s.Name()) != Failed {
			m.set(s.Name(), Terminated)
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) state(name string) State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.states[name]
}

// runAll runs every started service; the first failure cancels the others.
func (m *Manager) runAll(ctx context.Context, started []Service) []error {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, s := range started {
		m.set(s.Name(), Running)
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.Run(runCtx)
			if err == nil && runCtx.Err() == nil {
				// A service that returns on its own while others run is done
				// (a one-shot); it does not bring the group down.
				m.logger.Debug("service finished", "service", s.Name())
				return
			}
			if err != nil && !errors.Is(err, context.Canceled) {
				m.set(s.Name(), Failed)
				m.logger.Error("service failed", "service", s.Name(), "error", err)
				mu.Lock()
				errs = append(errs, fmt.Errorf("run %s: %w", s.Name(), err))
				mu.Unlock()
				cancel()
			}
		}()
	}
	wg.Wait()
	return errs
}
