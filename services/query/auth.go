package query

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// ServerOptions returns the options that make a gRPC server enforce cfg:
// TLS (mutual when ClientCA is set) and interceptors that admit a call
// with the bearer token, a verified client certificate, or, when allowed,
// from a loopback peer. Health checks are always admitted, so probes need
// no credential.
func ServerOptions(cfg Auth) ([]grpc.ServerOption, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var opts []grpc.ServerOption
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("query: auth: %w", err)
		}
		tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if cfg.ClientCA != "" {
			pem, err := os.ReadFile(cfg.ClientCA)
			if err != nil {
				return nil, fmt.Errorf("query: auth: client_ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("query: auth: client_ca %s holds no PEM certificate", cfg.ClientCA)
			}
			tc.ClientCAs = pool
			// A token may still be used over TLS, so a certificate is
			// verified when given but not demanded.
			tc.ClientAuth = tls.VerifyClientCertIfGiven
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	g := &guard{cfg: cfg}
	opts = append(opts, grpc.ChainUnaryInterceptor(g.unary), grpc.ChainStreamInterceptor(g.stream))
	return opts, nil
}

type guard struct{ cfg Auth }

func (g *guard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	if err := g.admit(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return next(ctx, req)
}

func (g *guard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, next grpc.StreamHandler) error {
	if err := g.admit(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return next(srv, ss)
}

func (g *guard) admit(ctx context.Context, method string) error {
	if strings.HasPrefix(method, "/grpc.health.v1.Health/") {
		return nil
	}
	if vals := metadata.ValueFromIncomingContext(ctx, "authorization"); len(vals) > 0 {
		tok, ok := strings.CutPrefix(vals[0], "Bearer ")
		if !ok || g.cfg.Token == "" ||
			subtle.ConstantTimeCompare([]byte(strings.TrimSpace(tok)), []byte(g.cfg.Token.Reveal())) != 1 {
			// A wrong credential is refused even from loopback: the
			// caller meant to authenticate and should hear it failed.
			return status.Error(codes.Unauthenticated, "invalid bearer token")
		}
		return nil
	}
	p, _ := peer.FromContext(ctx)
	if p != nil {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
			return nil
		}
		if g.cfg.AllowUnauthenticatedLoopback && isLoopback(p.Addr) {
			return nil
		}
	}
	return status.Error(codes.Unauthenticated, "a bearer token or client certificate is required (only loopback callers may read without one)")
}

func isLoopback(a net.Addr) bool {
	if a == nil {
		return false
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
