package pagetoken

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"
)

type pos struct {
	Service string `json:"s"`
	ID      int64  `json:"i"`
}

func TestRoundTripAndRefusals(t *testing.T) {
	fp := Fingerprint(wrapperspb.String("vo=atlas"))
	other := Fingerprint(wrapperspb.String("vo=cms"))
	if fp == other {
		t.Fatal("two filters share a fingerprint")
	}
	tok := Encode(pos{"nova", 42}, fp)
	var got pos
	if err := Decode(tok, fp, &got); err != nil || got != (pos{"nova", 42}) {
		t.Fatalf("Decode = %+v, %v", got, err)
	}
	edited := []byte(tok)
	edited[3] ^= 1
	tests := []struct {
		name string
		tok  string
		fp   uint64
		want error
	}{
		{"other filter", tok, other, ErrOtherFilter},
		{"edited", string(edited), fp, ErrMalformed},
		{"not base64", "!!!", fp, ErrMalformed},
		{"too short", "AAA", fp, ErrMalformed},
		{"unknown field", Encode(map[string]int{"x": 1}, fp), fp, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p pos
			if err := Decode(tt.tok, tt.fp, &p); !errors.Is(err, tt.want) {
				t.Errorf("Decode = %v, want %v", err, tt.want)
			}
		})
	}
}
