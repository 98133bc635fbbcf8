package logstash

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"sync/atomic"
	"time"
)

const (
	// writeChunk is the most bytes given to one socket write.
	writeChunk = 256 << 10
	// ackPoll is how often unacknowledged bytes are re-checked.
	ackPoll = 2 * time.Millisecond
)

var errPeerClosed = errors.New("logstash closed the connection")

// diskError marks a buffer failure, which reconnecting cannot fix.
type diskError struct{ err error }

func (e diskError) Error() string { return e.err.Error() }
func (e diskError) Unwrap() error { return e.err }

// piece is bytes written to the connection: once the peer acknowledged
// raw bytes of the connection, delivery stands at end.
type piece struct {
	end position
	raw int64
}

// countingConn counts the bytes written to the TCP connection, below TLS.
type countingConn struct {
	net.Conn
	n atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// sender streams the buffer to Logstash. Only one goroutine runs it at a
// time (Run, then Stop's drain); the connection survives between them.
type sender struct {
	cfg    Config
	buf    *buffer
	tls    *tls.Config
	logger *slog.Logger
	errs   func(kind string)
	rnd    *rand.Rand

	conn     net.Conn // nil when disconnected
	tcp      *net.TCPConn
	raw      *countingConn
	ackBase  int64         // bytes_acked before anything was written
	gone     chan struct{} // closed when the reader stops: the peer closed or the connection failed
	inflight []piece
	next     position // where the next write starts
	backoff  time.Duration

	file    *os.File // segment fileSeg, for reading
	fileSeg uint64
	rbuf    []byte
	wbuf    []byte
	// cache is the frame at cachedAt, its payload in rbuf.
	cache    frame
	cachedAt position
	cached   bool
}

// run sends until ctx ends, the connection and the backoff loop included.
// With drain it returns as soon as everything buffered is delivered. It
// returns an error only for a buffer failure.
func (s *sender) run(ctx context.Context, drain bool) error {
	for ctx.Err() == nil {
		if s.conn == nil {
			if drain && s.buf.pending() == 0 {
				return nil
			}
			if err := s.connect(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				s.errs("connect")
				s.logger.Warn("cannot connect to Logstash", "address", s.cfg.addr(), "error", err)
				s.pause(ctx)
				continue
			}
		}
		before := s.buf.delivered()
		err := s.pump(ctx, drain)
		if err == nil {
			return nil
		}
		if errors.As(err, new(diskError)) {
			return err
		}
		if s.buf.delivered() != before {
			s.backoff = 0
		}
		s.disconnect()
		s.errs("send")
		s.logger.Warn("connection to Logstash lost; resending from the last acknowledged line", "address", s.cfg.addr(), "error", err)
		s.pause(ctx)
	}
	return nil
}

// pause waits the backoff, doubled each time up to max_backoff, with
// jitter so that many messengers do not reconnect in step.
func (s *sender) pause(ctx context.Context) {
	switch {
	case s.backoff == 0:
		s.backoff = s.cfg.MinBackoff
	default:
		s.backoff = min(2*s.backoff, s.cfg.MaxBackoff)
	}
	d := s.backoff/2 + time.Duration(s.rnd.Int64N(int64(s.backoff/2)+1))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (s *sender) connect(ctx context.Context) error {
	d := net.Dialer{Timeout: s.cfg.DialTimeout}
	c, err := d.DialContext(ctx, "tcp", s.cfg.addr())
	if err != nil {
		return err
	}
	tcp, _ := c.(*net.TCPConn)
	raw := &countingConn{Conn: c}
	var base int64
	if tcp != nil {
		base, _ = ackedBytes(tcp)
	}
	var conn net.Conn = raw
	if s.tls != nil {
		tc := tls.Client(raw, s.tls)
		hctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			c.Close()
			return fmt.Errorf("tls handshake: %w", err)
		}
		conn = tc
	}
	gone := make(chan struct{})
	go func() {
		// Logstash never writes; a read returns only when it closes the
		// connection or the connection fails. Reading also lets TLS handle
		// post-handshake messages.
		io.Copy(io.Discard, conn)
		close(gone)
	}()
	s.conn, s.tcp, s.raw, s.ackBase, s.gone = conn, tcp, raw, base, gone
	s.next = s.buf.delivered()
	s.inflight = s.inflight[:0]
	s.logger.Info("connected to Logstash", "address", s.cfg.addr(), "tls", s.tls != nil)
	return nil
}

// disconnect confirms what the peer acknowledged, closes the connection
// and rewinds to the delivered position.
func (s *sender) disconnect() {
	if s.conn == nil {
		return
	}
	if err := s.confirm(); err != nil {
		s.logger.Error("cannot save the Logstash delivery cursor", "error", err)
	}
	s.conn.Close()
	<-s.gone
	s.conn, s.tcp, s.raw, s.gone = nil, nil, nil, nil
	s.inflight = s.inflight[:0]
	if s.file != nil {
		s.file.Close()
		s.file = nil
	}
	s.cached = false
}

// close ends the connection after a drain: it waits (until ctx's deadline)
// for the peer to acknowledge what was written, so as little as possible
// is resent at the next start.
func (s *sender) close(ctx context.Context) {
	if s.conn == nil {
		return
	}
	for len(s.inflight) > 0 && ctx.Err() == nil {
		if err := s.confirm(); err != nil || len(s.inflight) == 0 {
			break
		}
		select {
		case <-ctx.Done():
		case <-s.gone:
		case <-time.After(ackPoll):
		}
	}
	s.disconnect()
}

// pump writes the buffer to the connection and confirms what the peer
// acknowledges. It returns nil when ctx ends (leaving the connection open)
// or, with drain, when everything is delivered; an error when the
// connection fails.
func (s *sender) pump(ctx context.Context, drain bool) error {
	// A write blocked on a peer that does not read must not outlive ctx.
	conn := s.conn
	cut := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		conn.SetWriteDeadline(time.Now())
		close(cut)
	})
	// tick paces the checks for acknowledgements while bytes are in flight.
	tick := time.NewTimer(ackPoll)
	tick.Stop()
	defer func() {
		if !stop() {
			// Let the cut finish, so it cannot land on a later write.
			<-cut
		}
	}()
	for {
		if err := s.confirm(); err != nil {
			return err
		}
		select {
		case <-s.gone:
			return s.closed(ctx)
		default:
		}
		n, pieces, next, err := s.fill()
		if err != nil {
			return err
		}
		if n > 0 {
			deadline := time.Now().Add(s.cfg.WriteTimeout)
			if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
				deadline = d
			}
			conn.SetWriteDeadline(deadline)
			if ctx.Err() != nil {
				return nil
			}
			if _, err := conn.Write(s.wbuf[:n]); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			raw := s.raw.n.Load()
			for i := range pieces {
				pieces[i].raw = raw
			}
			s.inflight = append(s.inflight, pieces...)
			s.next = next
			continue
		}
		if drain && len(s.inflight) == 0 {
			return nil
		}
		if len(s.inflight) > 0 {
			tick.Reset(ackPoll)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.gone:
			return s.closed(ctx)
		case <-s.buf.notify:
		case <-tick.C:
		}
		tick.Stop()
	}
}

// closed handles the peer closing the connection: a Logstash shutting
// down may still read what is in flight, so wait (write_timeout at most)
// for its acknowledgements before giving up on the connection.
func (s *sender) closed(ctx context.Context) error {
	deadline := time.Now().Add(s.cfg.WriteTimeout)
	for len(s.inflight) > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		if err := s.confirm(); err != nil {
			return err
		}
		if len(s.inflight) == 0 {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(ackPoll):
		}
	}
	return errPeerClosed
}

// confirm advances the durable cursor over the pieces the peer
// acknowledged.
func (s *sender) confirm() error {
	if len(s.inflight) == 0 {
		return nil
	}
	acked := s.raw.n.Load()
	if s.tcp != nil {
		if a, ok := ackedBytes(s.tcp); ok {
			acked = a - s.ackBase
		}
	}
	i := 0
	for i < len(s.inflight) && s.inflight[i].raw <= acked {
		i++
	}
	if i == 0 {
		return nil
	}
	end := s.inflight[i-1].end
	s.inflight = s.inflight[:copy(s.inflight, s.inflight[i:])]
	if err := s.buf.advance(end); err != nil {
		return diskError{err}
	}
	return nil
}

// fill copies whole lines from s.next into s.wbuf, up to writeChunk bytes
// (or one longer line), and returns how many, the pieces they make and
// where the following write starts.
func (s *sender) fill() (int, []piece, position, error) {
	p := s.next
	w := s.wbuf[:0]
	var pieces []piece
	for len(w) < writeChunk {
		size, head, nextSeg, ok := s.buf.extent(p.seg)
		if !ok {
			if d := s.buf.delivered(); d.seg > p.seg {
				// p was the end of a segment, delivered and deleted since:
				// the cursor stands at the start of the next one.
				p = d
				continue
			}
			return 0, nil, p, diskError{fmt.Errorf("logstash: buffer segment %d vanished", p.seg)}
		}
		if p.frame >= size {
			if head {
				break
			}
			p = position{seg: nextSeg}
			continue
		}
		fr, err := s.read(p)
		if err != nil {
			// Only a damaged disk gets here (the newest segment is checked
			// at open, older ones were fsynced whole). Skipping it beats
			// blocking every later record behind it.
			s.errs("corrupt")
			s.logger.Error("logstash buffer: skipping an unreadable batch", "segment", p.seg, "offset", p.frame, "error", err)
			if fr.size == 0 {
				p = position{seg: p.seg, frame: size}
			} else {
				p = position{seg: p.seg, frame: p.frame + fr.size}
			}
			pieces = append(pieces, piece{end: p})
			continue
		}
		rest := fr.payload[p.done:]
		cut := len(rest)
		if room := writeChunk - len(w); cut > room {
			cut = bytes.LastIndexByte(rest[:room], '\n') + 1
			if cut == 0 {
				if len(w) > 0 {
					break
				}
				// One line longer than a chunk goes alone.
				cut = bytes.IndexByte(rest, '\n') + 1
			}
		}
		w = append(w, rest[:cut]...)
		p.done += int64(cut)
		if p.done == int64(len(fr.payload)) {
			p = position{seg: p.seg, frame: p.frame + fr.size}
		}
		pieces = append(pieces, piece{end: p})
	}
	s.wbuf = w
	return len(w), pieces, p, nil
}

// read returns the frame at p, checked against its CRC.
func (s *sender) read(p position) (frame, error) {
	if s.file == nil || s.fileSeg != p.seg {
		if s.file != nil {
			s.file.Close()
			s.file = nil
		}
		s.cached = false
		f, err := os.Open(segPath(s.buf.dir, p.seg))
		if err != nil {
			return frame{}, err
		}
		s.file, s.fileSeg = f, p.seg
	}
	if s.cached && s.cachedAt == (position{seg: p.seg, frame: p.frame}) {
		return s.cache, nil
	}
	s.cached = false
	fr, err := readFrame(s.file, p.frame, &s.rbuf, true)
	if err != nil {
		return fr, err
	}
	if n := len(fr.payload); n == 0 || fr.payload[n-1] != '\n' || p.done > int64(n) {
		return frame{size: fr.size}, fmt.Errorf("frame of batch %q is not whole lines", fr.id)
	}
	// A batch larger than a chunk is read once for all its chunks.
	s.cache, s.cachedAt, s.cached = fr, position{seg: p.seg, frame: p.frame}, true
	return fr, nil
}
