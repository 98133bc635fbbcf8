package record

import (
	"testing"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

func TestParseType(t *testing.T) {
	tests := []struct {
		in      string
		want    tallyv1.RecordType
		wantErr bool
	}{
		{"cloud", tallyv1.RecordType_RECORD_TYPE_CLOUD, false},
		{" Accelerator ", tallyv1.RecordType_RECORD_TYPE_ACCELERATOR, false},
		{"ip", tallyv1.RecordType_RECORD_TYPE_IP, false},
		{"storage", tallyv1.RecordType_RECORD_TYPE_STORAGE, false},
		{"energy", tallyv1.RecordType_RECORD_TYPE_ENERGY, false},
		{"gpu", 0, true},
		{"", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseType(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseType(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err == nil && TypeName(got) != TypeName(tt.want) {
			t.Errorf("TypeName round trip of %q = %q", tt.in, TypeName(got))
		}
	}
}

func TestParseTypesEmptyMeansAll(t *testing.T) {
	got, err := ParseTypes(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(Names()) {
		t.Errorf("ParseTypes(nil) has %d types, want %d", len(got), len(Names()))
	}
	if _, err := ParseTypes([]string{"cloud", "bogus"}); err == nil {
		t.Error("ParseTypes with an unknown name: no error")
	}
}

func TestTypeOf(t *testing.T) {
	tests := []struct {
		r    *tallyv1.Record
		want tallyv1.RecordType
	}{
		{&tallyv1.Record{Payload: &tallyv1.Record_Cloud{Cloud: &tallyv1.CloudRecord{}}}, tallyv1.RecordType_RECORD_TYPE_CLOUD},
		{&tallyv1.Record{Payload: &tallyv1.Record_Accelerator{}}, tallyv1.RecordType_RECORD_TYPE_ACCELERATOR},
		{&tallyv1.Record{Payload: &tallyv1.Record_Ip{}}, tallyv1.RecordType_RECORD_TYPE_IP},
		{&tallyv1.Record{Payload: &tallyv1.Record_Storage{}}, tallyv1.RecordType_RECORD_TYPE_STORAGE},
		{&tallyv1.Record{Payload: &tallyv1.Record_Energy{}}, tallyv1.RecordType_RECORD_TYPE_ENERGY},
		{&tallyv1.Record{}, tallyv1.RecordType_RECORD_TYPE_UNSPECIFIED},
	}
	for _, tt := range tests {
		if got := TypeOf(tt.r); got != tt.want {
			t.Errorf("TypeOf(%v) = %v, want %v", tt.r, got, tt.want)
		}
	}
}
