// Package oslo decodes the oslo.messaging notification envelope, shared by
// notify-bridge (which only needs the id and the event type) and the
// verifier (which reads the payload).
package oslo

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	jsonv1 "github.com/go-json-experiment/json/v1"
)

// Every parse runs twice at most. The fast reading is
// github.com/go-json-experiment/json's emulation of encoding/json, the
// implementation behind encoding/json/v2: one pass over the bytes, where
// encoding/json scans a value for validity before it decodes it, so each
// notification cost two passes per decode (about a quarter of the
// verifier's CPU). The emulation aims at encoding/json's results but is
// not held to its exact error behaviour (which type mismatch is reported,
// what is left decoded after one), and the verifier's readings of odd
// payloads depend on that. So any error from the fast reading sends the
// body to encoding/json, whose answer stands; the success path, the
// common one, is the emulation's, which agrees with encoding/json there
// (TestFastAgrees checks the recorded notifications and the odd cases).
type decodeFunc func(data []byte, v any) error

var (
	fast decodeFunc = func(data []byte, v any) error { return jsonv1.Unmarshal(data, v) }
	std  decodeFunc = json.Unmarshal
)

// FastUnmarshal is the fast reading alone, for the UnmarshalJSON methods
// of the types ParseTyped decodes into: when it fails, they decode a fresh
// value with encoding/json, whose answer stands.
func FastUnmarshal(data []byte, v any) error { return fast(data, v) }

// Message is one notification: the oslo.messaging v2 envelope unwrapped, or
// the flat v1 (rpc_notifier) body StackTach expected.
type Message struct {
	MessageID   string          `json:"message_id"`
	EventType   string          `json:"event_type"`
	PublisherID string          `json:"publisher_id"`
	Priority    string          `json:"priority"`
	Timestamp   string          `json:"timestamp"`
	Payload     json.RawMessage `json:"payload"`
	// Context fields StackTach falls back on.
	ContextTimestamp string `json:"_context_timestamp"`
	ContextRequestID string `json:"_context_request_id"`
	ContextProjectID string `json:"_context_project_id"`
	// V2 reports the oslo.messaging v2 envelope.
	V2 bool `json:"-"`
}

// ErrMalformed wraps every reason a body is not a notification.
var ErrMalformed = errors.New("malformed notification")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Parse decodes body. A v2 envelope ({"oslo.version", "oslo.message": "<JSON
// string>"}) is unwrapped; a flat v1 body is accepted as it is. The message
// must have an event_type.
func Parse(body []byte) (*Message, error) {
	if m, err := parse(fast, body); err == nil {
		return m, nil
	}
	return parse(std, body)
}

func parse(decode decodeFunc, body []byte) (*Message, error) {
	inner, v2, e, err := unwrap(decode, body)
	defer e.release()
	if err != nil {
		return nil, err
	}
	var m Message
	if err := decode(inner, &m); err != nil {
		return nil, innerError(v2, err)
	}
	return checked(&m, v2)
}

// ParseDecoded is Parse for readers of the payload: it also decodes the
// payload, numbers as json.Number, and returns it when it is an object
// (nil otherwise; Message.Payload is left empty). The message is read
// once, where Parse and a decode of Payload would read the payload four
// times (checked, skipped, scanned, decoded).
func ParseDecoded(body []byte) (*Message, map[string]any, error) {
	inner, v2, e, err := unwrap(std, body)
	defer e.release()
	if err != nil {
		return nil, nil, err
	}
	var m struct {
		Message
		Payload any `json:"payload"` // shadows Message.Payload
	}
	d := json.NewDecoder(bytes.NewReader(inner))
	d.UseNumber()
	err = d.Decode(&m)
	if err == nil {
		// json.Unmarshal refuses anything after the value; so does this.
		if _, terr := d.Token(); terr != io.EOF {
			err = errors.New("invalid character after top-level value")
		}
	}
	if err != nil {
		return nil, nil, innerError(v2, err)
	}
	msg, err := checked(&m.Message, v2)
	if err != nil {
		return nil, nil, err
	}
	p, _ := m.Payload.(map[string]any)
	return msg, p, nil
}

// ParseHeader is Parse without the payload: Message.Payload is left empty.
// notify-bridge needs only the id and the event type; skipping the payload
// spares a copy of it per notification. It refuses exactly what Parse
// refuses (Payload, a json.RawMessage, accepts any value).
func ParseHeader(body []byte) (*Message, error) {
	if m, err := parseHeader(fast, body); err == nil {
		return m, nil
	}
	return parseHeader(std, body)
}

func parseHeader(decode decodeFunc, body []byte) (*Message, error) {
	inner, v2, e, err := unwrap(decode, body)
	defer e.release()
	if err != nil {
		return nil, err
	}
	var h header
	if err := decode(inner, &h); err != nil {
		return nil, innerError(v2, err)
	}
	return checked(&h.Message, v2)
}

// header decodes Message minus its payload. skipValue takes any JSON
// value, as json.RawMessage does, without keeping it.
type header struct {
	Message
	Payload skipValue `json:"payload"`
}

type skipValue struct{}

func (*skipValue) UnmarshalJSON([]byte) error { return nil }

// ParseTyped is ParseDecoded for readers that know which payload fields
// they read: the payload is decoded into a P (a struct of the fields read,
// their types lenient) instead of a map[string]any, which allocates every
// key and value of the payload; p is nil unless the payload is an object.
//
// The result is what a reader of ParseDecoded's map would find: a field
// whose JSON type does not fit P is left zero, as the map reader finds no
// value of the type it looks for. encoding/json reports only the first
// such mismatch, and one outside the payload makes the message malformed,
// so on a mismatch the (rare) strict ParseDecoded decides.
func ParseTyped[P any](body []byte) (*Message, *P, error) {
	if msg, p, err := parseTyped[P](body); err == nil {
		return msg, p, nil
	}
	inner, v2, e, err := unwrap(std, body)
	defer e.release()
	if err != nil {
		return nil, nil, err
	}
	var m typed[P]
	err = std(inner, &m)
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		msg, p, err := ParseDecoded(body)
		if err != nil {
			return nil, nil, err
		}
		if p == nil {
			m.Payload = nil
		}
		return msg, m.Payload, nil
	}
	if err != nil {
		return nil, nil, innerError(v2, err)
	}
	msg, err := checked(&m.Message, v2)
	if err != nil {
		return nil, nil, err
	}
	return msg, m.Payload, nil
}

// parseTyped is ParseTyped's fast reading.
func parseTyped[P any](body []byte) (*Message, *P, error) {
	inner, v2, e, err := unwrap(fast, body)
	defer e.release()
	if err != nil {
		return nil, nil, err
	}
	var m typed[P]
	if err := fast(inner, &m); err != nil {
		return nil, nil, err
	}
	msg, err := checked(&m.Message, v2)
	if err != nil {
		return nil, nil, err
	}
	return msg, m.Payload, nil
}

// typed is a message with its payload decoded into a P.
type typed[P any] struct {
	Message
	Payload *P `json:"payload"` // shadows Message.Payload
}

// unwrap returns the message inside a v2 envelope, or body itself. The
// message may be in e's buffer: the caller releases e once it decoded the
// message, and uses inner no more.
func unwrap(decode decodeFunc, body []byte) (inner []byte, v2 bool, e *envelope, err error) {
	e = envelopes.Get().(*envelope)
	if inner, v2, ok := e.read(body); ok {
		return inner, v2, e, nil
	}
	inner, v2, err = unwrapDecoded(decode, body)
	return inner, v2, e, err
}

// unwrapDecoded is unwrap by decoding the envelope into a struct.
func unwrapDecoded(decode decodeFunc, body []byte) (inner []byte, v2 bool, err error) {
	var env struct {
		Version *string  `json:"oslo.version"`
		Message *rawText `json:"oslo.message"`
	}
	if err := decode(body, &env); err != nil {
		return nil, false, malformed("not a JSON object: %v", err)
	}
	if env.Version == nil && env.Message == nil {
		return body, false, nil
	}
	if env.Version == nil || !strings.HasPrefix(*env.Version, "2.") {
		return nil, false, malformed("oslo.version is %s, want 2.x", quoteOrMissing(env.Version))
	}
	if env.Message == nil {
		return nil, false, malformed("oslo.version %s envelope without oslo.message", *env.Version)
	}
	return *env.Message, true, nil
}

// envelope reads the common v2 envelope, two string members spelled as
// oslo.messaging writes them, with jsontext alone, and unescapes the
// message into a buffer it reuses. Decoding the envelope into a struct
// took longer and allocated a new message per notification, once in the
// bridge and again in the verifier (BenchmarkParse; the figures are in
// services/verifier/PERFORMANCE.md). It answers only where both readings
// agree; anything else (another letter case or an escape in a member
// name, a null, a value of another type, a version not 2.x, half an
// envelope, invalid JSON or UTF-8, trailing data) is left to them, so
// that every error and every odd case reads as before.
type envelope struct {
	body bytes.Buffer // jsontext parses a bytes.Buffer in place
	dec  *jsontext.Decoder
	msg  []byte
}

var envelopes = sync.Pool{New: func() any {
	e := new(envelope)
	e.dec = jsontext.NewDecoder(&e.body)
	return e
}}

// maxPooledMessage bounds the buffer an envelope keeps in the pool, so
// that one huge notification does not hold its size for good.
const maxPooledMessage = 64 << 10

const (
	versionName = `"oslo.version"`
	messageName = `"oslo.message"`
)

// read returns the message of a v2 envelope, or body when it has neither
// member; ok is false when the readings must decide.
func (e *envelope) read(body []byte) (inner []byte, v2, ok bool) {
	e.body = *bytes.NewBuffer(body)
	e.dec.Reset(&e.body)
	if e.dec.PeekKind() != '{' {
		return nil, false, false
	}
	if _, err := e.dec.ReadToken(); err != nil {
		return nil, false, false
	}
	var version, message bool
	for e.dec.PeekKind() != '}' {
		k, err := e.dec.ReadValue()
		if err != nil {
			return nil, false, false
		}
		isVersion, isMessage := string(k) == versionName, string(k) == messageName
		if !isVersion && !isMessage {
			// Both readings match member names without regard to case
			// (Unicode's simple folding) and after unescaping.
			if bytes.IndexByte(k, '\\') >= 0 || bytes.EqualFold(k, []byte(versionName)) || bytes.EqualFold(k, []byte(messageName)) {
				return nil, false, false
			}
			if err := e.dec.SkipValue(); err != nil {
				return nil, false, false
			}
			continue
		}
		if e.dec.PeekKind() != '"' {
			return nil, false, false
		}
		v, err := e.dec.ReadValue()
		if err != nil {
			return nil, false, false
		}
		// A member named twice is an error to jsontext (where both
		// readings take the last), so it never gets here.
		if isVersion {
			if version = bytes.HasPrefix(v, []byte(`"2.`)); !version {
				return nil, false, false
			}
			continue
		}
		if e.msg, err = jsontext.AppendUnquote(e.msg[:0], v); err != nil {
			return nil, false, false
		}
		message = true
	}
	if _, err := e.dec.ReadToken(); err != nil {
		return nil, false, false
	}
	if _, err := e.dec.ReadToken(); err != io.EOF {
		return nil, false, false
	}
	switch {
	case version && message:
		return e.msg, true, true
	case !version && !message:
		return body, false, true
	}
	return nil, false, false
}

// release puts e back in the pool, without its reference to the body.
func (e *envelope) release() {
	e.body = bytes.Buffer{}
	e.dec.Reset(&e.body)
	if cap(e.msg) > maxPooledMessage {
		e.msg = nil
	}
	envelopes.Put(e)
}

// rawText is a JSON string's unescaped bytes. As a *string, the message
// would be unescaped into a buffer and then copied into the string, and
// back into bytes: two copies of the whole message per notification that
// this spares. UnmarshalText keeps the bytes it is given, though
// encoding.TextUnmarshaler asks for a copy: both readings hand it either
// the buffer they unescaped into, which is not reused, or a part of the
// body being parsed, which outlives the parse and is not written to.
type rawText []byte

func (t *rawText) UnmarshalText(b []byte) error {
	*t = b
	return nil
}

func innerError(v2 bool, err error) error {
	if v2 {
		return malformed("oslo.message is not a JSON object: %v", err)
	}
	return malformed("not a notification: %v", err)
}

func checked(m *Message, v2 bool) (*Message, error) {
	if m.EventType == "" {
		return nil, malformed("no event_type")
	}
	m.V2 = v2
	return m, nil
}

func quoteOrMissing(s *string) string {
	if s == nil {
		return "missing"
	}
	return fmt.Sprintf("%q", *s)
}

// When is the notification time: timestamp, else _context_timestamp (as
// StackTach); zero when neither parses.
func (m *Message) When() time.Time {
	if t, err := ParseTime(m.Timestamp); err == nil && !t.IsZero() {
		return t
	}
	t, _ := ParseTime(m.ContextTimestamp)
	return t
}

var layouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04:05.999999999",
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02T15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05Z",
}

// ParseTime reads the time formats OpenStack services put in notifications
// (naive times are UTC). An empty string is the zero time and no error;
// StackTach printed "Bad DATE" and went on with None, we report the error.
func ParseTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "None" {
		return time.Time{}, nil
	}
	for _, l := range layouts {
		// Every layout has its date-time separator at 10 and the dates are
		// fixed-width, so a layout whose separator differs cannot match:
		// skipping it spares a time.ParseError allocated per failed try.
		if len(s) > 10 && s[10] != l[10] {
			continue
		}
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("unparseable time %q", s)
}

// Key identifies one notification for deduplication: the message_id, plus
// a digest of the body. A redelivered or re-sent notification has the same
// bytes, so the same key; two different notifications that share a
// message_id (the simulator derives ids from the first 16 bytes of the
// event type, so most of its ids collide) keep different keys instead of
// one silently replacing the other.
func Key(m *Message, body []byte) string {
	sum := sha256.Sum256(body)
	if m == nil || m.MessageID == "" {
		return "sha256:" + hex.EncodeToString(sum[:])
	}
	return m.MessageID + "." + hex.EncodeToString(sum[:8])
}
