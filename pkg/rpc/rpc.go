// Package rpc builds tally's gRPC servers and clients: every server has the
// health service and reflection (so grpcurl works), tracing through
// otelgrpc, and a lifecycle that fits pkg/service.
package rpc

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/tally-accounting/tally/pkg/telemetry"
)

// MaxMessageBytes bounds requests and responses; a batch of records is far
// smaller, and the bound keeps a bad client from exhausting memory.
const MaxMessageBytes = 16 << 20

// Server is a gRPC server bound to one listen address.
type Server struct {
	name   string
	addr   string
	GRPC   *grpc.Server
	Health *health.Server
	logger *slog.Logger
	lis    net.Listener
	served chan error
}

// NewServer returns a server for addr with health and reflection registered.
// Register services on s.GRPC before Start.
func NewServer(name, addr string, tel *telemetry.Telemetry, logger *slog.Logger, opts ...grpc.ServerOption) *Server {
	opts = append([]grpc.ServerOption{
		grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(tel.TracerProvider),
			otelgrpc.WithPropagators(tel.Propagator),
		)),
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.MaxSendMsgSize(MaxMessageBytes),
	}, opts...)
	s := &Server{
		name:   name,
		addr:   addr,
		GRPC:   grpc.NewServer(opts...),
		Health: health.NewServer(),
		logger: logger,
	}
	healthpb.RegisterHealthServer(s.GRPC, s.Health)
	reflection.Register(s.GRPC)
	// Not serving until the process's services all run.
	s.Health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	return s
}

// Name implements service.Service.
func (s *Server) Name() string { return s.name }

// Addr is the bound address after Start (useful with port 0).
func (s *Server) Addr() string {
	if s.lis == nil {
		return s.addr
	}
	return s.lis.Addr().String()
}

// Start binds the listen address.
func (s *Server) Start(ctx context.Context) error {
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", s.addr)
	if err != nil {
		return fmt.Errorf("%s: listen on %s: %w", s.name, s.addr, err)
	}
	s.lis = lis
	s.served = make(chan error, 1)
	go func() { s.served <- s.GRPC.Serve(lis) }()
	s.logger.Info("gRPC listening", "service", s.name, "addr", s.Addr())
	return nil
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-s.served:
		return fmt.Errorf("%s: serve: %w", s.name, err)
	}
}

// Stop finishes in-flight calls until ctx's deadline, then closes the rest.
func (s *Server) Stop(ctx context.Context) error {
	s.Health.Shutdown()
	done := make(chan struct{})
	go func() { s.GRPC.GracefulStop(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.GRPC.Stop()
		<-done
		return fmt.Errorf("%s: calls still running at the stop deadline were cut: %w", s.name, ctx.Err())
	}
}

// Dial returns a client connection to target with tracing. Connections are
// plaintext: tally's internal calls stay on loopback or a private network.
func Dial(target string, tel *telemetry.Telemetry, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(tel.TracerProvider),
			otelgrpc.WithPropagators(tel.Propagator),
		)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)),
	}, opts...)
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("grpc client for %s: %w", target, err)
	}
	return cc, nil
}
