package logstash

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tally-accounting/tally/pkg/apel"
	"github.com/tally-accounting/tally/pkg/config"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/messenger"
	"github.com/tally-accounting/tally/pkg/metrics"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// ---- records ----

const t0 = 1700000000

func ts(sec int64) *timestamppb.Timestamp { return &timestamppb.Timestamp{Seconds: sec} }

func cloud(id string) *tallyv1.Record {
	return &tallyv1.Record{Key: "cloud/S/" + id, Provenance: &tallyv1.Provenance{Region: "RegionOne", Extractor: "extractor-nova"},
		Payload: &tallyv1.Record_Cloud{Cloud: &tallyv1.CloudRecord{
			VmUuid: id, SiteName: "S", CloudComputeService: "S-cloud", CloudType: "tally", MachineName: "m " + id,
			LocalUserId: "u", LocalGroupId: "p", Fqan: "vo", Status: "started", StartTime: ts(t0),
			WallDuration: 60, CpuDuration: 120, CpuCount: 2, Memory: 512, Disk: 1, GlobalUserName: proto.String("Jos\u00e9"),
		}}}
}

func accel(id string) *tallyv1.Record {
	return &tallyv1.Record{Key: "accelerator/S/" + id, Payload: &tallyv1.Record_Accelerator{Accelerator: &tallyv1.AcceleratorRecord{
		SiteName: "S", CloudType: "tally", CloudComputeService: "S-cloud", AssociatedRecord: id, AssociatedRecordType: "cloud",
		Fqan: "vo", Count: 1, AvailableDuration: 60, MeasurementMonth: 11, MeasurementYear: 2023, Type: "GPU",
	}}}
}

func ip(id string) *tallyv1.Record {
	return &tallyv1.Record{Key: "ip/S/" + id, Payload: &tallyv1.Record_Ip{Ip: &tallyv1.IPRecord{
		MeasurementTime: ts(t0), SiteName: "S", CloudType: "tally", LocalGroup: id, Fqan: "vo", IpVersion: 4, IpCount: 2,
	}}}
}

func storage(id string) *tallyv1.Record {
	return &tallyv1.Record{Key: "storage/S/" + id, Payload: &tallyv1.Record_Storage{Storage: &tallyv1.StorageRecord{
		RecordId: id, CreateTime: ts(t0 + 60), StorageSystem: "S-cloud", Site: proto.String("S"),
		LocalGroup: proto.String("p"), Group: proto.String("vo"), UserIdentity: proto.String("\u0141ukasz & co"),
		StartTime: ts(t0), EndTime: ts(t0 + 60), ResourceCapacityUsed: 1 << 30,
	}}}
}

func energy(id string) *tallyv1.Record {
	return &tallyv1.Record{Key: "energy/S/" + id, Payload: &tallyv1.Record_Energy{Energy: &tallyv1.EnergyRecord{
		SiteName: "S", ExecUnitId: id, StartExecTime: ts(t0), EndExecTime: ts(t0 + 60),
	}}}
}

// mixed returns n records, every type in turn, ids prefixed.
func mixed(prefix string, n int) []*tallyv1.Record {
	mk := []func(string) *tallyv1.Record{cloud, accel, ip, storage, energy}
	out := make([]*tallyv1.Record, n)
	for i := range out {
		out[i] = mk[i%len(mk)](fmt.Sprintf("%s-%06d", prefix, i))
	}
	return out
}

func keys(rs []*tallyv1.Record) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.GetKey()
	}
	return out
}

// ---- a Logstash tcp input with the json_lines codec ----

// lsSink accepts connections and records, per connection, the record_key
// of every whole line, in arrival order.
type lsSink struct {
	t      testing.TB
	addr   string
	tls    *tls.Config
	count  bool // only count lines (benchmark)
	counts atomic.Int64

	mu      sync.Mutex
	ln      net.Listener
	conns   map[net.Conn]bool
	lines   [][]string // record keys, per connection
	partial int        // connections that ended in the middle of a line
	bad     []string   // lines that are not JSON objects with a record_key
	wg      sync.WaitGroup
}

func newSink(t testing.TB, tlsConf *tls.Config) *lsSink {
	t.Helper()
	s := &lsSink{t: t, addr: "127.0.0.1:0", tls: tlsConf, conns: map[net.Conn]bool{}}
	s.up()
	t.Cleanup(s.down)
	return s
}

// up listens (again) on the sink's address.
func (s *lsSink) up() {
	s.t.Helper()
	var ln net.Listener
	var err error
	// The port of a listener just closed can be briefly refused; bounded.
	for deadline := time.Now().Add(5 * time.Second); ; {
		ln, err = net.Listen("tcp", s.addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	if s.tls != nil {
		ln = tls.NewListener(ln, s.tls)
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = true
			i := len(s.lines)
			s.lines = append(s.lines, nil)
			s.mu.Unlock()
			s.wg.Add(1)
			go s.serve(c, i)
		}
	}()
}

func (s *lsSink) serve(c net.Conn, i int) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	r := bufio.NewReaderSize(c, 64<<10)
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			s.t.Errorf("line longer than 64 KiB")
			return
		}
		if err != nil {
			if len(line) > 0 {
				s.mu.Lock()
				s.partial++
				s.mu.Unlock()
			}
			return
		}
		if s.count {
			s.counts.Add(1)
			continue
		}
		var obj struct {
			Key string `json:"record_key"`
		}
		if err := json.Unmarshal(line, &obj); err != nil || obj.Key == "" {
			s.mu.Lock()
			s.bad = append(s.bad, string(line))
			s.mu.Unlock()
			continue
		}
		s.mu.Lock()
		s.lines[i] = append(s.lines[i], obj.Key)
		s.mu.Unlock()
	}
}

// down stops listening and shuts down like a Logstash that drains: it
// half-closes each connection and reads it to the end.
func (s *lsSink) down() {
	s.mu.Lock()
	ln := s.ln
	s.ln = nil
	for c := range s.conns {
		switch c := c.(type) {
		case *net.TCPConn:
			c.CloseWrite()
		case *tls.Conn:
			c.CloseWrite()
		}
		// Bounded: a client that never closes is cut.
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
	}
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	s.wg.Wait()
}

// snapshot returns the keys received so far, per connection.
func (s *lsSink) snapshot() [][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([][]string, len(s.lines))
	for i, l := range s.lines {
		out[i] = append([]string(nil), l...)
	}
	return out
}

func (s *lsSink) unique() int {
	seen := map[string]bool{}
	for _, c := range s.snapshot() {
		for _, k := range c {
			seen[k] = true
		}
	}
	return len(seen)
}

// check compares what arrived with want (every record, in push order)
// and returns how many lines came twice. A duplicate is allowed only at
// the start of a connection (a resend after a reconnect), as the package
// documents.
func (s *lsSink) check(t *testing.T, want []string) (dups int) {
	t.Helper()
	seen := map[string]bool{}
	var first []string
	for i, c := range s.snapshot() {
		fresh := false
		for _, k := range c {
			if !seen[k] {
				seen[k] = true
				first = append(first, k)
				fresh = true
				continue
			}
			dups++
			if fresh {
				t.Errorf("connection %d: %q again after new lines: a duplicate outside the resend window", i, k)
			}
		}
	}
	if diff := cmp.Diff(want, first); diff != "" {
		t.Errorf("records received, first arrivals (-want +got):\n%s", diff)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.bad) > 0 {
		t.Errorf("%d lines are not records, first %q", len(s.bad), s.bad[0])
	}
	return dups
}

// waitFor polls cond until it holds, for at most 15 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// ---- the messenger under test ----

func testConfig(t testing.TB, addr string) Config {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Host = host
	cfg.Port, _ = strconv.Atoi(port)
	cfg.BufferDir = filepath.Join(t.TempDir(), "logstash-buffer")
	cfg.DialTimeout = 2 * time.Second
	cfg.WriteTimeout = 5 * time.Second
	cfg.MinBackoff = 2 * time.Millisecond
	cfg.MaxBackoff = 20 * time.Millisecond
	return cfg
}

type harness struct {
	m       *Messenger
	ledger  *messenger.Ledger
	srv     *messenger.Server
	metrics *metrics.Metrics
	cancel  context.CancelFunc
	done    chan error
	once    sync.Once
}

// start runs a messenger as the service manager would, behind a
// messenger server whose ledger sits next to the buffer.
func start(t testing.TB, cfg Config) *harness {
	t.Helper()
	met := metrics.New()
	m, err := New(cfg, discard(), met)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	ledger, err := messenger.OpenLedger(filepath.Join(filepath.Dir(cfg.BufferDir), "ledger"), 0)
	if err != nil {
		t.Fatal(err)
	}
	types, err := cfg.Types()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{m: m, ledger: ledger, metrics: met, cancel: cancel, done: make(chan error, 1),
		srv: messenger.NewServer("logstash", m, ledger, types, met, discard())}
	go func() { h.done <- m.Run(ctx) }()
	t.Cleanup(func() { h.stop(t, 5*time.Second) })
	return h
}

// stop ends Run, then Stop with timeout, as the manager does.
func (h *harness) stop(t testing.TB, timeout time.Duration) {
	t.Helper()
	h.once.Do(func() {
		h.cancel()
		if err := <-h.done; err != nil {
			t.Errorf("Run: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := h.m.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
		h.ledger.Close()
	})
}

func (h *harness) push(t testing.TB, batch string, records []*tallyv1.Record) {
	t.Helper()
	resp, err := h.srv.Push(context.Background(), &tallyv1.PushRequest{BatchId: batch, Records: records})
	if err != nil {
		t.Fatalf("push %s: %v", batch, err)
	}
	if int(resp.GetAccepted()) != len(records) {
		t.Fatalf("push %s: accepted %d of %d", batch, resp.GetAccepted(), len(records))
	}
}

// ---- tests ----

func TestEveryRecordOnceInOrder(t *testing.T) {
	sink := newSink(t, nil)
	h := start(t, testConfig(t, sink.addr))
	var want []string
	var all []*tallyv1.Record
	for i := range 20 {
		rs := mixed(fmt.Sprintf("b%02d", i), 1+i*7)
		h.push(t, fmt.Sprintf("batch-%d", i), rs)
		want = append(want, keys(rs)...)
		all = append(all, rs...)
	}
	// A redelivered batch has no second effect.
	if resp, err := h.srv.Push(context.Background(), &tallyv1.PushRequest{BatchId: "batch-3", Records: mixed("b03", 22)}); err != nil || !resp.GetDuplicate() {
		t.Errorf("redelivered batch: %v, %v; want a duplicate", resp, err)
	}
	waitFor(t, "every record", func() bool { return sink.unique() == len(want) })
	waitFor(t, "the buffer to empty", func() bool { return h.m.Pending() == 0 })
	h.stop(t, 5*time.Second)
	if dups := sink.check(t, want); dups != 0 {
		t.Errorf("%d duplicates on an undisturbed connection", dups)
	}
	if got := len(sink.snapshot()); got != 1 {
		t.Errorf("%d connections, want 1", got)
	}
	if got := countSegments(t, h.m.cfg.BufferDir); got != 1 {
		t.Errorf("%d segment files left, want 1 (the head)", got)
	}

	// Each line is the record's FieldMap, as the README documents.
	var line []byte
	line, err := apel.AppendJSONLine(line, all[0])
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatal(err)
	}
	fm, err := apel.FieldMap(all[0])
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(fm)
	var want0 map[string]any
	json.Unmarshal(raw, &want0)
	if diff := cmp.Diff(want0, got); diff != "" {
		t.Errorf("line (-want +got):\n%s", diff)
	}
}

func countSegments(t *testing.T, dir string) int {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+segSuffix))
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}

func TestListenerDownAndBack(t *testing.T) {
	sink := newSink(t, nil)
	cfg := testConfig(t, sink.addr)
	cfg.MaxBufferBytes = 4 << 20 // several segments
	h := start(t, cfg)
	const batches, size = 60, 40
	var (
		want   []string
		pushed atomic.Int64
		wg     sync.WaitGroup
	)
	recs := make([][]*tallyv1.Record, batches)
	for i := range recs {
		recs[i] = mixed(fmt.Sprintf("d%02d", i), size)
		want = append(want, keys(recs[i])...)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i, rs := range recs {
			if _, err := h.srv.Push(context.Background(), &tallyv1.PushRequest{BatchId: fmt.Sprintf("d-%d", i), Records: rs}); err != nil {
				t.Errorf("push %d while Logstash is up or down: %v", i, err)
				return
			}
			pushed.Add(1)
			// Pace the pushes on delivery for the first third, so the
			// listener goes down in the middle of the stream.
			for deadline := time.Now().Add(10 * time.Second); i < batches/3 && sink.unique() < (i+1)*size/2 && time.Now().Before(deadline); {
				runtime.Gosched()
			}
		}
	}()
	waitFor(t, "a third delivered", func() bool { return sink.unique() >= batches/3*size/2 })
	sink.down()
	downAt := sink.unique()
	waitFor(t, "two thirds pushed while down", func() bool { return pushed.Load() >= 2*batches/3 })
	if got := sink.unique(); got != downAt {
		t.Errorf("%d records arrived while the listener was down", got-downAt)
	}
	if h.m.Pending() == 0 {
		t.Error("nothing buffered while Logstash was down")
	}
	sink.up()
	wg.Wait()
	waitFor(t, "every record", func() bool { return sink.unique() == len(want) })
	dups := sink.check(t, want)
	if n := len(sink.snapshot()); n < 2 {
		t.Errorf("%d connections, want a reconnect", n)
	}
	// A clean close by Logstash loses nothing and repeats nothing when
	// the kernel reports acknowledgements.
	if runtime.GOOS == "linux" && dups != 0 {
		t.Errorf("%d duplicates after a clean close, want 0", dups)
	}
	t.Logf("%d records, %d connections, %d duplicates", len(want), len(sink.snapshot()), dups)
}

func TestBufferFullBackpressure(t *testing.T) {
	sink := newSink(t, nil)
	cfg := testConfig(t, sink.addr)
	cfg.MaxBufferBytes = minBufferBytes
	sink.down()
	h := start(t, cfg)
	var want []string
	var refused []*tallyv1.Record
	for i := 0; refused == nil; i++ {
		if i == 1000 {
			t.Fatal("the buffer never filled")
		}
		rs := mixed(fmt.Sprintf("f%03d", i), 10)
		_, err := h.srv.Push(context.Background(), &tallyv1.PushRequest{BatchId: fmt.Sprintf("f-%d", i), Records: rs})
		switch status.Code(err) {
		case codes.OK:
			want = append(want, keys(rs)...)
		case codes.Unavailable:
			refused = rs
			// The sink says why, directly.
			if err := h.m.Write(context.Background(), "direct", rs); !errors.Is(err, ErrBufferFull) {
				t.Errorf("Write on a full buffer: %v, want ErrBufferFull", err)
			}
		default:
			t.Fatalf("push %d: %v", i, err)
		}
	}
	if p := h.m.Pending(); p > cfg.MaxBufferBytes {
		t.Errorf("%d bytes pending, over max_buffer_bytes %d", p, cfg.MaxBufferBytes)
	}
	sink.up()
	waitFor(t, "the backlog delivered", func() bool { return h.m.Pending() == 0 })
	// The enricher retries the refused batch, then carries on.
	h.push(t, "f-retry", refused)
	want = append(want, keys(refused)...)
	more := mixed("after", 30)
	h.push(t, "after", more)
	want = append(want, keys(more)...)
	waitFor(t, "every record", func() bool { return sink.unique() == len(want) })
	if dups := sink.check(t, want); dups != 0 {
		t.Errorf("%d duplicates", dups)
	}
	if got := countSegments(t, cfg.BufferDir); got > 2 {
		t.Errorf("%d segments left after the backlog was delivered", got)
	}
}

func TestRestartResumesFromCursor(t *testing.T) {
	sink := newSink(t, nil)
	cfg := testConfig(t, sink.addr)
	cfg.MaxBufferBytes = minBufferBytes * 4 // 16 KiB segments
	h1 := start(t, cfg)
	var want []string
	push := func(h *harness, from, to int) {
		for i := from; i < to; i++ {
			rs := mixed(fmt.Sprintf("r%02d", i), 15)
			h.push(t, fmt.Sprintf("r-%d", i), rs)
			want = append(want, keys(rs)...)
		}
	}
	push(h1, 0, 10)
	waitFor(t, "the first batches", func() bool { return sink.unique() == len(want) })
	sink.down()
	push(h1, 10, 20)
	h1.stop(t, 50*time.Millisecond) // Logstash is down: leaves the backlog
	delivered := len(want) / 2

	// A crash had torn the last append: the open truncates it.
	segs, _ := filepath.Glob(filepath.Join(cfg.BufferDir, "*"+segSuffix))
	if len(segs) < 2 {
		t.Fatalf("%d segments, want several", len(segs))
	}
	f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte(frameMagic + "\x00\x00\x10\x00garbage"))
	f.Close()

	h2 := start(t, cfg)
	if p := h2.m.Pending(); p == 0 {
		t.Fatal("nothing pending after the restart")
	}
	// A crash after the append but before the server's ledger: the retry
	// of an already buffered batch is not appended again.
	before := h2.m.Pending()
	if err := h2.m.Write(context.Background(), "r-15", mixed("r15", 15)); err != nil {
		t.Fatal(err)
	}
	if got := h2.m.Pending(); got != before {
		t.Errorf("re-written batch grew the buffer from %d to %d bytes", before, got)
	}
	sink.up()
	push(h2, 20, 25)
	waitFor(t, "every record", func() bool { return sink.unique() == len(want) })
	if dups := sink.check(t, want); dups != 0 {
		t.Errorf("%d duplicates across the restart", dups)
	}
	conns := sink.snapshot()
	if got := len(conns[len(conns)-1]); got != len(want)-delivered {
		t.Errorf("the new connection carried %d records, want %d (from the cursor on)", got, len(want)-delivered)
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := selfSigned(t, dir)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	sink := newSink(t, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	cfg := testConfig(t, sink.addr)
	cfg.TLS = TLS{Enabled: true, CAFile: certFile}
	h := start(t, cfg)
	rs := mixed("tls", 200)
	h.push(t, "tls-1", rs[:120])
	h.push(t, "tls-2", rs[120:])
	waitFor(t, "every record over TLS", func() bool { return sink.unique() == len(rs) })
	if dups := sink.check(t, keys(rs)); dups != 0 {
		t.Errorf("%d duplicates", dups)
	}

	// Without the CA, the handshake fails and nothing is sent.
	bad := testConfig(t, sink.addr)
	bad.TLS = TLS{Enabled: true}
	hb := start(t, bad)
	hb.push(t, "tls-bad", mixed("bad", 3))
	waitFor(t, "a refused handshake", func() bool {
		return counter(t, hb.metrics, Name, "connect") > 0
	})
	hb.stop(t, 20*time.Millisecond)
	if got := sink.unique(); got != len(rs) {
		t.Errorf("%d records arrived, want %d: an unverified server got records", got, len(rs))
	}
}

func counter(t *testing.T, m *metrics.Metrics, service, kind string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tally_errors_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["service"] == service && labels["kind"] == kind {
				return mt.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "logstash.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestInvalidRecordRejected(t *testing.T) {
	sink := newSink(t, nil)
	h := start(t, testConfig(t, sink.addr))
	bad := cloud("x")
	bad.GetCloud().VmUuid = ""
	err := h.m.Write(context.Background(), "bad", []*tallyv1.Record{cloud("ok"), bad})
	if !errors.Is(err, messenger.ErrRejected) {
		t.Fatalf("Write of an invalid record: %v, want ErrRejected", err)
	}
	if p := h.m.Pending(); p != 0 {
		t.Errorf("%d bytes buffered from a rejected batch", p)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	certFile, _ := selfSigned(t, dir)
	tests := []struct {
		name    string
		mod     func(*Config)
		wantKey string
	}{
		{"defaults", func(*Config) {}, ""},
		{"tls ok", func(c *Config) { c.TLS = TLS{Enabled: true, CAFile: certFile} }, ""},
		{"no host", func(c *Config) { c.Host = "" }, "host"},
		{"port 0", func(c *Config) { c.Port = 0 }, "port"},
		{"port too big", func(c *Config) { c.Port = 70000 }, "port"},
		{"no buffer dir", func(c *Config) { c.BufferDir = "" }, "buffer_dir"},
		{"tiny buffer", func(c *Config) { c.MaxBufferBytes = 1000 }, "max_buffer_bytes"},
		{"no dial timeout", func(c *Config) { c.DialTimeout = 0 }, "dial_timeout"},
		{"negative write timeout", func(c *Config) { c.WriteTimeout = -time.Second }, "write_timeout"},
		{"no min backoff", func(c *Config) { c.MinBackoff = 0 }, "min_backoff"},
		{"max below min", func(c *Config) { c.MaxBackoff = c.MinBackoff / 2 }, "max_backoff"},
		{"unknown type", func(c *Config) { c.RecordTypes = []string{"cloud", "vm"} }, "record_types"},
		{"missing ca", func(c *Config) { c.TLS = TLS{Enabled: true, CAFile: filepath.Join(dir, "none.pem")} }, "tls.ca_file"},
		{"cert without key", func(c *Config) { c.TLS = TLS{Enabled: true, CertFile: certFile} }, "tls.cert_file"},
		{"tls off ignores files", func(c *Config) { c.TLS = TLS{CAFile: filepath.Join(dir, "none.pem")} }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.BufferDir = dir
			tt.mod(&cfg)
			err := cfg.Validate()
			var got string
			var fe *config.FieldError
			if errors.As(err, &fe) {
				got = fe.Key
			} else if err != nil {
				t.Fatalf("Validate: %v is not a *config.FieldError", err)
			}
			if diff := cmp.Diff(tt.wantKey, got); diff != "" {
				t.Errorf("key of the error %v (-want +got):\n%s", err, diff)
			}
		})
	}
}

// ---- benchmark ----

// BenchmarkLogstash pushes 100,000 mixed records, in batches of 1,000,
// through the messenger server into a local TCP sink that counts lines,
// and times it until the sink has them all.
func BenchmarkLogstash(b *testing.B) {
	const total, batch = 100_000, 1_000
	records := mixed("bench", total)
	b.ReportAllocs()
	var n int
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		sink := newSink(b, nil)
		sink.count = true
		cfg := testConfig(b, sink.addr)
		h := start(b, cfg)
		b.StartTimer()
		for j := 0; j < total; j += batch {
			h.push(b, fmt.Sprintf("%d-%d", i, j), records[j:j+batch])
		}
		waitFor(b, "every line at the sink", func() bool { return sink.counts.Load() >= total })
		n += total
		b.StopTimer()
		if got := sink.counts.Load(); got != total {
			b.Fatalf("%d lines at the sink, want %d", got, total)
		}
		h.stop(b, 5*time.Second)
		sink.down()
		b.StartTimer()
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "records/s")
}

func TestStopDrains(t *testing.T) {
	sink := newSink(t, nil)
	cfg := testConfig(t, sink.addr)
	h := start(t, cfg)
	var want []string
	for i := range 10 {
		rs := mixed(fmt.Sprintf("s%d", i), 50)
		h.push(t, fmt.Sprintf("s-%d", i), rs)
		want = append(want, keys(rs)...)
	}
	h.stop(t, 5*time.Second) // at once: Stop sends what Run had not
	again, err := New(cfg, discard(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if p := again.Pending(); p != 0 {
		t.Errorf("%d bytes left after Stop with Logstash up", p)
	}
	if err := again.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every record", func() bool { return sink.unique() == len(want) })
	if dups := sink.check(t, want); dups != 0 {
		t.Errorf("%d duplicates", dups)
	}
}
