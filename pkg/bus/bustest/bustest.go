// Package bustest runs a real, embedded NATS JetStream server for tests.
package bustest

import (
	"io"
	"log/slog"
	"testing"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/telemetry"
)

// Start runs an embedded JetStream server in t.TempDir() and connects to it;
// both are shut down when the test ends.
func Start(t testing.TB, tel *telemetry.Telemetry) (*bus.Bus, *bus.Embedded) {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	emb, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: t.TempDir()}, logger)
	if err != nil {
		t.Fatalf("embedded nats: %v", err)
	}
	t.Cleanup(emb.Shutdown)
	if tel == nil {
		tel = telemetry.WithSpanProcessors(nil)
	}
	b, err := bus.Connect(t.Context(), bus.DefaultConfig(), emb, t.Name(), tel, logger)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { b.NC.Close() })
	return b, emb
}
