package apel

import (
	"bytes"
	"math"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
)

// kind is how a field's value is written.
type kind uint8

const (
	kindString kind = iota
	kindInt
	kindFloat
)

// field is one APEL key and its value, in the order the format writes it.
// The same list feeds the message renderers and FieldMap, so the Logstash
// objects and the SSM messages cannot disagree.
type field struct {
	key  string
	kind kind
	str  string
	num  int64
	flt  float64
	max  int // longest string APEL stores for this key
}

// fields collects a record's fields; an absent value adds nothing (APEL:
// absent ⇒ omit the key, never "None").
type fields []field

func (fs *fields) str(key, s string) {
	if s != "" {
		*fs = append(*fs, field{key: key, kind: kindString, str: s, max: maxString})
	}
}

func (fs *fields) strMax(key, s string, max int) {
	if s != "" {
		*fs = append(*fs, field{key: key, kind: kindString, str: s, max: max})
	}
}

func (fs *fields) optStr(key string, s *string) {
	if s != nil {
		fs.str(key, *s)
	}
}

func (fs *fields) int(key string, v int64) {
	*fs = append(*fs, field{key: key, kind: kindInt, num: v})
}

func (fs *fields) optInt(key string, v *int64) {
	if v != nil {
		fs.int(key, *v)
	}
}

func (fs *fields) float(key string, v float64) {
	*fs = append(*fs, field{key: key, kind: kindFloat, flt: v})
}

func (fs *fields) optFloat(key string, v *float64) {
	if v != nil {
		fs.float(key, *v)
	}
}

// epoch adds t as integer Unix seconds (UTC by definition); APEL rejects a
// float epoch and misreads ISO times through local-time mktime.
func (fs *fields) epoch(key string, t *timestamppb.Timestamp) {
	if t != nil {
		fs.int(key, t.GetSeconds())
	}
}

// iso adds t as YYYY-MM-DDTHH:MM:SSZ.
func (fs *fields) iso(key string, t *timestamppb.Timestamp) {
	if t != nil {
		fs.str(key, string(appendISO(nil, t.AsTime())))
	}
}

// appendFloat writes v as a plain decimal, never with an exponent, and
// with ".0" when it is integral, as Python's repr writes the common cases.
func appendFloat(dst []byte, v float64) []byte {
	start := len(dst)
	dst = strconv.AppendFloat(dst, v, 'f', -1, 64)
	if !bytes.ContainsAny(dst[start:], ".NI") {
		dst = append(dst, '.', '0')
	}
	return dst
}

// appendJSONObject writes fs as one JSON object with Python's default
// separators (", " and ": "), as cASO's json.dumps does.
func appendJSONObject(dst []byte, fs fields) []byte {
	dst = append(dst, '{')
	for i, f := range fs {
		if i > 0 {
			dst = append(dst, ", "...)
		}
		dst = appendJSONString(dst, f.key)
		dst = append(dst, ": "...)
		switch f.kind {
		case kindString:
			dst = appendJSONString(dst, truncate(f.str, f.max))
		case kindInt:
			dst = appendInt(dst, f.num)
		case kindFloat:
			dst = appendFloat(dst, f.flt)
		}
	}
	return append(dst, '}')
}

// nullLike reports whether APEL reads s as NULL: empty, "none" or "null"
// in any case, after stripping surrounding white space.
func nullLike(s string) bool {
	s = strings.TrimSpace(s)
	return s == "" || strings.EqualFold(s, "none") || strings.EqualFold(s, "null")
}

// finite reports whether v is neither NaN nor infinite.
func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// timeOK checks a timestamp APEL must store in a DATETIME: valid, and not
// before 1970 (FROM_UNIXTIME of a negative epoch is NULL).
func timeOK(t *timestamppb.Timestamp) (time.Time, string) {
	if t == nil {
		return time.Time{}, "is missing"
	}
	if err := t.CheckValid(); err != nil {
		return time.Time{}, "is not a valid time"
	}
	if t.GetSeconds() < 0 {
		return time.Time{}, "is before 1970"
	}
	return t.AsTime(), ""
}
