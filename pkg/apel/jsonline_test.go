package apel

import (
	"bytes"
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// jsonLineCases are records whose JSON lines exercise every value form:
// escapes, invalid UTF-8, U+2028, exponents, group attributes, every
// provenance key, none.
func jsonLineCases() []*tallyv1.Record {
	odd := "a\"b\\c\n\r\t\b\f\x01\x1f\x7f <&> \u00e9\u2028\u2029\U0001F600 \xff\xfe end"
	full := &tallyv1.Provenance{Region: "R", Site: "S", Service: "SV", Extractor: "E", ProjectId: "P",
		WindowFrom: ts(epoch1), WindowTo: ts(epoch2), ExtractedAt: ts(epoch2 + 1)}
	rs := []*tallyv1.Record{
		cloudRec(),
		cloudRec(func(c *tallyv1.CloudRecord) { c.MachineName = odd; c.GlobalUserName = proto.String(odd) }),
		cloudRec(func(c *tallyv1.CloudRecord) { c.Benchmark = proto.Float64(1e-7) }),
		cloudRec(func(c *tallyv1.CloudRecord) { c.Benchmark = proto.Float64(1.5e21) }),
		cloudRec(func(c *tallyv1.CloudRecord) { c.Benchmark = proto.Float64(123456.789) }),
		cloudRec(func(c *tallyv1.CloudRecord) { c.Benchmark = proto.Float64(0) }),
		accRec(),
		accRec(func(a *tallyv1.AcceleratorRecord) { a.Model = proto.String(odd) }),
		ipRec(),
		storageRec(),
		storageRec(func(s *tallyv1.StorageRecord) {
			s.GroupAttributes = []*tallyv1.GroupAttribute{{AttributeType: "role", Value: odd}, {AttributeType: "x", Value: ""}}
		}),
		energyRec(),
		energyRec(func(e *tallyv1.EnergyRecord) { e.EnergyWh = 1e-9; e.Efficiency = 0.1 }),
	}
	var out []*tallyv1.Record
	for i, r := range rs {
		switch i % 3 {
		case 0:
			r.Provenance = full
		case 1:
			r.Provenance = &tallyv1.Provenance{ProjectId: "p1", WindowTo: ts(epoch2)}
		}
		out = append(out, r)
	}
	noKey := proto.Clone(cloudRec()).(*tallyv1.Record)
	noKey.Key = ""
	return append(out, noKey)
}

func TestAppendJSONLineIsEncodingJSON(t *testing.T) {
	for _, r := range jsonLineCases() {
		want, werr := appendJSONLineReflect([]byte("x"), r)
		got, gerr := AppendJSONLine([]byte("x"), r)
		if (werr == nil) != (gerr == nil) || !bytes.Equal(got, want) {
			t.Errorf("record %q:\n got %q, %v\nwant %q, %v", r.GetKey(), got, gerr, want, werr)
		}
	}
}

func TestAppendJSONLineNotFinite(t *testing.T) {
	r := energyRec(func(e *tallyv1.EnergyRecord) { e.Work = math.Inf(1) })
	_, werr := appendJSONLineReflect(nil, r)
	got, gerr := AppendJSONLine([]byte("x"), r)
	if (werr == nil) != (gerr == nil) || (gerr != nil && string(got) != "x") {
		t.Errorf("got %q, %v; encoding/json: %v", got, gerr, werr)
	}
}

func FuzzAppendJSONLine(f *testing.F) {
	f.Add("vm-1", "alice", 10.0)
	f.Add("a\u2028\xff\"\\", "\x00\x7f", 1e-7)
	f.Fuzz(func(t *testing.T, name, user string, bench float64) {
		r := cloudRec(func(c *tallyv1.CloudRecord) {
			c.MachineName, c.GlobalUserName, c.Benchmark = name, proto.String(user), proto.Float64(bench)
		})
		r.Provenance = &tallyv1.Provenance{Region: name, ProjectId: user}
		want, werr := appendJSONLineReflect(nil, r)
		got, gerr := AppendJSONLine(nil, r)
		if (werr == nil) != (gerr == nil) || !bytes.Equal(got, want) {
			t.Errorf("got %q, %v\nwant %q, %v", got, gerr, want, werr)
		}
	})
}

func BenchmarkAppendJSONLine(b *testing.B) {
	rs := jsonLineCases()
	b.ReportAllocs()
	var buf []byte
	for b.Loop() {
		for _, r := range rs {
			buf, _ = AppendJSONLine(buf[:0], r)
		}
	}
}
