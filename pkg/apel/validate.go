package apel

import (
	"errors"
	"fmt"
	"time"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/record"
)

// ErrInvalid is wrapped by every error for a record that APEL (or, for
// energy, the GreenDIGIT CIM) would reject, or that cannot be rendered at
// all. Such a record will never be accepted: dead-letter it, do not retry.
var ErrInvalid = errors.New("invalid record")

// FieldError says which field of a record is wrong and how. Field is the
// APEL name (VMUUID, MeasurementMonth, ...), so the reason in a dead letter
// reads like the APEL loader's own rejection.
type FieldError struct {
	// Type is the record type name ("cloud", "accelerator", ...).
	Type string
	// Key is the record's identity, when known.
	Key string
	// Field is the APEL field name.
	Field string
	// Problem says what is wrong, e.g. "is missing".
	Problem string
}

func (e *FieldError) Error() string {
	if e.Key != "" {
		return fmt.Sprintf("%s record %q: %s %s", e.Type, e.Key, e.Field, e.Problem)
	}
	return fmt.Sprintf("%s record: %s %s", e.Type, e.Field, e.Problem)
}

// Unwrap makes every FieldError match ErrInvalid.
func (e *FieldError) Unwrap() error { return ErrInvalid }

func fieldErr(typ, field, format string, args ...any) *FieldError {
	return &FieldError{Type: typ, Field: field, Problem: fmt.Sprintf(format, args...)}
}

// Validate checks r against what APEL would reject for its type, as of
// now. See ValidateAt.
func Validate(r *tallyv1.Record) error { return ValidateAt(r, time.Now()) }

// ValidateAt checks r against what APEL would reject for its type, with
// now as the current time (the accelerator loader rejects a
// MeasurementYear after the current year). It returns nil or a
// *FieldError naming the first bad field.
func ValidateAt(r *tallyv1.Record, now time.Time) error {
	var err *FieldError
	switch p := r.GetPayload().(type) {
	case *tallyv1.Record_Cloud:
		err = validateCloud(p.Cloud)
	case *tallyv1.Record_Accelerator:
		err = validateAccelerator(p.Accelerator, now)
	case *tallyv1.Record_Ip:
		err = validateIP(p.Ip)
	case *tallyv1.Record_Storage:
		err = validateStorage(p.Storage)
	case *tallyv1.Record_Energy:
		err = validateEnergy(p.Energy)
	default:
		return fmt.Errorf("record %q has no payload: %w", r.GetKey(), ErrInvalid)
	}
	if err != nil {
		err.Key = r.GetKey()
		return err
	}
	return nil
}

// ValidateCloud checks one cloud record (see validateCloud in cloud.go).
func ValidateCloud(c *tallyv1.CloudRecord) error { return asError(validateCloud(c)) }

// ValidateAccelerator checks one accelerator record as of now.
func ValidateAccelerator(a *tallyv1.AcceleratorRecord, now time.Time) error {
	return asError(validateAccelerator(a, now))
}

// ValidateIP checks one public IP record.
func ValidateIP(p *tallyv1.IPRecord) error { return asError(validateIP(p)) }

// ValidateStorage checks one StAR storage record.
func ValidateStorage(s *tallyv1.StorageRecord) error { return asError(validateStorage(s)) }

// ValidateEnergy checks one energy record.
func ValidateEnergy(e *tallyv1.EnergyRecord) error { return asError(validateEnergy(e)) }

// asError avoids the typed-nil trap of returning a nil *FieldError as error.
func asError(e *FieldError) error {
	if e == nil {
		return nil
	}
	return e
}

// typeName names r's type for errors.
func typeName(r *tallyv1.Record) string { return record.TypeName(record.TypeOf(r)) }
