// Package state keeps the extractors' shared state in JetStream key-value
// buckets: the end of each (extractor, region, project) window that was
// fully delivered, and leases that stop two replicas extracting the same
// project window at once.
package state

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Bucket names.
const (
	LastRunBucket = "tally_lastrun"
	LeaseBucket   = "tally_leases"
)

// ErrLeased means another replica holds the lease.
var ErrLeased = errors.New("lease held by another extractor")

// Store reads and writes extractor state.
type Store struct {
	lastRun  jetstream.KeyValue
	leases   jetstream.KeyValue
	owner    string
	leaseTTL time.Duration
}

// Open creates the buckets if needed. owner identifies this process in
// leases (host and pid, say); leaseTTL bounds how long a crashed owner
// blocks others.
func Open(ctx context.Context, js jetstream.JetStream, owner string, leaseTTL time.Duration) (*Store, error) {
	lr, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      LastRunBucket,
		Description: "end of the last fully delivered window per extractor, region and project",
		History:     10,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("state bucket %s: %w", LastRunBucket, err)
	}
	ls, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      LeaseBucket,
		Description: "extraction leases; an entry expires unless its owner renews it",
		TTL:         leaseTTL,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("state bucket %s: %w", LeaseBucket, err)
	}
	return &Store{lastRun: lr, leases: ls, owner: owner, leaseTTL: leaseTTL}, nil
}

// Key names one extraction scope.
func Key(extractor, region, project string) string {
	return safe(extractor) + "." + safe(region) + "." + safe(project)
}

// safe maps s onto the characters a KV key may hold; anything else becomes
// _XX (hex), so distinct names stay distinct.
func safe(s string) string {
	var b strings.Builder
	for _, r := range []byte(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-':
			b.WriteByte(r)
		default:
			fmt.Fprintf(&b, "_%02X", r)
		}
	}
	if b.Len() == 0 {
		return "_"
	}
	return b.String()
}

// LastRun returns the end of the last delivered window for key.
func (s *Store) LastRun(ctx context.Context, key string) (t time.Time, ok bool, err error) {
	e, err := s.lastRun.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read last run %s: %w", key, err)
	}
	t, err = time.Parse(time.RFC3339Nano, string(e.Value()))
	if err != nil {
		return time.Time{}, false, fmt.Errorf("last run %s holds %q: %w", key, e.Value(), err)
	}
	return t, true, nil
}

// SetLastRun records that everything up to t was delivered for key. It
// never moves a window backwards unless force is set (an import or an
// operator's reset).
func (s *Store) SetLastRun(ctx context.Context, key string, t time.Time, force bool) error {
	if !force {
		prev, ok, err := s.LastRun(ctx, key)
		if err != nil {
			return err
		}
		if ok && !t.After(prev) {
			return nil
		}
	}
	if _, err := s.lastRun.Put(ctx, key, []byte(t.UTC().Format(time.RFC3339Nano))); err != nil {
		return fmt.Errorf("write last run %s: %w", key, err)
	}
	return nil
}

// Lease is held until Release; it is renewed in the background.
type Lease struct {
	store *Store
	key   string
	mu    sync.Mutex
	rev   uint64
	stop  chan struct{}
	done  chan struct{}
	lost  error
}

// Acquire takes the lease on key, or returns ErrLeased.
func (s *Store) Acquire(ctx context.Context, key string) (*Lease, error) {
	rev, err := s.leases.Create(ctx, key, []byte(s.owner))
	if errors.Is(err, jetstream.ErrKeyExists) {
		holder := "another extractor"
		if e, gerr := s.leases.Get(ctx, key); gerr == nil {
			holder = string(e.Value())
		}
		return nil, fmt.Errorf("%s: %w (%s)", key, ErrLeased, holder)
	}
	if err != nil {
		return nil, fmt.Errorf("acquire lease %s: %w", key, err)
	}
	l := &Lease{store: s, key: key, rev: rev, stop: make(chan struct{}), done: make(chan struct{})}
	go l.renew()
	return l, nil
}

func (l *Lease) renew() {
	defer close(l.done)
	t := time.NewTicker(l.store.leaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), l.store.leaseTTL/3)
			l.mu.Lock()
			rev, err := l.store.leases.Update(ctx, l.key, []byte(l.store.owner), l.rev)
			if err == nil {
				l.rev = rev
			} else {
				l.lost = fmt.Errorf("renew lease %s: %w", l.key, err)
			}
			l.mu.Unlock()
			cancel()
			if err != nil {
				return
			}
		}
	}
}

// Lost reports a renewal failure: another replica may now hold the scope.
func (l *Lease) Lost() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

// Release gives the lease up.
func (l *Lease) Release(ctx context.Context) error {
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost != nil {
		return l.lost
	}
	if err := l.store.leases.Delete(ctx, l.key, jetstream.LastRevision(l.rev)); err != nil {
		return fmt.Errorf("release lease %s: %w", l.key, err)
	}
	return nil
}
