// Package service is the one lifecycle every tally service follows, and the
// manager that runs a set of them as one process.
//
// A service goes New → Starting → Running → Stopping → Terminated, or to
// Failed from any of them. Start acquires what the service needs (listeners,
// bus consumers, credentials) and fails fast; Run does the work until its
// context ends; Stop drains in-flight work and releases resources before the
// deadline of its context.
package service

import (
	"context"
	"fmt"
)

// Service is implemented by every long-running part of tally.
type Service interface {
	// Name identifies the service in logs, health checks and --target.
	Name() string
	// Start prepares the service. Run is not called when it fails.
	Start(ctx context.Context) error
	// Run blocks until ctx ends (a nil return) or the service fails.
	Run(ctx context.Context) error
	// Stop drains in-flight work and releases resources. It must return by
	// ctx's deadline, abandoning what it could not finish.
	Stop(ctx context.Context) error
}

// State is where a service is in its lifecycle.
type State int

// The lifecycle states, in order.
const (
	New State = iota
	Starting
	Running
	Stopping
	Terminated
	Failed
)

func (s State) String() string {
	switch s {
	case New:
		return "new"
	case Starting:
		return "starting"
	case Running:
		return "running"
	case Stopping:
		return "stopping"
	case Terminated:
		return "terminated"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Funcs adapts plain functions to Service; nil functions do nothing.
type Funcs struct {
	ServiceName string
	StartFunc   func(ctx context.Context) error
	RunFunc     func(ctx context.Context) error
	StopFunc    func(ctx context.Context) error
}

// Name implements Service.
func (f Funcs) Name() string { return f.ServiceName }

// Start implements Service.
func (f Funcs) Start(ctx context.Context) error {
	if f.StartFunc == nil {
		return nil
	}
	return f.StartFunc(ctx)
}

// Run implements Service. Without a RunFunc it idles until ctx ends.
func (f Funcs) Run(ctx context.Context) error {
	if f.RunFunc == nil {
		<-ctx.Done()
		return nil
	}
	return f.RunFunc(ctx)
}

// Stop implements Service.
func (f Funcs) Stop(ctx context.Context) error {
	if f.StopFunc == nil {
		return nil
	}
	return f.StopFunc(ctx)
}
