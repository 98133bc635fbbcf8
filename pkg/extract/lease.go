package extract

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tally-accounting/tally/pkg/state"
)

// breakDeadLease deletes the lease on key when its holder (OpenDeps names
// holders "<host>/<pid>") is a process of this host that no longer exists,
// e.g. a tally extract killed mid-run: it will never renew or release the
// lease, and without this every rerun within LeaseTTL would skip all of its
// projects. A holder on another host, or alive, is left alone. It reports
// whether the lease is gone.
func breakDeadLease(ctx context.Context, js jetstream.JetStream, key string) bool {
	kv, err := js.KeyValue(ctx, state.LeaseBucket)
	if err != nil {
		return false
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return true
	}
	if err != nil {
		return false
	}
	holder := string(e.Value())
	i := strings.LastIndexByte(holder, '/')
	if i < 0 {
		return false
	}
	host, _ := os.Hostname()
	pid, err := strconv.Atoi(holder[i+1:])
	if err != nil || holder[:i] != host || pid <= 0 || pid == os.Getpid() {
		return false
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		return false // alive (or not ours to signal): a real holder
	}
	// Only that very entry: a live replica that took the lease meanwhile
	// keeps it.
	return kv.Delete(ctx, key, jetstream.LastRevision(e.Revision())) == nil
}
