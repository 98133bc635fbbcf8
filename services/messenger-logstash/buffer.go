package logstash

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// The buffer is a directory of append-only segment files, <n>.seg with n
// increasing, plus a cursor file saying how far delivery has got.
//
// A segment is a sequence of frames, one per batch:
//
//	magic "TLB1" | payload length u32 | CRC-32C of id+payload u32 | id length u16 | batch id | payload
//
// (big endian). The payload is the batch's JSON lines, each ending in LF,
// exactly the bytes sent to Logstash. A frame never spans two segments.
// Frames are whole once fsynced: a crash can only leave a torn last frame in
// the newest segment, which the open truncates (its Write never returned,
// so the enricher retries the batch).
//
// The cursor is (segment, frame offset, payload bytes of that frame
// delivered), always at a line boundary; it is rewritten in place, with a
// CRC, and fsynced whenever delivery advances. Segments before the
// cursor's are deleted.
const (
	frameMagic   = "TLB1"
	headerLen    = 14
	segSuffix    = ".seg"
	cursorName   = "cursor"
	cursorLen    = 28
	maxSegBytes  = 64 << 20
	minSegBytes  = 16 << 10
	maxFrameSize = 1<<32 - 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrBufferFull is returned by Write when the backlog not yet delivered to
// Logstash has reached max_buffer_bytes: the batch is refused, not dropped,
// and the enricher retries it later.
var ErrBufferFull = errors.New("logstash: buffer full")

// errClosed is returned by a buffer used after close.
var errClosed = errors.New("logstash: buffer closed")

// position is a place in the buffer: the frame at offset frame of segment
// seg, of which done payload bytes are delivered.
type position struct {
	seg   uint64
	frame int64
	done  int64
}

type segment struct {
	n    uint64
	size int64 // bytes of whole, fsynced frames
}

type buffer struct {
	dir      string
	max      int64
	segBytes int64
	logger   *slog.Logger

	mu      sync.Mutex
	segs    []segment // oldest first; the last is the head Write appends to
	head    *os.File
	cursor  position // delivered up to here (durable)
	curFile *os.File
	closed  bool
	// notify has room for one signal: data was appended.
	notify chan struct{}
}

func segPath(dir string, n uint64) string {
	return filepath.Join(dir, fmt.Sprintf("%020d%s", n, segSuffix))
}

// segmentSize picks the segment size for a buffer of max bytes: small
// enough that delivered space is reclaimed in steps well below max, large
// enough that rotation is rare.
func segmentSize(maxBytes int64) int64 {
	return min(max(maxBytes/16, minSegBytes), maxSegBytes)
}

// openBuffer opens (or creates) the buffer in dir. It returns the batch ids
// of every frame still in the buffer, so the caller can make sure each is
// known as written (a crash may have come between a frame's fsync and the
// caller noting its batch).
func openBuffer(dir string, maxBytes int64, logger *slog.Logger) (*buffer, []string, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, nil, fmt.Errorf("logstash: buffer: %w", err)
	}
	b := &buffer{dir: dir, max: maxBytes, segBytes: segmentSize(maxBytes), logger: logger, notify: make(chan struct{}, 1)}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("logstash: buffer: %w", err)
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), segSuffix)
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(name, 10, 64)
		if err != nil || n == 0 {
			continue
		}
		b.segs = append(b.segs, segment{n: n})
	}
	slices.SortFunc(b.segs, func(x, y segment) int { return cmpUint(x.n, y.n) })

	cur, err := b.openCursor()
	if err != nil {
		return nil, nil, err
	}
	// Segments before the cursor's are delivered; a crash came between
	// saving the cursor and deleting them.
	for len(b.segs) > 0 && b.segs[0].n < cur.seg {
		if err := os.Remove(segPath(dir, b.segs[0].n)); err != nil {
			b.curFile.Close()
			return nil, nil, fmt.Errorf("logstash: buffer: %w", err)
		}
		b.segs = b.segs[1:]
	}
	var ids []string
	for i := range b.segs {
		last := i == len(b.segs)-1
		size, segIDs, err := b.scan(b.segs[i].n, last)
		if err != nil {
			b.curFile.Close()
			return nil, nil, err
		}
		b.segs[i].size = size
		ids = append(ids, segIDs...)
	}
	switch {
	case len(b.segs) == 0:
		// Empty: start where the cursor says, or at 1.
		n := max(cur.seg, 1)
		b.segs = []segment{{n: n}}
		cur = position{seg: n}
	case !b.holds(cur):
		// No usable cursor (new, torn or stale): deliver everything left,
		// at least once.
		if cur != (position{}) {
			logger.Warn("logstash buffer cursor does not match the segments; resending from the oldest", "cursor_segment", cur.seg)
		}
		cur = position{seg: b.segs[0].n}
	}
	b.cursor = cur
	h, err := os.OpenFile(segPath(dir, b.segs[len(b.segs)-1].n), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		b.curFile.Close()
		return nil, nil, fmt.Errorf("logstash: buffer: %w", err)
	}
	b.head = h
	if err := errors.Join(syncDir(dir), b.saveCursor(cur)); err != nil {
		b.close()
		return nil, nil, fmt.Errorf("logstash: buffer: %w", err)
	}
	return b, ids, nil
}

// holds reports whether p is a place in the buffer's segments.
func (b *buffer) holds(p position) bool {
	for _, s := range b.segs {
		if s.n == p.seg {
			return p.frame <= s.size
		}
	}
	return false
}

func cmpUint(x, y uint64) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

func (b *buffer) openCursor() (position, error) {
	f, err := os.OpenFile(filepath.Join(b.dir, cursorName), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return position{}, fmt.Errorf("logstash: buffer cursor: %w", err)
	}
	b.curFile = f
	var raw [cursorLen]byte
	n, err := f.ReadAt(raw[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return position{}, fmt.Errorf("logstash: buffer cursor: %w", err)
	}
	if n < cursorLen || crc32.Checksum(raw[:24], castagnoli) != binary.BigEndian.Uint32(raw[24:]) {
		return position{}, nil
	}
	return position{
		seg:   binary.BigEndian.Uint64(raw[0:]),
		frame: int64(binary.BigEndian.Uint64(raw[8:])),
		done:  int64(binary.BigEndian.Uint64(raw[16:])),
	}, nil
}

func (b *buffer) saveCursor(p position) error {
	var raw [cursorLen]byte
	binary.BigEndian.PutUint64(raw[0:], p.seg)
	binary.BigEndian.PutUint64(raw[8:], uint64(p.frame))
	binary.BigEndian.PutUint64(raw[16:], uint64(p.done))
	binary.BigEndian.PutUint32(raw[24:], crc32.Checksum(raw[:24], castagnoli))
	// One 28-byte write inside one sector; a torn one fails its CRC and
	// the open falls back to resending (duplicates, never loss).
	if _, err := b.curFile.WriteAt(raw[:], 0); err != nil {
		return err
	}
	return b.curFile.Sync()
}

// scan walks segment n's frames and returns the size of its whole frames
// and their batch ids. For the newest segment (verify) it checks every
// CRC and truncates a torn tail; older segments were complete and fsynced
// before the next one was created, so their headers suffice.
func (b *buffer) scan(n uint64, verify bool) (int64, []string, error) {
	path := segPath(b.dir, n)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, nil, fmt.Errorf("logstash: buffer: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, nil, fmt.Errorf("logstash: buffer: %w", err)
	}
	var (
		off int64
		ids []string
		buf []byte
	)
	for off < fi.Size() {
		fr, err := readFrame(f, off, &buf, verify)
		if err != nil {
			b.logger.Error("logstash buffer: truncating a torn or corrupt segment tail", "segment", path, "offset", off, "bytes", fi.Size()-off, "error", err)
			if err := f.Truncate(off); err != nil {
				return 0, nil, fmt.Errorf("logstash: buffer: %w", err)
			}
			if err := f.Sync(); err != nil {
				return 0, nil, fmt.Errorf("logstash: buffer: %w", err)
			}
			break
		}
		ids = append(ids, fr.id)
		off += fr.size
	}
	return off, ids, nil
}

type frame struct {
	id      string
	payload []byte // nil when read without verification
	size    int64  // header, id and payload
}

var errTorn = errors.New("torn frame")

// readFrame reads the frame at off of f; with verify it reads the payload
// into *buf and checks the CRC.
func readFrame(f *os.File, off int64, buf *[]byte, verify bool) (frame, error) {
	var h [headerLen]byte
	if _, err := f.ReadAt(h[:], off); err != nil {
		return frame{}, fmt.Errorf("%w: header: %w", errTorn, err)
	}
	if string(h[:4]) != frameMagic {
		return frame{}, fmt.Errorf("%w: bad magic", errTorn)
	}
	plen := int64(binary.BigEndian.Uint32(h[4:]))
	sum := binary.BigEndian.Uint32(h[8:])
	idLen := int64(binary.BigEndian.Uint16(h[12:]))
	fi, err := f.Stat()
	if err != nil {
		return frame{}, err
	}
	size := headerLen + idLen + plen
	if off+size > fi.Size() {
		return frame{}, fmt.Errorf("%w: %d bytes past the end", errTorn, off+size-fi.Size())
	}
	n := idLen
	if verify {
		n += plen
	}
	if int64(cap(*buf)) < n {
		*buf = make([]byte, n)
	}
	data := (*buf)[:n]
	if _, err := f.ReadAt(data, off+headerLen); err != nil {
		return frame{}, fmt.Errorf("%w: %w", errTorn, err)
	}
	fr := frame{id: string(data[:idLen]), size: size}
	if verify {
		if crc32.Checksum(data, castagnoli) != sum {
			return frame{}, fmt.Errorf("%w: checksum mismatch", errTorn)
		}
		fr.payload = data[idLen:]
	}
	return fr, nil
}

// newFrame returns a buffer holding room for the header of batchID's
// frame; the caller appends the payload and passes it to append.
func newFrame(batchID string, sizeHint int) []byte {
	f := make([]byte, headerLen+len(batchID), headerLen+len(batchID)+sizeHint)
	copy(f[headerLen:], batchID)
	return f
}

// append fills in the header of f (from newFrame) and writes it durably.
func (b *buffer) append(batchID string, f []byte) error {
	idLen := len(batchID)
	plen := len(f) - headerLen - idLen
	if idLen > 1<<16-1 {
		return fmt.Errorf("batch id of %d bytes is too long", idLen)
	}
	if int64(plen) > maxFrameSize {
		return fmt.Errorf("batch of %d bytes is too large for one frame", plen)
	}
	copy(f, frameMagic)
	binary.BigEndian.PutUint32(f[4:], uint32(plen))
	binary.BigEndian.PutUint32(f[8:], crc32.Checksum(f[headerLen:], castagnoli))
	binary.BigEndian.PutUint16(f[12:], uint16(idLen))

	size := int64(len(f))
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errClosed
	}
	if size > b.max {
		return fmt.Errorf("batch of %d bytes exceeds max_buffer_bytes %d", size, b.max)
	}
	if p := b.pendingLocked(); p+size > b.max {
		return fmt.Errorf("%w: %d bytes waiting for Logstash, max_buffer_bytes %d", ErrBufferFull, p, b.max)
	}
	h := &b.segs[len(b.segs)-1]
	if h.size > 0 && h.size+size > b.segBytes {
		if err := b.rotateLocked(); err != nil {
			return err
		}
		h = &b.segs[len(b.segs)-1]
	}
	if _, err := b.head.Write(f); err != nil {
		return b.undoLocked(h, err)
	}
	if err := b.head.Sync(); err != nil {
		return b.undoLocked(h, err)
	}
	h.size += size
	select {
	case b.notify <- struct{}{}:
	default:
	}
	return nil
}

// undoLocked cuts a failed append off the head so frames stay whole.
func (b *buffer) undoLocked(h *segment, err error) error {
	if terr := b.head.Truncate(h.size); terr != nil {
		// The head now may end in a partial frame that later appends would
		// follow: refuse further writes; the open after a restart
		// truncates it.
		b.closed = true
		b.logger.Error("logstash buffer: cannot undo a failed append; refusing writes until restart", "error", terr)
	}
	return fmt.Errorf("logstash: buffer append: %w", err)
}

func (b *buffer) rotateLocked() error {
	n := b.segs[len(b.segs)-1].n + 1
	f, err := os.OpenFile(segPath(b.dir, n), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("logstash: buffer rotate: %w", err)
	}
	if err := syncDir(b.dir); err != nil {
		f.Close()
		os.Remove(segPath(b.dir, n))
		return fmt.Errorf("logstash: buffer rotate: %w", err)
	}
	b.head.Close()
	b.head = f
	b.segs = append(b.segs, segment{n: n})
	return nil
}

// pendingLocked is the number of buffered bytes not yet delivered (whole
// frames from the cursor's on).
func (b *buffer) pendingLocked() int64 {
	var p int64
	for _, s := range b.segs {
		if s.n < b.cursor.seg {
			continue
		}
		p += s.size
		if s.n == b.cursor.seg {
			p -= b.cursor.frame
		}
	}
	return p
}

// pending returns the bytes not yet delivered.
func (b *buffer) pending() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pendingLocked()
}

// delivered returns the durable cursor.
func (b *buffer) delivered() position {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cursor
}

// extent reports segment n's durable size, whether it is the head, and
// the segment after it.
func (b *buffer) extent(n uint64) (size int64, head bool, next uint64, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, s := range b.segs {
		if s.n == n {
			if i+1 < len(b.segs) {
				return s.size, false, b.segs[i+1].n, true
			}
			return s.size, true, 0, true
		}
	}
	return 0, false, 0, false
}

// advance makes p the delivered position, durably, and deletes the
// segments wholly delivered.
func (b *buffer) advance(p position) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return errClosed
	}
	// The end of a finished segment is the start of the next one.
	for i := 0; i+1 < len(b.segs); i++ {
		if b.segs[i].n == p.seg && p.frame >= b.segs[i].size {
			p = position{seg: b.segs[i+1].n}
		}
	}
	if err := b.saveCursor(p); err != nil {
		b.mu.Unlock()
		return fmt.Errorf("logstash: buffer cursor: %w", err)
	}
	b.cursor = p
	var drop []uint64
	for len(b.segs) > 1 && b.segs[0].n < p.seg {
		drop = append(drop, b.segs[0].n)
		b.segs = b.segs[1:]
	}
	b.mu.Unlock()
	for _, n := range drop {
		// A failure leaves a stale segment that the next open deletes.
		if err := os.Remove(segPath(b.dir, n)); err != nil {
			b.logger.Warn("logstash buffer: cannot delete a delivered segment", "error", err)
		}
	}
	return nil
}

// close releases the files; later appends fail.
func (b *buffer) close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.head == nil && b.curFile == nil {
		return nil
	}
	b.closed = true
	var errs []error
	if b.head != nil {
		errs = append(errs, b.head.Close())
		b.head = nil
	}
	if b.curFile != nil {
		errs = append(errs, b.curFile.Close())
		b.curFile = nil
	}
	return errors.Join(errs...)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}
