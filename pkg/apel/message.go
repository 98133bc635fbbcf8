package apel

import (
	"errors"
	"fmt"
	"math"
	"time"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/record"
)

// Message limits (apel-formats.md §0). cASO's max_size defaults to 100
// records; AMS refuses messages over 1 MB once signed, so tally keeps an
// unsigned message under 512 KiB; APEL's JSON schemas cap UsageRecords at
// 1000.
const (
	DefaultMaxRecords = 100
	DefaultMaxBytes   = 512 << 10
	MaxRecordsLimit   = 1000
)

// ErrMixedTypes is returned when one message is asked to hold records of
// more than one type: APEL reads one type per message.
var ErrMixedTypes = errors.New("records of more than one type in one message")

// format is one message layout: head, records joined by sep, tail.
type format struct {
	head, sep, tail string
	scratch         fields
}

func formatOf(t tallyv1.RecordType) (*format, error) {
	switch t {
	case tallyv1.RecordType_RECORD_TYPE_CLOUD:
		return &format{head: cloudHeader, sep: cloudSeparator}, nil
	case tallyv1.RecordType_RECORD_TYPE_ACCELERATOR:
		return &format{head: acceleratorHeader, sep: jsonSeparator, tail: jsonTrailer}, nil
	case tallyv1.RecordType_RECORD_TYPE_IP:
		return &format{head: ipHeader, sep: jsonSeparator, tail: jsonTrailer}, nil
	case tallyv1.RecordType_RECORD_TYPE_STORAGE:
		return &format{head: storageHeader, tail: storageFooter}, nil
	case tallyv1.RecordType_RECORD_TYPE_ENERGY:
		return &format{head: energyHeader, sep: jsonSeparator, tail: energyTrailer}, nil
	}
	return nil, fmt.Errorf("no message format for record type %s: %w", record.TypeName(t), ErrInvalid)
}

// appendRecord renders one (valid) record of the format's type.
func (f *format) appendRecord(dst []byte, r *tallyv1.Record) []byte {
	switch p := r.GetPayload().(type) {
	case *tallyv1.Record_Cloud:
		dst, f.scratch = appendCloud(dst, p.Cloud, f.scratch)
	case *tallyv1.Record_Accelerator:
		f.scratch = acceleratorFields(p.Accelerator, f.scratch[:0])
		dst = appendJSONObject(dst, f.scratch)
	case *tallyv1.Record_Ip:
		f.scratch = ipFields(p.Ip, f.scratch[:0])
		dst = appendJSONObject(dst, f.scratch)
	case *tallyv1.Record_Storage:
		dst = appendStorage(dst, p.Storage)
	case *tallyv1.Record_Energy:
		f.scratch = energyFields(p.Energy, f.scratch[:0])
		dst = appendJSONObject(dst, f.scratch)
	}
	return dst
}

// Render writes records, all of one type, as one message, validating each
// first. Use Split to respect the message limits.
func Render(records []*tallyv1.Record) ([]byte, error) {
	msgs, err := Split(records, math.MaxInt, math.MaxInt)
	if err != nil || len(msgs) == 0 {
		return nil, err
	}
	return msgs[0], nil
}

// Split validates records, all of one type, and renders them in order as
// messages of at most maxRecords records (DefaultMaxRecords when ≤ 0) and
// at most maxBytes bytes (DefaultMaxBytes when ≤ 0). The result depends
// only on the records and the limits, so a retry renders the same messages.
// An invalid record fails the whole call with an error wrapping ErrInvalid
// (a *FieldError): APEL rejects a message for one bad record, so a bad
// record is reported rather than shipped.
func Split(records []*tallyv1.Record, maxRecords, maxBytes int) ([][]byte, error) {
	if len(records) == 0 {
		return nil, nil
	}
	if maxRecords <= 0 {
		maxRecords = DefaultMaxRecords
	}
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	typ := record.TypeOf(records[0])
	f, err := formatOf(typ)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	for _, r := range records {
		if t := record.TypeOf(r); t != typ {
			return nil, fmt.Errorf("%s and %s: %w", record.TypeName(typ), record.TypeName(t), ErrMixedTypes)
		}
		if err := ValidateAt(r, now); err != nil {
			return nil, err
		}
	}
	var (
		msgs    [][]byte
		cur     []byte
		n       int
		scratch []byte
	)
	fixed := len(f.head) + len(f.tail)
	for _, r := range records {
		scratch = f.appendRecord(scratch[:0], r)
		if fixed+len(scratch) > maxBytes {
			return nil, fmt.Errorf("record %q renders to %d bytes, more than a message of %d bytes holds: %w",
				r.GetKey(), len(scratch), maxBytes, ErrInvalid)
		}
		if n > 0 && (n == maxRecords || len(cur)+len(f.sep)+len(scratch)+len(f.tail) > maxBytes) {
			msgs = append(msgs, append(cur, f.tail...))
			cur, n = nil, 0
		}
		if n == 0 {
			size := min(maxBytes, fixed+(len(scratch)+len(f.sep))*min(maxRecords, len(records)))
			cur = append(make([]byte, 0, size), f.head...)
		} else {
			cur = append(cur, f.sep...)
		}
		cur = append(cur, scratch...)
		n++
	}
	return append(msgs, append(cur, f.tail...)), nil
}
