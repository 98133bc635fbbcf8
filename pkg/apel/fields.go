package apel

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// FieldMap returns r as one flat JSON object for the Logstash messenger
// (json_lines codec: one object per record per line). Its shape:
//
//	{
//	  "record_type": "cloud",            // cloud, accelerator, ip, storage or energy
//	  "record_key":  "cloud/SITE/uuid",  // the record's identity (Record.key)
//	  "provenance": {                    // where and when it was extracted; empty keys left out
//	    "region": "RegionOne", "site": "SITE", "service": "SITE",
//	    "extractor": "extractor-nova", "project_id": "...",
//	    "window_from": 1700000000, "window_to": 1700003600, "extracted_at": 1700003601
//	  },
//	  "VMUUID": "...", "SiteName": "SITE", ...   // the APEL fields
//	}
//
// The APEL fields use the names and value forms of the record's APEL
// message: integer epoch seconds for cloud, accelerator and IP times,
// YYYY-MM-DDTHH:MM:SSZ strings for StAR and energy times, EndTime 0 for a
// running VM, capacities in bytes, the accelerator Type normalised. Absent
// values are left out. Storage records also carry the non-StAR fields
// (RecordName, Status, AttachedTo, AttachedDuration, VolumeCreationTime,
// ActiveDuration, Type) and GroupAttributes as a list of
// {"AttributeType", "Value"} objects. Strings are kept as they are
// (Logstash takes UTF-8): the ASCII folding and column-width cuts apply to
// SSM messages only. The lower-case keys are tally's own; no APEL field
// name is lower-case, so they cannot clash.
//
// r is validated first; an invalid record gives an error wrapping
// ErrInvalid.
func FieldMap(r *tallyv1.Record) (map[string]any, error) {
	if err := Validate(r); err != nil {
		return nil, err
	}
	fs := payloadFields(r, nil)
	m := make(map[string]any, len(fs)+3)
	for _, f := range fs {
		switch f.kind {
		case kindString:
			m[f.key] = f.str
		case kindInt:
			m[f.key] = f.num
		case kindFloat:
			m[f.key] = f.flt
		}
	}
	if s := r.GetStorage(); s != nil && len(s.GetGroupAttributes()) > 0 {
		gas := make([]map[string]string, 0, len(s.GetGroupAttributes()))
		for _, ga := range s.GetGroupAttributes() {
			gas = append(gas, map[string]string{"AttributeType": ga.GetAttributeType(), "Value": ga.GetValue()})
		}
		m["GroupAttributes"] = gas
	}
	m["record_type"] = typeName(r)
	if k := r.GetKey(); k != "" {
		m["record_key"] = k
	}
	if p := provenance(r.GetProvenance()); len(p) > 0 {
		m["provenance"] = p
	}
	return m, nil
}

func provenance(p *tallyv1.Provenance) map[string]any {
	m := map[string]any{}
	for k, v := range map[string]string{
		"region": p.GetRegion(), "site": p.GetSite(), "service": p.GetService(),
		"extractor": p.GetExtractor(), "project_id": p.GetProjectId(),
	} {
		if v != "" {
			m[k] = v
		}
	}
	for k, v := range map[string]*timestamppb.Timestamp{
		"window_from": p.GetWindowFrom(), "window_to": p.GetWindowTo(), "extracted_at": p.GetExtractedAt(),
	} {
		if v != nil {
			m[k] = v.GetSeconds()
		}
	}
	return m
}

// payloadFields appends r's APEL fields to fs.
func payloadFields(r *tallyv1.Record, fs fields) fields {
	switch p := r.GetPayload().(type) {
	case *tallyv1.Record_Cloud:
		fs = cloudFields(p.Cloud, fs)
	case *tallyv1.Record_Accelerator:
		fs = acceleratorFields(p.Accelerator, fs)
	case *tallyv1.Record_Ip:
		fs = ipFields(p.Ip, fs)
	case *tallyv1.Record_Storage:
		fs = storageFields(p.Storage, fs)
	case *tallyv1.Record_Energy:
		fs = energyFields(p.Energy, fs)
	}
	return fs
}

// AppendJSONLine appends r's FieldMap as one line of JSON (keys sorted,
// UTF-8, no HTML escaping) ending in LF: one event for Logstash's
// json_lines codec. It writes what encoding/json writes for FieldMap,
// byte for byte, without the map and the reflection, which made the
// Logstash messenger cost more than the SSM one.
func AppendJSONLine(dst []byte, r *tallyv1.Record) ([]byte, error) {
	if err := Validate(r); err != nil {
		return dst, err
	}
	sp := fieldsPool.Get().(*fields)
	defer fieldsPool.Put(sp)
	fs := payloadFields(r, (*sp)[:0])
	*sp = fs
	for _, f := range fs {
		if f.kind == kindFloat && !finite(f.flt) {
			// encoding/json's error, as before.
			return appendJSONLineReflect(dst, r)
		}
	}
	// Top-level keys in the order FieldMap sets them (a later one wins),
	// then sorted as encoding/json sorts a map's keys.
	const (
		extraGroupAttributes = iota + 1
		extraType
		extraKey
		extraProvenance
	)
	type entry struct {
		key   string
		f     int // index in fs, or -extra
		extra int
	}
	var stack [48]entry
	es := stack[:0]
	for i, f := range fs {
		es = append(es, entry{key: f.key, f: i})
	}
	if len(r.GetStorage().GetGroupAttributes()) > 0 {
		es = append(es, entry{key: "GroupAttributes", extra: extraGroupAttributes})
	}
	es = append(es, entry{key: "record_type", extra: extraType})
	if r.GetKey() != "" {
		es = append(es, entry{key: "record_key", extra: extraKey})
	}
	prov := r.GetProvenance()
	if hasProvenance(prov) {
		es = append(es, entry{key: "provenance", extra: extraProvenance})
	}
	slices.SortStableFunc(es, func(a, b entry) int { return strings.Compare(a.key, b.key) })
	dst = append(dst, '{')
	first := true
	for i, e := range es {
		if i+1 < len(es) && es[i+1].key == e.key {
			continue // set again later: the map kept the last
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = appendGoJSONString(dst, e.key)
		dst = append(dst, ':')
		switch e.extra {
		case 0:
			switch f := fs[e.f]; f.kind {
			case kindString:
				dst = appendGoJSONString(dst, f.str)
			case kindInt:
				dst = strconv.AppendInt(dst, f.num, 10)
			case kindFloat:
				dst = appendGoJSONFloat(dst, f.flt)
			}
		case extraGroupAttributes:
			dst = append(dst, '[')
			for j, ga := range r.GetStorage().GetGroupAttributes() {
				if j > 0 {
					dst = append(dst, ',')
				}
				dst = append(dst, `{"AttributeType":`...)
				dst = appendGoJSONString(dst, ga.GetAttributeType())
				dst = append(dst, `,"Value":`...)
				dst = appendGoJSONString(dst, ga.GetValue())
				dst = append(dst, '}')
			}
			dst = append(dst, ']')
		case extraType:
			dst = appendGoJSONString(dst, typeName(r))
		case extraKey:
			dst = appendGoJSONString(dst, r.GetKey())
		case extraProvenance:
			dst = appendProvenance(dst, prov)
		}
	}
	return append(dst, '}', '\n'), nil
}

var fieldsPool = sync.Pool{New: func() any { return new(fields) }}

// appendJSONLineReflect is AppendJSONLine through encoding/json.
func appendJSONLineReflect(dst []byte, r *tallyv1.Record) ([]byte, error) {
	m, err := FieldMap(r)
	if err != nil {
		return dst, err
	}
	buf := bytes.NewBuffer(dst)
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	// Encode appends the LF itself.
	if err := enc.Encode(m); err != nil {
		return dst, fmt.Errorf("record %q as json: %w", r.GetKey(), err)
	}
	return buf.Bytes(), nil
}

func hasProvenance(p *tallyv1.Provenance) bool {
	return p.GetRegion() != "" || p.GetSite() != "" || p.GetService() != "" || p.GetExtractor() != "" ||
		p.GetProjectId() != "" || p.GetWindowFrom() != nil || p.GetWindowTo() != nil || p.GetExtractedAt() != nil
}

// appendProvenance writes provenance's object, its keys in sorted order.
func appendProvenance(dst []byte, p *tallyv1.Provenance) []byte {
	dst = append(dst, '{')
	n := 0
	str := func(key, v string) {
		if v == "" {
			return
		}
		if n > 0 {
			dst = append(dst, ',')
		}
		n++
		dst = appendGoJSONString(dst, key)
		dst = append(dst, ':')
		dst = appendGoJSONString(dst, v)
	}
	sec := func(key string, t *timestamppb.Timestamp) {
		if t == nil {
			return
		}
		if n > 0 {
			dst = append(dst, ',')
		}
		n++
		dst = appendGoJSONString(dst, key)
		dst = append(dst, ':')
		dst = strconv.AppendInt(dst, t.GetSeconds(), 10)
	}
	sec("extracted_at", p.GetExtractedAt())
	str("extractor", p.GetExtractor())
	str("project_id", p.GetProjectId())
	str("region", p.GetRegion())
	str("service", p.GetService())
	str("site", p.GetSite())
	sec("window_from", p.GetWindowFrom())
	sec("window_to", p.GetWindowTo())
	return append(dst, '}')
}

// appendGoJSONString writes s as encoding/json does with HTML escaping
// off: UTF-8 kept, invalid bytes as \ufffd, U+2028 and U+2029 escaped.
func appendGoJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendGoJSONFloat writes a finite v as encoding/json does.
func appendGoJSONFloat(dst []byte, v float64) []byte {
	format := byte('f')
	if abs := math.Abs(v); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	start := len(dst)
	dst = strconv.AppendFloat(dst, v, format, -1, 64)
	if format == 'e' {
		// e-09 as e-9
		b := dst[start:]
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			dst = dst[:len(dst)-1]
		}
	}
	return dst
}
