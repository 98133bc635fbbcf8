package query

import (
	"context"
	"fmt"
	"log/slog"

	"google.golang.org/grpc"

	"github.com/tally-accounting/tally/pkg/config"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/messenger"
)

// Name is the service's name in logs and --target.
const Name = "query"

// Service is the query service: the store, the messenger sink that fills
// it and the RecordQuery API that reads it.
type Service struct {
	store  Store
	hub    *hub
	api    *Server
	logger *slog.Logger
}

// Open opens (creating or migrating) the store cfg names and returns the
// service over it. Close releases the store.
func Open(ctx context.Context, cfg Config, dataDir string, logger *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	store, err := openStore(ctx, cfg.Store, dataDir, len(migrations), cfg.cacheMiB())
	if err != nil {
		return nil, err
	}
	kind, where, _ := parseStore(cfg.Store, dataDir)
	v, _ := store.SchemaVersion(ctx)
	logger.Info("record store open", "service", Name, "kind", kind, "store", config.RedactURL(where), "schema_version", v)
	return NewService(store, logger), nil
}

// NewService returns the service over an open store, which it then owns.
func NewService(store Store, logger *slog.Logger) *Service {
	return newService(store, logger, WatchBuffer)
}

func newService(store Store, logger *slog.Logger, watchBuffer int) *Service {
	logger = logger.With("service", Name)
	h := newHub(watchBuffer)
	return &Service{store: store, hub: h, api: newServer(store, h, logger), logger: logger}
}

// RegisterAPI registers the RecordQuery service on g (give g the options
// of ServerOptions to enforce the auth config).
func (s *Service) RegisterAPI(g *grpc.Server) { tallyv1.RegisterRecordQueryServer(g, s.api) }

// Store is the service's store.
func (s *Service) Store() Store { return s.store }

// Sink is the messenger.Sink that writes pushed batches into the store.
func (s *Service) Sink() messenger.Sink { return sink{s} }

type sink struct{ s *Service }

// Write implements messenger.Sink: the batch is upserted in one
// transaction, then handed to the watchers.
func (k sink) Write(ctx context.Context, batchID string, records []*tallyv1.Record) error {
	if err := k.s.store.Write(ctx, records); err != nil {
		return fmt.Errorf("batch %s: %w", batchID, err)
	}
	if k.s.hub.active() {
		as := make([]attrs, len(records))
		for i, r := range records {
			// Write accepted every record, so this cannot fail.
			as[i], _ = attrsOf(r)
		}
		k.s.hub.publish(records, as)
	}
	return nil
}

// Name implements service.Service.
func (s *Service) Name() string { return Name }

// Start implements service.Service; Open did the work.
func (s *Service) Start(context.Context) error { return nil }

// Run implements service.Service: the service only answers calls.
func (s *Service) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

// Stop implements service.Service: it ends every WatchRecords stream, so
// a graceful stop of the gRPC server is not held up by them.
func (s *Service) Stop(context.Context) error {
	s.hub.close()
	return nil
}

// Close ends the watches and closes the store.
func (s *Service) Close() error {
	s.hub.close()
	return s.store.Close()
}
