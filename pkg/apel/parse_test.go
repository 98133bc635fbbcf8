package apel

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// The parsers below are written from apel-formats.md, not from the
// renderers, and are strict where APEL is: a message they accept is one
// APEL would load.

// parseKV parses a cloud v0.4 message into one map per record.
func parseKV(msg string) ([]map[string]string, error) {
	if !strings.HasSuffix(msg, "\n") || strings.HasSuffix(msg, "%%\n") || strings.Contains(msg, "\r") {
		return nil, fmt.Errorf("bad message end or CR")
	}
	header, body, ok := strings.Cut(msg, "\n")
	if !ok || header != "APEL-cloud-message: v0.4" {
		return nil, fmt.Errorf("bad header %q", header)
	}
	var out []map[string]string
	// APEL splits on the substring %% anywhere.
	for _, rec := range strings.Split(body, "%%") {
		rec = strings.TrimPrefix(rec, "\n")
		m := map[string]string{}
		for _, line := range strings.Split(strings.TrimSuffix(rec, "\n"), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				return nil, fmt.Errorf("line without a colon: %q", line)
			}
			if !strings.HasPrefix(v, " ") {
				return nil, fmt.Errorf("no space after colon: %q", line)
			}
			if _, dup := m[k]; dup {
				return nil, fmt.Errorf("key %s twice", k)
			}
			m[k] = strings.TrimSpace(v)
		}
		out = append(out, m)
	}
	return out, nil
}

type jsonMessage struct {
	Type         string
	Version      string
	UsageRecords []map[string]any
}

func parseJSON(msg []byte) (jsonMessage, error) {
	var m jsonMessage
	dec := json.NewDecoder(bytes.NewReader(msg))
	dec.UseNumber()
	dec.DisallowUnknownFields()
	err := dec.Decode(&m)
	return m, err
}

type starRecords struct {
	XMLName xml.Name     `xml:"http://eu-emi.eu/namespaces/2011/02/storagerecord StorageUsageRecords"`
	Records []starRecord `xml:"http://eu-emi.eu/namespaces/2011/02/storagerecord StorageUsageRecord"`
}

type starRecord struct {
	Identity struct {
		RecordID   string `xml:"http://eu-emi.eu/namespaces/2011/02/storagerecord recordId,attr"`
		CreateTime string `xml:"http://eu-emi.eu/namespaces/2011/02/storagerecord createTime,attr"`
	} `xml:"http://eu-emi.eu/namespaces/2011/02/storagerecord RecordIdentity"`
	StorageSystem string `xml:"http://eu-emi.eu/namespaces/2011/02/storagerecord StorageSystem"`
	Site          string `xml:"http://eu-emi.eu/namespaces/2011/02/storagerecord Site"`
	Subject       struct {
		LocalUser    string `xml:"http://eu-emi.eu/namespaces/2011/02/storagerecord LocalUser"`
		LocalGroup   string `xml:"http://eu-emi.eu/namespaces/2011/02/storagerecord LocalGroup"`
		UserIdentity string `xml:"http://eu-emi.eu/namespaces/2011/02/storagerecord UserIdentity"`
		Group        string `xml:"http://eu-emi.eu/namespaces/2011/02/storagerecord Group"`
	} `xml:"http://eu-emi.eu/namespaces/2011/02/storagerecord SubjectIdentity"`
	StartTime            string `xml:"http://eu-emi.eu/namespaces/2011/02/storagerecord StartTime"`
	EndTime              string `xml:"http://eu-emi.eu/namespaces/2011/02/storagerecord EndTime"`
	ResourceCapacityUsed string `xml:"http://eu-emi.eu/namespaces/2011/02/storagerecord ResourceCapacityUsed"`
}

func iso(sec int64) string { return time.Unix(sec, 0).UTC().Format(time.RFC3339) }

func opt(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// The want* functions compute from the proto what each record must read
// as after parsing.

func wantCloud(c *tallyv1.CloudRecord) map[string]string {
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	m := map[string]string{
		"VMUUID": c.VmUuid, "SiteName": c.SiteName, "CloudComputeService": c.CloudComputeService,
		"CloudType": c.CloudType, "MachineName": c.MachineName, "LocalUserId": c.LocalUserId,
		"LocalGroupId": c.LocalGroupId, "FQAN": c.Fqan, "Status": c.Status,
		"StartTime": i(c.StartTime.Seconds), "EndTime": "0", "WallDuration": i(c.WallDuration),
		"CpuDuration": i(c.CpuDuration), "CpuCount": i(int64(c.CpuCount)), "PublicIPCount": i(int64(c.PublicIpCount)),
		"Memory": i(c.Memory), "Disk": i(c.Disk),
	}
	if c.EndTime != nil {
		m["EndTime"] = i(c.EndTime.Seconds)
	}
	for k, v := range map[string]*string{"GlobalUserName": c.GlobalUserName, "ImageId": c.ImageId, "BenchmarkType": c.BenchmarkType} {
		if v != nil {
			m[k] = *v
		}
	}
	if c.Benchmark != nil {
		m["Benchmark"] = strconv.FormatFloat(*c.Benchmark, 'f', 1, 64)
	}
	return m
}

func wantAccelerator(a *tallyv1.AcceleratorRecord) map[string]any {
	n := func(v int64) json.Number { return json.Number(strconv.FormatInt(v, 10)) }
	typ := map[string]string{"gpu": "GPU", "fpga": "FPGA", "other": "Other"}[strings.ToLower(a.Type)]
	m := map[string]any{
		"SiteName": a.SiteName, "CloudType": a.CloudType, "CloudComputeService": a.CloudComputeService,
		"AssociatedRecord": a.AssociatedRecord, "FQAN": a.Fqan, "Count": n(int64(a.Count)),
		"AvailableDuration": n(a.AvailableDuration), "MeasurementMonth": n(int64(a.MeasurementMonth)),
		"MeasurementYear": n(int64(a.MeasurementYear)), "AssociatedRecordType": a.AssociatedRecordType, "Type": typ,
	}
	if a.GlobalUserName != nil {
		m["GlobalUserName"] = *a.GlobalUserName
	}
	if a.Model != nil {
		m["Model"] = *a.Model
	}
	if a.ActiveDuration != nil {
		m["ActiveDuration"] = n(*a.ActiveDuration)
	}
	return m
}

func wantIP(p *tallyv1.IPRecord) map[string]any {
	n := func(v int64) json.Number { return json.Number(strconv.FormatInt(v, 10)) }
	m := map[string]any{
		"SiteName": p.SiteName, "CloudType": p.CloudType, "LocalGroup": p.LocalGroup, "FQAN": p.Fqan,
		"IPVersion": n(int64(p.IpVersion)), "IPCount": n(int64(p.IpCount)), "MeasurementTime": n(p.MeasurementTime.Seconds),
	}
	for k, v := range map[string]*string{"CloudComputeService": p.CloudComputeService, "LocalUser": p.LocalUser, "GlobalUserName": p.GlobalUserName} {
		if v != nil {
			m[k] = *v
		}
	}
	return m
}

func wantStorage(s *tallyv1.StorageRecord) starRecord {
	var r starRecord
	r.Identity.RecordID = s.RecordId
	r.Identity.CreateTime = iso(s.CreateTime.Seconds)
	r.StorageSystem = s.StorageSystem
	r.Site = opt(s.Site)
	r.Subject.LocalUser, r.Subject.LocalGroup = opt(s.LocalUser), opt(s.LocalGroup)
	r.Subject.UserIdentity, r.Subject.Group = opt(s.UserIdentity), opt(s.Group)
	r.StartTime, r.EndTime = iso(s.StartTime.Seconds), iso(s.EndTime.Seconds)
	r.ResourceCapacityUsed = strconv.FormatInt(s.ResourceCapacityUsed, 10)
	return r
}

// variety makes n distinct records of each type. JSON and XML strings
// carry non-ASCII, which must survive the round trip exactly; key-value
// strings stay ASCII (their folding is tested in TestEncodingRules).
func variety(n int) (cloud, acc, ip, storage []*tallyv1.Record) {
	for i := range n {
		id := fmt.Sprintf("vm-%04d", i)
		cloud = append(cloud, cloudRec(func(c *tallyv1.CloudRecord) {
			c.VmUuid, c.MachineName, c.WallDuration, c.CpuDuration = id, "machine "+id, int64(i), int64(2*i)
			if i%2 == 0 {
				c.EndTime, c.Status = ts(epoch2+int64(i)), "completed"
				c.GlobalUserName, c.ImageId, c.BenchmarkType, c.Benchmark = nil, nil, nil, nil
			}
		}))
		acc = append(acc, accRec(func(a *tallyv1.AcceleratorRecord) {
			a.AssociatedRecord, a.MeasurementMonth = id, int32(i%12+1)
			a.Type = []string{"gpu", "FPGA", "Other"}[i%3]
			if i%2 == 0 {
				a.GlobalUserName = proto.String("Jos\u00e9 \u201c" + id + "\u201d \U0001F600")
				a.Model = nil
			}
		}))
		ip = append(ip, ipRec(func(p *tallyv1.IPRecord) {
			p.LocalGroup, p.IpCount, p.IpVersion = id, int32(i), []int32{4, 6}[i%2]
			if i%3 == 0 {
				p.LocalUser, p.GlobalUserName = nil, nil
			} else {
				p.GlobalUserName = proto.String("\u0141ukasz <" + id + "> & \"co\"")
			}
		}))
		storage = append(storage, storageRec(func(s *tallyv1.StorageRecord) {
			s.RecordId, s.ResourceCapacityUsed = id, int64(i)<<30
			if i%2 == 0 {
				s.UserIdentity = proto.String("M\u00fcller & <Sons> \"q\" \U0001F600")
				s.Site = nil
			}
		}))
	}
	return
}

// TestRoundTrip renders many records of each type, split into messages,
// parses every message with the independent parsers above, and compares
// every field of every record.
func TestRoundTrip(t *testing.T) {
	cloud, acc, ip, storage := variety(57)
	check := func(t *testing.T, msgs [][]byte) {
		t.Helper()
		if len(msgs) != 6 {
			t.Errorf("%d messages, want 6 (57 records, 10 per message)", len(msgs))
		}
		for _, m := range msgs {
			if i := bytes.IndexFunc(m, func(r rune) bool { return r >= 0x80 }); i >= 0 {
				t.Fatalf("non-ASCII byte at %d", i)
			}
		}
	}
	t.Run("cloud", func(t *testing.T) {
		msgs, err := Split(cloud, 10, 0)
		if err != nil {
			t.Fatal(err)
		}
		check(t, msgs)
		var got, want []map[string]string
		for _, m := range msgs {
			recs, err := parseKV(string(m))
			if err != nil {
				t.Fatalf("%v in:\n%s", err, m)
			}
			got = append(got, recs...)
		}
		for _, r := range cloud {
			want = append(want, wantCloud(r.GetCloud()))
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("parsed records (-want +got):\n%s", diff)
		}
	})
	for _, tc := range []struct {
		name, typ, version string
		records            []*tallyv1.Record
		want               func(*tallyv1.Record) map[string]any
	}{
		{"accelerator", "APEL-accelerator-message", "0.1", acc, func(r *tallyv1.Record) map[string]any { return wantAccelerator(r.GetAccelerator()) }},
		{"ip", "APEL Public IP message", "0.2", ip, func(r *tallyv1.Record) map[string]any { return wantIP(r.GetIp()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msgs, err := Split(tc.records, 10, 0)
			if err != nil {
				t.Fatal(err)
			}
			check(t, msgs)
			var got, want []map[string]any
			for _, m := range msgs {
				jm, err := parseJSON(m)
				if err != nil {
					t.Fatalf("%v in:\n%s", err, m)
				}
				if jm.Type != tc.typ || jm.Version != tc.version {
					t.Errorf("Type, Version = %q, %q", jm.Type, jm.Version)
				}
				got = append(got, jm.UsageRecords...)
			}
			for _, r := range tc.records {
				want = append(want, tc.want(r))
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("parsed records (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("storage", func(t *testing.T) {
		msgs, err := Split(storage, 10, 0)
		if err != nil {
			t.Fatal(err)
		}
		check(t, msgs)
		var got, want []starRecord
		for _, m := range msgs {
			if !bytes.HasPrefix(m, []byte("<sr:StorageUsageRecords ")) {
				t.Errorf("first node is not the root element: %.40s", m)
			}
			var sr starRecords
			if err := xml.Unmarshal(m, &sr); err != nil {
				t.Fatalf("%v in:\n%s", err, m)
			}
			got = append(got, sr.Records...)
		}
		for _, r := range storage {
			want = append(want, wantStorage(r.GetStorage()))
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("parsed records (-want +got):\n%s", diff)
		}
	})
	t.Run("energy", func(t *testing.T) {
		msg, err := Render([]*tallyv1.Record{energyRec(), energyRec()})
		if err != nil {
			t.Fatal(err)
		}
		var got []map[string]any
		if err := json.Unmarshal(msg, &got); err != nil {
			t.Fatal(err)
		}
		want := map[string]any{
			"SiteName": "CESGA", "CloudType": "tally/0.1 (OpenStack)", "CloudComputeService": "CESGA-cloud",
			"ExecUnitID": "2bd5c3c2-6d0a-4e0b-8a43-0c0c1f0e0a11", "StartExecTime": iso(epoch1), "EndExecTime": iso(epoch2),
			"EnergyWh": 12.5, "Work": 2.0, "Efficiency": 0.5, "CPUNormalizationFactor": 1.0, "WallClockTime_s": 3600.0,
			"CpuDuration_s": 7200.0, "SuspendDuration_s": 0.0, "ExecUnitFinished": 1.0, "Status": "active", "Owner": "vo.example.org",
		}
		if diff := cmp.Diff([]map[string]any{want, want}, got); diff != "" {
			t.Errorf("parsed records (-want +got):\n%s", diff)
		}
	})
}

func TestFieldMap(t *testing.T) {
	r := cloudRec(func(c *tallyv1.CloudRecord) { c.MachineName = "Jos\u00e9 <1>" })
	r.Provenance = &tallyv1.Provenance{Region: "RegionOne", Extractor: "extractor-nova", ProjectId: "p1", WindowTo: ts(epoch2)}
	line, err := AppendJSONLine([]byte("prefix"), r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(line, []byte("prefix{")) || !bytes.HasSuffix(line, []byte("}\n")) || bytes.Count(line, []byte("\n")) != 1 {
		t.Fatalf("not one JSON line after the prefix: %q", line)
	}
	var got map[string]any
	if err := json.Unmarshal(bytes.TrimPrefix(line, []byte("prefix")), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"record_type": "cloud", "record_key": r.Key,
		"provenance": map[string]any{"region": "RegionOne", "extractor": "extractor-nova", "project_id": "p1", "window_to": float64(epoch2)},
		"VMUUID":     "2bd5c3c2-6d0a-4e0b-8a43-0c0c1f0e0a11", "SiteName": "CESGA", "CloudComputeService": "CESGA-cloud",
		"CloudType": "tally/0.1 (OpenStack)", "MachineName": "Jos\u00e9 <1>", "LocalUserId": "u1", "LocalGroupId": "p1",
		"GlobalUserName": "alice", "FQAN": "vo.example.org", "Status": "started", "StartTime": float64(epoch1), "EndTime": 0.0,
		"WallDuration": 3600.0, "CpuDuration": 7200.0, "CpuCount": 2.0, "PublicIPCount": 1.0, "Memory": 4096.0, "Disk": 20.0,
		"ImageId": "img-1", "BenchmarkType": "HEPSPEC06", "Benchmark": 10.0,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("FieldMap (-want +got):\n%s", diff)
	}

	tests := []struct {
		name string
		r    *tallyv1.Record
		keys []string
	}{
		{"accelerator type normalised", accRec(), []string{"AssociatedRecord", "Type=GPU"}},
		{"ip", ipRec(), []string{"IPVersion", "LocalUser"}},
		{"storage with extras", storageRec(func(s *tallyv1.StorageRecord) {
			s.GroupAttributes = []*tallyv1.GroupAttribute{{AttributeType: "role", Value: "a"}}
		}), []string{"RecordId", "CreateTime=2023-11-14T23:13:20Z", "RecordName", "Status=in-use", "GroupAttributes"}},
		{"energy", energyRec(), []string{"ExecUnitID", "EnergyWh"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := FieldMap(tt.r)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range tt.keys {
				k, v, hasV := strings.Cut(k, "=")
				got, ok := m[k]
				if !ok || (hasV && got != v) {
					t.Errorf("%s = %v (present %v), want %q", k, got, ok, v)
				}
			}
			if m["record_type"] == "" {
				t.Error("no record_type")
			}
		})
	}
	if _, err := FieldMap(cloudRec(func(c *tallyv1.CloudRecord) { c.SiteName = "" })); err == nil {
		t.Error("FieldMap of an invalid record: no error")
	}
}
