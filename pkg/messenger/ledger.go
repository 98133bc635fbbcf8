package messenger

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Ledger remembers which batches a messenger has delivered, on disk, so a
// batch redelivered by the bus (or re-pushed after a crash) is not written
// twice. It keeps the most recent Keep ids: the bus forgets messages long
// before that many batches pass.
type Ledger struct {
	mu    sync.Mutex
	f     *os.File
	seen  map[string]struct{}
	order []string
	keep  int

	// Group commit: ids recorded while an fsync is under way wait in
	// next and share the following write and fsync, so batches finishing
	// together cost one fsync, not one each.
	flushed  *sync.Cond
	flushing bool
	next     *group
}

// group is ids written and synced together.
type group struct {
	ids  []string
	done bool
	err  error
}

// DefaultKeep is how many batch ids a ledger keeps.
const DefaultKeep = 1_000_000

// OpenLedger opens (or creates) the ledger file at path.
func OpenLedger(path string, keep int) (*Ledger, error) {
	if keep <= 0 {
		keep = DefaultKeep
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	l := &Ledger{seen: map[string]struct{}{}, keep: keep}
	l.flushed = sync.NewCond(&l.mu)
	if err := l.load(path); err != nil {
		return nil, err
	}
	if len(l.order) > keep {
		if err := l.compact(path); err != nil {
			return nil, err
		}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	l.f = f
	return l, nil
}

func (l *Ledger) load(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// A torn last line (crash mid-append) is simply not a known id: the
		// batch is redelivered and its sink writes are idempotent or rare.
		id := sc.Text()
		if id == "" {
			continue
		}
		if _, ok := l.seen[id]; !ok {
			l.seen[id] = struct{}{}
			l.order = append(l.order, id)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("ledger %s: %w", path, err)
	}
	return nil
}

// compact rewrites the file with the newest keep ids, atomically.
func (l *Ledger) compact(path string) error {
	drop := l.order[:len(l.order)-l.keep]
	for _, id := range drop {
		delete(l.seen, id)
	}
	l.order = append([]string(nil), l.order[len(drop):]...)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("ledger compact: %w", err)
	}
	w := bufio.NewWriter(f)
	for _, id := range l.order {
		w.WriteString(id)
		w.WriteByte('\n')
	}
	if err := errors.Join(w.Flush(), f.Sync(), f.Close()); err != nil {
		return fmt.Errorf("ledger compact: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("ledger compact: %w", err)
	}
	return nil
}

// Seen reports whether batch id was recorded.
func (l *Ledger) Seen(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.seen[id]
	return ok
}

// Record durably notes that batch id was delivered. It returns once the
// id is synced to disk.
func (l *Ledger) Record(id string) error {
	if id == "" || strings.ContainsAny(id, "\r\n") {
		return fmt.Errorf("ledger: invalid batch id %q", id)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.seen[id]; ok {
		return nil
	}
	if l.next == nil {
		l.next = &group{}
	}
	g := l.next
	g.ids = append(g.ids, id)
	for l.flushing && !g.done {
		l.flushed.Wait()
	}
	if g.done {
		return g.err
	}
	// Nobody is writing and g is not written: write it, and whoever
	// joined it meanwhile is written too.
	l.next, l.flushing = nil, true
	var b []byte
	for _, id := range g.ids {
		b = append(append(b, id...), '\n')
	}
	l.mu.Unlock()
	_, err := l.f.Write(b)
	if err == nil {
		err = l.f.Sync()
	}
	l.mu.Lock()
	l.flushing = false
	if err != nil {
		err = fmt.Errorf("ledger: %w", err)
	} else {
		for _, id := range g.ids {
			if _, ok := l.seen[id]; !ok {
				l.seen[id] = struct{}{}
				l.order = append(l.order, id)
			}
		}
	}
	g.done, g.err = true, err
	l.flushed.Broadcast()
	if len(l.order) > 2*l.keep {
		// Bound memory in a long-running process; the file is compacted at
		// the next open.
		for _, old := range l.order[:len(l.order)-l.keep] {
			delete(l.seen, old)
		}
		l.order = append([]string(nil), l.order[len(l.order)-l.keep:]...)
	}
	return err
}

// Close closes the file.
func (l *Ledger) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.flushing {
		l.flushed.Wait()
	}
	return l.f.Close()
}
