// Package apel renders tally's records as the messages APEL and SSM expect,
// byte for byte as ../shared/docs/apel-formats.md specifies, and validates
// them against what the APEL loader would reject.
//
// One file per format: cloud.go (cloud usage record v0.4, key-value),
// accelerator.go (accelerator record v0.1, JSON), ip.go (public IP record
// v0.2, JSON), storage.go (EMI StAR, XML) and energy.go (cASO's energy
// record, JSON; never sent to SSM). message.go packs records of one type into
// messages (Render, Split) and fields.go gives the per-record JSON object the
// Logstash messenger sends (FieldMap, AppendJSONLine).
//
// Every message is 7-bit ASCII: SSM decodes each message with the ASCII
// codec before signing it, and one non-ASCII byte stops ssmsend for good
// (apel-formats.md §0, §8). JSON escapes non-ASCII as \uXXXX, XML uses
// numeric character references, and the key-value format, which has no
// escape, transliterates Latin letters and drops the rest (ASCII).
//
// Strings are cut to the lengths of APEL's database columns (255
// characters, BenchmarkType 50) rather than left to the server's SQL mode,
// which may reject the whole message instead (§6).
package apel
