package apel

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// TestRenderGolden pins every format byte for byte.
func TestRenderGolden(t *testing.T) {
	tests := []struct {
		name    string
		records []*tallyv1.Record
		want    string
	}{
		{"cloud, full", []*tallyv1.Record{cloudRec()}, `APEL-cloud-message: v0.4
Benchmark: 10.0
BenchmarkType: HEPSPEC06
CloudComputeService: CESGA-cloud
CloudType: tally/0.1 (OpenStack)
CpuCount: 2
CpuDuration: 7200
Disk: 20
EndTime: 0
FQAN: vo.example.org
GlobalUserName: alice
ImageId: img-1
LocalGroupId: p1
LocalUserId: u1
MachineName: vm-1
Memory: 4096
PublicIPCount: 1
SiteName: CESGA
StartTime: 1700000000
Status: started
VMUUID: 2bd5c3c2-6d0a-4e0b-8a43-0c0c1f0e0a11
WallDuration: 3600
`},
		{"cloud, two records, ended, optional keys unset, never-cASO keys set", []*tallyv1.Record{
			cloudRec(func(c *tallyv1.CloudRecord) {
				c.GlobalUserName, c.ImageId, c.BenchmarkType, c.Benchmark = nil, nil, nil, nil
				c.EndTime, c.Status = ts(epoch2), "completed"
			}),
			cloudRec(func(c *tallyv1.CloudRecord) {
				c.VmUuid = "v2"
				c.GlobalUserName, c.ImageId, c.BenchmarkType, c.Benchmark = nil, nil, nil, nil
				c.SuspendDuration, c.NetworkInbound, c.NetworkOutbound = proto.Int64(5), proto.Int64(6), proto.Int64(7)
				c.NetworkType, c.StorageRecordId = proto.String("ethernet"), proto.String("vol-9")
				c.Benchmark = proto.Float64(12.25)
			}),
		}, `APEL-cloud-message: v0.4
CloudComputeService: CESGA-cloud
CloudType: tally/0.1 (OpenStack)
CpuCount: 2
CpuDuration: 7200
Disk: 20
EndTime: 1700003600
FQAN: vo.example.org
LocalGroupId: p1
LocalUserId: u1
MachineName: vm-1
Memory: 4096
PublicIPCount: 1
SiteName: CESGA
StartTime: 1700000000
Status: completed
VMUUID: 2bd5c3c2-6d0a-4e0b-8a43-0c0c1f0e0a11
WallDuration: 3600
%%
Benchmark: 12.25
CloudComputeService: CESGA-cloud
CloudType: tally/0.1 (OpenStack)
CpuCount: 2
CpuDuration: 7200
Disk: 20
EndTime: 0
FQAN: vo.example.org
LocalGroupId: p1
LocalUserId: u1
MachineName: vm-1
Memory: 4096
NetworkInbound: 6
NetworkOutbound: 7
NetworkType: ethernet
PublicIPCount: 1
SiteName: CESGA
StartTime: 1700000000
Status: started
StorageRecordId: vol-9
SuspendDuration: 5
VMUUID: v2
WallDuration: 3600
`},
		{"accelerator", []*tallyv1.Record{accRec(), accRec(func(a *tallyv1.AcceleratorRecord) {
			a.GlobalUserName, a.Model, a.ActiveDuration = nil, nil, nil
			a.Type, a.Cores, a.BenchmarkType, a.Benchmark = "FPGA", proto.Int32(4), proto.String("HEPscore23"), proto.Float64(3)
		})},
			`{"Type": "APEL-accelerator-message", "Version": "0.1", "UsageRecords": [` +
				`{"SiteName": "CESGA", "CloudType": "tally/0.1 (OpenStack)", "CloudComputeService": "CESGA-cloud", ` +
				`"AssociatedRecord": "2bd5c3c2-6d0a-4e0b-8a43-0c0c1f0e0a11", "GlobalUserName": "alice", "FQAN": "vo.example.org", ` +
				`"Count": 2, "AvailableDuration": 86400, "MeasurementMonth": 11, "MeasurementYear": 2023, ` +
				`"AssociatedRecordType": "cloud", "Type": "GPU", "Model": "NVIDIA A100", "ActiveDuration": 86400}, ` +
				`{"SiteName": "CESGA", "CloudType": "tally/0.1 (OpenStack)", "CloudComputeService": "CESGA-cloud", ` +
				`"AssociatedRecord": "2bd5c3c2-6d0a-4e0b-8a43-0c0c1f0e0a11", "FQAN": "vo.example.org", ` +
				`"Count": 2, "AvailableDuration": 86400, "MeasurementMonth": 11, "MeasurementYear": 2023, ` +
				`"AssociatedRecordType": "cloud", "Type": "FPGA", "Cores": 4, "BenchmarkType": "HEPscore23", "Benchmark": 3.0}]}`},
		{"ip: EGI field set, no uuid", []*tallyv1.Record{ipRec(), ipRec(func(p *tallyv1.IPRecord) {
			p.LocalUser, p.GlobalUserName, p.CloudComputeService, p.IpVersion, p.IpCount = nil, nil, nil, 6, 0
		})},
			`{"Type": "APEL Public IP message", "Version": "0.2", "UsageRecords": [` +
				`{"SiteName": "CESGA", "CloudType": "tally/0.1 (OpenStack)", "CloudComputeService": "CESGA-cloud", ` +
				`"LocalUser": "u1", "GlobalUserName": "alice", "LocalGroup": "p1", "FQAN": "vo.example.org", ` +
				`"IPVersion": 4, "IPCount": 3, "MeasurementTime": 1700003600}, ` +
				`{"SiteName": "CESGA", "CloudType": "tally/0.1 (OpenStack)", "LocalGroup": "p1", "FQAN": "vo.example.org", ` +
				`"IPVersion": 6, "IPCount": 0, "MeasurementTime": 1700003600}]}`},
		{"storage", []*tallyv1.Record{storageRec()},
			`<sr:StorageUsageRecords xmlns:sr="http://eu-emi.eu/namespaces/2011/02/storagerecord">` +
				`<sr:StorageUsageRecord><sr:RecordIdentity sr:createTime="2023-11-14T23:13:20Z" sr:recordId="vol-1" />` +
				`<sr:StorageSystem>CESGA-cloud</sr:StorageSystem><sr:Site>CESGA</sr:Site>` +
				`<sr:SubjectIdentity><sr:LocalUser>u1</sr:LocalUser><sr:LocalGroup>p1</sr:LocalGroup>` +
				`<sr:UserIdentity>alice</sr:UserIdentity><sr:Group>vo.example.org</sr:Group></sr:SubjectIdentity>` +
				`<sr:StartTime>2023-11-14T22:13:20Z</sr:StartTime><sr:EndTime>2023-11-14T23:13:20Z</sr:EndTime>` +
				`<sr:ResourceCapacityUsed>10737418240</sr:ResourceCapacityUsed></sr:StorageUsageRecord></sr:StorageUsageRecords>`},
		{"storage, every optional StAR element", []*tallyv1.Record{storageRec(func(s *tallyv1.StorageRecord) {
			s.Site, s.UserIdentity = nil, nil
			s.StorageShare, s.StorageMedia, s.StorageClass = proto.String("share"), proto.String("disk"), proto.String("replicated")
			s.FileCount, s.DirectoryPath = proto.Int64(3), proto.String("/a/b")
			s.GroupAttributes = []*tallyv1.GroupAttribute{{AttributeType: "role", Value: "admin"}}
			s.LogicalCapacityUsed, s.ResourceCapacityAllocated = proto.Int64(5), proto.Int64(6)
		})},
			`<sr:StorageUsageRecords xmlns:sr="http://eu-emi.eu/namespaces/2011/02/storagerecord">` +
				`<sr:StorageUsageRecord><sr:RecordIdentity sr:createTime="2023-11-14T23:13:20Z" sr:recordId="vol-1" />` +
				`<sr:StorageSystem>CESGA-cloud</sr:StorageSystem><sr:StorageShare>share</sr:StorageShare>` +
				`<sr:StorageMedia>disk</sr:StorageMedia><sr:StorageClass>replicated</sr:StorageClass>` +
				`<sr:FileCount>3</sr:FileCount><sr:DirectoryPath>/a/b</sr:DirectoryPath>` +
				`<sr:SubjectIdentity><sr:LocalUser>u1</sr:LocalUser><sr:LocalGroup>p1</sr:LocalGroup>` +
				`<sr:Group>vo.example.org</sr:Group><sr:GroupAttribute sr:attributeType="role">admin</sr:GroupAttribute></sr:SubjectIdentity>` +
				`<sr:StartTime>2023-11-14T22:13:20Z</sr:StartTime><sr:EndTime>2023-11-14T23:13:20Z</sr:EndTime>` +
				`<sr:ResourceCapacityUsed>10737418240</sr:ResourceCapacityUsed><sr:LogicalCapacityUsed>5</sr:LogicalCapacityUsed>` +
				`<sr:ResourceCapacityAllocated>6</sr:ResourceCapacityAllocated></sr:StorageUsageRecord></sr:StorageUsageRecords>`},
		{"energy", []*tallyv1.Record{energyRec()},
			`[{"SiteName": "CESGA", "CloudType": "tally/0.1 (OpenStack)", "CloudComputeService": "CESGA-cloud", ` +
				`"ExecUnitID": "2bd5c3c2-6d0a-4e0b-8a43-0c0c1f0e0a11", "StartExecTime": "2023-11-14T22:13:20Z", ` +
				`"EndExecTime": "2023-11-14T23:13:20Z", "EnergyWh": 12.5, "Work": 2.0, "Efficiency": 0.5, ` +
				`"CPUNormalizationFactor": 1.0, "WallClockTime_s": 3600, "CpuDuration_s": 7200, "SuspendDuration_s": 0, ` +
				`"ExecUnitFinished": 1, "Status": "active", "Owner": "vo.example.org"}]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Render(tt.records)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, string(got)); diff != "" {
				t.Errorf("Render (-want +got):\n%s", diff)
			}
		})
	}
}

// TestEncodingRules covers the ASCII, escaping and length rules of each
// format.
func TestEncodingRules(t *testing.T) {
	long := strings.Repeat("x", 300)
	tests := []struct {
		name   string
		record *tallyv1.Record
		want   string // a substring the message must contain
		not    string // a substring it must not contain
	}{
		{"kv: accents transliterated", cloudRec(func(c *tallyv1.CloudRecord) { c.MachineName = "Jos\u00e9 M\u00fcller \u0141\u00f3d\u017a \u00df" }),
			"\nMachineName: Jose Muller Lodz ss\n", ""},
		{"kv: other non-ASCII dropped", cloudRec(func(c *tallyv1.CloudRecord) { c.MachineName = "vm-\u65e5\u672c-\U0001F600-1" }),
			"\nMachineName: vm---1\n", ""},
		{"kv: typographic punctuation", cloudRec(func(c *tallyv1.CloudRecord) { c.MachineName = "a\u2013b \u201cq\u201d \u2019s\u2026" }),
			"\nMachineName: a-b \"q\" 's...\n", ""},
		{"kv: CR and LF stripped", cloudRec(func(c *tallyv1.CloudRecord) { c.MachineName = "a\r\nLocalUserId: evil\nb" }),
			"\nMachineName: aLocalUserId: evilb\n", ""},
		{"kv: %% removed", cloudRec(func(c *tallyv1.CloudRecord) { c.MachineName = "50%% off %\n%%%" }),
			"\nMachineName: 50% off %\n", "%%\nVMUUID"},
		{"kv: value trimmed", cloudRec(func(c *tallyv1.CloudRecord) { c.MachineName = "  vm  \t" }), "\nMachineName: vm\n", ""},
		{"kv: empty after cleaning is omitted", cloudRec(func(c *tallyv1.CloudRecord) { c.MachineName = "\u65e5\u672c" }), "", "MachineName"},
		{"kv: 255 characters", cloudRec(func(c *tallyv1.CloudRecord) { c.MachineName = long }),
			"\nMachineName: " + long[:255] + "\n", long[:256]},
		{"kv: BenchmarkType 50", cloudRec(func(c *tallyv1.CloudRecord) { c.BenchmarkType = proto.String(long) }),
			"\nBenchmarkType: " + long[:50] + "\n", long[:51]},
		{"kv: no exponent", cloudRec(func(c *tallyv1.CloudRecord) { c.Benchmark = proto.Float64(0.00001) }),
			"\nBenchmark: 0.00001\n", "e-"},
		{"json: non-ASCII escaped lower-case", accRec(func(a *tallyv1.AcceleratorRecord) { a.GlobalUserName = proto.String("Jos\u00e9 \U0001F600") }),
			`"GlobalUserName": "Jos\u00e9 \ud83d\ude00"`, ""},
		{"json: quotes, controls, DEL", accRec(func(a *tallyv1.AcceleratorRecord) { a.Model = proto.String("a\"b\\c\n\x01\x7f") }),
			`"Model": "a\"b\\c\n\u0001\u007f"`, ""},
		{"json: 255 characters, counted in characters", accRec(func(a *tallyv1.AcceleratorRecord) {
			a.Model = proto.String(strings.Repeat("\u00e9", 300))
		}), `"Model": "` + strings.Repeat(`\u00e9`, 255) + `"`, strings.Repeat(`\u00e9`, 256)},
		{"json: accelerator BenchmarkType 50", accRec(func(a *tallyv1.AcceleratorRecord) { a.BenchmarkType = proto.String(long) }),
			`"BenchmarkType": "` + long[:50] + `"`, long[:51]},
		{"json: accelerator type normalised", accRec(func(a *tallyv1.AcceleratorRecord) { a.Type = " Other " }), `"Type": "Other"`, ""},
		{"json: AssociatedRecord, never AccUUID", accRec(), `"AssociatedRecord": `, "AccUUID"},
		{"json: ip has no uuid key", ipRec(), `"MeasurementTime": 1700003600}`, `"uuid"`},
		{"xml: numeric references", storageRec(func(s *tallyv1.StorageRecord) { s.UserIdentity = proto.String("Jos\u00e9 \U0001F600") }),
			"<sr:UserIdentity>Jos&#233; &#128512;</sr:UserIdentity>", ""},
		{"xml: markup escaped", storageRec(func(s *tallyv1.StorageRecord) { s.RecordId = `a"<&>` }),
			`sr:recordId="a&quot;&lt;&amp;&gt;"`, ""},
		{"xml: controls dropped or referenced", storageRec(func(s *tallyv1.StorageRecord) { s.Group = proto.String("a\x01b\tc\nd") }),
			"<sr:Group>ab&#9;c&#10;d</sr:Group>", ""},
		{"xml: 255 characters", storageRec(func(s *tallyv1.StorageRecord) { s.Group = proto.String(long) }),
			"<sr:Group>" + long[:255] + "</sr:Group>", long[:256]},
		{"xml: times are UTC with Z", storageRec(func(s *tallyv1.StorageRecord) { s.StartTime.Nanos = 999_999_999 }),
			"<sr:StartTime>2023-11-14T22:13:20Z</sr:StartTime>", ""},
		{"energy: unfinished is 0", energyRec(func(e *tallyv1.EnergyRecord) { e.ExecUnitFinished = false }), `"ExecUnitFinished": 0`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Render([]*tallyv1.Record{tt.record})
			if err != nil {
				t.Fatal(err)
			}
			msg := string(b)
			if i := strings.IndexFunc(msg, func(r rune) bool { return r >= 0x80 }); i >= 0 {
				t.Errorf("non-ASCII at byte %d: %q", i, msg)
			}
			if !strings.Contains(msg, tt.want) {
				t.Errorf("message does not contain %q:\n%s", tt.want, msg)
			}
			if tt.not != "" && strings.Contains(msg, tt.not) {
				t.Errorf("message contains %q:\n%s", tt.not, msg)
			}
		})
	}
}

func TestASCII(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"\u00c0\u00c5\u00c6\u00c7\u00d0\u00d1\u00d7\u00d8\u00de\u00df", "AAAECDNxOTHss"},
		{"\u00e0\u00e6\u00f0\u00f7\u00f8\u00fe\u00ff", "aaedothy"},
		{"\u0100\u0131\u0132\u0141\u0152\u0160\u0166\u017d\u017f", "AiIJLOESTZs"},
		{"\u00a0\u2014\u2018\u201d\u2026\u2212", " -'\"...-"},
		{"a\xffb", "ab"},
		{"\u4e2d\u6587", ""},
	}
	for _, tt := range tests {
		if got := ASCII(tt.in); got != tt.want {
			t.Errorf("ASCII(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestAcceleratorType(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"GPU", "GPU", true}, {"gpu", "GPU", true}, {" vGPU ", "GPU", true}, {"fpga", "FPGA", true},
		{"FPGA", "FPGA", true}, {"other", "Other", true}, {"OTHER", "Other", true},
		{"nvidia", "", false}, {"", "", false}, {"tpu", "", false},
	}
	for _, tt := range tests {
		got, ok := AcceleratorType(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("AcceleratorType(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestSplit(t *testing.T) {
	many := func(n int, mk func(...func(*tallyv1.CloudRecord)) *tallyv1.Record) []*tallyv1.Record {
		out := make([]*tallyv1.Record, n)
		for i := range out {
			out[i] = mk()
		}
		return out
	}
	one, err := Render([]*tallyv1.Record{cloudRec()})
	if err != nil {
		t.Fatal(err)
	}
	recLen := len(one) - len(cloudHeader) // bytes of one record
	tests := []struct {
		name       string
		n          int
		maxRecords int
		maxBytes   int
		want       []int // records per message
	}{
		{"default 100", 250, 0, 0, []int{100, 100, 50}},
		{"exact multiple", 200, 0, 0, []int{100, 100}},
		{"max_size 7", 20, 7, 0, []int{7, 7, 6}},
		{"bytes bind first", 10, 100, len(cloudHeader) + 3*recLen + 2*len(cloudSeparator), []int{3, 3, 3, 1}},
		{"bytes: one byte short of 3", 6, 100, len(cloudHeader) + 3*recLen + 2*len(cloudSeparator) - 1, []int{2, 2, 2}},
		{"one record", 1, 0, 0, []int{1}},
		{"none", 0, 0, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msgs, err := Split(many(tt.n, cloudRec), tt.maxRecords, tt.maxBytes)
			if err != nil {
				t.Fatal(err)
			}
			var got []int
			for _, m := range msgs {
				if !strings.HasPrefix(string(m), cloudHeader) {
					t.Errorf("message without header: %q", m)
				}
				max := tt.maxBytes
				if max == 0 {
					max = DefaultMaxBytes
				}
				if len(m) > max {
					t.Errorf("message of %d bytes > %d", len(m), max)
				}
				got = append(got, strings.Count(string(m), "\nVMUUID: "))
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("records per message (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("one type only", func(t *testing.T) {
		_, err := Split([]*tallyv1.Record{cloudRec(), ipRec()}, 0, 0)
		if !errors.Is(err, ErrMixedTypes) {
			t.Errorf("err = %v, want ErrMixedTypes", err)
		}
	})
	t.Run("record larger than a message", func(t *testing.T) {
		_, err := Split([]*tallyv1.Record{cloudRec()}, 0, 100)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("err = %v, want ErrInvalid", err)
		}
	})
	t.Run("an invalid record fails the split", func(t *testing.T) {
		_, err := Split([]*tallyv1.Record{cloudRec(), cloudRec(func(c *tallyv1.CloudRecord) { c.VmUuid = "" })}, 0, 0)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "VMUUID" {
			t.Errorf("err = %v, want a FieldError for VMUUID", err)
		}
	})
	t.Run("no payload", func(t *testing.T) {
		_, err := Split([]*tallyv1.Record{{Key: "k"}}, 0, 0)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("err = %v, want ErrInvalid", err)
		}
	})
	t.Run("deterministic", func(t *testing.T) {
		rs := many(33, cloudRec)
		a, _ := Split(rs, 10, 0)
		b, _ := Split(rs, 10, 0)
		if diff := cmp.Diff(a, b); diff != "" {
			t.Errorf("two splits differ:\n%s", diff)
		}
	})
}
