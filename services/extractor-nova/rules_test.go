package nova

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func ptr[T any](v T) *T { return &v }

var (
	site   = Site{Name: "SITE", Service: "SITE-cloud", CloudType: "tally/test (OpenStack)"}
	window = Window{From: at("2026-11-01T00:00:00Z"), To: at("2026-11-02T00:00:00Z")}
	plain  = &Flavor{Name: "m1.plain", VCPUs: 2, RAM: 2048, Disk: 5, Ephemeral: 1, ExtraSpecs: map[string]string{}}
	hs06   = &Flavor{Name: "m1.hs06", VCPUs: 4, RAM: 1024, Disk: 2, ExtraSpecs: map[string]string{
		"accounting:benchmark_type": "HEPSPEC06", "accounting:benchmark_value": "99.5"}}
)

func running(id string, created string) Server {
	return Server{ID: id, Name: "vm-" + id, ProjectID: "p1", UserID: "u1", Status: "ACTIVE",
		Created: at(created), Updated: at(created), LaunchedAt: at(created).Add(time.Second), ImageID: "img-1", Flavor: plain}
}

func TestLifetimeAndIncluded(t *testing.T) {
	base := running("a", "2026-10-31T12:00:00Z")
	tests := []struct {
		name     string
		mutate   func(*Server)
		wantEnd  string // "" = not ended
		included bool
	}{
		{"running", func(*Server) {}, "", true},
		{"terminated in window", func(s *Server) { s.Status = "DELETED"; s.TerminatedAt = at("2026-11-01T06:00:00Z") }, "2026-11-01T06:00:00Z", true},
		{"terminated exactly at from", func(s *Server) { s.TerminatedAt = window.From }, "2026-11-01T00:00:00Z", true},
		{"terminated before window", func(s *Server) { s.TerminatedAt = at("2026-10-31T23:59:59Z") }, "2026-10-31T23:59:59Z", false},
		{"never launched ends at creation", func(s *Server) { s.LaunchedAt = time.Time{}; s.Status = "ERROR" }, "2026-10-31T12:00:00Z", false},
		{"deleted with no terminated_at ends at updated", func(s *Server) {
			s.Status = "DELETED"
			s.Updated = at("2026-11-01T08:00:00Z")
		}, "2026-11-01T08:00:00Z", true},
		{"created after the window", func(s *Server) { s.Created = at("2026-11-02T00:00:01Z") }, "", false},
		{"created exactly at to", func(s *Server) { s.Created = window.To }, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := base
			tt.mutate(&s)
			_, end := Lifetime(s)
			var want time.Time
			if tt.wantEnd != "" {
				want = at(tt.wantEnd)
			}
			if !end.Equal(want) {
				t.Errorf("end = %v, want %v", end, want)
			}
			if got := Included(s, window); got != tt.included {
				t.Errorf("Included = %v, want %v", got, tt.included)
			}
		})
	}
}

func TestStatus(t *testing.T) {
	tests := map[string]string{
		"ACTIVE": "started", "BUILD": "started", "VERIFY_RESIZE": "started", "RESCUE": "started", "PASSWORD": "started",
		"DELETED": "completed", "SHUTOFF": "completed", "ERROR": "error", "PAUSED": "paused",
		"SUSPENDED": "suspended", "STOPPED": "stopped", "SHELVED": "unknown", "SHELVED_OFFLOADED": "unknown",
		"SOFT_DELETED": "unknown", "": "unknown",
	}
	for in, want := range tests {
		if got := Status(in); got != want {
			t.Errorf("Status(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCloud(t *testing.T) {
	start := at("2026-10-31T12:00:00Z")
	wallToWindowEnd := int64(window.To.Sub(start) / time.Second) // 36 h
	tests := []struct {
		name     string
		server   func() Server
		imageRef func(string) string
		want     *tallyv1.CloudRecord
		warnings int
	}{
		{
			name:   "running at the window end",
			server: func() Server { return running("a", "2026-10-31T12:00:00Z") },
			want: &tallyv1.CloudRecord{Status: "started", WallDuration: wallToWindowEnd, CpuDuration: 2 * wallToWindowEnd,
				CpuCount: 2, Memory: 2048, Disk: 6, ImageId: ptr("img-1")},
		},
		{
			name: "deleted inside the window",
			server: func() Server {
				s := running("a", "2026-10-31T12:00:00Z")
				s.Status, s.TerminatedAt = "DELETED", at("2026-11-01T00:00:10Z")
				return s
			},
			want: &tallyv1.CloudRecord{Status: "completed", EndTime: timestamppb.New(at("2026-11-01T00:00:10Z")),
				WallDuration: 12*3600 + 10, CpuDuration: 2 * (12*3600 + 10), CpuCount: 2, Memory: 2048, Disk: 6, ImageId: ptr("img-1")},
		},
		{
			name: "deleted after the window end reports as running",
			server: func() Server {
				s := running("a", "2026-10-31T12:00:00Z")
				s.Status, s.TerminatedAt = "DELETED", at("2026-11-03T00:00:00Z")
				return s
			},
			want: &tallyv1.CloudRecord{Status: "started", WallDuration: wallToWindowEnd, CpuDuration: 2 * wallToWindowEnd,
				CpuCount: 2, Memory: 2048, Disk: 6, ImageId: ptr("img-1")},
		},
		{
			name: "shutoff with no end is still started",
			server: func() Server {
				s := running("a", "2026-10-31T12:00:00Z")
				s.Status = "SHUTOFF"
				return s
			},
			want: &tallyv1.CloudRecord{Status: "started", WallDuration: wallToWindowEnd, CpuDuration: 2 * wallToWindowEnd,
				CpuCount: 2, Memory: 2048, Disk: 6, ImageId: ptr("img-1")},
		},
		{
			name: "never launched: zero durations reported as one second",
			server: func() Server {
				s := running("a", "2026-11-01T10:00:00Z")
				s.Status, s.LaunchedAt, s.Flavor, s.ImageID = "ERROR", time.Time{}, nil, ""
				return s
			},
			want: &tallyv1.CloudRecord{Status: "error", EndTime: timestamppb.New(at("2026-11-01T10:00:00Z")), WallDuration: 1, CpuDuration: 1},
		},
		{
			name: "benchmark flavor and a marketplace image",
			server: func() Server {
				s := running("a", "2026-11-01T23:00:00Z")
				s.Flavor = hs06
				return s
			},
			imageRef: func(id string) string { return "https://appdb.example/" + id },
			want: &tallyv1.CloudRecord{Status: "started", WallDuration: 3600, CpuDuration: 4 * 3600, CpuCount: 4, Memory: 1024, Disk: 2,
				BenchmarkType: ptr("HEPSPEC06"), Benchmark: ptr(99.5), ImageId: ptr("https://appdb.example/img-1")},
		},
		{
			name: "half a benchmark is a warning, not a record field",
			server: func() Server {
				s := running("a", "2026-11-01T23:00:00Z")
				s.Flavor = &Flavor{Name: "odd", VCPUs: 1, ExtraSpecs: map[string]string{"accounting:benchmark_type": "HEPSPEC06"}}
				return s
			},
			want:     &tallyv1.CloudRecord{Status: "started", WallDuration: 3600, CpuDuration: 3600, CpuCount: 1, ImageId: ptr("img-1")},
			warnings: 1,
		},
		{
			name: "a benchmark that is not a number is a warning",
			server: func() Server {
				s := running("a", "2026-11-01T23:00:00Z")
				s.Flavor = &Flavor{Name: "odd", VCPUs: 1, ExtraSpecs: map[string]string{"accounting:benchmark_type": "HS06", "accounting:benchmark_value": "fast"}}
				return s
			},
			want:     &tallyv1.CloudRecord{Status: "started", WallDuration: 3600, CpuDuration: 3600, CpuCount: 1, ImageId: ptr("img-1")},
			warnings: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.server()
			s.FloatingIPs = 2
			var warnings []string
			got := Cloud(s, window, site, DefaultKeys(), tt.imageRef, func(f string, a ...any) { warnings = append(warnings, fmt.Sprintf(f, a...)) })
			want := tt.want
			want.VmUuid, want.SiteName, want.CloudComputeService, want.CloudType = "a", site.Name, site.Service, site.CloudType
			want.MachineName, want.LocalUserId, want.LocalGroupId, want.PublicIpCount = "vm-a", "u1", "p1", 2
			want.StartTime = timestamppb.New(s.Created)
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Cloud() mismatch (-want +got):\n%s", diff)
			}
			if len(warnings) != tt.warnings {
				t.Errorf("warnings = %q, want %d", warnings, tt.warnings)
			}
		})
	}
}

func TestAccelerators(t *testing.T) {
	gpu := &Flavor{Name: "g1.gpu", VCPUs: 4, ExtraSpecs: map[string]string{
		"Accelerator:Type": "gpu", "Accelerator:Vendor": "NVIDIA", "Accelerator:Model": "A100", "Accelerator:Number": "2"}}
	type month struct {
		year, month int32
		seconds     int64
	}
	tests := []struct {
		name   string
		server func() Server
		window Window
		want   []month
	}{
		{
			name: "month to date, not only the window",
			server: func() Server {
				s := running("g", "2026-10-20T00:00:00Z")
				s.Flavor = gpu
				return s
			},
			window: Window{From: at("2026-11-10T00:00:00Z"), To: at("2026-11-11T00:00:00Z")},
			want:   []month{{2026, 11, 10 * 86400}},
		},
		{
			name: "a window across months gives a record per month",
			server: func() Server {
				s := running("g", "2026-10-31T12:00:00Z")
				s.Flavor = gpu
				return s
			},
			window: Window{From: at("2026-10-31T00:00:00Z"), To: at("2026-11-01T06:00:00Z")},
			want:   []month{{2026, 10, 12 * 3600}, {2026, 11, 6 * 3600}},
		},
		{
			name: "ended inside the month",
			server: func() Server {
				s := running("g", "2026-11-01T00:00:00Z")
				s.Flavor, s.TerminatedAt = gpu, at("2026-11-03T00:00:00Z")
				return s
			},
			window: Window{From: at("2026-11-01T00:00:00Z"), To: at("2026-11-30T00:00:00Z")},
			want:   []month{{2026, 11, 2 * 86400}},
		},
		{
			name:   "no accelerator specs",
			server: func() Server { return running("g", "2026-11-01T00:00:00Z") },
			window: window,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Accelerators(tt.server(), tt.window, site, DefaultKeys())
			var gotMonths []month
			for _, r := range got {
				gotMonths = append(gotMonths, month{r.MeasurementYear, r.MeasurementMonth, r.AvailableDuration})
				if r.Type != "GPU" || r.GetModel() != "NVIDIA A100" || r.Count != 2 || r.AssociatedRecord != "g" ||
					r.AssociatedRecordType != "cloud" || r.GetActiveDuration() != r.AvailableDuration {
					t.Errorf("record fields wrong: %v", r)
				}
			}
			if diff := cmp.Diff(tt.want, gotMonths, cmp.AllowUnexported(month{})); diff != "" {
				t.Errorf("months (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAcceleratorType(t *testing.T) {
	for in, want := range map[string]string{"GPU": "GPU", "gpu": "GPU", " fpga ": "FPGA", "vGPU": "GPU", "other": "Other", "TPU": "Other", "": "Other"} {
		if got := AcceleratorType(in); got != want {
			t.Errorf("AcceleratorType(%q) = %q, want %q", in, got, want)
		}
	}
}
