package apel

import (
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// Cloud usage record v0.4, key-value (apel-formats.md §1).
//
// A message is the header line, then each record as "Key: value" lines
// with the keys in byte order, records separated by a line "%%", LF line
// ends, one LF after the last record and no trailing "%%":
//
//	APEL-cloud-message: v0.4
//	CloudComputeService: CESGA
//	...
//	WallDuration: 3600
//	%%
//	CloudComputeService: CESGA
//	...
const (
	cloudHeader    = "APEL-cloud-message: v0.4\n"
	cloudSeparator = "%%\n"
)

// cloudFields lists c's fields, keys in byte order (cASO sorts them, and a
// fixed order makes messages comparable). Times are integer epochs; EndTime
// is 0 while the VM runs (cASO's parity value: APEL uses EndTime only for
// completed VMs). Durations are written as the extractor computed them.
func cloudFields(c *tallyv1.CloudRecord, fs fields) fields {
	fs.optFloat("Benchmark", c.Benchmark)
	if c.BenchmarkType != nil {
		fs.strMax("BenchmarkType", c.GetBenchmarkType(), maxBenchmarkType)
	}
	fs.str("CloudComputeService", c.GetCloudComputeService())
	fs.str("CloudType", c.GetCloudType())
	fs.int("CpuCount", int64(c.GetCpuCount()))
	fs.int("CpuDuration", c.GetCpuDuration())
	fs.int("Disk", c.GetDisk())
	if c.EndTime != nil {
		fs.epoch("EndTime", c.EndTime)
	} else {
		fs.int("EndTime", 0)
	}
	fs.str("FQAN", c.GetFqan())
	fs.optStr("GlobalUserName", c.GlobalUserName)
	fs.optStr("ImageId", c.ImageId)
	fs.str("LocalGroupId", c.GetLocalGroupId())
	fs.str("LocalUserId", c.GetLocalUserId())
	fs.str("MachineName", c.GetMachineName())
	fs.int("Memory", c.GetMemory())
	fs.optInt("NetworkInbound", c.NetworkInbound)
	fs.optInt("NetworkOutbound", c.NetworkOutbound)
	fs.optStr("NetworkType", c.NetworkType)
	fs.int("PublicIPCount", int64(c.GetPublicIpCount()))
	fs.str("SiteName", c.GetSiteName())
	fs.epoch("StartTime", c.StartTime)
	fs.str("Status", c.GetStatus())
	fs.optStr("StorageRecordId", c.StorageRecordId)
	fs.optInt("SuspendDuration", c.SuspendDuration)
	fs.str("VMUUID", c.GetVmUuid())
	fs.int("WallDuration", c.GetWallDuration())
	return fs
}

// appendCloud writes one record's "Key: value" lines. A string value is
// made key-value safe (kvValue); one that ends up empty is left out, as
// APEL would read it as NULL anyway.
func appendCloud(dst []byte, c *tallyv1.CloudRecord, scratch fields) ([]byte, fields) {
	scratch = cloudFields(c, scratch[:0])
	for _, f := range scratch {
		switch f.kind {
		case kindString:
			v := kvValue(f.str, f.max)
			if v == "" {
				continue
			}
			dst = append(dst, f.key...)
			dst = append(dst, ": "...)
			dst = append(dst, v...)
		case kindInt:
			dst = append(dst, f.key...)
			dst = append(dst, ": "...)
			dst = appendInt(dst, f.num)
		case kindFloat:
			dst = append(dst, f.key...)
			dst = append(dst, ": "...)
			dst = appendFloat(dst, f.flt)
		}
		dst = append(dst, '\n')
	}
	return dst, scratch
}

// Largest values APEL's columns hold (schemas/cloud.sql).
const (
	maxDecimal  = 9_999_999.999 // DECIMAL(10,3): Benchmark, CpuCount
	maxCpuCount = 9_999_999
)

// validateCloud reports what the APEL loader rejects in a cloud record
// (apel-formats.md §1, §6): a missing or null-like VMUUID or SiteName,
// negative or out-of-range numbers, Benchmark not a finite decimal. It
// also requires StartTime, which cASO always writes: without it APEL files
// the record under 1970.
func validateCloud(c *tallyv1.CloudRecord) *FieldError {
	const t = "cloud"
	switch {
	case nullLike(kvValue(c.GetVmUuid(), maxString)):
		return fieldErr(t, "VMUUID", "is missing")
	case nullLike(kvValue(c.GetSiteName(), maxString)):
		return fieldErr(t, "SiteName", "is missing")
	}
	if _, p := timeOK(c.StartTime); p != "" {
		return fieldErr(t, "StartTime", "%s", p)
	}
	if c.EndTime != nil {
		if _, p := timeOK(c.EndTime); p != "" {
			return fieldErr(t, "EndTime", "%s", p)
		}
	}
	if n := c.GetCpuCount(); n < 0 || n > maxCpuCount {
		return fieldErr(t, "CpuCount", "is %d, not between 0 and %d", n, maxCpuCount)
	}
	for _, f := range []struct {
		name string
		v    *int64
	}{
		{"WallDuration", &c.WallDuration}, {"CpuDuration", &c.CpuDuration},
		{"Memory", &c.Memory}, {"Disk", &c.Disk},
		{"SuspendDuration", c.SuspendDuration},
		{"NetworkInbound", c.NetworkInbound}, {"NetworkOutbound", c.NetworkOutbound},
	} {
		if f.v != nil && *f.v < 0 {
			return fieldErr(t, f.name, "is negative (%d)", *f.v)
		}
	}
	if n := c.GetPublicIpCount(); n < 0 {
		return fieldErr(t, "PublicIPCount", "is negative (%d)", n)
	}
	if c.Benchmark != nil {
		if v := c.GetBenchmark(); !finite(v) || v < 0 || v > maxDecimal {
			return fieldErr(t, "Benchmark", "is %v, not between 0 and %v", v, maxDecimal)
		}
	}
	return nil
}
