package service

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type recorder struct {
	mu    sync.Mutex
	calls []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, s)
}

func (r *recorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func svc(r *recorder, name string, startErr, runErr error) Funcs {
	return Funcs{
		ServiceName: name,
		StartFunc:   func(context.Context) error { r.add("start " + name); return startErr },
		RunFunc: func(ctx context.Context) error {
			if runErr != nil {
				return runErr
			}
			<-ctx.Done()
			return nil
		},
		StopFunc: func(context.Context) error { r.add("stop " + name); return nil },
	}
}

func TestManager(t *testing.T) {
	boom := errors.New("boom")
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	tests := []struct {
		name      string
		services  func(r *recorder) []Service
		cancel    bool
		wantErr   error
		wantCalls []string
		wantState map[string]State
	}{
		{
			name: "clean stop on cancel, reverse order",
			services: func(r *recorder) []Service {
				return []Service{svc(r, "a", nil, nil), svc(r, "b", nil, nil)}
			},
			cancel:    true,
			wantCalls: []string{"start a", "start b", "stop b", "stop a"},
			wantState: map[string]State{"a": Terminated, "b": Terminated},
		},
		{
			name: "start failure stops what started, skips the rest",
			services: func(r *recorder) []Service {
				return []Service{svc(r, "a", nil, nil), svc(r, "b", boom, nil), svc(r, "c", nil, nil)}
			},
			wantErr:   boom,
			wantCalls: []string{"start a", "start b", "stop a"},
			wantState: map[string]State{"a": Terminated, "b": Failed, "c": New},
		},
		{
			name: "run failure brings the group down",
			services: func(r *recorder) []Service {
				return []Service{svc(r, "a", nil, nil), svc(r, "b", nil, boom)}
			},
			wantErr:   boom,
			wantCalls: []string{"start a", "start b", "stop b", "stop a"},
			wantState: map[string]State{"a": Terminated, "b": Failed},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &recorder{}
			m := NewManager(logger, time.Second, tt.services(r)...)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			running := make(chan struct{})
			var once sync.Once
			m.OnStateChange(func(name string, s State) {
				if s == Running && name == "b" {
					once.Do(func() { close(running) })
				}
			})
			done := make(chan error, 1)
			go func() { done <- m.Run(ctx) }()
			if tt.cancel {
				<-running
				cancel()
			}
			err := <-done
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("Run() error = %v, want %v", err, tt.wantErr)
			}
			if got := r.get(); !slices.Equal(got, tt.wantCalls) {
				t.Errorf("calls = %q, want %q", got, tt.wantCalls)
			}
			for name, want := range tt.wantState {
				if got := m.States()[name]; got != want {
					t.Errorf("state of %s = %v, want %v", name, got, want)
				}
			}
		})
	}
}

func TestStopIsBoundedByTimeout(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	slow := Funcs{ServiceName: "slow", StopFunc: func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}}
	m := NewManager(logger, 50*time.Millisecond, slow)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	start := time.Now()
	// Cancelled before start: nothing starts, nothing to stop.
	if err := m.Run(ctx); err != nil {
		t.Fatalf("Run() = %v", err)
	}
	ctx2, cancel2 := context.WithCancel(t.Context())
	m2 := NewManager(logger, 50*time.Millisecond, slow)
	m2.OnStateChange(func(_ string, s State) {
		if s == Running {
			cancel2()
		}
	})
	err := m2.Run(ctx2)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run() = %v, want the stop deadline error", err)
	}
	if got := m2.States()["slow"]; got != Failed {
		t.Errorf("state = %v, want failed", got)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("stop took %v, the timeout was 50ms", elapsed)
	}
}
