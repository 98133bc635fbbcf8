// Package logstash is the Logstash messenger: it sends every record, one
// JSON object per line (apel.AppendJSONLine), to a Logstash tcp input with
// the json_lines codec, optionally over TLS.
//
// # Buffering and backpressure
//
// Write appends the batch's lines to an on-disk buffer (append-only segment
// files under buffer_dir) and fsyncs before returning: that is the
// acknowledgement the enricher waits for. A sender goroutine streams the
// buffer to Logstash in the order written (batches in Write order, records
// in batch order), reconnecting with exponential backoff and jitter, and
// deletes what was delivered. When the backlog reaches max_buffer_bytes,
// Write fails at once: the enricher keeps the batch on the bus and retries;
// nothing is dropped.
//
// # Delivery guarantee: at least once, exactly once in the normal case
//
// Logstash's tcp input sends nothing back, so "delivered" can only mean
// "acknowledged by the peer's TCP". On Linux the sender reads that from
// the kernel (tcpi_bytes_acked) and moves its durable cursor (fsynced)
// only over whole lines the peer acknowledged; every connection starts at
// a line boundary and carries whole lines, in order, from one writer. So:
//
//   - Logstash restarts, network cuts, listener down: lines the peer had
//     not acknowledged when the connection died are resent on the next
//     connection. A line can arrive twice only if the peer received it but
//     its acknowledgement was lost with the connection; such duplicates are
//     the first lines of the new connection, no more than were in flight
//     (the socket send buffer plus one 256 KiB write). A Logstash that
//     closes the connection cleanly (FIN, still reading) gets every line
//     exactly once: the sender waits up to write_timeout for the
//     acknowledgements before reconnecting.
//   - A connection cut in the middle of a line leaves that partial line on
//     the dead connection (Logstash tags it _jsonparsefailure); the whole
//     line comes again on the next connection.
//   - tally stopped or killed: after restart delivery resumes from the
//     cursor. Stop waits, until its deadline, for what was written to be
//     acknowledged; after a kill, the lines that were in flight or whose
//     acknowledgement had not yet been saved (the cursor is fsynced every
//     time acknowledgements advance it, checked every 2 ms) are sent again.
//   - A crash between a batch's fsync and the messenger's ledger would make
//     the enricher's retry append the batch again; the batch ids kept in
//     the buffer's frames and in a ledger under buffer_dir prevent that.
//
// What TCP cannot tell: bytes the peer's kernel acknowledged but Logstash
// never processed (Logstash killed with data in its socket receive buffer)
// are lost; use Logstash's persistent queue to narrow that. Off Linux the
// kernel's acknowledgements are not read and bytes count as delivered once
// written to the socket, which adds the socket send buffer to that window.
package logstash

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"

	"github.com/tally-accounting/tally/pkg/apel"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/messenger"
	"github.com/tally-accounting/tally/pkg/metrics"
)

// Name is the service name, and the messenger's name in metrics.
const Name = "messenger-logstash"

// writtenKeep is how many batch ids the buffer remembers. It has only to
// bridge the gap between Write returning and the messenger server's own
// ledger noting the batch.
const writtenKeep = 100_000

// Messenger is the Logstash destination: a messenger.Sink and a service
// (Start opens the buffer, Run sends, Stop drains).
type Messenger struct {
	cfg     Config
	logger  *slog.Logger
	metrics *metrics.Metrics
	tls     *tls.Config

	mu      sync.Mutex // guards buf and written while starting and stopping
	buf     *buffer
	written *messenger.Ledger

	// sending is held by whoever runs the sender: Run, then Stop.
	sending sync.Mutex
	sender  *sender
}

// New checks cfg and prepares the TLS configuration; it touches no files
// until Start. m may be nil.
func New(cfg Config, logger *slog.Logger, m *metrics.Metrics) (*Messenger, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lm := &Messenger{cfg: cfg, logger: logger.With("messenger", "logstash"), metrics: m}
	if cfg.TLS.Enabled {
		tc, err := tlsConfig(cfg)
		if err != nil {
			return nil, err
		}
		lm.tls = tc
	}
	return lm, nil
}

func tlsConfig(cfg Config) (*tls.Config, error) {
	t := cfg.TLS
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	if tc.ServerName == "" {
		tc.ServerName = cfg.Host
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("logstash: tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("logstash: tls.ca_file %s: no PEM certificate", t.CAFile)
		}
		tc.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("logstash: tls.cert_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Name implements service.Service.
func (m *Messenger) Name() string { return Name }

// Start opens the buffer, resuming from its cursor.
func (m *Messenger) Start(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.buf != nil {
		return errors.New("logstash: already started")
	}
	buf, ids, err := openBuffer(m.cfg.BufferDir, m.cfg.MaxBufferBytes, m.logger)
	if err != nil {
		return err
	}
	written, err := messenger.OpenLedger(filepath.Join(m.cfg.BufferDir, "written"), writtenKeep)
	if err != nil {
		buf.close()
		return fmt.Errorf("logstash: %w", err)
	}
	for _, id := range ids {
		if !written.Seen(id) {
			if err := written.Record(id); err != nil {
				buf.close()
				written.Close()
				return fmt.Errorf("logstash: %w", err)
			}
		}
	}
	if p := buf.pending(); p > 0 {
		m.logger.Info("resuming delivery of the buffered backlog", "bytes", p)
	}
	m.buf, m.written = buf, written
	m.sender = &sender{
		cfg: m.cfg, buf: buf, tls: m.tls, logger: m.logger, errs: m.countError,
		rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())), wbuf: make([]byte, 0, writeChunk),
	}
	return nil
}

func (m *Messenger) countError(kind string) {
	if m.metrics != nil {
		m.metrics.Errors.WithLabelValues(Name, kind).Inc()
	}
}

// Run sends the buffer to Logstash until ctx ends. It fails only when the
// buffer itself fails.
func (m *Messenger) Run(ctx context.Context) error {
	m.sending.Lock()
	defer m.sending.Unlock()
	if m.sender == nil {
		return errors.New("logstash: not started")
	}
	return m.sender.run(ctx, false)
}

// Stop delivers what it can of the buffer until ctx's deadline, then
// closes the connection and the buffer. What is left is sent after the
// next Start.
func (m *Messenger) Stop(ctx context.Context) error {
	m.sending.Lock()
	defer m.sending.Unlock()
	if m.sender == nil {
		return nil
	}
	err := m.sender.run(ctx, true)
	m.sender.close(ctx)
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.buf.pending(); p > 0 {
		m.logger.Info("stopping with records not yet delivered to Logstash; they are sent after the next start", "bytes", p)
	}
	err = errors.Join(err, m.buf.close(), m.written.Close())
	m.buf, m.written, m.sender = nil, nil, nil
	return err
}

// Pending returns how many buffered bytes Logstash has not yet
// acknowledged.
func (m *Messenger) Pending() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.buf == nil {
		return 0
	}
	return m.buf.pending()
}

// Write implements messenger.Sink: it appends the records' JSON lines to
// the buffer, durably, as one frame. It fails with ErrBufferFull when the
// backlog is at max_buffer_bytes, and with messenger.ErrRejected for a
// record that cannot be rendered.
func (m *Messenger) Write(ctx context.Context, batchID string, records []*tallyv1.Record) error {
	if len(records) == 0 {
		return nil
	}
	m.mu.Lock()
	buf, written := m.buf, m.written
	m.mu.Unlock()
	if buf == nil {
		return errors.New("logstash: not started")
	}
	if written.Seen(batchID) {
		// Buffered before a crash that came ahead of the server's ledger.
		return nil
	}
	f := newFrame(batchID, 512*len(records))
	for _, r := range records {
		var err error
		if f, err = apel.AppendJSONLine(f, r); err != nil {
			if errors.Is(err, apel.ErrInvalid) {
				return fmt.Errorf("%w: %w", messenger.ErrRejected, err)
			}
			return fmt.Errorf("logstash: %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := buf.append(batchID, f); err != nil {
		if errors.Is(err, ErrBufferFull) || errors.Is(err, errClosed) {
			return err
		}
		return fmt.Errorf("logstash: batch %s: %w", batchID, err)
	}
	if err := written.Record(batchID); err != nil {
		return fmt.Errorf("logstash: batch %s: %w", batchID, err)
	}
	return nil
}
