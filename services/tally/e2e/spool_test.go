package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// A dirq QueueSimple reader (apel-formats.md §8), as ssmsend sees the
// spool: elements are files named by 14 hex digits in directories named by
// 8; anything else (temporary files, tally's state directory) is not an
// element.
var (
	dirqDir     = regexp.MustCompile(`^[0-9a-f]{8}$`)
	dirqElement = regexp.MustCompile(`^[0-9a-f]{14}$`)
)

// spoolElements lists the element paths of the queue at dir, relative to
// it, in the order ssmsend reads them.
func spoolElements(t testingTB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatalf("read spool: %v", err)
	}
	var out []string
	for _, d := range ents {
		if !d.IsDir() || !dirqDir.MatchString(d.Name()) {
			continue
		}
		files, err := os.ReadDir(filepath.Join(dir, d.Name()))
		if err != nil {
			t.Fatalf("read spool: %v", err)
		}
		for _, f := range files {
			if f.Type().IsRegular() && dirqElement.MatchString(f.Name()) {
				out = append(out, d.Name()+"/"+f.Name())
			}
		}
	}
	sort.Strings(out)
	return out
}

// spoolReader remembers which elements it has already read.
type spoolReader struct {
	dir  string
	seen map[string]bool
}

func newSpoolReader(dataDir string) *spoolReader {
	return &spoolReader{dir: filepath.Join(dataDir, "spool", "ssm"), seen: map[string]bool{}}
}

// messages is what a set of elements holds.
type messages struct {
	elements int
	cloud    []map[string]string // every cloud record, in spool order
	accel    []map[string]string // every accelerator record, values as JSON text
}

// readNew parses the elements not read before.
func (r *spoolReader) readNew(t testingTB) messages {
	t.Helper()
	var m messages
	for _, e := range spoolElements(t, r.dir) {
		if r.seen[e] {
			continue
		}
		r.seen[e] = true
		data, err := os.ReadFile(filepath.Join(r.dir, e))
		if err != nil {
			t.Fatalf("read element %s: %v", e, err)
		}
		m.elements++
		if err := parseMessage(data, &m); err != nil {
			t.Fatalf("element %s: %v\n%s", e, err, data)
		}
	}
	return m
}

// parseMessage parses one APEL message (cloud v0.4 key-value or
// accelerator v0.1 JSON) into m, checking the layout ssmsend and the APEL
// loader need.
func parseMessage(data []byte, m *messages) error {
	for i, c := range data {
		if c >= 0x80 {
			return fmt.Errorf("non-ASCII byte 0x%02x at %d", c, i)
		}
	}
	switch {
	case bytes.HasPrefix(data, []byte("APEL-cloud-message: v0.4\n")):
		recs, err := parseCloud(string(data))
		m.cloud = append(m.cloud, recs...)
		return err
	case bytes.HasPrefix(data, []byte("{")):
		recs, err := parseAccelerator(data)
		m.accel = append(m.accel, recs...)
		return err
	}
	return fmt.Errorf("unknown message type")
}

// parseCloud reads a cloud message: header line, records of "Key: value"
// lines in byte order separated by "%%" lines, LF after the last record,
// no trailing "%%", no blank line.
func parseCloud(s string) ([]map[string]string, error) {
	if !strings.HasSuffix(s, "\n") || strings.HasSuffix(s, "%%\n") {
		return nil, fmt.Errorf("message must end with one LF after the last record")
	}
	if strings.Contains(s, "\r") {
		return nil, fmt.Errorf("CR in message")
	}
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")[1:]
	var out []map[string]string
	rec := map[string]string{}
	last := ""
	for i, line := range lines {
		if line == "%%" {
			if len(rec) == 0 {
				return nil, fmt.Errorf("line %d: empty record", i+2)
			}
			out = append(out, rec)
			rec, last = map[string]string{}, ""
			continue
		}
		k, v, ok := strings.Cut(line, ": ")
		if !ok || k == "" || v == "" || strings.TrimSpace(v) != v {
			return nil, fmt.Errorf("line %d: %q is not \"Key: value\"", i+2, line)
		}
		if k <= last {
			return nil, fmt.Errorf("line %d: key %s not after %s (keys in byte order, once)", i+2, k, last)
		}
		if !cloudKeys[k] {
			return nil, fmt.Errorf("line %d: unknown key %s (APEL rejects the message)", i+2, k)
		}
		last = k
		rec[k] = v
	}
	if len(rec) == 0 {
		return nil, fmt.Errorf("no record after the last separator")
	}
	out = append(out, rec)
	if len(out) > 100 {
		return nil, fmt.Errorf("%d records in one message (max_size 100)", len(out))
	}
	return out, nil
}

// cloudKeys are the keys APEL's cloud v0.4 parser knows.
var cloudKeys = map[string]bool{}

func init() {
	for _, k := range strings.Fields(`VMUUID SiteName CloudComputeService MachineName LocalUserId LocalGroupId
		GlobalUserName FQAN Status StartTime EndTime SuspendDuration WallDuration CpuDuration CpuCount NetworkType
		NetworkInbound NetworkOutbound PublicIPCount Memory Disk BenchmarkType Benchmark StorageRecordId ImageId
		CloudType`) {
		cloudKeys[k] = true
	}
}

// parseAccelerator reads an accelerator message: one JSON object with the
// header fields and UsageRecords; a string value is kept decoded (so the
// escaping style does not matter), any other value as its JSON text.
func parseAccelerator(data []byte) ([]map[string]string, error) {
	var msg struct {
		Type         string                       `json:"Type"`
		Version      string                       `json:"Version"`
		UsageRecords []map[string]json.RawMessage `json:"UsageRecords"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&msg); err != nil {
		return nil, err
	}
	if msg.Type != "APEL-accelerator-message" || msg.Version != "0.1" {
		return nil, fmt.Errorf("header %q %q", msg.Type, msg.Version)
	}
	if n := len(msg.UsageRecords); n == 0 || n > 100 {
		return nil, fmt.Errorf("%d records", n)
	}
	var out []map[string]string
	for _, r := range msg.UsageRecords {
		rec := map[string]string{}
		for k, v := range r {
			if !accelKeys[k] {
				return nil, fmt.Errorf("unknown key %s", k)
			}
			var str string
			if json.Unmarshal(v, &str) == nil {
				rec[k] = str
			} else {
				rec[k] = string(v)
			}
		}
		out = append(out, rec)
	}
	return out, nil
}

var accelKeys = map[string]bool{}

func accelKey(vm, year, month string) string {
	if len(month) == 1 {
		month = "0" + month
	}
	return vm + "/" + year + "-" + month
}

func init() {
	for _, k := range strings.Fields(`SiteName CloudType CloudComputeService AssociatedRecord GlobalUserName FQAN Count
		AvailableDuration MeasurementMonth MeasurementYear AssociatedRecordType Type Cores Model BenchmarkType
		Benchmark ActiveDuration`) {
		accelKeys[k] = true
	}
}

// byVM indexes cloud records by VMUUID, failing on a VM reported twice.
func byVM(t testingTB, recs []map[string]string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, r := range recs {
		id := r["VMUUID"]
		if _, dup := out[id]; dup {
			t.Fatalf("VM %s reported twice", id)
		}
		out[id] = r
	}
	return out
}

// byVMMonth indexes accelerator records by (VM, year, month), failing on a
// duplicate.
func byVMMonth(t testingTB, recs []map[string]string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, r := range recs {
		k := accelKey(r["AssociatedRecord"], r["MeasurementYear"], r["MeasurementMonth"])
		if _, dup := out[k]; dup {
			t.Fatalf("accelerator record %s reported twice", k)
		}
		out[k] = r
	}
	return out
}

func TestParsersRejectBrokenMessages(t *testing.T) {
	good := "APEL-cloud-message: v0.4\nSiteName: S\nVMUUID: a\n%%\nSiteName: S\nVMUUID: b\n"
	if recs, err := parseCloud(good); err != nil || len(recs) != 2 {
		t.Fatalf("good message: %v, %d records", err, len(recs))
	}
	for name, msg := range map[string]string{
		"trailing separator": "APEL-cloud-message: v0.4\nSiteName: S\n%%\n",
		"no final LF":        "APEL-cloud-message: v0.4\nSiteName: S",
		"unsorted keys":      "APEL-cloud-message: v0.4\nVMUUID: a\nSiteName: S\n",
		"unknown key":        "APEL-cloud-message: v0.4\nSiteName: S\nVmUuid: a\n",
		"empty value":        "APEL-cloud-message: v0.4\nSiteName: \n",
		"blank line":         "APEL-cloud-message: v0.4\nSiteName: S\n\nVMUUID: a\n",
	} {
		if _, err := parseCloud(msg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	var m messages
	if err := parseMessage([]byte("APEL-cloud-message: v0.4\nMachineName: caf\xc3\xa9\n"), &m); err == nil {
		t.Errorf("non-ASCII accepted")
	}
	if _, err := parseAccelerator([]byte(`{"Type": "APEL-accelerator-message", "Version": "0.1", "UsageRecords": [{"AccUUID": "x"}]}`)); err == nil {
		t.Errorf("AccUUID accepted")
	}
}
