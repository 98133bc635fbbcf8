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
//     state/pending/<batch hash>/<i>.msg, and its mtime set to a sentinel
//     (one second before now).
//  2. The plan, naming the dirq element id each staged file will become
//     (chosen now, so a retry uses the same names), is written to a
//     temporary file, fsynced and renamed into place: the commit point.
//     A crash before it leaves nothing in the spool; the staging is
//     discarded at the next start.
//  3. Each staged file is hard-linked to its element id in the spool (the
//     element appears whole, at once), then the staged name is unlinked.
//     The spool directories are fsynced.
//  4. The batch id is appended, fsynced, to state/done, and the staging
//     directory removed. A later Write of that batch id does nothing.
//
// A retry (or the recovery NewSink runs for every committed plan) settles
// each staged file that is still there: link count 2 or more means the
// element is in the spool (or locked by ssmsend): done. Link count 1 with
// the mtime changed means ssmsend locked the element (its lock touches
// it), sent and removed it: done. Link count 1 with the sentinel mtime
// means the link never happened: link it now. If its name was taken by
// another writer meanwhile (link fails, and the file there is not ours),
// a fresh name is journalled first.
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
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
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
	pending  string
	done     *messenger.Ledger
	fileMode fs.FileMode
	logger   *slog.Logger
	// hook, in tests, is called after the n-th element of a batch was
	// linked; an error from it interrupts Write there, as a crash would.
	hook func(n int) error
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
	pending := filepath.Join(state, "pending")
	if err := os.MkdirAll(pending, 0o700); err != nil {
		return nil, fmt.Errorf("ssm: state dir: %w", err)
	}
	if err := checkLink(pending, cfg.Spool); err != nil {
		return nil, fmt.Errorf("ssm: state_dir %s must be on the filesystem of spool_dir %s (messages are hard-linked): %w", state, cfg.Spool, err)
	}
	done, err := messenger.OpenLedger(filepath.Join(state, "done"), doneKeep)
	if err != nil {
		return nil, fmt.Errorf("ssm: %w", err)
	}
	s := &Sink{cfg: cfg, queue: q, pending: pending, done: done, fileMode: fileMode, logger: logger.With("spool", cfg.Spool)}
	if err := s.recover(); err != nil {
		done.Close()
		return nil, err
	}
	return s, nil
}

// Close releases the sink's files.
func (s *Sink) Close() error { return s.done.Close() }

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

// recover settles every committed plan left by a crash and discards
// uncommitted staging.
func (s *Sink) recover() error {
	ents, err := os.ReadDir(s.pending)
	if err != nil {
		return fmt.Errorf("ssm: recover: %w", err)
	}
	for _, e := range ents {
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
		if err := s.settle(func() error { return nil }, dir, p); err != nil {
			return fmt.Errorf("ssm: recover batch %s: %w", p.batch, err)
		}
	}
	return nil
}

// Write implements messenger.Sink.
func (s *Sink) Write(ctx context.Context, batchID string, records []*tallyv1.Record) error {
	if s.done.Seen(batchID) {
		return nil
	}
	sum := sha256.Sum256([]byte(batchID))
	dir := filepath.Join(s.pending, hex.EncodeToString(sum[:16]))
	p, err := readPlan(dir)
	if err == nil {
		// A retry after a crash: the plan, not a new rendering, decides.
		return s.settle(ctx.Err, dir, p)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("ssm: batch %s: %w", batchID, err)
	}
	msgs, err := s.render(records)
	if err != nil {
		return err
	}
	p, err = s.stage(dir, batchID, msgs)
	if err != nil {
		return fmt.Errorf("ssm: batch %s: %w", batchID, err)
	}
	return s.settle(ctx.Err, dir, p)
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

// plan is a batch's journal: where each staged message goes.
type plan struct {
	batch    string
	sentinel time.Time
	ids      []string // element id of <i>.msg
}

const planMagic = "tally-ssm-plan v1"

func readPlan(dir string) (plan, error) {
	f, err := os.Open(filepath.Join(dir, "plan"))
	if err != nil {
		return plan{}, err
	}
	defer f.Close()
	var p plan
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

func staged(dir string, i int) string { return filepath.Join(dir, strconv.Itoa(i)+".msg") }

// stage writes the messages and commits the plan (steps 1 and 2).
func (s *Sink) stage(dir, batchID string, msgs [][]byte) (plan, error) {
	// Staging without a plan is a crashed attempt that linked nothing.
	if err := os.RemoveAll(dir); err != nil {
		return plan{}, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return plan{}, err
	}
	p := plan{batch: batchID, sentinel: time.Now().Truncate(time.Second).Add(-time.Second)}
	for i, m := range msgs {
		path := staged(dir, i)
		if err := writeSynced(path, m, s.fileMode); err != nil {
			return plan{}, err
		}
		if err := os.Chtimes(path, p.sentinel, p.sentinel); err != nil {
			return plan{}, err
		}
		p.ids = append(p.ids, s.queue.NewID())
	}
	return p, writePlan(dir, p)
}

// settle links every staged message not yet in the spool (step 3), then
// marks the batch done (step 4). It is idempotent. stop says whether to
// give up (the caller's context is done); what is linked stays linked.
func (s *Sink) settle(stop func() error, dir string, p plan) error {
	dirs := map[string]bool{}
	for i := range p.ids {
		if err := stop(); err != nil {
			return fmt.Errorf("ssm: batch %s: %w", p.batch, err)
		}
		linked, err := s.settleOne(dir, &p, i)
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
	if err := os.RemoveAll(dir); err != nil {
		// The batch is recorded as done: a leftover directory is only
		// clutter, settled harmlessly at the next start.
		s.logger.Warn("cannot remove a finished batch's staging", "batch_id", p.batch, "error", err)
	}
	return nil
}

// settleOne brings staged message i into the spool unless it already got
// there; it reports whether it linked it now.
func (s *Sink) settleOne(dir string, p *plan, i int) (bool, error) {
	path := staged(dir, i)
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
			p.ids[i] = s.queue.NewID()
			if err := writePlan(dir, *p); err != nil {
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
