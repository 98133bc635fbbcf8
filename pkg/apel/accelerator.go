package apel

import (
	"strings"
	"time"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// Accelerator record v0.1, JSON (apel-formats.md §2), on one line as
// cASO's json.dumps writes it, without a trailing LF:
//
//	{"Type": "APEL-accelerator-message", "Version": "0.1", "UsageRecords": [{...}, {...}]}
//
// The VM is AssociatedRecord (cASO ≤ 5.2.1 wrote AccUUID, which APEL's
// schema rejects), and Type is normalised to GPU, FPGA or Other.
const (
	acceleratorHeader = `{"Type": "APEL-accelerator-message", "Version": "0.1", "UsageRecords": [`
	jsonSeparator     = ", "
	jsonTrailer       = "]}"
)

// AcceleratorType maps a flavor's Accelerator:Type to APEL's enum (GPU,
// FPGA, Other; case-sensitive in APEL), ignoring case and surrounding
// blanks; vGPU counts as GPU. ok is false for anything else, which APEL
// would reject.
func AcceleratorType(s string) (typ string, ok bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "gpu", "vgpu":
		return "GPU", true
	case "fpga":
		return "FPGA", true
	case "other":
		return "Other", true
	}
	return "", false
}

// acceleratorFields lists a's fields in cASO's order.
func acceleratorFields(a *tallyv1.AcceleratorRecord, fs fields) fields {
	fs.str("SiteName", a.GetSiteName())
	fs.str("CloudType", a.GetCloudType())
	fs.str("CloudComputeService", a.GetCloudComputeService())
	fs.str("AssociatedRecord", a.GetAssociatedRecord())
	fs.optStr("GlobalUserName", a.GlobalUserName)
	fs.str("FQAN", a.GetFqan())
	fs.int("Count", int64(a.GetCount()))
	fs.int("AvailableDuration", a.GetAvailableDuration())
	fs.int("MeasurementMonth", int64(a.GetMeasurementMonth()))
	fs.int("MeasurementYear", int64(a.GetMeasurementYear()))
	fs.str("AssociatedRecordType", a.GetAssociatedRecordType())
	if typ, ok := AcceleratorType(a.GetType()); ok {
		fs.str("Type", typ)
	} else {
		fs.str("Type", a.GetType())
	}
	if a.Cores != nil {
		fs.int("Cores", int64(a.GetCores()))
	}
	fs.optStr("Model", a.Model)
	if a.BenchmarkType != nil {
		fs.strMax("BenchmarkType", a.GetBenchmarkType(), maxBenchmarkType)
	}
	fs.optFloat("Benchmark", a.Benchmark)
	fs.optInt("ActiveDuration", a.ActiveDuration)
	return fs
}

// validateAccelerator reports what APEL's accelerator schema (PR #459)
// rejects: a missing AssociatedRecord, FQAN or SiteName, an
// AssociatedRecordType other than cloud or job, a Type outside the enum,
// MeasurementMonth outside 1..12, MeasurementYear outside 2000..now, and
// negative numbers.
func validateAccelerator(a *tallyv1.AcceleratorRecord, now time.Time) *FieldError {
	const t = "accelerator"
	switch {
	case nullLike(a.GetAssociatedRecord()):
		return fieldErr(t, "AssociatedRecord", "is missing")
	case nullLike(a.GetSiteName()):
		return fieldErr(t, "SiteName", "is missing")
	case nullLike(a.GetFqan()):
		return fieldErr(t, "FQAN", "is missing")
	}
	if v := a.GetAssociatedRecordType(); v != "cloud" && v != "job" {
		return fieldErr(t, "AssociatedRecordType", "is %q, not cloud or job", v)
	}
	if _, ok := AcceleratorType(a.GetType()); !ok {
		return fieldErr(t, "Type", "is %q, not GPU, FPGA or Other", a.GetType())
	}
	if m := a.GetMeasurementMonth(); m < 1 || m > 12 {
		return fieldErr(t, "MeasurementMonth", "is %d, not between 1 and 12", m)
	}
	if y, max := a.GetMeasurementYear(), int32(now.UTC().Year()); y < 2000 || y > max {
		return fieldErr(t, "MeasurementYear", "is %d, not between 2000 and %d", y, max)
	}
	if n := a.GetCount(); n < 0 {
		return fieldErr(t, "Count", "is negative (%d)", n)
	}
	if n := a.GetAvailableDuration(); n < 0 {
		return fieldErr(t, "AvailableDuration", "is negative (%d)", n)
	}
	if a.ActiveDuration != nil && a.GetActiveDuration() < 0 {
		return fieldErr(t, "ActiveDuration", "is negative (%d)", a.GetActiveDuration())
	}
	if a.Cores != nil && a.GetCores() < 0 {
		return fieldErr(t, "Cores", "is negative (%d)", a.GetCores())
	}
	if a.Benchmark != nil {
		if v := a.GetBenchmark(); !finite(v) || v < 0 || v > maxDecimal {
			return fieldErr(t, "Benchmark", "is %v, not between 0 and %v", v, maxDecimal)
		}
	}
	return nil
}
