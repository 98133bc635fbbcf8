// Package bus is tally's NATS JetStream transport: the embedded server,
// streams created idempotently at start, publishing with message ids and
// trace context, and durable pull consumers that ack only after the work is
// done.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tally-accounting/tally/pkg/config"
	"github.com/tally-accounting/tally/pkg/telemetry"
)

// Config configures the connection and the streams.
type Config struct {
	// URL of an external NATS server; empty means the embedded one.
	URL string `yaml:"url"`
	// CredsFile is a NATS credentials file for an external server.
	CredsFile string `yaml:"creds_file"`
	// EmbeddedListen makes the embedded server also listen on TCP.
	EmbeddedListen string `yaml:"embedded_listen"`
	// MaxAge bounds how long records stay in the stream.
	MaxAge time.Duration `yaml:"max_age"`
	// MaxBytes bounds the records stream's size; -1 is unlimited.
	MaxBytes int64 `yaml:"max_bytes"`
	// DuplicateWindow is how long JetStream remembers message ids.
	DuplicateWindow time.Duration `yaml:"duplicate_window"`
	// Replicas of each stream (1 unless NATS is clustered).
	Replicas int `yaml:"replicas"`
	// AckWait is how long a consumer may work on a message before it is
	// redelivered.
	AckWait time.Duration `yaml:"ack_wait"`
	// Notifications bounds the stream notify-bridge fills apart from the
	// record batches: it takes every OpenStack notification, thousands a
	// second at a busy site, where the records stream takes a batch per
	// extraction.
	Notifications StreamLimits `yaml:"notifications"`
}

// StreamLimits overrides the limits of one stream; a zero field takes the
// value of Config.
type StreamLimits struct {
	MaxAge          time.Duration `yaml:"max_age"`
	MaxBytes        int64         `yaml:"max_bytes"`
	DuplicateWindow time.Duration `yaml:"duplicate_window"`
}

// DefaultConfig keeps records 30 days and remembers message ids 10
// minutes, those of notifications 2 minutes.
//
// JetStream keeps every id of its window in memory, 100-130 bytes each
// (nats-server's dedupe map and array entries and the id), and the Go
// collector of the process that embeds it walks them all at every cycle.
// Rate times window: record batches are few, but notifications at 20,000
// a second for 10 minutes would hold some 1.5 GB, for 2 minutes 300 MB.
// Two minutes still cover the copies notify-bridge publishes twice, which
// RabbitMQ redelivers as soon as the bridge reconnects; a copy after a
// longer outage is stored twice and the verifier drops the second (see
// services/verifier/bridge). The verifier's own verified notifications,
// published again when a pass is redone after a restart, are kept once
// if the restart takes under the window; on RabbitMQ, which has no
// window, they are at least once in any case.
func DefaultConfig() Config {
	return Config{
		MaxAge:          30 * 24 * time.Hour,
		MaxBytes:        -1,
		DuplicateWindow: 10 * time.Minute,
		Replicas:        1,
		AckWait:         2 * time.Minute,
		Notifications:   StreamLimits{DuplicateWindow: 2 * time.Minute},
	}
}

// notifications is the notifications stream's limits, Config's where
// Notifications leaves a field zero.
func (c Config) notifications() StreamLimits {
	l := c.Notifications
	if l.MaxAge == 0 {
		l.MaxAge = c.MaxAge
	}
	if l.MaxBytes == 0 {
		l.MaxBytes = c.MaxBytes
	}
	if l.DuplicateWindow == 0 {
		l.DuplicateWindow = c.DuplicateWindow
	}
	return l
}

// Validate implements config.Validator.
func (c Config) Validate() error {
	switch {
	case c.URL != "" && !validURL(c.URL):
		return config.Errorf("url", "%q is not a nats://, tls:// or ws:// URL", config.RedactURL(c.URL))
	case c.MaxAge < 0:
		return config.Errorf("max_age", "must not be negative")
	case c.MaxBytes < -1 || c.MaxBytes == 0:
		return config.Errorf("max_bytes", "must be positive, or -1 for unlimited")
	case c.DuplicateWindow <= 0:
		return config.Errorf("duplicate_window", "must be positive")
	case c.MaxAge > 0 && c.DuplicateWindow > c.MaxAge:
		return config.Errorf("duplicate_window", "must not exceed max_age")
	case c.Replicas < 1 || c.Replicas > 5:
		return config.Errorf("replicas", "must be between 1 and 5")
	case c.AckWait < time.Second:
		return config.Errorf("ack_wait", "must be at least 1s")
	case c.Notifications.MaxAge < 0:
		return config.Errorf("notifications.max_age", "must not be negative (0 takes max_age)")
	case c.Notifications.MaxBytes < -1:
		return config.Errorf("notifications.max_bytes", "must be positive, -1 for unlimited, or 0 to take max_bytes")
	case c.Notifications.DuplicateWindow < 0:
		return config.Errorf("notifications.duplicate_window", "must not be negative (0 takes duplicate_window)")
	}
	if n := c.notifications(); n.MaxAge > 0 && n.DuplicateWindow > n.MaxAge {
		return config.Errorf("notifications.duplicate_window", "%s exceeds the stream's max_age %s", n.DuplicateWindow, n.MaxAge)
	}
	return nil
}

func validURL(s string) bool {
	for _, p := range []string{"nats://", "tls://", "ws://", "wss://"} {
		if len(s) > len(p) && s[:len(p)] == p {
			return true
		}
	}
	return false
}

// Bus is a connection to JetStream.
type Bus struct {
	NC     *nats.Conn
	JS     jetstream.JetStream
	cfg    Config
	tel    *telemetry.Telemetry
	tracer trace.Tracer
	logger *slog.Logger
}

// Connect connects to cfg.URL, or in-process to embedded when cfg.URL is
// empty, and makes sure tally's streams exist.
func Connect(ctx context.Context, cfg Config, embedded *Embedded, name string, tel *telemetry.Telemetry, logger *slog.Logger) (*Bus, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("nats disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { logger.Info("nats reconnected", "url", config.RedactURL(nc.ConnectedUrl())) }),
	}
	url := cfg.URL
	switch {
	case url == "" && embedded == nil:
		return nil, errors.New("bus: no NATS URL and no embedded server")
	case url == "":
		url = embedded.Server.ClientURL()
		opts = append(opts, nats.InProcessServer(embedded.Server))
	case cfg.CredsFile != "":
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", config.RedactURL(url), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	b := &Bus{NC: nc, JS: js, cfg: cfg, tel: tel, tracer: tel.Tracer("github.com/tally-accounting/tally/pkg/bus"), logger: logger}
	if err := b.EnsureStreams(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	return b, nil
}

// Close drains the connection: pending publishes are flushed.
func (b *Bus) Close() error {
	if b.NC.IsClosed() {
		return nil
	}
	return b.NC.Drain()
}

// EnsureStreams creates or updates tally's streams; it is idempotent, so
// every service calls it at start.
func (b *Bus) EnsureStreams(ctx context.Context) error {
	n := b.cfg.notifications()
	streams := []jetstream.StreamConfig{
		{
			Name:        RecordsStream,
			Description: "tally accounting record batches (raw and enriched)",
			Subjects:    []string{RawAll, EnrichedAll},
			MaxAge:      b.cfg.MaxAge,
			MaxBytes:    b.cfg.MaxBytes,
			Duplicates:  b.cfg.DuplicateWindow,
		},
		{
			Name:        DeadLetterStream,
			Description: "what a tally stage could not process, with the reason",
			Subjects:    []string{DeadLetterAll},
			MaxAge:      max(b.cfg.MaxAge, 90*24*time.Hour),
			MaxBytes:    -1,
			Duplicates:  b.cfg.DuplicateWindow,
		},
		{
			Name:        NotificationsStream,
			Description: "OpenStack notifications republished by notify-bridge",
			Subjects:    []string{NotificationsAll},
			MaxAge:      n.MaxAge,
			MaxBytes:    n.MaxBytes,
			Duplicates:  n.DuplicateWindow,
		},
	}
	for _, sc := range streams {
		sc.Storage = jetstream.FileStorage
		sc.Retention = jetstream.LimitsPolicy
		sc.Replicas = b.cfg.Replicas
		if _, err := b.JS.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("create stream %s: %w", sc.Name, err)
		}
	}
	return nil
}

// Publish publishes data to subject with msgID as Nats-Msg-Id and the trace
// context of ctx in the headers, and waits for JetStream's ack. duplicate
// reports that JetStream had already stored a message with that id.
func (b *Bus) Publish(ctx context.Context, subject, msgID string, data []byte, header nats.Header) (duplicate bool, err error) {
	ctx, span := b.tracer.Start(ctx, "publish "+subject, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", subject),
			attribute.String("messaging.message.id", msgID),
		))
	defer span.End()
	msg := nats.NewMsg(subject)
	msg.Data = data
	for k, v := range header {
		msg.Header[k] = v
	}
	b.tel.Propagator.Inject(ctx, telemetry.HeaderCarrier(msg.Header))
	ack, err := b.JS.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return false, fmt.Errorf("publish to %s: %w", subject, err)
	}
	span.SetAttributes(attribute.Bool("messaging.nats.duplicate", ack.Duplicate))
	return ack.Duplicate, nil
}
