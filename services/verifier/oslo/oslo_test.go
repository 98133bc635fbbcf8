package oslo

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/tally-accounting/tally/services/verifier/verifiertest"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		wantID  string
		wantEv  string
		wantV2  bool
		wantErr bool
	}{
		{name: "v2", body: `{"oslo.version":"2.0","oslo.message":"{\"message_id\":\"a\",\"event_type\":\"compute.instance.exists\"}"}`, wantID: "a", wantEv: "compute.instance.exists", wantV2: true},
		{name: "v1 flat", body: `{"message_id":"b","event_type":"image.exists","payload":{}}`, wantID: "b", wantEv: "image.exists"},
		{name: "not json", body: `hello`, wantErr: true},
		{name: "array", body: `[1,2]`, wantErr: true},
		{name: "no event_type", body: `{"message_id":"c"}`, wantErr: true},
		{name: "v2 without message", body: `{"oslo.version":"2.0"}`, wantErr: true},
		{name: "v2 message not json", body: `{"oslo.version":"2.0","oslo.message":"x"}`, wantErr: true},
		{name: "v2 no event_type", body: `{"oslo.version":"2.0","oslo.message":"{\"message_id\":\"a\"}"}`, wantErr: true},
		{name: "unknown version", body: `{"oslo.version":"3.0","oslo.message":"{}"}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse([]byte(tt.body))
			if tt.wantErr {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("err = %v, want ErrMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.MessageID != tt.wantID || m.EventType != tt.wantEv || m.V2 != tt.wantV2 {
				t.Errorf("got %q %q v2=%v", m.MessageID, m.EventType, m.V2)
			}
		})
	}
}

func TestParseTime(t *testing.T) {
	want := time.Date(2026, 11, 23, 11, 56, 52, 299082000, time.UTC)
	for _, s := range []string{"2026-11-23T11:56:52.299082", "2026-11-23 11:56:52.299082", "2026-11-23T11:56:52.299082Z",
		"2026-11-23 11:56:52.299082+00:00", "2026-11-23T12:56:52.299082+01:00"} {
		got, err := ParseTime(s)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v, %v", s, got, err)
		}
	}
	if got, err := ParseTime(""); err != nil || !got.IsZero() {
		t.Errorf("empty: %v %v", got, err)
	}
	if _, err := ParseTime("yesterday"); err == nil {
		t.Error("no error for garbage")
	}
}

// TestParseDecodedAgrees checks the one-pass ParseDecoded against Parse
// and a separate decode of the payload, on every recorded notification
// and on bodies Parse refuses or whose payload is not an object.
func TestParseDecodedAgrees(t *testing.T) {
	recorded := recordedBodies(t)
	bodies := []string{
		`hello`, `[1,2]`, `{"message_id":"c"}`, `{"oslo.version":"2.0"}`, `{"oslo.version":"2.0","oslo.message":"x"}`,
		`{"event_type":"e","payload":"an error string"}`, `{"event_type":"e","payload":null}`, `{"event_type":"e","payload":[1]}`,
		`{"event_type":"e","payload":{"n":1.50,"s":"x"}} trailing`, `{"event_type":"e","payload":{"n":1.50,"s":"x"}}  `,
		`{"event_type":"e","message_id":7}`, `{"Event_Type":"e","PAYLOAD":{"a":{"b":[1,"2"]}}}`,
	}
	bodies = append(bodies, recorded...)
	for _, body := range bodies {
		want, werr := Parse([]byte(body))
		// ParseHeader, the bridge's, is Parse without the payload.
		h, herr := ParseHeader([]byte(body))
		if (werr == nil) != (herr == nil) || werr == nil && (h.Payload != nil || h.MessageID != want.MessageID ||
			h.EventType != want.EventType || h.Timestamp != want.Timestamp || h.V2 != want.V2) {
			t.Errorf("%.80s: ParseHeader %+v, %v; Parse %+v, %v", body, h, herr, want, werr)
		}
		got, payload, gerr := ParseDecoded([]byte(body))
		if (werr == nil) != (gerr == nil) {
			t.Errorf("%.80s: Parse error %v, ParseDecoded error %v", body, werr, gerr)
			continue
		}
		if werr != nil {
			continue
		}
		var wantPayload map[string]any
		d := json.NewDecoder(bytes.NewReader(want.Payload))
		d.UseNumber()
		_ = d.Decode(&wantPayload)
		want.Payload = nil
		if !reflect.DeepEqual(want, got) || !reflect.DeepEqual(wantPayload, payload) {
			t.Errorf("%.80s: ParseDecoded %+v %v, want %+v %v", body, got, payload, want, wantPayload)
		}
	}
}

// TestFastAgrees checks that where the fast reading succeeds, it reads
// what encoding/json reads: the header, and a typed payload with
// lenient and strict fields, on every recorded notification and on odd
// bodies (duplicate keys, other letter cases, invalid UTF-8, escapes,
// wrong types, trailing data).
func TestFastAgrees(t *testing.T) {
	recorded := recordedBodies(t)
	bodies := []string{
		`hello`, `[1,2]`, `{"message_id":"c"}`, `{"oslo.version":"2.0"}`, `{"oslo.version":"2.0","oslo.message":"x"}`,
		`{"oslo.version":"2.0","oslo.message":"{\"event_type\":\"e\"}","oslo.message":"{\"event_type\":\"f\"}"}`,
		`{"OSLO.VERSION":"2.0","Oslo.Message":"{\"Event_Type\":\"e\",\"MESSAGE_ID\":\"m\"}"}`,
		`{"event_type":"e","event_type":"f","payload":{"tenant_id":"a","tenant_id":"b"}}`,
		"{\"event_type\":\"e\xff\",\"payload\":{\"tenant_id\":\"t\xfe\"}}",
		`{"event_type":"e\u00e9\n","payload":{"tenant_id":"\u0074\"x","n":-1.5e3}}`,
		`{"event_type":"e","payload":{"tenant_id":7,"n":"x","sub":{"a":1}}}`,
		`{"event_type":"e","payload":{"tenant_id":true,"n":1,"sub":"x","list":[{"a":"1"},"x",null]}}`,
		`{"event_type":"e","payload":null}`, `{"event_type":"e","payload":[1]}`, `{"event_type":"e","payload":"s"}`,
		`{"event_type":"e","payload":{}} trailing`, `{"event_type":"e","payload":{}}  `, `{"event_type":"e","message_id":7}`,
		`{"oslo.version":2,"oslo.message":"{}"}`, `{"oslo.version":"2.0","oslo.message":{"event_type":"e"}}`,
		// Envelopes the pooled envelope leaves to the readings.
		`{"oslo.version":"2.0","oslo.message":null}`, `{"oslo.version":null,"oslo.message":"{\"event_type\":\"e\"}"}`,
		`{"oslo.version":"3.0","oslo.message":"{\"event_type\":\"e\"}"}`, `{"oslo.version":"2.0","oslo.version":"1.0","oslo.message":"{}"}`,
		`{"oslo.vers\u0069on":"2.0","oslo.message":"{\"event_type\":\"e\"}"}`, "{\"o\u017flo.version\":\"2.0\",\"oslo.message\":\"{}\"}",
		`{"oslo.message":"{\"event_type\":\"e\"}","OSLO.VERSION":"2.1"}`, `{"oslo.version":"2.0","oslo.message":"{\"event_type\":\"\ud800\"}"}`,
		"{\"oslo.version\":\"2.0\",\"oslo.message\":\"{\\\"event_type\\\":\\\"e\xff\\\"}\"}",
		`{"oslo.version":"2.0","oslo.message":"{\"event_type\":\"e\"}"} {}`, ` {"oslo.version":"2.0","x":[{"oslo.message":1}],"oslo.message":"{\"event_type\":\"e\"}"}` + "\n",
	}
	odd := len(bodies)
	bodies = append(bodies, recorded...)
	type sub struct {
		A any `json:"a"`
	}
	type payload struct {
		TenantID any               `json:"tenant_id"`
		N        float64           `json:"n"`
		Sub      *sub              `json:"sub"`
		List     []sub             `json:"list"`
		Meta     map[string]string `json:"image_meta"`
	}
	fastRecorded, envelopeRecorded := 0, 0
	for i, body := range bodies {
		if m, err := parse(fast, []byte(body)); err == nil {
			want, werr := parse(std, []byte(body))
			if werr != nil || !reflect.DeepEqual(m, want) {
				t.Errorf("%.80q: fast Parse %+v, encoding/json %+v %v", body, m, want, werr)
			}
		}
		if h, err := parseHeader(fast, []byte(body)); err == nil {
			want, werr := parseHeader(std, []byte(body))
			if werr != nil || !reflect.DeepEqual(h, want) {
				t.Errorf("%.80q: fast ParseHeader %+v, encoding/json %+v %v", body, h, want, werr)
			}
		}
		winner, wv2, werr := unwrapDecoded(std, []byte(body))
		e := envelopes.Get().(*envelope)
		if inner, v2, ok := e.read([]byte(body)); ok {
			if werr != nil || !bytes.Equal(inner, winner) || v2 != wv2 {
				t.Errorf("%.80q: envelope %q %v, encoding/json %q %v %v", body, inner, v2, winner, wv2, werr)
			}
			if i >= odd {
				envelopeRecorded++
			}
		}
		e.release()
		inner, v2, err := unwrapDecoded(fast, []byte(body))
		if err != nil {
			continue
		}
		if werr != nil || !bytes.Equal(inner, winner) || v2 != wv2 {
			t.Errorf("%.80q: fast unwrap %q %v, encoding/json %q %v %v", body, inner, v2, winner, wv2, werr)
			continue
		}
		var got, want typed[payload]
		if err := fast(inner, &got); err != nil {
			continue
		}
		if err := std(inner, &want); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%.80q: fast typed %+v, encoding/json %+v %v", body, got, want, err)
		}
		if i >= odd {
			fastRecorded++
		}
	}
	// Not vacuous: every recorded notification takes the fast path.
	if fastRecorded != len(recorded) {
		t.Errorf("the fast reading decoded %d of the %d recorded notifications", fastRecorded, len(recorded))
	}
	if envelopeRecorded != len(recorded) {
		t.Errorf("the envelope read %d of the %d recorded notifications", envelopeRecorded, len(recorded))
	}
}

// recordedBodies are the recorded notifications' bodies; the test fails
// without them.
func recordedBodies(t *testing.T) []string {
	var out []string
	for _, r := range verifiertest.RecordedNotifications(t, "*.json", 100) {
		out = append(out, string(r.Body))
	}
	return out
}

// TestEnvelopeReuse reads different notifications at once, over and over:
// a message left in a pooled envelope's buffer must never show through in
// another reading.
func TestEnvelopeReuse(t *testing.T) {
	bodies := recordedBodies(t)
	want := make([]*Message, len(bodies))
	for i, b := range bodies {
		m, err := Parse([]byte(b))
		if err != nil {
			t.Fatalf("%.80s: %v", b, err)
		}
		want[i] = m
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for n := range 300 {
				i := (g*7 + n) % len(bodies)
				got, err := Parse([]byte(bodies[i]))
				if err != nil || !reflect.DeepEqual(got, want[i]) {
					t.Errorf("%.80s: read %+v %v, want %+v", bodies[i], got, err, want[i])
					return
				}
			}
		})
	}
	wg.Wait()
}
