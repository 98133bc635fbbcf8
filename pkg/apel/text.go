package apel

import (
	"strings"
	"time"
	"unicode/utf8"
)

// Column widths of APEL's database (schemas/*.sql): strings longer than
// these are cut.
const (
	maxString        = 255
	maxBenchmarkType = 50
)

// latin transliterates U+00C0 to U+017F (Latin-1 Supplement letters and
// Latin Extended-A) to ASCII: the names sites actually have (José, Łukasz,
// Müller) stay readable instead of losing letters.
var latin = [...]string{
	"A", "A", "A", "A", "A", "A", "AE", "C", "E", "E", "E", "E", "I", "I", "I", "I",
	"D", "N", "O", "O", "O", "O", "O", "x", "O", "U", "U", "U", "U", "Y", "TH", "ss",
	"a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i",
	"d", "n", "o", "o", "o", "o", "o", "", "o", "u", "u", "u", "u", "y", "th", "y",
	"A", "a", "A", "a", "A", "a", "C", "c", "C", "c", "C", "c", "C", "c", "D", "d",
	"D", "d", "E", "e", "E", "e", "E", "e", "E", "e", "E", "e", "G", "g", "G", "g",
	"G", "g", "G", "g", "H", "h", "H", "h", "I", "i", "I", "i", "I", "i", "I", "i",
	"I", "i", "IJ", "ij", "J", "j", "K", "k", "k", "L", "l", "L", "l", "L", "l", "L",
	"l", "L", "l", "N", "n", "N", "n", "N", "n", "n", "N", "n", "O", "o", "O", "o",
	"O", "o", "OE", "oe", "R", "r", "R", "r", "R", "r", "S", "s", "S", "s", "S", "s",
	"S", "s", "T", "t", "T", "t", "T", "t", "U", "u", "U", "u", "U", "u", "U", "u",
	"U", "u", "U", "u", "W", "w", "Y", "y", "Y", "Z", "z", "Z", "z", "Z", "z", "s",
}

// ASCII returns s in 7-bit ASCII: Latin letters lose their accents (é → e,
// ß → ss, Ł → L), typographic dashes and quotes become their ASCII forms, a
// no-break space becomes a space, and every other non-ASCII character (and
// invalid UTF-8) is dropped. cASO drops every non-ASCII character; dropping
// only what cannot be spelled keeps user and machine names recognisable.
func ASCII(s string) string {
	i := 0
	for i < len(s) && s[i] < utf8.RuneSelf {
		i++
	}
	if i == len(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	b.WriteString(s[:i])
	for _, r := range s[i:] {
		switch {
		case r < utf8.RuneSelf:
			b.WriteRune(r)
		case r >= 0xC0 && r <= 0x17F:
			b.WriteString(latin[r-0xC0])
		case r == 0xA0 || r == 0x2007 || r == 0x202F:
			b.WriteByte(' ')
		case r >= 0x2010 && r <= 0x2015 || r == 0x2212:
			b.WriteByte('-')
		case r >= 0x2018 && r <= 0x201B:
			b.WriteByte('\'')
		case r >= 0x201C && r <= 0x201F:
			b.WriteByte('"')
		case r == 0x2026:
			b.WriteString("...")
		}
	}
	return b.String()
}

// kvValue makes s safe as a key-value value: ASCII, no control characters
// (a CR or LF would end the line, and APEL rejects a line without a colon),
// no "%%" (APEL splits records on that substring anywhere), no surrounding
// blanks (APEL strips them anyway), at most max bytes.
func kvValue(s string, max int) string {
	s = ASCII(s)
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7F || (c == '%' && i+1 < len(s) && s[i+1] == '%') {
			clean = false
			break
		}
	}
	if !clean {
		b := make([]byte, 0, len(s))
		for i := 0; i < len(s); i++ {
			c := s[i]
			if c < 0x20 || c == 0x7F {
				continue
			}
			// Dropping the second of two adjacent '%' (after the control
			// characters that could have separated them are gone) leaves
			// no "%%" behind.
			if c == '%' && len(b) > 0 && b[len(b)-1] == '%' {
				continue
			}
			b = append(b, c)
		}
		s = string(b)
	}
	s = strings.TrimSpace(s)
	if len(s) > max {
		s = strings.TrimSpace(s[:max])
	}
	return s
}

// truncate cuts s to at most max characters (runes), as APEL's columns
// count characters, not bytes.
func truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	n := 0
	for i := range s {
		if n == max {
			return s[:i]
		}
		n++
	}
	return s
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string the way Python's json.dumps
// (ensure_ascii) does: everything outside printable ASCII as \uXXXX
// (surrogate pairs above U+FFFF), lower-case hex, the short escapes for
// \b \f \n \r \t. Invalid UTF-8 becomes U+FFFD.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for _, r := range s {
		switch {
		case r == '"':
			dst = append(dst, '\\', '"')
		case r == '\\':
			dst = append(dst, '\\', '\\')
		case r >= 0x20 && r < 0x7F:
			dst = append(dst, byte(r))
		case r == '\n':
			dst = append(dst, '\\', 'n')
		case r == '\r':
			dst = append(dst, '\\', 'r')
		case r == '\t':
			dst = append(dst, '\\', 't')
		case r == '\b':
			dst = append(dst, '\\', 'b')
		case r == '\f':
			dst = append(dst, '\\', 'f')
		case r > 0xFFFF:
			r -= 0x10000
			dst = appendU(dst, 0xD800+(r>>10))
			dst = appendU(dst, 0xDC00+(r&0x3FF))
		default:
			dst = appendU(dst, r)
		}
	}
	return append(dst, '"')
}

func appendU(dst []byte, r rune) []byte {
	return append(dst, '\\', 'u', hexDigits[r>>12&0xF], hexDigits[r>>8&0xF], hexDigits[r>>4&0xF], hexDigits[r&0xF])
}

// appendXMLText appends s escaped for XML character data or a
// double-quoted attribute, ASCII only: non-ASCII as decimal character
// references (as Python's ElementTree writes them), & < > " escaped, and
// the characters XML 1.0 cannot carry at all (other C0 controls, U+FFFE,
// U+FFFF, invalid UTF-8) dropped.
func appendXMLText(dst []byte, s string) []byte {
	for i, r := range s {
		switch {
		case r == '&':
			dst = append(dst, "&amp;"...)
		case r == '<':
			dst = append(dst, "&lt;"...)
		case r == '>':
			dst = append(dst, "&gt;"...)
		case r == '"':
			dst = append(dst, "&quot;"...)
		case r == '\t' || r == '\n' || r == '\r':
			// As references, so attribute normalisation cannot turn them
			// into spaces.
			dst = append(dst, "&#"...)
			dst = appendInt(dst, int64(r))
			dst = append(dst, ';')
		case r < 0x20 || r == 0xFFFE || r == 0xFFFF:
		case r == utf8.RuneError && isInvalid(s[i:]):
		case r < 0x7F:
			dst = append(dst, byte(r))
		default:
			dst = append(dst, "&#"...)
			dst = appendInt(dst, int64(r))
			dst = append(dst, ';')
		}
	}
	return dst
}

func isInvalid(s string) bool {
	r, n := utf8.DecodeRuneInString(s)
	return r == utf8.RuneError && n <= 1
}

func appendInt(dst []byte, v int64) []byte {
	var buf [20]byte
	i := len(buf)
	neg := v < 0
	u := uint64(v)
	if neg {
		u = -u
	}
	for {
		i--
		buf[i] = byte('0' + u%10)
		u /= 10
		if u == 0 {
			break
		}
	}
	if neg {
		i--
		buf[i] = '-'
	}
	return append(dst, buf[i:]...)
}

// isoUTC is the StAR and energy time format: UTC, whole seconds, "Z".
const isoUTC = "2006-01-02T15:04:05Z"

func appendISO(dst []byte, t time.Time) []byte {
	return t.UTC().AppendFormat(dst, isoUTC)
}
