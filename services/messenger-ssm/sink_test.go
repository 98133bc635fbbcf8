package ssm

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

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
	return &tallyv1.Record{Key: "cloud/S/" + id, Payload: &tallyv1.Record_Cloud{Cloud: &tallyv1.CloudRecord{
		VmUuid: id, SiteName: "S", CloudComputeService: "S-cloud", CloudType: "tally", MachineName: "m " + id,
		LocalUserId: "u", LocalGroupId: "p", Fqan: "vo", Status: "started", StartTime: ts(t0),
		WallDuration: 60, CpuDuration: 120, CpuCount: 2, Memory: 512, Disk: 1, GlobalUserName: proto.String("Jos\u00e9"),
	}}}
}

func accel(id string) *tallyv1.Record {
	return &tallyv1.Record{Key: "accelerator/S/" + id, Payload: &tallyv1.Record_Accelerator{Accelerator: &tallyv1.AcceleratorRecord{
		SiteName: "S", CloudType: "tally", CloudComputeService: "S-cloud", AssociatedRecord: id, AssociatedRecordType: "cloud",
		Fqan: "vo", Count: 1, AvailableDuration: 60, MeasurementMonth: 11, MeasurementYear: 2023, Type: "GPU",
		Model: proto.String("M\u00fcller X"),
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

// mixed returns n records, the four SSM types in turn, ids prefixed.
func mixed(prefix string, n int) []*tallyv1.Record {
	mk := []func(string) *tallyv1.Record{cloud, accel, ip, storage}
	out := make([]*tallyv1.Record, n)
	for i := range out {
		out[i] = mk[i%4](fmt.Sprintf("%s-%06d", prefix, i))
	}
	return out
}

// ---- an independent reader of the spool ----

var (
	dirRE  = regexp.MustCompile(`^[0-9a-f]{8}$`)
	nameRE = regexp.MustCompile(`^[0-9a-f]{14}$`)
)

// spool reads every element, in ssmsend's order, from the layout alone.
func spool(t testing.TB, dir string) (ids []string, msgs []string) {
	t.Helper()
	subs, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range subs { // ReadDir sorts
		if !s.IsDir() || !dirRE.MatchString(s.Name()) {
			continue
		}
		els, err := os.ReadDir(filepath.Join(dir, s.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range els {
			if !nameRE.MatchString(e.Name()) {
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, s.Name(), e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, s.Name()+"/"+e.Name())
			msgs = append(msgs, string(b))
		}
	}
	return ids, msgs
}

// consume sends element id the way ssmsend does: lock by link, touch,
// read, unlink the element then the lock.
func consume(t testing.TB, dir, id string) {
	t.Helper()
	p := filepath.Join(dir, id)
	if err := os.Link(p, p+".lck"); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := os.Chtimes(p, now, now); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(p + ".lck"); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p + ".lck"); err != nil {
		t.Fatal(err)
	}
}

// parsed is one record read back from a message: its type and fields.
type parsed struct {
	Type   string
	Fields map[string]string
}

// parse reads one message by its format, strictly.
func parse(t testing.TB, msg string) []parsed {
	t.Helper()
	for i := 0; i < len(msg); i++ {
		if msg[i] >= 0x80 {
			t.Fatalf("non-ASCII byte at %d", i)
		}
	}
	var out []parsed
	switch {
	case strings.HasPrefix(msg, "APEL-cloud-message: v0.4\n"):
		body := strings.TrimPrefix(msg, "APEL-cloud-message: v0.4\n")
		if !strings.HasSuffix(body, "\n") || strings.HasSuffix(body, "%%\n") {
			t.Fatalf("bad end of message %q", msg)
		}
		for _, rec := range strings.Split(body, "%%\n") {
			f := map[string]string{}
			for _, line := range strings.Split(strings.TrimSuffix(rec, "\n"), "\n") {
				k, v, ok := strings.Cut(line, ": ")
				if !ok {
					t.Fatalf("line %q", line)
				}
				f[k] = v
			}
			out = append(out, parsed{"cloud", f})
		}
	case strings.HasPrefix(msg, "{"):
		var m struct {
			Type, Version string
			UsageRecords  []map[string]any
		}
		dec := json.NewDecoder(strings.NewReader(msg))
		dec.UseNumber()
		dec.DisallowUnknownFields()
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		typ := map[string]string{"APEL-accelerator-message 0.1": "accelerator", "APEL Public IP message 0.2": "ip"}[m.Type+" "+m.Version]
		if typ == "" {
			t.Fatalf("unknown JSON message %s %s", m.Type, m.Version)
		}
		for _, r := range m.UsageRecords {
			f := map[string]string{}
			for k, v := range r {
				f[k] = fmt.Sprint(v)
			}
			out = append(out, parsed{typ, f})
		}
	case strings.HasPrefix(msg, "<sr:StorageUsageRecords "):
		const ns = "http://eu-emi.eu/namespaces/2011/02/storagerecord"
		dec := xml.NewDecoder(strings.NewReader(msg))
		var f map[string]string
		var path []string
		for {
			tok, err := dec.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			switch tok := tok.(type) {
			case xml.StartElement:
				if tok.Name.Space != ns {
					t.Fatalf("element %v outside the StAR namespace", tok.Name)
				}
				path = append(path, tok.Name.Local)
				if tok.Name.Local == "StorageUsageRecord" {
					f = map[string]string{}
				}
				for _, a := range tok.Attr {
					if a.Name.Space == ns {
						f[a.Name.Local] = a.Value
					}
				}
			case xml.CharData:
				if f != nil && len(path) > 0 {
					f[path[len(path)-1]] += string(tok)
				}
			case xml.EndElement:
				path = path[:len(path)-1]
				if tok.Name.Local == "StorageUsageRecord" {
					out = append(out, parsed{"storage", f})
					f = nil
				}
			}
		}
	default:
		t.Fatalf("unknown message %.60q", msg)
	}
	return out
}

// identity names the record a parsed record is, as the test's records
// were built.
func identity(p parsed) string {
	switch p.Type {
	case "cloud":
		return p.Fields["VMUUID"]
	case "accelerator":
		return p.Fields["AssociatedRecord"]
	case "ip":
		return p.Fields["LocalGroup"]
	case "storage":
		return p.Fields["recordId"]
	}
	return ""
}

// want is what each test record must read as after parsing.
func want(r *tallyv1.Record) parsed {
	s := strconv.Itoa
	switch p := r.Payload.(type) {
	case *tallyv1.Record_Cloud:
		c := p.Cloud
		return parsed{"cloud", map[string]string{
			"VMUUID": c.VmUuid, "SiteName": "S", "CloudComputeService": "S-cloud", "CloudType": "tally",
			"MachineName": c.MachineName, "LocalUserId": "u", "LocalGroupId": "p", "FQAN": "vo", "Status": "started",
			"StartTime": s(t0), "EndTime": "0", "WallDuration": "60", "CpuDuration": "120", "CpuCount": "2",
			"PublicIPCount": "0", "Memory": "512", "Disk": "1", "GlobalUserName": "Jose",
		}}
	case *tallyv1.Record_Accelerator:
		return parsed{"accelerator", map[string]string{
			"SiteName": "S", "CloudType": "tally", "CloudComputeService": "S-cloud", "AssociatedRecord": p.Accelerator.AssociatedRecord,
			"AssociatedRecordType": "cloud", "FQAN": "vo", "Count": "1", "AvailableDuration": "60", "MeasurementMonth": "11",
			"MeasurementYear": "2023", "Type": "GPU", "Model": "M\u00fcller X",
		}}
	case *tallyv1.Record_Ip:
		return parsed{"ip", map[string]string{
			"MeasurementTime": s(t0), "SiteName": "S", "CloudType": "tally", "LocalGroup": p.Ip.LocalGroup, "FQAN": "vo",
			"IPVersion": "4", "IPCount": "2",
		}}
	case *tallyv1.Record_Storage:
		return parsed{"storage", map[string]string{
			"recordId": p.Storage.RecordId, "createTime": "2023-11-14T22:14:20Z", "StorageSystem": "S-cloud", "Site": "S",
			"LocalGroup": "p", "Group": "vo", "UserIdentity": "\u0141ukasz & co", "StartTime": "2023-11-14T22:13:20Z",
			"EndTime": "2023-11-14T22:14:20Z", "ResourceCapacityUsed": "1073741824",
		}}
	}
	return parsed{}
}

// readBack parses the whole spool: records by identity, and how many
// records each message held.
func readBack(t testing.TB, dir string) (map[string][]parsed, []int) {
	t.Helper()
	got := map[string][]parsed{}
	var sizes []int
	_, msgs := spool(t, dir)
	for _, m := range msgs {
		recs := parse(t, m)
		sizes = append(sizes, len(recs))
		for _, p := range recs {
			got[identity(p)] = append(got[identity(p)], p)
		}
	}
	return got, sizes
}

// exactlyOnce checks that every record is in the spool once, field for
// field.
func exactlyOnce(t *testing.T, dir string, records []*tallyv1.Record) {
	t.Helper()
	got, _ := readBack(t, dir)
	wantAll := map[string][]parsed{}
	for _, r := range records {
		w := want(r)
		wantAll[identity(w)] = append(wantAll[identity(w)], w)
	}
	if diff := cmp.Diff(wantAll, got); diff != "" {
		t.Errorf("spool contents (-want +got):\n%s", diff)
	}
}

// ---- harness ----

type harness struct {
	cfg    Config
	sink   *Sink
	ledger *messenger.Ledger
	srv    *messenger.Server
}

func testConfig(t testing.TB) Config {
	cfg := DefaultConfig()
	cfg.Spool = filepath.Join(t.TempDir(), "spool", "ssm")
	return cfg
}

// start opens a sink, a ledger and a messenger server on cfg, as the
// service does at start; ledgerPath "" puts the ledger next to the state.
func start(t testing.TB, cfg Config) *harness {
	t.Helper()
	sink, err := NewSink(cfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	ledger, err := messenger.OpenLedger(filepath.Join(filepath.Dir(cfg.Spool), "ledger"), 0)
	if err != nil {
		t.Fatal(err)
	}
	types, err := cfg.Types()
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{cfg: cfg, sink: sink, ledger: ledger,
		srv: messenger.NewServer("ssm", sink, ledger, types, metrics.New(), discard())}
	t.Cleanup(h.close)
	return h
}

func (h *harness) close() {
	h.sink.Close()
	h.ledger.Close()
}

func (h *harness) push(t testing.TB, batch string, records []*tallyv1.Record) *tallyv1.PushResponse {
	t.Helper()
	resp, err := h.srv.Push(context.Background(), &tallyv1.PushRequest{BatchId: batch, Records: records})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// ---- tests ----

func TestEveryTypeEndToEnd(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxSize = 3
	h := start(t, cfg)
	records := append(mixed("a", 42), energy("e1"))
	resp := h.push(t, "batch-1", records)
	if diff := cmp.Diff(&tallyv1.PushResponse{Accepted: 42, Filtered: 1}, resp, cmpProto); diff != "" {
		t.Errorf("Push (-want +got):\n%s", diff)
	}
	exactlyOnce(t, cfg.Spool, records[:42])
	_, sizes := readBack(t, cfg.Spool)
	// 42 records, four types of 11, 11, 10, 10: each type in messages of
	// at most 3, cloud first.
	if diff := cmp.Diff([]int{3, 3, 3, 2, 3, 3, 3, 2, 3, 3, 3, 1, 3, 3, 3, 1}, sizes); diff != "" {
		t.Errorf("records per message (-want +got):\n%s", diff)
	}
	// Nothing but elements in the spool's hex directories, and nothing
	// left in the journal.
	left, _ := filepath.Glob(filepath.Join(cfg.Spool, "*", "*.*"))
	staged, _ := filepath.Glob(filepath.Join(cfg.Spool, ".tally-ssm", "staged", "*", "*"))
	if len(left) > 0 || len(staged) > 0 {
		t.Errorf("left behind: %v, staged %v", left, staged)
	}
	ids, _ := spool(t, cfg.Spool)
	fi, err := os.Stat(filepath.Join(cfg.Spool, ids[0]))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("element mode %v, want 0660", fi.Mode().Perm())
	}
}

var cmpProto = cmp.Comparer(func(a, b *tallyv1.PushResponse) bool { return proto.Equal(a, b) })

func TestRedeliveredBatchWritesNothing(t *testing.T) {
	cfg := testConfig(t)
	h := start(t, cfg)
	records := mixed("r", 20)
	h.push(t, "b", records)
	if resp := h.push(t, "b", records); !resp.Duplicate {
		t.Errorf("second push: %v, want duplicate", resp)
	}
	// The sink alone, as if the messenger's ledger had lost the batch.
	if err := h.sink.Write(context.Background(), "b", records); err != nil {
		t.Fatal(err)
	}
	h.close()
	h2 := start(t, cfg)
	if err := h2.sink.Write(context.Background(), "b", records); err != nil {
		t.Fatal(err)
	}
	exactlyOnce(t, cfg.Spool, records)
}

var errCrash = errors.New("simulated crash")

// TestCrashThenRetry interrupts Write after k of its messages (as SIGKILL
// would: the ledger never hears of the batch), then retries the batch,
// with or without a restart, with ssmsend sending some of the spooled
// messages in between: every record ends up in the spool, or sent,
// exactly once.
func TestCrashThenRetry(t *testing.T) {
	records := mixed("c", 40) // 4 types × 10 records, max_size 3: 16 messages
	tests := []struct {
		name     string
		k        int  // messages linked before the crash
		restart  bool // a new process (NewSink recovers the plan)
		consumed int  // messages ssmsend sent between crash and retry
	}{
		{"after 1, retry", 1, false, 0},
		{"after 5, retry", 5, false, 0},
		{"after 5, restart", 5, true, 0},
		{"after 5, ssmsend sent 3, retry", 5, false, 3},
		{"after 5, ssmsend sent 5, restart", 5, true, 5},
		{"after all 16, restart", 16, true, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.MaxSize = 3
			h := start(t, cfg)
			h.sink.hook = func(n int) error {
				if n == tt.k {
					return errCrash
				}
				return nil
			}
			_, err := h.srv.Push(context.Background(), &tallyv1.PushRequest{BatchId: "b", Records: records})
			if err == nil {
				t.Fatal("push survived the crash")
			}
			ids, _ := spool(t, cfg.Spool)
			if len(ids) != tt.k {
				t.Fatalf("%d messages before the crash, want %d", len(ids), tt.k)
			}
			sent := map[string][]parsed{}
			for _, id := range ids[:tt.consumed] {
				b, _ := os.ReadFile(filepath.Join(cfg.Spool, id))
				for _, p := range parse(t, string(b)) {
					sent[identity(p)] = append(sent[identity(p)], p)
				}
				consume(t, cfg.Spool, id)
			}
			h.sink.hook = nil
			if tt.restart {
				h.close()
				h = start(t, cfg)
			}
			resp := h.push(t, "b", records)
			if resp.Accepted != 40 {
				t.Errorf("retry: %v", resp)
			}
			got, _ := readBack(t, cfg.Spool)
			for k, v := range sent {
				got[k] = append(got[k], v...)
			}
			wantAll := map[string][]parsed{}
			for _, r := range records {
				w := want(r)
				wantAll[identity(w)] = []parsed{w}
			}
			if diff := cmp.Diff(wantAll, got); diff != "" {
				t.Errorf("spool + sent (-want +got):\n%s", diff)
			}
		})
	}
}

// TestCrashBetweenLinkAndUnlink covers the narrowest window: elements
// linked into the spool whose staged copies were not yet removed, one of
// them already sent by ssmsend, one name taken by another writer.
func TestCrashBetweenLinkAndUnlink(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxSize = 5
	h := start(t, cfg)
	records := mixed("w", 20) // 4 messages
	msgs, err := h.sink.render(records)
	if err != nil {
		t.Fatal(err)
	}
	// Under a hash Write would not use, so only the recovery in NewSink
	// can finish it.
	p, err := h.sink.stage(strings.Repeat("0", 32), "b", msgs)
	if err != nil {
		t.Fatal(err)
	}
	// Messages 0 and 1 linked, staged copies kept; 1 then sent by ssmsend.
	for i := range 2 {
		if err := h.sink.queue.Link(p.staged(i), p.ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	consume(t, cfg.Spool, p.ids[1])
	// Another writer took message 3's name.
	if err := os.WriteFile(filepath.Join(cfg.Spool, p.ids[3]), []byte("APEL-cloud-message: v0.4\nVMUUID: other\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.close()
	h = start(t, cfg)
	got, _ := readBack(t, cfg.Spool)
	sent := parse(t, string(msgs[1]))
	for _, p := range sent {
		got[identity(p)] = append(got[identity(p)], p)
	}
	wantAll := map[string][]parsed{"other": {{"cloud", map[string]string{"VMUUID": "other"}}}}
	for _, r := range records {
		w := want(r)
		wantAll[identity(w)] = []parsed{w}
	}
	if diff := cmp.Diff(wantAll, got); diff != "" {
		t.Errorf("spool + sent (-want +got):\n%s", diff)
	}
	if !h.sink.done.Seen("b") {
		t.Error("recovered batch not recorded as done")
	}
}

func TestUncommittedStagingIsDiscarded(t *testing.T) {
	cfg := testConfig(t)
	h := start(t, cfg)
	dir := filepath.Join(h.sink.pending, "abandoned")
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, "0.msg"), []byte("APEL-cloud-message: v0.4\nVMUUID: x\n"), 0o600)
	h.close()
	h = start(t, cfg)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("abandoned staging still there: %v", err)
	}
	if ids, _ := spool(t, cfg.Spool); len(ids) != 0 {
		t.Errorf("spool: %v", ids)
	}
}

func TestUncommittedStagedFilesAreDiscarded(t *testing.T) {
	cfg := testConfig(t)
	h := start(t, cfg)
	records := mixed("u", 8)
	msgs, err := h.sink.render(records)
	if err != nil {
		t.Fatal(err)
	}
	// Staged, then killed before the journal line was whole: a torn line.
	hash := strings.Repeat("a", 32)
	staged := stagedPrefix(h.sink.staged, hash) + "0.msg"
	if err := os.WriteFile(staged, msgs[0], 0o600); err != nil {
		t.Fatal(err)
	}
	p := &plan{batch: "u", hash: hash, ids: []string{h.sink.queue.NewID()}, sentinel: time.Now()}
	line := p.appendLine(nil)
	if _, err := h.sink.journal.Write(line[:len(line)-5]); err != nil {
		t.Fatal(err)
	}
	h.close()
	h = start(t, cfg)
	if _, err := os.Stat(staged); !os.IsNotExist(err) {
		t.Errorf("abandoned staged file still there: %v", err)
	}
	if ids, _ := spool(t, cfg.Spool); len(ids) != 0 {
		t.Errorf("spool: %v", ids)
	}
	// The torn line is gone: the next batch's line is read back whole.
	h.push(t, "next", records)
	exactlyOnce(t, cfg.Spool, records)
	if fi, err := os.Stat(filepath.Join(cfg.Spool, ".tally-ssm", "journal")); err != nil || fi.Size() == 0 {
		t.Fatalf("journal: %v %v", fi, err)
	}
	plans, _, err := readJournal(filepath.Join(cfg.Spool, ".tally-ssm", "journal"), h.sink.staged)
	if err != nil || len(plans) != 1 || plans[0].batch != "next" {
		t.Errorf("journal holds %v, %v; want the plan of next", plans, err)
	}
}

// TestJournalCompactedWithUnsettledPlans commits plans, crashes before
// settling them, and has the journal rewritten in between: the rewrite
// keeps them, so a restart spools every record once.
func TestJournalCompactedWithUnsettledPlans(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxSize = 3
	h := start(t, cfg)
	h.sink.compactAt = 1 // every commit rewrites the journal
	var all []*tallyv1.Record
	for b := range 3 {
		records := mixed(fmt.Sprintf("j%d", b), 10)
		all = append(all, records...)
		if b == 2 {
			h.push(t, "b2", records) // settled: not kept by the next rewrite
			continue
		}
		h.sink.hook = func(n int) error {
			if n == 2 {
				return errCrash
			}
			return nil
		}
		if _, err := h.srv.Push(context.Background(), &tallyv1.PushRequest{BatchId: fmt.Sprintf("b%d", b), Records: records}); err == nil {
			t.Fatal("push survived the crash")
		}
		h.sink.hook = nil
	}
	more := mixed("j3", 10)
	all = append(all, more...)
	h.push(t, "b3", more)
	plans, _, err := readJournal(filepath.Join(cfg.Spool, ".tally-ssm", "journal"), h.sink.staged)
	if err != nil {
		t.Fatal(err)
	}
	var batches []string
	for _, p := range plans {
		batches = append(batches, p.batch)
	}
	slices.Sort(batches)
	if diff := cmp.Diff([]string{"b0", "b1", "b3"}, batches); diff != "" {
		t.Errorf("journal after rewrites (-want +got):\n%s", diff)
	}
	h.close()
	h = start(t, cfg)
	exactlyOnce(t, cfg.Spool, all)
	for _, b := range []string{"b0", "b1"} {
		if !h.sink.done.Seen(b) {
			t.Errorf("batch %s not recovered", b)
		}
	}
}

// TestConcurrentBatchesCrashThenRestart commits many plans at once (they
// share journal writes) and crashes every batch after its first element:
// a restart finishes all of them, each record spooled once.
func TestConcurrentBatchesCrashThenRestart(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxSize = 4
	h := start(t, cfg)
	h.sink.compactAt = 2 << 10
	h.sink.hook = func(n int) error {
		if n == 1 {
			return errCrash
		}
		return nil
	}
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		all []*tallyv1.Record
	)
	for b := range 16 {
		records := mixed(fmt.Sprintf("c%02d", b), 20)
		mu.Lock()
		all = append(all, records...)
		mu.Unlock()
		wg.Go(func() {
			if _, err := h.srv.Push(context.Background(), &tallyv1.PushRequest{BatchId: fmt.Sprintf("b%02d", b), Records: records}); err == nil {
				t.Error("push survived the crash")
			}
		})
	}
	wg.Wait()
	if ids, _ := spool(t, cfg.Spool); len(ids) != 16 {
		t.Fatalf("%d elements before the restart, want one per batch", len(ids))
	}
	h.close()
	h = start(t, cfg)
	exactlyOnce(t, cfg.Spool, all)
	if left, _ := filepath.Glob(filepath.Join(h.sink.staged, "*", "*")); len(left) > 0 {
		t.Errorf("staged files left: %v", left)
	}
}

// TestOlderStateDirIsFinished: a state directory written by a tally that
// kept one plan file per batch is settled at start.
func TestOlderStateDirIsFinished(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxSize = 4
	h := start(t, cfg)
	records := mixed("o", 16)
	msgs, err := h.sink.render(records)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(h.sink.pending, "0123456789abcdef0123456789abcdef")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	p := plan{batch: "old", sentinel: time.Now().Truncate(time.Second).Add(-time.Second)}
	for i, m := range msgs {
		path := filepath.Join(dir, strconv.Itoa(i)+".msg")
		if err := os.WriteFile(path, m, 0o660); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, p.sentinel, p.sentinel); err != nil {
			t.Fatal(err)
		}
		p.ids = append(p.ids, h.sink.queue.NewID())
	}
	if err := writePlan(dir, p); err != nil {
		t.Fatal(err)
	}
	// The older tally had linked the first message before it was killed.
	if err := h.sink.queue.Link(filepath.Join(dir, "0.msg"), p.ids[0]); err != nil {
		t.Fatal(err)
	}
	h.close()
	h = start(t, cfg)
	exactlyOnce(t, cfg.Spool, records)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("older staging still there: %v", err)
	}
	if resp := h.push(t, "old", records); resp.Accepted != 16 {
		t.Errorf("re-push: %v", resp)
	}
	exactlyOnce(t, cfg.Spool, records)
}

func TestConcurrentBatches(t *testing.T) {
	cfg := testConfig(t)
	h := start(t, cfg)
	var (
		wg  sync.WaitGroup
		all []*tallyv1.Record
	)
	for b := range 8 {
		records := mixed(fmt.Sprintf("b%d", b), 250)
		all = append(all, records...)
		wg.Go(func() {
			// Each batch twice at once: exactly one write.
			for range 2 {
				if _, err := h.srv.Push(context.Background(), &tallyv1.PushRequest{BatchId: strconv.Itoa(b), Records: records}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	exactlyOnce(t, cfg.Spool, all)
}

func TestRejected(t *testing.T) {
	cfg := testConfig(t)
	h := start(t, cfg)
	bad := cloud("x")
	bad.GetCloud().SiteName = ""
	err := h.sink.Write(context.Background(), "b", []*tallyv1.Record{cloud("ok"), bad})
	if !errors.Is(err, messenger.ErrRejected) || !strings.Contains(err.Error(), "SiteName") {
		t.Errorf("invalid record: err = %v, want ErrRejected naming SiteName", err)
	}
	err = h.sink.Write(context.Background(), "b2", []*tallyv1.Record{energy("e")})
	if !errors.Is(err, messenger.ErrRejected) {
		t.Errorf("energy: err = %v, want ErrRejected", err)
	}
	if ids, _ := spool(t, cfg.Spool); len(ids) != 0 {
		t.Errorf("spool after rejections: %v", ids)
	}
}

func TestCancelledWrite(t *testing.T) {
	cfg := testConfig(t)
	h := start(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	records := mixed("x", 8)
	if err := h.sink.Write(ctx, "b", records); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if err := h.sink.Write(context.Background(), "b", records); err != nil {
		t.Fatal(err)
	}
	exactlyOnce(t, cfg.Spool, records)
}

func TestConfig(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		key  string // "" = valid
		text string
	}{
		{"defaults", func(*Config) {}, "", ""},
		{"empty types mean the SSM types", func(c *Config) { c.RecordTypes = nil }, "", ""},
		{"no spool", func(c *Config) { c.Spool = "" }, "spool_dir", "empty"},
		{"max_size 0", func(c *Config) { c.MaxSize = 0 }, "max_size", "between 1 and 1000"},
		{"max_size 1001", func(c *Config) { c.MaxSize = 1001 }, "max_size", "between 1 and 1000"},
		{"max_bytes too big", func(c *Config) { c.MaxBytes = 2 << 20 }, "max_bytes", "1 MB"},
		{"file_mode not octal", func(c *Config) { c.FileMode = "rw" }, "file_mode", "octal"},
		{"file_mode owner cannot write", func(c *Config) { c.FileMode = "0440" }, "file_mode", "owner"},
		{"dir_mode", func(c *Config) { c.DirMode = "0660" }, "dir_mode", "rwx"},
		{"unknown type", func(c *Config) { c.RecordTypes = []string{"cloud", "vm"} }, "record_types", "unknown record type"},
		{"energy", func(c *Config) { c.RecordTypes = []string{"cloud", "energy"} }, "record_types", "APEL has no energy record"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mod(&c)
			err := c.Validate()
			var fe *config.FieldError
			switch {
			case tt.key == "" && err != nil:
				t.Errorf("err = %v, want nil", err)
			case tt.key != "" && (!errors.As(err, &fe) || fe.Key != tt.key || !strings.Contains(fe.Problem, tt.text)):
				t.Errorf("err = %v, want %s: ...%s...", err, tt.key, tt.text)
			}
		})
	}
	types, _ := DefaultConfig().Types()
	if len(types) != 4 || types[tallyv1.RecordType_RECORD_TYPE_ENERGY] {
		t.Errorf("default types %v", types)
	}
}

func TestStateDirOnAnotherFilesystem(t *testing.T) {
	if _, err := os.Stat("/dev/shm"); err != nil {
		t.Skip("no /dev/shm")
	}
	state, err := os.MkdirTemp("/dev/shm", "tally-ssm-test")
	if err != nil {
		t.Skip(err)
	}
	defer os.RemoveAll(state)
	cfg := testConfig(t)
	cfg.StateDir = state
	_, err = NewSink(cfg, discard())
	if err == nil || !strings.Contains(err.Error(), "filesystem") {
		t.Skipf("hard link across /dev/shm worked or failed otherwise: %v", err)
	}
}

// BenchmarkSpool pushes 100,000 mixed records, in batches of 1,000,
// through the messenger server into the spool.
func BenchmarkSpool(b *testing.B) {
	const total, batch = 100_000, 1_000
	records := mixed("bench", total)
	b.ReportAllocs()
	var n int
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		cfg := testConfig(b)
		h := start(b, cfg)
		b.StartTimer()
		for j := 0; j < total; j += batch {
			h.push(b, fmt.Sprintf("%d-%d", i, j), records[j:j+batch])
		}
		n += total
		b.StopTimer()
		if i == 0 {
			_, sizes := readBack(b, cfg.Spool)
			sum := 0
			for _, s := range sizes {
				sum += s
			}
			if sum != total {
				b.Fatalf("%d records in the spool, want %d", sum, total)
			}
		}
		h.close()
		b.StartTimer()
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "records/s")
}
