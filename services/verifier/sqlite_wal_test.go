package verifier

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSQLiteWALStaysShort writes a stream of batches with the committer
// never idle, as ingest does, and checks that the checkpointer copies the
// WAL into the database meanwhile and that the WAL starts again from its
// beginning rather than grow with everything written: the committer no
// longer checkpoints by itself (wal_autocheckpoint 0).
func TestSQLiteWALStaysShort(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "verifier.db")
	s, err := OpenSQLite(ctx, path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.restartFrames, s.ckptPause = 64, 0
	v := New(DefaultConfig(), nil, nil, nil, WithStore(s))
	bodies := newBenchBodies(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC))
	const n = 8000
	if err := ingestBodies(ctx, v, s, bodies, n, 50, 4); err != nil {
		t.Fatal(err)
	}
	db, wal := fileSize(t, path), fileSize(t, path+"-wal")
	t.Logf("database %d KiB, WAL %d KiB", db>>10, wal>>10)
	// The exists' bodies alone are some 5 MiB.
	if db < 4<<20 {
		t.Errorf("database file %d KiB after %d notifications: the WAL was not copied into it", db>>10, n)
	}
	if wal > db/4 {
		t.Errorf("WAL %d KiB beside a database of %d KiB: it did not start again from its beginning", wal>>10, db>>10)
	}
	counts, _, err := s.CountExists(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if counts[StatusPending] != n/2 {
		t.Errorf("%d exists stored, want %d: %v", counts[StatusPending], n/2, counts)
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
