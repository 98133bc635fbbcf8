package state_test

import (
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tally-accounting/tally/pkg/bus/bustest"
	"github.com/tally-accounting/tally/pkg/state"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestKey(t *testing.T) {
	tests := []struct{ ext, region, project, want string }{
		{"nova", "RegionOne", "c9a9ee822ef148159e0fc394466a970e", "nova.RegionOne.c9a9ee822ef148159e0fc394466a970e"},
		{"nova", "eu.west 1", "p", "nova.eu_2Ewest_201.p"},
		{"nova", "", "p", "nova._.p"},
	}
	for _, tt := range tests {
		if got := state.Key(tt.ext, tt.region, tt.project); got != tt.want {
			t.Errorf("Key(%q, %q, %q) = %q, want %q", tt.ext, tt.region, tt.project, got, tt.want)
		}
	}
}

func TestLastRunNeverMovesBack(t *testing.T) {
	b, _ := bustest.Start(t, nil)
	s, err := state.Open(t.Context(), b.JS, "test", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	key := state.Key("nova", "r", "p")
	if _, ok, err := s.LastRun(t.Context(), key); ok || err != nil {
		t.Fatalf("fresh key: ok=%v err=%v", ok, err)
	}
	t1 := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		set   time.Time
		force bool
		want  time.Time
	}{
		{t1, false, t1},
		{t1.Add(-time.Hour), false, t1},
		{t1.Add(time.Hour), false, t1.Add(time.Hour)},
		{t1, true, t1},
	}
	for i, st := range steps {
		if err := s.SetLastRun(t.Context(), key, st.set, st.force); err != nil {
			t.Fatal(err)
		}
		got, ok, err := s.LastRun(t.Context(), key)
		if err != nil || !ok || !got.Equal(st.want) {
			t.Errorf("step %d: LastRun = %v, %v, %v; want %v", i, got, ok, err, st.want)
		}
	}
}

func TestLeaseExcludesOtherReplicas(t *testing.T) {
	b, _ := bustest.Start(t, nil)
	a, err := state.Open(t.Context(), b.JS, "replica-a", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, err := state.Open(t.Context(), b.JS, "replica-b", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	key := state.Key("nova", "r", "p")
	la, err := a.Acquire(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Acquire(t.Context(), key); !errors.Is(err, state.ErrLeased) {
		t.Fatalf("second acquire: %v, want ErrLeased", err)
	}
	// Held past its TTL because it is renewed.
	time.Sleep(4 * time.Second)
	if _, err := c.Acquire(t.Context(), key); !errors.Is(err, state.ErrLeased) {
		t.Fatalf("acquire after the TTL of a renewed lease: %v, want ErrLeased", err)
	}
	if err := la.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	lb, err := c.Acquire(t.Context(), key)
	if err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	if err := lb.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}
