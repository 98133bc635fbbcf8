package query

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/descriptorpb"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// serve runs svc's API on a real loopback listener, as bin/tally does
// (health and reflection included), until the test ends.
func serve(t *testing.T, svc *Service, auth Auth) string {
	t.Helper()
	opts, err := ServerOptions(auth)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(g, health.NewServer())
	reflection.Register(g)
	svc.RegisterAPI(g)
	done := make(chan error, 1)
	go func() { done <- g.Serve(lis) }()
	t.Cleanup(func() {
		svc.Stop(context.Background())
		g.Stop()
		if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("serve: %v", err)
		}
	})
	return lis.Addr().String()
}

func client(t *testing.T, addr string) tallyv1.RecordQueryClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return tallyv1.NewRecordQueryClient(conn)
}

// apiService is a service over a fresh store of backend b with the
// fixture written through its sink.
func apiService(t *testing.T, b backend, buffer int) (*Service, fixture) {
	t.Helper()
	svc := newService(openAt(t, b.location(t)), discard(), buffer)
	f := newFixture()
	ctx := context.Background()
	if err := svc.Sink().Write(ctx, "b1", []*tallyv1.Record{f.vmA1, f.acc1}); err != nil {
		t.Fatal(err)
	}
	if err := svc.Sink().Write(ctx, "b2", []*tallyv1.Record{f.vmA2, f.acc2, f.vmB, f.vmC, f.ip, f.stor}); err != nil {
		t.Fatal(err)
	}
	return svc, f
}

func TestAPI(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			svc, f := apiService(t, b, WatchBuffer)
			c := client(t, serve(t, svc, DefaultConfig().Auth))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			got, err := c.GetRecord(ctx, &tallyv1.GetRecordRequest{Key: f.vmB.GetKey()})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(f.vmB, got.GetRecord(), protocmp.Transform()); diff != "" {
				t.Errorf("GetRecord (-want +got):\n%s", diff)
			}
			if _, err := c.GetRecord(ctx, &tallyv1.GetRecordRequest{Key: "cloud/none"}); status.Code(err) != codes.NotFound {
				t.Errorf("GetRecord(unknown): %v, want NotFound", err)
			}

			// Paging through with tokens gives every record once, in order.
			var all []*tallyv1.Record
			req := &tallyv1.ListRecordsRequest{PageSize: 3}
			var tokens []string
			for range 10 {
				resp, err := c.ListRecords(ctx, req)
				if err != nil {
					t.Fatal(err)
				}
				all = append(all, resp.GetRecords()...)
				if resp.GetNextPageToken() == "" {
					break
				}
				tokens = append(tokens, resp.GetNextPageToken())
				req.PageToken = resp.GetNextPageToken()
			}
			if diff := cmp.Diff(keys(f.all), keys(all)); diff != "" {
				t.Errorf("pages (-want +got):\n%s", diff)
			}
			if len(tokens) != 2 {
				t.Errorf("%d page tokens for 7 records in pages of 3, want 2", len(tokens))
			}
			resp, err := c.ListRecords(ctx, &tallyv1.ListRecordsRequest{})
			if err != nil || len(resp.GetRecords()) != len(f.all) || resp.GetNextPageToken() != "" {
				t.Errorf("default page: %d records, token %q, %v", len(resp.GetRecords()), resp.GetNextPageToken(), err)
			}

			sum, err := c.SummarizeUsage(ctx, &tallyv1.SummarizeUsageRequest{
				Filter:  &tallyv1.RecordFilter{Types: []tallyv1.RecordType{tallyv1.RecordType_RECORD_TYPE_CLOUD}},
				GroupBy: []tallyv1.UsageGroupBy{tallyv1.UsageGroupBy_USAGE_GROUP_BY_VO},
				Metrics: []tallyv1.UsageMetric{tallyv1.UsageMetric_USAGE_METRIC_RECORD_COUNT},
			})
			if err != nil {
				t.Fatal(err)
			}
			// atlas: vm-a's rows measured 02-01 and 03-01 (February and March)
			// and vm-c's March row.
			n3, n1 := int64(3), int64(1)
			want := []*tallyv1.UsageGroup{
				{Key: &tallyv1.UsageKey{Vo: "atlas"}, Values: &tallyv1.UsageValues{RecordCount: &n3}},
				{Key: &tallyv1.UsageKey{Vo: "cms"}, Values: &tallyv1.UsageValues{RecordCount: &n1}},
			}
			if diff := cmp.Diff(want, sum.GetGroups(), protocmp.Transform()); diff != "" {
				t.Errorf("SummarizeUsage (-want +got):\n%s", diff)
			}

			tampered := []byte(tokens[0])
			tampered[len(tampered)/2] ^= 1
			invalidCases := []struct {
				name  string
				call  func() error
				field string
			}{
				{"empty key", func() error { _, err := c.GetRecord(ctx, &tallyv1.GetRecordRequest{}); return err }, "key"},
				{"page size", func() error {
					_, err := c.ListRecords(ctx, &tallyv1.ListRecordsRequest{PageSize: 1001})
					return err
				}, "page_size"},
				{"negative page size", func() error {
					_, err := c.ListRecords(ctx, &tallyv1.ListRecordsRequest{PageSize: -1})
					return err
				}, "page_size"},
				{"garbage token", func() error {
					_, err := c.ListRecords(ctx, &tallyv1.ListRecordsRequest{PageToken: "not a token"})
					return err
				}, "page_token"},
				{"tampered token", func() error {
					_, err := c.ListRecords(ctx, &tallyv1.ListRecordsRequest{PageSize: 3, PageToken: string(tampered)})
					return err
				}, "page_token"},
				{"token of another filter", func() error {
					_, err := c.ListRecords(ctx, &tallyv1.ListRecordsRequest{PageSize: 3, PageToken: tokens[0],
						Filter: &tallyv1.RecordFilter{Vos: []string{"atlas"}}})
					return err
				}, "page_token"},
				{"unspecified type", func() error {
					_, err := c.ListRecords(ctx, &tallyv1.ListRecordsRequest{Filter: &tallyv1.RecordFilter{
						Types: []tallyv1.RecordType{tallyv1.RecordType_RECORD_TYPE_UNSPECIFIED}}})
					return err
				}, "filter.types[0]"},
				{"empty vo", func() error {
					_, err := c.ListRecords(ctx, &tallyv1.ListRecordsRequest{Filter: &tallyv1.RecordFilter{Vos: []string{"atlas", ""}}})
					return err
				}, "filter.vos[1]"},
				{"too many values", func() error {
					_, err := c.ListRecords(ctx, &tallyv1.ListRecordsRequest{Filter: &tallyv1.RecordFilter{Sites: make([]string, MaxFilterValues+1)}})
					return err
				}, "filter.sites"},
				{"end before start", func() error {
					_, err := c.SummarizeUsage(ctx, &tallyv1.SummarizeUsageRequest{Filter: &tallyv1.RecordFilter{
						Start: ts(at("2026-02-01T00:00:00Z")), End: ts(at("2026-01-01T00:00:00Z"))}})
					return err
				}, "filter.end"},
				{"group by", func() error {
					_, err := c.SummarizeUsage(ctx, &tallyv1.SummarizeUsageRequest{GroupBy: []tallyv1.UsageGroupBy{42}})
					return err
				}, "group_by[0]"},
				{"metric", func() error {
					_, err := c.SummarizeUsage(ctx, &tallyv1.SummarizeUsageRequest{Metrics: []tallyv1.UsageMetric{0}})
					return err
				}, "metrics[0]"},
				{"watch filter", func() error {
					s, err := c.WatchRecords(ctx, &tallyv1.WatchRecordsRequest{Filter: &tallyv1.RecordFilter{Users: []string{""}}})
					if err != nil {
						return err
					}
					_, err = s.Recv()
					return err
				}, "filter.users[0]"},
			}
			for _, tc := range invalidCases {
				err := tc.call()
				if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), tc.field+":") {
					t.Errorf("%s: %v, want InvalidArgument naming %s", tc.name, err, tc.field)
				}
			}
		})
	}
}

// waitFor polls cond for at most 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWatch(t *testing.T) {
	svc, f := apiService(t, backends[0], WatchBuffer)
	c := client(t, serve(t, svc, DefaultConfig().Auth))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.WatchRecords(ctx, &tallyv1.WatchRecordsRequest{Filter: &tallyv1.RecordFilter{Vos: []string{"cms"}}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the watcher", svc.hub.active)
	moved := vm{id: "vm-d", site: "S1", vo: "cms", project: "pD", user: "uD", cpus: 1, start: at("2026-03-03T00:00:00Z")}.
		cloud(at("2026-03-03T00:00:00Z"), at("2026-03-04T00:00:00Z"))
	if err := svc.Sink().Write(ctx, "b3", append(slices.Clone(f.all), moved)); err != nil {
		t.Fatal(err)
	}
	var got []*tallyv1.Record
	for range 2 {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, resp.GetRecord())
	}
	if diff := cmp.Diff([]*tallyv1.Record{f.vmB, moved}, got, protocmp.Transform()); diff != "" {
		t.Errorf("watched (-want +got):\n%s", diff)
	}
	// Stopping the service ends the watch.
	svc.Stop(ctx)
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("after Stop: %v, want Unavailable", err)
	}
}

// blockedStream is a WatchRecords stream whose client reads nothing.
type blockedStream struct {
	grpc.ServerStream
	ctx     context.Context
	release chan struct{}
}

func (s *blockedStream) Context() context.Context { return s.ctx }
func (s *blockedStream) Send(*tallyv1.WatchRecordsResponse) error {
	<-s.release
	return nil
}

func TestSlowWatcherDropped(t *testing.T) {
	svc, f := apiService(t, backends[0], 2)
	stream := &blockedStream{ctx: context.Background(), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- svc.api.WatchRecords(&tallyv1.WatchRecordsRequest{}, stream) }()
	waitFor(t, "the watcher", svc.hub.active)
	write := make(chan error, 1)
	go func() { write <- svc.Sink().Write(context.Background(), "b3", f.all) }()
	select {
	case err := <-write:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a write waited for a slow watcher")
	}
	close(stream.release)
	select {
	case err := <-done:
		if status.Code(err) != codes.ResourceExhausted {
			t.Errorf("slow watcher ended with %v, want ResourceExhausted", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the slow watcher was not dropped")
	}
	if svc.hub.active() {
		t.Error("the dropped watcher is still subscribed")
	}
}

// TestReflection lists and describes the services the way grpcurl does,
// over the reflection v1 API.
func TestReflection(t *testing.T) {
	svc, _ := apiService(t, backends[0], WatchBuffer)
	addr := serve(t, svc, DefaultConfig().Auth)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.CloseSend()
	ask := func(req *reflectionpb.ServerReflectionRequest) *reflectionpb.ServerReflectionResponse {
		t.Helper()
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	// grpcurl list
	list := ask(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"}})
	var names []string
	for _, s := range list.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	slices.Sort(names)
	want := []string{"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection", "tally.v1.RecordQuery"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("list (-want +got):\n%s", diff)
	}
	// grpcurl describe tally.v1.RecordQuery
	desc := ask(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{
		FileContainingSymbol: "tally.v1.RecordQuery"}})
	var methods []string
	for _, raw := range desc.GetFileDescriptorResponse().GetFileDescriptorProto() {
		fd := &descriptorpb.FileDescriptorProto{}
		if err := proto.Unmarshal(raw, fd); err != nil {
			t.Fatal(err)
		}
		for _, s := range fd.GetService() {
			if s.GetName() == "RecordQuery" {
				for _, m := range s.GetMethod() {
					methods = append(methods, m.GetName())
				}
			}
		}
	}
	if diff := cmp.Diff([]string{"GetRecord", "ListRecords", "SummarizeUsage", "WatchRecords"}, methods); diff != "" {
		t.Errorf("describe (-want +got):\n%s", diff)
	}
}

func TestTokenAuth(t *testing.T) {
	const token = "s3cret-token-0123456789"
	svc, f := apiService(t, backends[0], WatchBuffer)
	addr := serve(t, svc, Auth{Token: token})
	c := client(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := &tallyv1.GetRecordRequest{Key: f.vmB.GetKey()}
	for _, tc := range []struct {
		name string
		md   []string
		want codes.Code
	}{
		{"none, loopback not allowed", nil, codes.Unauthenticated},
		{"right token", []string{"authorization", "Bearer " + token}, codes.OK},
		{"wrong token", []string{"authorization", "Bearer nope"}, codes.Unauthenticated},
		{"not bearer", []string{"authorization", "Basic " + token}, codes.Unauthenticated},
	} {
		_, err := c.GetRecord(metadata.AppendToOutgoingContext(ctx, tc.md...), req)
		if status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// Health needs no credential.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health check: %v", err)
	}
}

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }

// TestLoopbackRule checks who may call without a credential.
func TestLoopbackRule(t *testing.T) {
	tests := []struct {
		name  string
		allow bool
		addr  string
		md    []string
		want  codes.Code
	}{
		{"loopback v4", true, "127.0.0.1:4000", nil, codes.OK},
		{"loopback v6", true, "[::1]:4000", nil, codes.OK},
		{"mapped loopback", true, "[::ffff:127.0.0.1]:4000", nil, codes.OK},
		{"remote", true, "10.1.2.3:4000", nil, codes.Unauthenticated},
		{"loopback not allowed", false, "127.0.0.1:4000", nil, codes.Unauthenticated},
		{"remote with token", false, "10.1.2.3:4000", []string{"authorization", "Bearer 0123456789abcdef"}, codes.OK},
		{"loopback with a wrong token", true, "127.0.0.1:4000", []string{"authorization", "Bearer wrong"}, codes.Unauthenticated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := &guard{cfg: Auth{Token: "0123456789abcdef", AllowUnauthenticatedLoopback: tc.allow}}
			ctx := peerContext(tc.addr)
			if len(tc.md) > 0 {
				ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(tc.md...))
			}
			if got := status.Code(g.admit(ctx, "/tally.v1.RecordQuery/ListRecords")); got != tc.want {
				t.Errorf("admit = %v, want %v", got, tc.want)
			}
		})
	}
}
