package enricher

import (
	"errors"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/record"
)

// invalidError marks a record that can never be delivered as it is.
type invalidError struct{ msg string }

func (e *invalidError) Error() string { return e.msg }

func isInvalid(err error) bool {
	var ie *invalidError
	return errors.As(err, &ie)
}

// Validate checks what every record needs to be delivered at all: an
// identity and a payload. The per-format APEL checks build on this.
func Validate(r *tallyv1.Record) error {
	switch {
	case r.GetKey() == "":
		return &invalidError{"record has no key"}
	case record.TypeOf(r) == tallyv1.RecordType_RECORD_TYPE_UNSPECIFIED:
		return &invalidError{"record " + r.GetKey() + " has no payload"}
	}
	return nil
}
