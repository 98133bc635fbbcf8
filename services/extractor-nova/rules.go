// Package nova is the Nova extractor: it lists a region's servers and usages
// and turns them into APEL cloud and accelerator records, by cASO's rules
// (docs: accounting-rules.md) with cASO's defects fixed.
package nova

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tally-accounting/tally/pkg/apel"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// Flavor is a server's flavor as Nova embeds it (microversion 2.47+): the
// values at boot or last resize, which outlive a deleted flavor.
type Flavor struct {
	Name       string
	VCPUs      int
	RAM        int64 // MB
	Disk       int64 // GB
	Ephemeral  int64 // GB
	ExtraSpecs map[string]string
}

// Server is what the rules need of a Nova server.
type Server struct {
	ID, Name, ProjectID, UserID string
	// Status is Nova's status (ACTIVE, SHUTOFF, DELETED, ...).
	Status           string
	Created, Updated time.Time
	// LaunchedAt and TerminatedAt are zero when Nova says null.
	LaunchedAt, TerminatedAt time.Time
	// ImageID is empty for a server booted from a volume.
	ImageID string
	// Flavor is nil when Nova no longer knows it.
	Flavor      *Flavor
	FloatingIPs int
}

// Window is the extraction window [From, To].
type Window struct{ From, To time.Time }

// Keys are the flavor extra-spec keys that carry benchmark and accelerator
// data; the defaults are cASO's.
type Keys struct {
	BenchmarkType, BenchmarkValue                                           string
	AcceleratorType, AcceleratorVendor, AcceleratorModel, AcceleratorNumber string
}

// DefaultKeys are cASO's extra-spec key names.
func DefaultKeys() Keys {
	return Keys{
		BenchmarkType: "accounting:benchmark_type", BenchmarkValue: "accounting:benchmark_value",
		AcceleratorType: "Accelerator:Type", AcceleratorVendor: "Accelerator:Vendor",
		AcceleratorModel: "Accelerator:Model", AcceleratorNumber: "Accelerator:Number",
	}
}

// Site names what every record carries.
type Site struct {
	Name, Service, CloudType string
}

// Lifetime returns when the server started and ended; end is zero while it
// has not ended. A server that never launched ended when it was created; a
// DELETED one with no terminated_at ended at its last update.
func Lifetime(s Server) (start, end time.Time) {
	start = s.Created
	switch {
	case !s.TerminatedAt.IsZero():
		end = s.TerminatedAt
	case s.LaunchedAt.IsZero():
		end = s.Created
	case strings.EqualFold(s.Status, "DELETED"):
		end = s.Updated
	}
	return start, end
}

// Included reports whether the server's life overlaps the window.
func Included(s Server, w Window) bool {
	start, end := Lifetime(s)
	if start.After(w.To) {
		return false
	}
	return end.IsZero() || !end.Before(w.From)
}

var statusMap = map[string]string{
	"active": "started", "build": "started", "confirming_resize": "started", "hard_reboot": "started",
	"migrating": "started", "reboot": "started", "rebuild": "started", "rescue": "started", "resize": "started",
	"revert_resize": "started", "verify_resize": "started", "saving": "started", "password": "started",
	"deleted": "completed", "shutoff": "completed", "terminated": "completed",
	"error":     "error",
	"paused":    "paused",
	"suspended": "suspended",
	"stopped":   "stopped",
}

// Status maps a Nova status to the APEL one; unknown states (shelved,
// soft_deleted, ...) are "unknown".
func Status(nova string) string {
	if s, ok := statusMap[strings.ToLower(nova)]; ok {
		return s
	}
	return "unknown"
}

// Warnf reports a problem with one server that does not stop its record.
type Warnf func(format string, args ...any)

// Cloud builds the cloud record of a server for a window; imageRef maps an
// image id to what ImageId should say. The sizes are the embedded flavor's:
// the values at boot or last resize, which os-simple-tenant-usage (cASO's
// source for them) reports too.
func Cloud(s Server, w Window, site Site, keys Keys, imageRef func(string) string, warn Warnf) *tallyv1.CloudRecord {
	start, end := Lifetime(s)
	r := &tallyv1.CloudRecord{
		VmUuid:              s.ID,
		SiteName:            site.Name,
		CloudComputeService: site.Service,
		CloudType:           site.CloudType,
		MachineName:         s.Name,
		LocalUserId:         s.UserID,
		LocalGroupId:        s.ProjectID,
		Status:              Status(s.Status),
		StartTime:           timestamppb.New(start),
		PublicIpCount:       int32(s.FloatingIPs),
	}
	var wall int64
	if end.IsZero() || end.After(w.To) {
		// Still running at the window's end: report it as not ended.
		wall = int64(w.To.Sub(start) / time.Second)
		if r.Status == "completed" {
			r.Status = "started"
		}
	} else {
		wall = int64(end.Sub(start) / time.Second)
		r.EndTime = timestamppb.New(end)
	}
	if f := s.Flavor; f != nil {
		r.CpuCount = int32(f.VCPUs)
		r.Memory = f.RAM
		r.Disk = f.Disk + f.Ephemeral
		benchmark(r, f, keys, warn)
	}
	// cASO reports at least one second of each; kept for parity with it.
	r.WallDuration = max(wall, 1)
	r.CpuDuration = max(wall*int64(r.CpuCount), 1)
	if s.ImageID != "" {
		ref := s.ImageID
		if imageRef != nil {
			ref = imageRef(s.ImageID)
		}
		r.ImageId = &ref
	}
	return r
}

func benchmark(r *tallyv1.CloudRecord, f *Flavor, keys Keys, warn Warnf) {
	typ, hasType := f.ExtraSpecs[keys.BenchmarkType]
	val, hasVal := f.ExtraSpecs[keys.BenchmarkValue]
	switch {
	case !hasType && !hasVal:
		return
	case hasType != hasVal:
		warn("flavor %q has only one of %s and %s: no benchmark reported", f.Name, keys.BenchmarkType, keys.BenchmarkValue)
		return
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
	if err != nil || v < 0 {
		warn("flavor %q: %s=%q is not a non-negative number: no benchmark reported", f.Name, keys.BenchmarkValue, val)
		return
	}
	r.BenchmarkType = &typ
	r.Benchmark = &v
}

// Accelerators builds one accelerator record per calendar month (UTC) of the
// server's life between the window's start and end. Each month's duration
// runs from the month's start (or the server's) up to the window's end (or
// the server's): month to date, as cASO computes it.
func Accelerators(s Server, w Window, site Site, keys Keys) []*tallyv1.AcceleratorRecord {
	f := s.Flavor
	if f == nil {
		return nil
	}
	typ, ok1 := f.ExtraSpecs[keys.AcceleratorType]
	vendor, ok2 := f.ExtraSpecs[keys.AcceleratorVendor]
	model, ok3 := f.ExtraSpecs[keys.AcceleratorModel]
	num, ok4 := f.ExtraSpecs[keys.AcceleratorNumber]
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return nil
	}
	count, err := strconv.Atoi(strings.TrimSpace(num))
	if err != nil {
		return nil
	}
	start, end := Lifetime(s)
	stop := w.To
	if !end.IsZero() && end.Before(stop) {
		stop = end
	}
	from := start
	if w.From.After(from) {
		from = w.From
	}
	var out []*tallyv1.AcceleratorRecord
	fullModel := strings.TrimSpace(vendor + " " + model)
	for m := monthStart(from); m.Before(stop); m = m.AddDate(0, 1, 0) {
		next := m.AddDate(0, 1, 0)
		lo := m
		if start.After(lo) {
			lo = start
		}
		hi := next
		if stop.Before(hi) {
			hi = stop
		}
		d := int64(hi.Sub(lo) / time.Second)
		if d < 0 {
			continue
		}
		active := d
		out = append(out, &tallyv1.AcceleratorRecord{
			SiteName:             site.Name,
			CloudType:            site.CloudType,
			CloudComputeService:  site.Service,
			AssociatedRecord:     s.ID,
			AssociatedRecordType: "cloud",
			Count:                int32(count),
			AvailableDuration:    d,
			ActiveDuration:       &active,
			MeasurementMonth:     int32(m.Month()),
			MeasurementYear:      int32(m.Year()),
			Type:                 AcceleratorType(typ),
			Model:                &fullModel,
		})
	}
	return out
}

// AcceleratorType normalises a flavor's accelerator type with APEL's own
// mapping (apel.AcceleratorType), so the record the extractor builds is the
// one the messengers validate; anything APEL has no name for is "Other"
// (cASO copied the value verbatim and APEL rejected "gpu").
func AcceleratorType(s string) string {
	if typ, ok := apel.AcceleratorType(s); ok {
		return typ
	}
	return "Other"
}

func monthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// CloudKey is a cloud record's identity: one per VM (VM UUIDs are unique
// across sites, as APEL requires).
func CloudKey(vm string) string { return "cloud/" + vm }

// AcceleratorKey is an accelerator record's identity: one per VM and month.
func AcceleratorKey(vm string, year, month int32) string {
	return fmt.Sprintf("accelerator/%s/%04d-%02d", vm, year, month)
}
