package cli

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tally-accounting/tally/pkg/bus"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// syncBuffer is an io.Writer safe for the logger and the test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitServing(t *testing.T, addr string) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not SERVING after 30s: %v %v", addr, resp, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// listServices asks server reflection for the service list, as grpcurl's
// "list" does.
func listServices(t *testing.T, addr string) []string {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	slices.Sort(names)
	return names
}

// TestServeAllInOne runs "tally serve" in this process: health and
// reflection answer, a batch published on the embedded NATS server reaches
// the messenger (seen in /metrics), and cancelling stops everything with no
// goroutine left behind (TestMain's goleak).
func TestServeAllInOne(t *testing.T) {
	api, metricsAddr, natsAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"serve", "--data-dir", t.TempDir(), "--listen", api, "--metrics-listen", metricsAddr, "--site-name", "TEST"},
			Env{Stdout: io.Discard, Stderr: &stderr, Environ: []string{
				"TALLY_NATS_EMBEDDED_LISTEN=" + natsAddr,
				"TALLY_MESSENGERS_NOOP_ENABLED=true",
				"TALLY_MESSENGERS_NOOP_LISTEN=" + freeAddr(t),
				"TALLY_MESSENGERS_SSM_ENABLED=false",
				"TALLY_EXTRACTORS_NOVA_ENABLED=false",
				"TALLY_ENRICHER_DEFAULT_VO=ops",
				"TALLY_QUERY_LISTEN=" + freeAddr(t),
			}})
	}()
	waitServing(t, api)

	got := listServices(t, api)
	for _, want := range []string{"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "tally.v1.RecordQuery"} {
		if !slices.Contains(got, want) {
			t.Errorf("reflection lists %q, missing %s", got, want)
		}
	}

	// An extractor in another process publishes to the embedded server.
	nc, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	data, _ := proto.Marshal(&tallyv1.RecordBatch{BatchId: "serve-test", Records: []*tallyv1.Record{{
		Key: "cloud/vm-1", Payload: &tallyv1.Record_Cloud{Cloud: &tallyv1.CloudRecord{VmUuid: "vm-1", Status: "started",
			StartTime: timestamppb.New(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)), WallDuration: 60, CpuDuration: 60, CpuCount: 1}},
	}}})
	if _, err := js.Publish(t.Context(), bus.RawSubject("RegionOne", tallyv1.RecordType_RECORD_TYPE_CLOUD), data, jetstream.WithMsgID("serve-test")); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	want := `tally_records_out_total{destination="noop",service="messenger-noop",type="cloud"} 1`
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), want) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed %s", want)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The same record is in the store, and the public API serves it.
	conn, err := grpc.NewClient(api, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	rq := tallyv1.NewRecordQueryClient(conn)
	deadline = time.Now().Add(30 * time.Second)
	for {
		resp, err := rq.GetRecord(t.Context(), &tallyv1.GetRecordRequest{Key: "cloud/vm-1"})
		if err == nil {
			if got := resp.GetRecord().GetCloud().GetSiteName(); got != "TEST" {
				t.Errorf("stored record's site = %q, want the enricher's TEST", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GetRecord(cloud/vm-1): %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn.Close()

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("serve exited %d:\n%s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop within 10s")
	}
}

// TestServeStopsOnSIGTERM runs the real binary and sends it SIGTERM.
func TestServeStopsOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "tally")
	build := exec.Command("go", "build", "-o", bin, "..")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	api := freeAddr(t)
	// Nothing configured, as on a fresh install: it starts what it can and
	// says what is off.
	cmd := exec.Command(bin, "serve", "--data-dir", t.TempDir(), "--listen", api, "--metrics-listen", "")
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OS_") && !strings.HasPrefix(kv, "TALLY_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "TALLY_MESSENGERS_SSM_LISTEN="+freeAddr(t), "TALLY_QUERY_LISTEN="+freeAddr(t))
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitServing(t, api)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("still running 10s after SIGTERM\n%s", stderr.String())
	}
	for _, want := range []string{"tally stopped", "the enricher is off: enricher.site_name is empty", "extractor-nova is off: no OpenStack credentials"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}
