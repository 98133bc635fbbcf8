// Package record holds what every service knows about tally's records: type
// names, identities and batch ids.
package record

import (
	"fmt"
	"slices"
	"strings"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// Type names as used in configuration (record_types) and bus subjects.
const (
	Cloud       = "cloud"
	Accelerator = "accelerator"
	IP          = "ip"
	Storage     = "storage"
	Energy      = "energy"
)

var names = map[tallyv1.RecordType]string{
	tallyv1.RecordType_RECORD_TYPE_CLOUD:       Cloud,
	tallyv1.RecordType_RECORD_TYPE_ACCELERATOR: Accelerator,
	tallyv1.RecordType_RECORD_TYPE_IP:          IP,
	tallyv1.RecordType_RECORD_TYPE_STORAGE:     Storage,
	tallyv1.RecordType_RECORD_TYPE_ENERGY:      Energy,
}

// Names lists every record type name, sorted.
func Names() []string {
	out := make([]string, 0, len(names))
	for _, n := range names {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// TypeName returns the configuration name of t ("cloud", ...).
func TypeName(t tallyv1.RecordType) string {
	if n, ok := names[t]; ok {
		return n
	}
	return "unspecified"
}

// ParseType returns the type named name, case-insensitively.
func ParseType(name string) (tallyv1.RecordType, error) {
	for t, n := range names {
		if strings.EqualFold(n, strings.TrimSpace(name)) {
			return t, nil
		}
	}
	return 0, fmt.Errorf("unknown record type %q (known: %s)", name, strings.Join(Names(), ", "))
}

// ParseTypes parses a list of type names; an empty list means every type.
func ParseTypes(list []string) (map[tallyv1.RecordType]bool, error) {
	out := map[tallyv1.RecordType]bool{}
	if len(list) == 0 {
		for t := range names {
			out[t] = true
		}
		return out, nil
	}
	for _, n := range list {
		t, err := ParseType(n)
		if err != nil {
			return nil, err
		}
		out[t] = true
	}
	return out, nil
}

// TypeOf returns the type of the record's payload.
func TypeOf(r *tallyv1.Record) tallyv1.RecordType {
	switch r.GetPayload().(type) {
	case *tallyv1.Record_Cloud:
		return tallyv1.RecordType_RECORD_TYPE_CLOUD
	case *tallyv1.Record_Accelerator:
		return tallyv1.RecordType_RECORD_TYPE_ACCELERATOR
	case *tallyv1.Record_Ip:
		return tallyv1.RecordType_RECORD_TYPE_IP
	case *tallyv1.Record_Storage:
		return tallyv1.RecordType_RECORD_TYPE_STORAGE
	case *tallyv1.Record_Energy:
		return tallyv1.RecordType_RECORD_TYPE_ENERGY
	}
	return tallyv1.RecordType_RECORD_TYPE_UNSPECIFIED
}
