package sim

import (
	"bytes"
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"time"
)

// obj is a JSON object that keeps its key order, so the simulator's answers
// read like the recorded ones (encoding/json sorts map keys).
type obj []kv

type kv struct {
	K string
	V any
}

func (o *obj) add(k string, v any) { *o = append(*o, kv{k, v}) }

func (o obj) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	if err := encode(&b, o); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// encode writes v as JSON with fast paths for the types the handlers build;
// a 1,000-server page must render in a few milliseconds.
func encode(b *bytes.Buffer, v any) error {
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case obj:
		b.WriteByte('{')
		for i, f := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			encodeString(b, f.K)
			b.WriteByte(':')
			if err := encode(b, f.V); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	case []obj:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := encode(b, e); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case string:
		encodeString(b, x)
	case int:
		b.WriteString(strconv.Itoa(x))
	case int64:
		b.WriteString(strconv.FormatInt(x, 10))
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case []string:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			encodeString(b, e)
		}
		b.WriteByte(']')
	case map[string]string:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			encodeString(b, k)
			b.WriteByte(':')
			encodeString(b, x[k])
		}
		b.WriteByte('}')
	default:
		var tmp bytes.Buffer
		enc := json.NewEncoder(&tmp)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			return err
		}
		b.Write(bytes.TrimRight(tmp.Bytes(), "\n"))
	}
	return nil
}

func encodeString(b *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\t':
			b.WriteString(`\t`)
		case c == '\r':
			b.WriteString(`\r`)
		case c < 0x20:
			b.WriteString(`\u00`)
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xf])
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
}

func marshalNoEscape(v any) ([]byte, error) {
	var b bytes.Buffer
	if err := encode(&b, v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// strMap renders a string map; nil renders as {} like OpenStack does.
func strMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// Timestamp formats differ per field in OpenStack; these names say which.
const (
	fmtZ       = "2006-01-02T15:04:05Z"        // nova created/updated, glance
	fmtMicro0  = "2006-01-02T15:04:05.000000"  // DB datetimes: launched_at, cinder
	fmtSpace   = "2006-01-02 15:04:05"         // audit log periods
	fmtTokenTS = "2006-01-02T15:04:05.000000Z" // keystone expires_at/issued_at
)

// dbTime is a DB DATETIME: MariaDB drops the sub-seconds.
func dbTime(t time.Time) string { return t.UTC().Truncate(time.Second).Format(fmtMicro0) }

func zTime(t time.Time) string { return t.UTC().Truncate(time.Second).Format(fmtZ) }

// nullDBTime renders a zero time as null.
func nullDBTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return dbTime(t)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := marshalNoEscape(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
