package apel

import (
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

const (
	epoch1 = 1700000000 // 2023-11-14T22:13:20Z
	epoch2 = 1700003600 // 2023-11-14T23:13:20Z
)

func ts(sec int64) *timestamppb.Timestamp { return &timestamppb.Timestamp{Seconds: sec} }

func cloudRec(mod ...func(*tallyv1.CloudRecord)) *tallyv1.Record {
	c := &tallyv1.CloudRecord{
		VmUuid: "2bd5c3c2-6d0a-4e0b-8a43-0c0c1f0e0a11", SiteName: "CESGA", CloudComputeService: "CESGA-cloud",
		CloudType: "tally/0.1 (OpenStack)", MachineName: "vm-1", LocalUserId: "u1", LocalGroupId: "p1",
		GlobalUserName: proto.String("alice"), Fqan: "vo.example.org", Status: "started", StartTime: ts(epoch1),
		WallDuration: 3600, CpuDuration: 7200, CpuCount: 2, PublicIpCount: 1, Memory: 4096, Disk: 20,
		ImageId: proto.String("img-1"), BenchmarkType: proto.String("HEPSPEC06"), Benchmark: proto.Float64(10),
	}
	for _, m := range mod {
		m(c)
	}
	return &tallyv1.Record{Key: "cloud/CESGA/" + c.VmUuid, Payload: &tallyv1.Record_Cloud{Cloud: c}}
}

func accRec(mod ...func(*tallyv1.AcceleratorRecord)) *tallyv1.Record {
	a := &tallyv1.AcceleratorRecord{
		SiteName: "CESGA", CloudType: "tally/0.1 (OpenStack)", CloudComputeService: "CESGA-cloud",
		AssociatedRecord: "2bd5c3c2-6d0a-4e0b-8a43-0c0c1f0e0a11", AssociatedRecordType: "cloud",
		GlobalUserName: proto.String("alice"), Fqan: "vo.example.org", Count: 2, AvailableDuration: 86400,
		ActiveDuration: proto.Int64(86400), MeasurementMonth: 11, MeasurementYear: 2023, Type: "gpu",
		Model: proto.String("NVIDIA A100"),
	}
	for _, m := range mod {
		m(a)
	}
	return &tallyv1.Record{Key: "accelerator/CESGA/x/2023-11", Payload: &tallyv1.Record_Accelerator{Accelerator: a}}
}

func ipRec(mod ...func(*tallyv1.IPRecord)) *tallyv1.Record {
	p := &tallyv1.IPRecord{
		MeasurementTime: ts(epoch2), SiteName: "CESGA", CloudType: "tally/0.1 (OpenStack)",
		CloudComputeService: proto.String("CESGA-cloud"), LocalUser: proto.String("u1"),
		GlobalUserName: proto.String("alice"), LocalGroup: "p1", Fqan: "vo.example.org", IpVersion: 4, IpCount: 3,
	}
	for _, m := range mod {
		m(p)
	}
	return &tallyv1.Record{Key: "ip/CESGA/p1/u1/4", Payload: &tallyv1.Record_Ip{Ip: p}}
}

func storageRec(mod ...func(*tallyv1.StorageRecord)) *tallyv1.Record {
	s := &tallyv1.StorageRecord{
		RecordId: "vol-1", CreateTime: ts(epoch2), StorageSystem: "CESGA-cloud", Site: proto.String("CESGA"),
		LocalUser: proto.String("u1"), LocalGroup: proto.String("p1"), UserIdentity: proto.String("alice"),
		Group: proto.String("vo.example.org"), StartTime: ts(epoch1), EndTime: ts(epoch2),
		ResourceCapacityUsed: 10 << 30, RecordName: proto.String("data"), VolumeStatus: proto.String("in-use"),
	}
	for _, m := range mod {
		m(s)
	}
	return &tallyv1.Record{Key: "storage/CESGA/vol-1", Payload: &tallyv1.Record_Storage{Storage: s}}
}

func energyRec(mod ...func(*tallyv1.EnergyRecord)) *tallyv1.Record {
	e := &tallyv1.EnergyRecord{
		SiteName: "CESGA", CloudType: "tally/0.1 (OpenStack)", CloudComputeService: "CESGA-cloud",
		ExecUnitId: "2bd5c3c2-6d0a-4e0b-8a43-0c0c1f0e0a11", StartExecTime: ts(epoch1), EndExecTime: ts(epoch2),
		EnergyWh: 12.5, Work: 2, Efficiency: 0.5, CpuNormalizationFactor: 1, WallClockTimeS: 3600,
		CpuDurationS: 7200, ExecUnitFinished: true, Status: "active", Owner: "vo.example.org",
	}
	for _, m := range mod {
		m(e)
	}
	return &tallyv1.Record{Key: "energy/CESGA/x", Payload: &tallyv1.Record_Energy{Energy: e}}
}

// now is a fixed validation time for tests.
var testNow = time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
