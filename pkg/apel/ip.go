package apel

import (
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// Public IP record v0.2, JSON (apel-formats.md §3), one line, no trailing LF:
//
//	{"Type": "APEL Public IP message", "Version": "0.2", "UsageRecords": [{...}]}
//
// Nothing in APEL accepts cASO's IP messages today. tally writes the EGI
// field set instead of cASO's: LocalUser and GlobalUserName when known,
// and no "uuid" key. The Version string is cASO's and EGI's "0.2"; the
// stale APEL PR #226 wants "v0.2" (unconfirmed with the APEL team).
const ipHeader = `{"Type": "APEL Public IP message", "Version": "0.2", "UsageRecords": [`

// ipFields lists p's fields in cASO's order, without cASO's "uuid".
func ipFields(p *tallyv1.IPRecord, fs fields) fields {
	fs.str("SiteName", p.GetSiteName())
	fs.str("CloudType", p.GetCloudType())
	fs.optStr("CloudComputeService", p.CloudComputeService)
	fs.optStr("LocalUser", p.LocalUser)
	fs.optStr("GlobalUserName", p.GlobalUserName)
	fs.str("LocalGroup", p.GetLocalGroup())
	fs.str("FQAN", p.GetFqan())
	fs.int("IPVersion", int64(p.GetIpVersion()))
	fs.int("IPCount", int64(p.GetIpCount()))
	fs.epoch("MeasurementTime", p.MeasurementTime)
	return fs
}

// validateIP reports what the EGI specification makes mandatory:
// MeasurementTime, SiteName, CloudType, LocalGroup, FQAN, an IPVersion of
// 4 or 6 and a non-negative IPCount. EGI also lists LocalUser and
// GlobalUserName as mandatory, but a count kept per project (cASO's way,
// and tally's when Neutron does not say who owns an IP) has no user:
// requiring them would dead-letter every such count, so they are written
// when known and otherwise left out.
func validateIP(p *tallyv1.IPRecord) *FieldError {
	const t = "ip"
	if _, pr := timeOK(p.MeasurementTime); pr != "" {
		return fieldErr(t, "MeasurementTime", "%s", pr)
	}
	switch {
	case nullLike(p.GetSiteName()):
		return fieldErr(t, "SiteName", "is missing")
	case nullLike(p.GetCloudType()):
		return fieldErr(t, "CloudType", "is missing")
	case nullLike(p.GetLocalGroup()):
		return fieldErr(t, "LocalGroup", "is missing")
	case nullLike(p.GetFqan()):
		return fieldErr(t, "FQAN", "is missing")
	}
	if v := p.GetIpVersion(); v != 4 && v != 6 {
		return fieldErr(t, "IPVersion", "is %d, not 4 or 6", v)
	}
	if n := p.GetIpCount(); n < 0 {
		return fieldErr(t, "IPCount", "is negative (%d)", n)
	}
	return nil
}
