// Package dirq is python-dirq's QueueSimple in Go: the directory queue
// ssmsend reads its outgoing messages from (apel-formats.md §8).
//
// Layout: the queue directory holds intermediate directories named %08x
// (lower-case hex) of the add time rounded down to the granularity (60 s),
// each holding elements named by 14 lower-case hex digits,
// %08x%05x%01x of the seconds, the microseconds and one hex digit fixed
// per Queue. Readers see only names matching ^[0-9a-f]{14}$ in directories
// matching ^[0-9a-f]{8}$, so anything else in the queue directory (a
// writer's own state, dot files) is invisible to them.
//
// An element appears atomically: it is written as <name>.tmp, created with
// O_EXCL, then hard-linked to its final name, and the .tmp unlinked (no
// rename, as python-dirq does: link fails instead of replacing an element
// that already has the name). A reader locks an element by hard-linking it
// to <name>.lck, reads the .lck, and removes the element and then the
// lock. Purge deletes .tmp files older than 300 s, .lck files older than
// 600 s (unlocking their elements) and empty intermediate directories
// except the newest.
package dirq

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Suffixes python-dirq gives temporary and locked elements.
const (
	TempSuffix = ".tmp"
	LockSuffix = ".lck"
)

// Defaults, as python-dirq and ssmsend use them.
const (
	DefaultGranularity = 60 * time.Second
	DefaultMaxTemp     = 300 * time.Second
	DefaultMaxLock     = 600 * time.Second
	// DefaultFileMode and DefaultDirMode are group-writable: ssmsend often
	// runs as another user in a shared group, and must link (with
	// fs.protected_hardlinks=1: be able to read and write) the element
	// files and write the intermediate directories.
	DefaultFileMode fs.FileMode = 0o660
	DefaultDirMode  fs.FileMode = 0o770
)

// Options tune a Queue; the zero value gives python-dirq's behaviour with
// group-writable modes.
type Options struct {
	// FileMode is set on every element file, whatever the umask.
	FileMode fs.FileMode
	// DirMode is set on every directory the queue creates, whatever the
	// umask.
	DirMode fs.FileMode
	// Granularity of the intermediate directories.
	Granularity time.Duration
	// Sync makes Add fsync the element and its directory before
	// returning: python-dirq does not, so an element added just before a
	// power cut may be lost or empty.
	Sync bool
	// Now is the clock (tests); time.Now when nil.
	Now func() time.Time
}

// Queue is one QueueSimple directory. It is safe for concurrent use, and
// any number of Queues, in any number of processes, may write and read the
// same directory.
type Queue struct {
	path string
	opts Options
	rnd  int

	mu       sync.Mutex
	lastSec  int64
	lastUsec int64
}

// New opens the queue at path, creating the directory if needed.
func New(path string, opts Options) (*Queue, error) {
	if opts.FileMode == 0 {
		opts.FileMode = DefaultFileMode
	}
	if opts.DirMode == 0 {
		opts.DirMode = DefaultDirMode
	}
	if opts.Granularity <= 0 {
		opts.Granularity = DefaultGranularity
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	q := &Queue{path: path, opts: opts, rnd: os.Getpid() % 16}
	if err := q.mkdir(path); err != nil {
		return nil, fmt.Errorf("dirq: %w", err)
	}
	return q, nil
}

// Path is the queue directory.
func (q *Queue) Path() string { return q.path }

// mkdir creates dir and its missing parents with the queue's mode.
func (q *Queue) mkdir(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	if err := q.mkdir(filepath.Dir(dir)); err != nil {
		return err
	}
	err := os.Mkdir(dir, q.opts.DirMode)
	if errors.Is(err, fs.ErrExist) {
		return nil // another writer made it
	}
	if err != nil {
		return err
	}
	// Mkdir applies the umask; the mode must not depend on it.
	return os.Chmod(dir, q.opts.DirMode)
}

// NewID returns a fresh element id, "<dir>/<name>", for the current time.
// Ids from one Queue are strictly increasing, so they never collide with
// each other; another writer may still have taken the name (Link then
// fails with fs.ErrExist).
func (q *Queue) NewID() string {
	t := q.opts.Now()
	sec, usec := t.Unix(), int64(t.Nanosecond()/1000)
	q.mu.Lock()
	if sec < q.lastSec || (sec == q.lastSec && usec <= q.lastUsec) {
		sec, usec = q.lastSec, q.lastUsec+1
		if usec == 1_000_000 {
			sec, usec = sec+1, 0
		}
	}
	q.lastSec, q.lastUsec = sec, usec
	q.mu.Unlock()
	g := int64(q.opts.Granularity / time.Second)
	if g < 1 {
		g = 1
	}
	return fmt.Sprintf("%08x/%08x%05x%01x", sec-sec%g, sec, usec, q.rnd)
}

// Add writes data as a new element and returns its id, python-dirq's way:
// <name>.tmp created with O_EXCL (a fresh name if it exists), written,
// hard-linked to a fresh final name in the same directory, then unlinked.
func (q *Queue) Add(data []byte) (string, error) {
	var (
		tmp string
		dir string
	)
	for {
		id := q.NewID()
		dir = filepath.Dir(id)
		tmp = filepath.Join(q.path, id+TempSuffix)
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, q.opts.FileMode)
		if errors.Is(err, fs.ErrNotExist) {
			if err := q.mkdir(filepath.Join(q.path, dir)); err != nil {
				return "", fmt.Errorf("dirq add: %w", err)
			}
			continue
		}
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("dirq add: %w", err)
		}
		err = writeFile(f, data, q.opts.FileMode, q.opts.Sync)
		if err != nil {
			os.Remove(tmp)
			return "", fmt.Errorf("dirq add: %w", err)
		}
		break
	}
	for {
		id := filepath.Join(dir, filepath.Base(q.NewID()))
		err := q.Link(tmp, id)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			os.Remove(tmp)
			return "", fmt.Errorf("dirq add: %w", err)
		}
		if err := os.Remove(tmp); err != nil {
			return "", fmt.Errorf("dirq add: %w", err)
		}
		if q.opts.Sync {
			if err := SyncDir(filepath.Join(q.path, dir)); err != nil {
				return "", fmt.Errorf("dirq add: %w", err)
			}
		}
		return id, nil
	}
}

func writeFile(f *os.File, data []byte, mode fs.FileMode, sync bool) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil && sync {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// Link makes the file src appear as element id (from NewID) in one atomic
// step, creating the intermediate directory if needed. src must be on the
// queue's filesystem; it stays linked where it is. If id exists the error
// wraps fs.ErrExist.
func (q *Queue) Link(src, id string) error {
	dst := filepath.Join(q.path, id)
	err := os.Link(src, dst)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Lstat(src); serr != nil {
			return err
		}
		if err := q.mkdir(filepath.Dir(dst)); err != nil {
			return err
		}
		err = os.Link(src, dst)
	}
	return err
}

// SyncDir fsyncs a directory, making the names created in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < n; i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// subdirs lists the intermediate directories, sorted.
func (q *Queue) subdirs() ([]string, error) {
	ents, err := os.ReadDir(q.path)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && isHex(e.Name(), 8) {
			out = append(out, e.Name())
		}
	}
	return out, nil // ReadDir sorts by name
}

// Elements lists the ids of every element, locked or not, in the order
// ssmsend reads them: directories sorted, then names sorted.
func (q *Queue) Elements() ([]string, error) {
	dirs, err := q.subdirs()
	if err != nil {
		return nil, fmt.Errorf("dirq: %w", err)
	}
	var out []string
	for _, d := range dirs {
		ents, err := os.ReadDir(filepath.Join(q.path, d))
		if errors.Is(err, fs.ErrNotExist) {
			continue // purged meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("dirq: %w", err)
		}
		for _, e := range ents {
			if isHex(e.Name(), 14) {
				out = append(out, d+"/"+e.Name())
			}
		}
	}
	return out, nil
}

// Count returns the number of elements.
func (q *Queue) Count() (int, error) {
	els, err := q.Elements()
	return len(els), err
}

// Lock takes element id for this reader, as python-dirq does: link it to
// id.lck, then touch it. It returns false, without error, if another
// reader holds the lock or the element is gone.
func (q *Queue) Lock(id string) (bool, error) {
	path := filepath.Join(q.path, id)
	if err := os.Link(path, path+LockSuffix); err != nil {
		if errors.Is(err, fs.ErrExist) || errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("dirq lock: %w", err)
	}
	now := q.opts.Now()
	if err := os.Chtimes(path, now, now); err != nil {
		// The element went away between link and touch: give the lock back.
		os.Remove(path + LockSuffix)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("dirq lock: %w", err)
	}
	return true, nil
}

// Unlock gives a lock back without removing the element.
func (q *Queue) Unlock(id string) error {
	if err := os.Remove(filepath.Join(q.path, id) + LockSuffix); err != nil {
		return fmt.Errorf("dirq unlock: %w", err)
	}
	return nil
}

// Get reads a locked element (through its lock, which stays valid even if
// the element itself was removed).
func (q *Queue) Get(id string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(q.path, id) + LockSuffix)
	if err != nil {
		return nil, fmt.Errorf("dirq get: %w", err)
	}
	return b, nil
}

// Remove deletes a locked element: the element, then its lock.
func (q *Queue) Remove(id string) error {
	path := filepath.Join(q.path, id)
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("dirq remove: %w", err)
	}
	if err := os.Remove(path + LockSuffix); err != nil {
		return fmt.Errorf("dirq remove: %w", err)
	}
	return nil
}

// Purge cleans the queue as python-dirq's purge does: empty intermediate
// directories are removed, except the newest (a writer may be about to use
// it); .tmp files older than maxTemp and .lck files older than maxLock are
// deleted (a stale lock's element becomes available again). Zero durations
// mean the defaults, 300 s and 600 s.
func (q *Queue) Purge(maxTemp, maxLock time.Duration) error {
	if maxTemp <= 0 {
		maxTemp = DefaultMaxTemp
	}
	if maxLock <= 0 {
		maxLock = DefaultMaxLock
	}
	dirs, err := q.subdirs()
	if err != nil {
		return fmt.Errorf("dirq purge: %w", err)
	}
	if len(dirs) > 1 {
		for _, d := range dirs[:len(dirs)-1] {
			err := syscall.Rmdir(filepath.Join(q.path, d))
			if err != nil && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("dirq purge: %w", err)
			}
		}
	}
	now := q.opts.Now()
	for _, d := range dirs {
		ents, err := os.ReadDir(filepath.Join(q.path, d))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("dirq purge: %w", err)
		}
		for _, e := range ents {
			name := e.Name()
			var max time.Duration
			switch filepath.Ext(name) {
			case TempSuffix:
				max = maxTemp
			case LockSuffix:
				max = maxLock
			default:
				continue
			}
			path := filepath.Join(q.path, d, name)
			fi, err := os.Stat(path)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("dirq purge: %w", err)
			}
			if now.Sub(fi.ModTime()) < max {
				continue
			}
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("dirq purge: %w", err)
			}
		}
	}
	return nil
}
