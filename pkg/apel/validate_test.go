package apel

import (
	"errors"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		record *tallyv1.Record
		field  string // "" = valid
	}{
		{"cloud ok", cloudRec(), ""},
		{"cloud ended ok", cloudRec(func(c *tallyv1.CloudRecord) { c.EndTime = ts(epoch2) }), ""},
		{"cloud VMUUID missing", cloudRec(func(c *tallyv1.CloudRecord) { c.VmUuid = "" }), "VMUUID"},
		{"cloud VMUUID None", cloudRec(func(c *tallyv1.CloudRecord) { c.VmUuid = " None " }), "VMUUID"},
		{"cloud VMUUID non-ASCII only", cloudRec(func(c *tallyv1.CloudRecord) { c.VmUuid = "\u65e5" }), "VMUUID"},
		{"cloud SiteName missing", cloudRec(func(c *tallyv1.CloudRecord) { c.SiteName = "" }), "SiteName"},
		{"cloud SiteName null", cloudRec(func(c *tallyv1.CloudRecord) { c.SiteName = "NULL" }), "SiteName"},
		{"cloud StartTime missing", cloudRec(func(c *tallyv1.CloudRecord) { c.StartTime = nil }), "StartTime"},
		{"cloud StartTime before 1970", cloudRec(func(c *tallyv1.CloudRecord) { c.StartTime = ts(-1) }), "StartTime"},
		{"cloud EndTime invalid", cloudRec(func(c *tallyv1.CloudRecord) { c.EndTime = &timestamppb.Timestamp{Nanos: -1} }), "EndTime"},
		{"cloud CpuCount negative", cloudRec(func(c *tallyv1.CloudRecord) { c.CpuCount = -1 }), "CpuCount"},
		{"cloud CpuCount too large", cloudRec(func(c *tallyv1.CloudRecord) { c.CpuCount = 10_000_000 }), "CpuCount"},
		{"cloud WallDuration negative", cloudRec(func(c *tallyv1.CloudRecord) { c.WallDuration = -1 }), "WallDuration"},
		{"cloud CpuDuration negative", cloudRec(func(c *tallyv1.CloudRecord) { c.CpuDuration = -1 }), "CpuDuration"},
		{"cloud Memory negative", cloudRec(func(c *tallyv1.CloudRecord) { c.Memory = -1 }), "Memory"},
		{"cloud Disk negative", cloudRec(func(c *tallyv1.CloudRecord) { c.Disk = -1 }), "Disk"},
		{"cloud SuspendDuration negative", cloudRec(func(c *tallyv1.CloudRecord) { c.SuspendDuration = proto.Int64(-1) }), "SuspendDuration"},
		{"cloud NetworkInbound negative", cloudRec(func(c *tallyv1.CloudRecord) { c.NetworkInbound = proto.Int64(-1) }), "NetworkInbound"},
		{"cloud NetworkOutbound negative", cloudRec(func(c *tallyv1.CloudRecord) { c.NetworkOutbound = proto.Int64(-1) }), "NetworkOutbound"},
		{"cloud PublicIPCount negative", cloudRec(func(c *tallyv1.CloudRecord) { c.PublicIpCount = -1 }), "PublicIPCount"},
		{"cloud Benchmark NaN", cloudRec(func(c *tallyv1.CloudRecord) { c.Benchmark = proto.Float64(math.NaN()) }), "Benchmark"},
		{"cloud Benchmark too large", cloudRec(func(c *tallyv1.CloudRecord) { c.Benchmark = proto.Float64(1e7) }), "Benchmark"},
		{"cloud Benchmark negative", cloudRec(func(c *tallyv1.CloudRecord) { c.Benchmark = proto.Float64(-1) }), "Benchmark"},

		{"accelerator ok", accRec(), ""},
		{"accelerator job ok", accRec(func(a *tallyv1.AcceleratorRecord) { a.AssociatedRecordType = "job" }), ""},
		{"accelerator current year ok", accRec(func(a *tallyv1.AcceleratorRecord) { a.MeasurementYear = 2026 }), ""},
		{"accelerator AssociatedRecord missing", accRec(func(a *tallyv1.AcceleratorRecord) { a.AssociatedRecord = "" }), "AssociatedRecord"},
		{"accelerator SiteName missing", accRec(func(a *tallyv1.AcceleratorRecord) { a.SiteName = "none" }), "SiteName"},
		{"accelerator FQAN missing", accRec(func(a *tallyv1.AcceleratorRecord) { a.Fqan = "" }), "FQAN"},
		{"accelerator AssociatedRecordType", accRec(func(a *tallyv1.AcceleratorRecord) { a.AssociatedRecordType = "vm" }), "AssociatedRecordType"},
		{"accelerator AssociatedRecordType case", accRec(func(a *tallyv1.AcceleratorRecord) { a.AssociatedRecordType = "Cloud" }), "AssociatedRecordType"},
		{"accelerator Type not in enum", accRec(func(a *tallyv1.AcceleratorRecord) { a.Type = "nvidia" }), "Type"},
		{"accelerator Type empty", accRec(func(a *tallyv1.AcceleratorRecord) { a.Type = "" }), "Type"},
		{"accelerator month 0", accRec(func(a *tallyv1.AcceleratorRecord) { a.MeasurementMonth = 0 }), "MeasurementMonth"},
		{"accelerator month 13", accRec(func(a *tallyv1.AcceleratorRecord) { a.MeasurementMonth = 13 }), "MeasurementMonth"},
		{"accelerator year 1999", accRec(func(a *tallyv1.AcceleratorRecord) { a.MeasurementYear = 1999 }), "MeasurementYear"},
		{"accelerator year in the future", accRec(func(a *tallyv1.AcceleratorRecord) { a.MeasurementYear = 2027 }), "MeasurementYear"},
		{"accelerator Count negative", accRec(func(a *tallyv1.AcceleratorRecord) { a.Count = -1 }), "Count"},
		{"accelerator AvailableDuration negative", accRec(func(a *tallyv1.AcceleratorRecord) { a.AvailableDuration = -1 }), "AvailableDuration"},
		{"accelerator ActiveDuration negative", accRec(func(a *tallyv1.AcceleratorRecord) { a.ActiveDuration = proto.Int64(-1) }), "ActiveDuration"},
		{"accelerator Cores negative", accRec(func(a *tallyv1.AcceleratorRecord) { a.Cores = proto.Int32(-1) }), "Cores"},
		{"accelerator Benchmark Inf", accRec(func(a *tallyv1.AcceleratorRecord) { a.Benchmark = proto.Float64(math.Inf(1)) }), "Benchmark"},

		{"ip ok", ipRec(), ""},
		{"ip without user ok", ipRec(func(p *tallyv1.IPRecord) { p.LocalUser, p.GlobalUserName = nil, nil }), ""},
		{"ip MeasurementTime missing", ipRec(func(p *tallyv1.IPRecord) { p.MeasurementTime = nil }), "MeasurementTime"},
		{"ip SiteName missing", ipRec(func(p *tallyv1.IPRecord) { p.SiteName = "" }), "SiteName"},
		{"ip CloudType missing", ipRec(func(p *tallyv1.IPRecord) { p.CloudType = "" }), "CloudType"},
		{"ip LocalGroup missing", ipRec(func(p *tallyv1.IPRecord) { p.LocalGroup = "" }), "LocalGroup"},
		{"ip FQAN missing", ipRec(func(p *tallyv1.IPRecord) { p.Fqan = "" }), "FQAN"},
		{"ip IPVersion 5", ipRec(func(p *tallyv1.IPRecord) { p.IpVersion = 5 }), "IPVersion"},
		{"ip IPCount negative", ipRec(func(p *tallyv1.IPRecord) { p.IpCount = -1 }), "IPCount"},

		{"storage ok", storageRec(), ""},
		{"storage RecordId missing", storageRec(func(s *tallyv1.StorageRecord) { s.RecordId = "" }), "RecordId"},
		{"storage StorageSystem missing", storageRec(func(s *tallyv1.StorageRecord) { s.StorageSystem = "" }), "StorageSystem"},
		{"storage CreateTime missing", storageRec(func(s *tallyv1.StorageRecord) { s.CreateTime = nil }), "CreateTime"},
		{"storage StartTime missing", storageRec(func(s *tallyv1.StorageRecord) { s.StartTime = nil }), "StartTime"},
		{"storage EndTime missing", storageRec(func(s *tallyv1.StorageRecord) { s.EndTime = nil }), "EndTime"},
		{"storage capacity negative", storageRec(func(s *tallyv1.StorageRecord) { s.ResourceCapacityUsed = -1 }), "ResourceCapacityUsed"},
		{"storage FileCount negative", storageRec(func(s *tallyv1.StorageRecord) { s.FileCount = proto.Int64(-1) }), "FileCount"},
		{"storage LogicalCapacityUsed negative", storageRec(func(s *tallyv1.StorageRecord) { s.LogicalCapacityUsed = proto.Int64(-1) }), "LogicalCapacityUsed"},
		{"storage ResourceCapacityAllocated negative", storageRec(func(s *tallyv1.StorageRecord) { s.ResourceCapacityAllocated = proto.Int64(-1) }), "ResourceCapacityAllocated"},
		{"storage GroupAttribute without type", storageRec(func(s *tallyv1.StorageRecord) {
			s.GroupAttributes = []*tallyv1.GroupAttribute{{Value: "x"}}
		}), "GroupAttribute"},

		{"energy ok", energyRec(), ""},
		{"energy ExecUnitID missing", energyRec(func(e *tallyv1.EnergyRecord) { e.ExecUnitId = "" }), "ExecUnitID"},
		{"energy SiteName missing", energyRec(func(e *tallyv1.EnergyRecord) { e.SiteName = "" }), "SiteName"},
		{"energy StartExecTime missing", energyRec(func(e *tallyv1.EnergyRecord) { e.StartExecTime = nil }), "StartExecTime"},
		{"energy EndExecTime missing", energyRec(func(e *tallyv1.EnergyRecord) { e.EndExecTime = nil }), "EndExecTime"},
		{"energy EnergyWh NaN", energyRec(func(e *tallyv1.EnergyRecord) { e.EnergyWh = math.NaN() }), "EnergyWh"},
		{"energy Work negative", energyRec(func(e *tallyv1.EnergyRecord) { e.Work = -1 }), "Work"},
		{"energy WallClockTime_s negative", energyRec(func(e *tallyv1.EnergyRecord) { e.WallClockTimeS = -1 }), "WallClockTime_s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateAt(tt.record, testNow)
			var got string
			if err != nil {
				var fe *FieldError
				if !errors.As(err, &fe) {
					t.Fatalf("err = %v, not a *FieldError", err)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("err = %v does not wrap ErrInvalid", err)
				}
				if fe.Key != tt.record.GetKey() {
					t.Errorf("Key = %q, want %q", fe.Key, tt.record.GetKey())
				}
				got = fe.Field
			}
			if diff := cmp.Diff(tt.field, got); diff != "" {
				t.Errorf("invalid field (-want +got):\n%s\nerr: %v", diff, err)
			}
		})
	}
}

func TestFieldErrorMessage(t *testing.T) {
	err := ValidateAt(cloudRec(func(c *tallyv1.CloudRecord) { c.VmUuid = "" }), testNow)
	want := `cloud record "cloud/CESGA/": VMUUID is missing`
	if err == nil || err.Error() != want {
		t.Errorf("err = %v, want %q", err, want)
	}
	if err := ValidateCloud(cloudRec().GetCloud()); err != nil {
		t.Errorf("ValidateCloud = %v, want nil (not a typed nil)", err)
	}
	if err := ValidateAt(&tallyv1.Record{Key: "k"}, testNow); !errors.Is(err, ErrInvalid) {
		t.Errorf("no payload: err = %v, want ErrInvalid", err)
	}
}
