package dirq

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	dirRE  = regexp.MustCompile(`^[0-9a-f]{8}$`)
	nameRE = regexp.MustCompile(`^[0-9a-f]{14}$`)
)

// readAll is a reader written from the layout description alone (not from
// this package): hex directories sorted, 14-hex names sorted, .tmp and
// .lck ignored. It returns id → content.
func readAll(t *testing.T, dir string) (ids []string, content map[string]string) {
	t.Helper()
	content = map[string]string{}
	subs, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range subs {
		if s.IsDir() && dirRE.MatchString(s.Name()) {
			names = append(names, s.Name())
		}
	}
	sort.Strings(names)
	for _, d := range names {
		els, err := os.ReadDir(filepath.Join(dir, d))
		if err != nil {
			t.Fatal(err)
		}
		var en []string
		for _, e := range els {
			if nameRE.MatchString(e.Name()) {
				en = append(en, e.Name())
			}
		}
		sort.Strings(en)
		for _, e := range en {
			b, err := os.ReadFile(filepath.Join(dir, d, e))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, d+"/"+e)
			content[d+"/"+e] = string(b)
		}
	}
	return ids, content
}

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

func TestNames(t *testing.T) {
	at := time.Unix(0x6470e3fa, 123456000)
	q, err := New(t.TempDir(), Options{Now: fixedClock(at)})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for range 3 {
		got = append(got, q.NewID())
	}
	r := fmt.Sprintf("%x", os.Getpid()%16)
	// 0x6470e3fa rounded down to 60 s is 0x6470e3ec (the example of
	// apel-formats.md §8); 123456 µs is 0x1e240, and the same instant
	// three times yields three increasing names.
	want := []string{"6470e3ec/6470e3fa1e240" + r, "6470e3ec/6470e3fa1e241" + r, "6470e3ec/6470e3fa1e242" + r}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ids (-want +got):\n%s", diff)
	}

	// Microseconds carry into seconds, and the directory follows.
	q2, _ := New(t.TempDir(), Options{Now: fixedClock(time.Unix(0x6470e3fb, 999999000))})
	q2.NewID()
	if got, want := q2.NewID(), "6470e3ec/6470e3fc00000"+r; got != want {
		t.Errorf("after a carry: %s, want %s", got, want)
	}
	q3, _ := New(t.TempDir(), Options{Now: fixedClock(time.Unix(0x6470e3ec+59, 0))})
	q4, _ := New(t.TempDir(), Options{Now: fixedClock(time.Unix(0x6470e3ec+60, 0))})
	if a, b := q3.NewID()[:8], q4.NewID()[:8]; a != "6470e3ec" || b != "6470e428" {
		t.Errorf("directories %s, %s; want 6470e3ec, 6470e428", a, b)
	}
}

func TestAdd(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool", "ssm")
	q, err := New(dir, Options{FileMode: 0o664, DirMode: 0o775, Sync: true})
	if err != nil {
		t.Fatal(err)
	}
	id, err := q.Add([]byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	ids, content := readAll(t, dir)
	if diff := cmp.Diff([]string{id}, ids); diff != "" {
		t.Errorf("elements (-want +got):\n%s", diff)
	}
	if content[id] != "hello" {
		t.Errorf("content %q", content[id])
	}
	all, _ := filepath.Glob(filepath.Join(dir, "*", "*"))
	if len(all) != 1 {
		t.Errorf("files in the queue: %v (a .tmp left behind?)", all)
	}
	for path, want := range map[string]fs.FileMode{filepath.Join(dir, id): 0o664, filepath.Dir(filepath.Join(dir, id)): 0o775 | fs.ModeDir, dir: 0o775 | fs.ModeDir} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
		}
	}
}

// TestConcurrentWriters: several Queue objects on one directory (as
// separate processes would be) with several goroutines each, all at the
// same instant; every element is written once and seen once.
func TestConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	at := time.Unix(1700000000, 0)
	const queues, writers, each = 3, 4, 100
	var wg sync.WaitGroup
	errs := make(chan error, queues*writers)
	for qi := range queues {
		q, err := New(dir, Options{Now: fixedClock(at)})
		if err != nil {
			t.Fatal(err)
		}
		q.rnd = 0 // as if every process had the same pid digit: names collide
		for w := range writers {
			wg.Go(func() {
				for i := range each {
					if _, err := q.Add([]byte(fmt.Sprintf("%d/%d/%d", qi, w, i))); err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	ids, content := readAll(t, dir)
	if len(ids) != queues*writers*each {
		t.Errorf("%d elements, want %d", len(ids), queues*writers*each)
	}
	seen := map[string]bool{}
	for _, c := range content {
		if seen[c] {
			t.Errorf("content %q twice", c)
		}
		seen[c] = true
	}
	q, _ := New(dir, Options{})
	els, err := q.Elements()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ids, els); diff != "" {
		t.Errorf("Elements disagrees with the layout reader (-reader +Elements):\n%s", diff)
	}
}

func TestLockGetRemove(t *testing.T) {
	dir := t.TempDir()
	past := time.Unix(1600000000, 0)
	q, _ := New(dir, Options{})
	id, err := q.Add([]byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	os.Chtimes(filepath.Join(dir, id), past, past)
	ok, err := q.Lock(id)
	if !ok || err != nil {
		t.Fatalf("Lock = %v, %v", ok, err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, id)); !fi.ModTime().After(past) {
		t.Error("Lock did not touch the element")
	}
	if ok, err := q.Lock(id); ok || err != nil {
		t.Errorf("second Lock = %v, %v; want false, nil", ok, err)
	}
	if b, err := q.Get(id); string(b) != "m" || err != nil {
		t.Errorf("Get = %q, %v", b, err)
	}
	if err := q.Unlock(id); err != nil {
		t.Fatal(err)
	}
	if ok, _ := q.Lock(id); !ok {
		t.Fatal("Lock after Unlock failed")
	}
	if err := q.Remove(id); err != nil {
		t.Fatal(err)
	}
	if ids, _ := readAll(t, dir); len(ids) != 0 {
		t.Errorf("elements left: %v", ids)
	}
	if ok, err := q.Lock(id); ok || err != nil {
		t.Errorf("Lock of a removed element = %v, %v; want false, nil", ok, err)
	}
	if n, _ := q.Count(); n != 0 {
		t.Errorf("Count = %d", n)
	}
}

func TestLinkCollision(t *testing.T) {
	dir := t.TempDir()
	q, _ := New(dir, Options{})
	src := filepath.Join(dir, ".staged")
	os.WriteFile(src, []byte("x"), 0o600)
	id := q.NewID()
	if err := q.Link(src, id); err != nil {
		t.Fatal(err)
	}
	if err := q.Link(src, id); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second Link: %v, want fs.ErrExist", err)
	}
	if ids, _ := readAll(t, dir); len(ids) != 1 {
		t.Errorf("elements %v", ids)
	}
}

func TestPurge(t *testing.T) {
	now := time.Unix(1700000000, 0)
	dir := t.TempDir()
	q, _ := New(dir, Options{Now: fixedClock(now)})
	mk := func(rel string, age time.Duration) {
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, now.Add(-age), now.Add(-age))
	}
	for _, d := range []string{"00000001", "00000002", "00000004"} {
		os.Mkdir(filepath.Join(dir, d), 0o755)
	}
	mk("00000003/0000000300000a.tmp", 301*time.Second) // stale temp: removed
	mk("00000003/0000000300000b.tmp", 299*time.Second) // fresh temp: kept
	mk("00000003/0000000300000c", time.Hour)           // element: kept
	mk("00000003/0000000300000c.lck", 601*time.Second) // stale lock: removed
	mk("00000003/0000000300000d", time.Hour)           // element: kept
	mk("00000003/0000000300000d.lck", 599*time.Second) // fresh lock: kept
	mk("not-hex/old.tmp", time.Hour)                   // not the queue's: kept
	if err := q.Purge(0, 0); err != nil {
		t.Fatal(err)
	}
	var got []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if p != dir {
			rel, _ := filepath.Rel(dir, p)
			got = append(got, rel)
		}
		return nil
	})
	want := []string{
		// 00000001 and 00000002 were empty; 00000004, empty too, is the newest.
		"00000003", "00000003/0000000300000b.tmp", "00000003/0000000300000c", "00000003/0000000300000d",
		"00000003/0000000300000d.lck", "00000004", "not-hex", "not-hex/old.tmp",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("after purge (-want +got):\n%s", diff)
	}
	// The element whose lock was purged can be locked again.
	if ok, _ := q.Lock("00000003/0000000300000c"); !ok {
		t.Error("element of a purged lock cannot be locked")
	}
}
