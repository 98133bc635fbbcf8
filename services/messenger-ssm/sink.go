// Package ssm is the SSM messenger: it writes APEL messages into the SSM
// outgoing directory, the dirq QueueSimple spool that ssmsend reads, one
// message per element, at most max_size records per message, ASCII only.
//
// # Exactly once
//
// The messenger server (pkg/messenger) remembers a batch in its ledger
// only after Sink.Write returned, so a crash (SIGKILL, power cut) after
// some messages were spooled and before the ledger write brings the batch
// back. Write must then add only what is missing. It does so with a
// journal in the state directory (on the spool's filesystem):
//
//  1. Every message of the batch is written, fsynced, to a staged file
//     state/staged/<h>/<batch hash>.<i>.msg, <h> the hash's first hex
//     digit, and its mtime set to a sentinel (one second before now).
//  2. The staging directory is fsynced, so the staged names are durable
//     before anything refers to them. Then the plan, naming the dirq
//     element id each staged file will become (chosen now, so a retry uses
//     the same names), is appended as one checksummed line to
//     state/journal, which is fsynced: the commit point. Batches that
//     reach it together share these two fsyncs. A crash before it leaves
//     nothing in the spool: a torn or missing line is no plan, and
//     staging without a plan is discarded at the next start.
//  3. Each staged file is hard-linked to its element id in the spool (the
//     element appears whole, at once), then the staged name is unlinked.
//     The spool directories are fsynced.
//  4. The batch id is appended, fsynced, to state/done (batches finishing
//     together share the fsync). A later Write of that batch id does
//     nothing.
//
// A retry (or the recovery NewSink runs for every committed plan not
// done) settles each staged file that is still there: link count 2 or
// more means the element is in the spool (or locked by ssmsend): done.
// Link count 1 with the mtime changed means ssmsend locked the element
// (its lock touches it), sent and removed it: done. Link count 1 with the
// sentinel mtime means the link never happened: link it now. If its name
// was taken by another writer meanwhile (link fails, and the file there
// is not ours), a fresh name is journalled (a later line of the same
// batch supersedes the earlier) before it is used. Once recovery has
// settled every plan, the journal is emptied; while running it is
// rewritten with only the unsettled plans when it grows large.
//
// The journal is a file that only grows, rather than a plan file per
// batch, because creating and deleting two inodes per batch made every
// later file creation slower: ext4 skips over recently freed inodes when
// it allocates one, so the element files paid for the churn. Staging is
// spread over 16 long-lived directories because creating a file locks
// its directory, and batches staged side by side would queue on one.
//
// A state directory left by an older tally (state/pending/<hash>/plan
// with <i>.msg beside it) is settled the same way at start.
//
// Residual windows, honestly: an element deleted from the spool by
// something that does not lock it the dirq way (an operator's rm, a reader
// other than ssmsend) between step 3's link and unlink, followed by a
// crash there, is written again. A wall clock stepped back more than a
// second before ssmsend locks an element, together with such a crash,
// could make a sent element look unsent (and be sent twice). Neither
// involves ssmsend's normal operation.
package ssm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tally-accounting/tally/pkg/apel"
	"github.com/tally-accounting/tally/pkg/dirq"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/messenger"
	"github.com/tally-accounting/tally/pkg/record"
)

// doneKeep is how many finished batch ids the sink remembers. It only has
// to bridge the gap between Write returning and the messenger's own
// ledger recording the batch, i.e. the batches in flight at a crash.
const doneKeep = 100_000

// journalCompactAt is the journal size past which it is rewritten with
// only the unsettled plans (a few hundred bytes each).
const journalCompactAt = 4 << 20

// typeOrder is the order a batch's messages are spooled in.
var typeOrder = []tallyv1.RecordType{
	tallyv1.RecordType_RECORD_TYPE_CLOUD, tallyv1.RecordType_RECORD_TYPE_ACCELERATOR,
	tallyv1.RecordType_RECORD_TYPE_IP, tallyv1.RecordType_RECORD_TYPE_STORAGE,
}

// Sink writes record batches into the SSM spool. It implements
// messenger.Sink and is safe for concurrent use by different batches; the
// messenger server never writes one batch twice at once.
type Sink struct {
	cfg      Config
	queue    *dirq.Queue
	state    string
	pending  string // an older tally's staging, read at start only
	staged   string
	done     *messenger.Ledger
	fileMode fs.FileMode
	logger   *slog.Logger
	// hook, in tests, is called after the n-th element of a batch was
	// linked; an error from it interrupts Write there, as a crash would.
	hook func(n int) error

	// mu guards the journal and the plans committed and not yet done.
	// The journal file itself is written by one committer at a time
	// (flushing), outside mu.
	mu      sync.Mutex
	journal *os.File
	size    int64
	// compactAt is journalCompactAt; tests lower it.
	compactAt int64
	// Group commit: one journal write is under way (flushing); plans
	// committed meanwhile gather in next.
	flushed  *sync.Cond
	flushing bool
	next     *commitGroup
	plans    map[string]*plan // by batch hash
	// broken is set when a journal write failed: whether the plan is
	// durable is then unknown, so nothing more is written until a restart
	// reads the journal back.
	broken error
}

// NewSink opens the spool and the state directory and finishes any batch
// a crash interrupted after its commit point.
func NewSink(cfg Config, logger *slog.Logger) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	fileMode, _ := parseMode(cfg.FileMode)
	dirMode, _ := parseMode(cfg.DirMode)
	q, err := dirq.New(cfg.Spool, dirq.Options{FileMode: fileMode, DirMode: dirMode})
	if err != nil {
		return nil, fmt.Errorf("ssm: %w", err)
	}
	state := cfg.stateDir()
	staged := filepath.Join(state, "staged")
	for _, h := range shards {
		if err := os.MkdirAll(filepath.Join(staged, string(h)), 0o700); err != nil {
			return nil, fmt.Errorf("ssm: state dir: %w", err)
		}
	}
	if err := checkLink(staged, cfg.Spool); err != nil {
		return nil, fmt.Errorf("ssm: state_dir %s must be on the filesystem of spool_dir %s (messages are hard-linked): %w", state, cfg.Spool, err)
	}
	done, err := messenger.OpenLedger(filepath.Join(state, "done"), doneKeep)
	if err != nil {
		return nil, fmt.Errorf("ssm: %w", err)
	}
	s := &Sink{cfg: cfg, queue: q, state: state, pending: filepath.Join(state, "pending"), staged: staged, done: done, fileMode: fileMode,
		logger: logger.With("spool", cfg.Spool), plans: map[string]*plan{}, compactAt: journalCompactAt}
	s.flushed = sync.NewCond(&s.mu)
	if err := s.recover(); err != nil {
		done.Close()
		if s.journal != nil {
			s.journal.Close()
		}
		return nil, err
	}
	return s, nil
}

// Close releases the sink's files.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.flushing {
		s.flushed.Wait()
	}
	return errors.Join(s.journal.Close(), s.done.Close())
}

// Queue is the spool, for readers in the same process (tests, tools).
func (s *Sink) Queue() *dirq.Queue { return s.queue }

// checkLink fails when a file in from cannot be hard-linked into to.
func checkLink(from, to string) error {
	src := filepath.Join(from, ".linkcheck")
	dst := filepath.Join(to, ".tally-linkcheck")
	os.Remove(dst)
	if err := os.WriteFile(src, nil, 0o600); err != nil {
		return err
	}
	defer os.Remove(src)
	if err := os.Link(src, dst); err != nil {
		return err
	}
	return os.Remove(dst)
}

// recover settles every committed plan left by a crash, discards
// uncommitted staging and empties the journal.
func (s *Sink) recover() error {
	// An older tally's layout: a directory per batch with its plan.
	ents, err := os.ReadDir(s.pending)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("ssm: recover: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(s.pending, e.Name())
		p, err := readPlan(dir)
		if errors.Is(err, fs.ErrNotExist) {
			if err := os.RemoveAll(dir); err != nil {
				return fmt.Errorf("ssm: recover: %w", err)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("ssm: recover %s: %w", dir, err)
		}
		s.logger.Warn("finishing a batch interrupted by a crash", "batch_id", p.batch, "messages", len(p.ids))
		if err := s.settle(func() error { return nil }, &p); err != nil {
			return fmt.Errorf("ssm: recover batch %s: %w", p.batch, err)
		}
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("ssm: recover: %w", err)
		}
	}

	path := filepath.Join(s.state, "journal")
	plans, whole, err := readJournal(path, s.staged)
	if err != nil {
		return fmt.Errorf("ssm: recover: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("ssm: journal: %w", err)
	}
	s.journal = f
	// A torn last line must not prefix the lines settling may append.
	if err := f.Truncate(whole); err != nil {
		return fmt.Errorf("ssm: journal: %w", err)
	}
	s.size = whole
	var open []*plan
	for _, p := range plans {
		if !s.done.Seen(p.batch) {
			// Known to commit, so that a rewrite of the journal, should
			// settling journal a new name, keeps them.
			s.plans[p.hash] = p
			open = append(open, p)
		}
	}
	for _, p := range open {
		s.logger.Warn("finishing a batch interrupted by a crash", "batch_id", p.batch, "messages", len(p.ids))
		if err := s.settle(func() error { return nil }, p); err != nil {
			return fmt.Errorf("ssm: recover batch %s: %w", p.batch, err)
		}
	}
	// Every committed plan is settled, its staged files gone: what is
	// left was staged without a plan.
	for _, h := range shards {
		dir := filepath.Join(s.staged, string(h))
		if ents, err = os.ReadDir(dir); err != nil {
			return fmt.Errorf("ssm: recover: %w", err)
		}
		for _, e := range ents {
			if !e.IsDir() && strings.HasSuffix(e.Name(), ".msg") {
				if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
					return fmt.Errorf("ssm: recover: %w", err)
				}
			}
		}
	}
	// Emptied in place (no inode churn): the plans it held are settled
	// and recorded done.
	if err := errors.Join(f.Truncate(0), f.Sync()); err != nil {
		return fmt.Errorf("ssm: journal: %w", err)
	}
	s.size = 0
	return dirq.SyncDir(s.state)
}

// Write implements messenger.Sink.
func (s *Sink) Write(ctx context.Context, batchID string, records []*tallyv1.Record) error {
	if s.done.Seen(batchID) {
		return nil
	}
	if strings.ContainsAny(batchID, "\r\n") {
		return fmt.Errorf("%w: batch id %q has a line break", messenger.ErrRejected, batchID)
	}
	sum := sha256.Sum256([]byte(batchID))
	hash := hex.EncodeToString(sum[:16])
	s.mu.Lock()
	p, broken := s.plans[hash], s.broken
	s.mu.Unlock()
	if broken != nil {
		return fmt.Errorf("ssm: journal failed, restart to recover: %w", broken)
	}
	if p != nil {
		// A retry: the committed plan, not a new rendering, decides.
		return s.settle(ctx.Err, p)
	}
	msgs, err := s.render(records)
	if err != nil {
		return err
	}
	p, err = s.stage(hash, batchID, msgs)
	if err != nil {
		return fmt.Errorf("ssm: batch %s: %w", batchID, err)
	}
	return s.settle(ctx.Err, p)
}

// render groups records by type and renders each group's messages.
func (s *Sink) render(records []*tallyv1.Record) ([][]byte, error) {
	groups := map[tallyv1.RecordType][]*tallyv1.Record{}
	for _, r := range records {
		t := record.TypeOf(r)
		if !slices.Contains(typeOrder, t) {
			return nil, fmt.Errorf("%w: record %q: SSM takes no %s records", messenger.ErrRejected, r.GetKey(), record.TypeName(t))
		}
		groups[t] = append(groups[t], r)
	}
	var msgs [][]byte
	for _, t := range typeOrder {
		m, err := apel.Split(groups[t], s.cfg.MaxSize, s.cfg.MaxBytes)
		if errors.Is(err, apel.ErrInvalid) {
			return nil, fmt.Errorf("%w: %w", messenger.ErrRejected, err)
		}
		if err != nil {
			return nil, fmt.Errorf("ssm: %w", err)
		}
		msgs = append(msgs, m...)
	}
	for _, m := range msgs {
		// apel renders ASCII only; one stray byte would stop ssmsend for
		// good, so check rather than trust.
		for i, c := range m {
			if c >= 0x80 {
				return nil, fmt.Errorf("ssm: rendered message has a non-ASCII byte at %d", i)
			}
		}
	}
	return msgs, nil
}

// plan is a batch's journal entry: where each staged message goes.
type plan struct {
	batch    string
	hash     string
	sentinel time.Time
	ids      []string // element id of staged message i
	// prefix+"<i>.msg" is staged message i.
	prefix string
	// legacyDir, for a plan of an older tally, is the directory whose
	// plan file journals it.
	legacyDir string
}

func (p *plan) staged(i int) string { return p.prefix + strconv.Itoa(i) + ".msg" }

// stagedPrefix is where a batch's messages are staged.
func stagedPrefix(staged, hash string) string {
	return filepath.Join(stagedDir(staged, hash), hash) + "."
}

// shards name the staging directories, by a batch hash's first digit.
const shards = "0123456789abcdef"

func stagedDir(staged, hash string) string { return filepath.Join(staged, hash[:1]) }

// appendLine appends p's journal line: the CRC-32C of the rest, the
// sentinel, the hash, the element ids and, last because it may hold
// spaces, the batch id.
func (p *plan) appendLine(dst []byte) []byte {
	start := len(dst)
	dst = append(dst, "00000000 "...)
	body := len(dst)
	dst = strconv.AppendInt(dst, p.sentinel.UnixNano(), 10)
	dst = append(dst, ' ')
	dst = append(dst, p.hash...)
	dst = append(dst, ' ')
	for i, id := range p.ids {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, id...)
	}
	dst = append(dst, ' ')
	dst = append(dst, p.batch...)
	crc := crc32.Checksum(dst[body:], castagnoli)
	hex.Encode(dst[start:start+8], []byte{byte(crc >> 24), byte(crc >> 16), byte(crc >> 8), byte(crc)})
	return append(dst, '\n')
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// parseLine reads a journal line (without its LF); ok is false for a line
// a crash tore.
func parseLine(line []byte, staged string) (*plan, bool) {
	if len(line) < 9 || line[8] != ' ' {
		return nil, false
	}
	var want [4]byte
	if _, err := hex.Decode(want[:], line[:8]); err != nil {
		return nil, false
	}
	body := line[9:]
	if crc32.Checksum(body, castagnoli) != uint32(want[0])<<24|uint32(want[1])<<16|uint32(want[2])<<8|uint32(want[3]) {
		return nil, false
	}
	f := strings.SplitN(string(body), " ", 4)
	if len(f) != 4 {
		return nil, false
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return nil, false
	}
	if len(f[1]) != 32 || strings.Trim(f[1], shards) != "" {
		return nil, false
	}
	p := &plan{sentinel: time.Unix(0, ns), hash: f[1], batch: f[3], prefix: stagedPrefix(staged, f[1])}
	if f[2] != "" {
		p.ids = strings.Split(f[2], ",")
	}
	return p, true
}

// readJournal returns the committed plans, the latest line of each batch,
// and the length of the journal's complete lines.
func readJournal(path, staged string) ([]*plan, int64, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	var (
		plans []*plan
		at    = map[string]int{}
		whole = int64(bytes.LastIndexByte(data, '\n') + 1)
	)
	for len(data) > 0 {
		line, rest, complete := bytes.Cut(data, []byte{'\n'})
		data = rest
		p, ok := parseLine(line, staged)
		if !complete || !ok {
			// Only the last append can be torn, and it was never acted
			// on: Write links nothing before the journal is synced.
			continue
		}
		if i, seen := at[p.hash]; seen {
			plans[i] = p
			continue
		}
		at[p.hash] = len(plans)
		plans = append(plans, p)
	}
	return plans, whole, nil
}

// commit appends p to the journal and fsyncs it. Plans committed while
// an fsync is under way wait and share the next write and fsync.
func (s *Sink) commit(p *plan) error {
	if p.legacyDir != "" {
		return writePlan(p.legacyDir, *p)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken != nil {
		return s.broken
	}
	if s.next == nil {
		s.next = &commitGroup{}
	}
	g := s.next
	g.plans = append(g.plans, p)
	for s.flushing && !g.done {
		s.flushed.Wait()
	}
	if g.done {
		return g.err
	}
	s.next, s.flushing = nil, true
	err := s.broken
	if err == nil && s.size > s.compactAt {
		err = s.compactLocked()
	}
	var b []byte
	if err == nil {
		dirs := map[string]bool{}
		for _, p := range g.plans {
			b = p.appendLine(b)
			dirs[stagedDir(s.staged, p.hash)] = true
		}
		s.mu.Unlock()
		// The group's staged names first, once a directory: a plan must
		// not be durable before the files it names.
		for d := range dirs {
			if err == nil {
				err = dirq.SyncDir(d)
			}
		}
		if err == nil {
			_, err = s.journal.Write(b)
		}
		if err == nil {
			err = s.journal.Sync()
		}
		s.mu.Lock()
	}
	s.flushing = false
	if err != nil {
		if s.broken == nil {
			s.broken = fmt.Errorf("journal: %w", err)
		}
		err = s.broken
	} else {
		s.size += int64(len(b))
		for _, p := range g.plans {
			s.plans[p.hash] = p
		}
	}
	g.done, g.err = true, err
	s.flushed.Broadcast()
	return err
}

// commitGroup is plans written and synced together.
type commitGroup struct {
	plans []*plan
	done  bool
	err   error
}

// compactLocked replaces the journal with one holding only the plans not
// yet done.
func (s *Sink) compactLocked() error {
	var b []byte
	for _, p := range s.plans {
		b = p.appendLine(b)
	}
	path := filepath.Join(s.state, "journal")
	tmp := path + ".tmp"
	if err := writeSynced(tmp, b, 0o600); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := dirq.SyncDir(s.state); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	s.journal.Close()
	s.journal, s.size = f, int64(len(b))
	return nil
}

// A plan file is how an older tally journalled a batch; it is still read
// at start, to finish what such a tally left.
const planMagic = "tally-ssm-plan v1"

func readPlan(dir string) (plan, error) {
	f, err := os.Open(filepath.Join(dir, "plan"))
	if err != nil {
		return plan{}, err
	}
	defer f.Close()
	p := plan{prefix: dir + string(filepath.Separator), legacyDir: dir}
	sc := bufio.NewScanner(f)
	for n := 0; sc.Scan(); n++ {
		line := sc.Text()
		key, val, _ := strings.Cut(line, " ")
		switch {
		case n == 0:
			if line != planMagic {
				return plan{}, fmt.Errorf("plan: bad first line %q", line)
			}
		case key == "batch":
			p.batch = val
		case key == "sentinel":
			ns, err := strconv.ParseInt(val, 10, 64)
			if err != nil {
				return plan{}, fmt.Errorf("plan: %q: %w", line, err)
			}
			p.sentinel = time.Unix(0, ns)
		case key == "element":
			p.ids = append(p.ids, val)
		default:
			return plan{}, fmt.Errorf("plan: unknown line %q", line)
		}
	}
	if err := sc.Err(); err != nil {
		return plan{}, fmt.Errorf("plan: %w", err)
	}
	return p, nil
}

// writePlan replaces dir/plan atomically and durably.
func writePlan(dir string, p plan) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nbatch %s\nsentinel %d\n", planMagic, p.batch, p.sentinel.UnixNano())
	for _, id := range p.ids {
		fmt.Fprintf(&b, "element %s\n", id)
	}
	tmp := filepath.Join(dir, "plan.tmp")
	if err := writeSynced(tmp, []byte(b.String()), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "plan")); err != nil {
		return err
	}
	return dirq.SyncDir(dir)
}

func writeSynced(path string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		// Explicitly, so the umask cannot take group write away.
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// stage writes the messages and commits the plan (steps 1 and 2).
func (s *Sink) stage(hash, batchID string, msgs [][]byte) (*plan, error) {
	p := &plan{batch: batchID, hash: hash, prefix: stagedPrefix(s.staged, hash),
		sentinel: time.Now().Truncate(time.Second).Add(-time.Second)}
	for i, m := range msgs {
		// A file left by an attempt that failed before its commit is
		// overwritten: no plan names it, so nothing links it.
		path := p.staged(i)
		if err := writeSynced(path, m, s.fileMode); err != nil {
			return nil, err
		}
		if err := os.Chtimes(path, p.sentinel, p.sentinel); err != nil {
			return nil, err
		}
		p.ids = append(p.ids, s.queue.NewID())
	}
	return p, s.commit(p)
}

// settle links every staged message not yet in the spool (step 3), then
// marks the batch done (step 4). It is idempotent. stop says whether to
// give up (the caller's context is done); what is linked stays linked.
func (s *Sink) settle(stop func() error, p *plan) error {
	dirs := map[string]bool{}
	for i := range p.ids {
		if err := stop(); err != nil {
			return fmt.Errorf("ssm: batch %s: %w", p.batch, err)
		}
		linked, err := s.settleOne(p, i)
		if err != nil {
			return fmt.Errorf("ssm: batch %s: %w", p.batch, err)
		}
		if linked {
			dirs[filepath.Dir(p.ids[i])] = true
		}
		if s.hook != nil {
			if err := s.hook(i + 1); err != nil {
				return err
			}
		}
	}
	for d := range dirs {
		if err := dirq.SyncDir(filepath.Join(s.cfg.Spool, d)); err != nil {
			return fmt.Errorf("ssm: batch %s: %w", p.batch, err)
		}
	}
	if err := s.done.Record(p.batch); err != nil {
		return fmt.Errorf("ssm: batch %s: %w", p.batch, err)
	}
	s.mu.Lock()
	delete(s.plans, p.hash)
	s.mu.Unlock()
	return nil
}

// settleOne brings staged message i into the spool unless it already got
// there; it reports whether it linked it now.
func (s *Sink) settleOne(p *plan, i int) (bool, error) {
	path := p.staged(i)
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil // settled before
	}
	if err != nil {
		return false, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false, errors.New("no link count on this platform")
	}
	switch {
	case st.Nlink >= 2:
		// In the spool, as the element or as ssmsend's lock of it.
	case !fi.ModTime().Equal(p.sentinel):
		// ssmsend locked it (a lock touches the element), then removed it.
		s.logger.Info("message already sent by ssmsend", "batch_id", p.batch, "element", p.ids[i])
	default:
		for {
			err := s.queue.Link(path, p.ids[i])
			if err == nil {
				break
			}
			if !errors.Is(err, fs.ErrExist) {
				return false, err
			}
			// Not ours (ours would have made the link count 2): another
			// writer took the name. Journal a new one before using it.
			if err := s.rename(p, i); err != nil {
				return false, err
			}
		}
		if err := os.Remove(path); err != nil {
			return true, err
		}
		return true, nil
	}
	return false, os.Remove(path)
}

// rename gives staged message i a fresh element id, journalled.
func (s *Sink) rename(p *plan, i int) error {
	// A copy, so a compaction reading the committed plan under s.mu never
	// sees it half changed.
	np := *p
	np.ids = slices.Clone(p.ids)
	np.ids[i] = s.queue.NewID()
	if err := s.commit(&np); err != nil {
		return err
	}
	*p = np
	return nil
}
