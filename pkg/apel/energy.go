package apel

import (
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// Energy records (cASO 5.2.1+; apel-formats.md §5) are not an APEL format:
// no APEL parses them and cASO's SSM messenger fails on them, so they go
// only to the GreenDIGIT CIM (and Logstash), never to SSM. A message is
// the CIM's submit body, a JSON array of records on one line:
//
//	[{"SiteName": "...", ..., "Owner": "vo"}, {...}]
const (
	energyHeader  = "["
	energyTrailer = "]"
)

// energyFields lists e's fields in cASO's order; times are
// YYYY-MM-DDTHH:MM:SSZ and ExecUnitFinished is 0 or 1.
func energyFields(e *tallyv1.EnergyRecord, fs fields) fields {
	fs.str("SiteName", e.GetSiteName())
	fs.str("CloudType", e.GetCloudType())
	fs.str("CloudComputeService", e.GetCloudComputeService())
	fs.str("ExecUnitID", e.GetExecUnitId())
	fs.iso("StartExecTime", e.StartExecTime)
	fs.iso("EndExecTime", e.EndExecTime)
	fs.float("EnergyWh", e.GetEnergyWh())
	fs.float("Work", e.GetWork())
	fs.float("Efficiency", e.GetEfficiency())
	fs.float("CPUNormalizationFactor", e.GetCpuNormalizationFactor())
	fs.int("WallClockTime_s", e.GetWallClockTimeS())
	fs.int("CpuDuration_s", e.GetCpuDurationS())
	fs.int("SuspendDuration_s", e.GetSuspendDurationS())
	finished := int64(0)
	if e.GetExecUnitFinished() {
		finished = 1
	}
	fs.int("ExecUnitFinished", finished)
	fs.str("Status", e.GetStatus())
	fs.str("Owner", e.GetOwner())
	return fs
}

// validateEnergy checks what the record needs to mean anything: the VM
// (ExecUnitID), the site, both ends of the measurement, finite
// non-negative figures and durations.
func validateEnergy(e *tallyv1.EnergyRecord) *FieldError {
	const t = "energy"
	switch {
	case nullLike(e.GetExecUnitId()):
		return fieldErr(t, "ExecUnitID", "is missing")
	case nullLike(e.GetSiteName()):
		return fieldErr(t, "SiteName", "is missing")
	}
	if _, p := timeOK(e.StartExecTime); p != "" {
		return fieldErr(t, "StartExecTime", "%s", p)
	}
	if _, p := timeOK(e.EndExecTime); p != "" {
		return fieldErr(t, "EndExecTime", "%s", p)
	}
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"EnergyWh", e.GetEnergyWh()}, {"Work", e.GetWork()}, {"Efficiency", e.GetEfficiency()},
		{"CPUNormalizationFactor", e.GetCpuNormalizationFactor()},
	} {
		if !finite(f.v) || f.v < 0 {
			return fieldErr(t, f.name, "is %v, not a finite non-negative number", f.v)
		}
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"WallClockTime_s", e.GetWallClockTimeS()}, {"CpuDuration_s", e.GetCpuDurationS()},
		{"SuspendDuration_s", e.GetSuspendDurationS()},
	} {
		if f.v < 0 {
			return fieldErr(t, f.name, "is negative (%d)", f.v)
		}
	}
	return nil
}
