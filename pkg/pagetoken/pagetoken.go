// Package pagetoken makes the opaque page tokens of tally's gRPC APIs:
// base64url(JSON{position, filter fingerprint}) + CRC32. A token is not
// secret (a client can only page through what it may read anyway); the
// checksum turns a damaged or edited token into a clear error rather than
// a wrong page, and the fingerprint refuses a token reused with another
// filter.
package pagetoken

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"hash/fnv"

	"google.golang.org/protobuf/proto"
)

// Errors Decode returns; callers turn them into InvalidArgument.
var (
	ErrMalformed   = errors.New("malformed token")
	ErrOtherFilter = errors.New("the token belongs to a different filter")
)

type token struct {
	Pos    json.RawMessage `json:"p"`
	Filter uint64          `json:"f"`
}

// Fingerprint digests m, the request or filter a token is bound to; the
// caller clears the paging fields of a whole request first.
func Fingerprint(m proto.Message) uint64 {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}

// Encode returns the token of position pos (any JSON value) under
// fingerprint fp.
func Encode(pos any, fp uint64) string {
	p, _ := json.Marshal(pos)
	b, _ := json.Marshal(token{p, fp})
	b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
	return base64.RawURLEncoding.EncodeToString(b)
}

// Decode reads s into pos; it fails with ErrMalformed or ErrOtherFilter.
func Decode(s string, fp uint64, pos any) error {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 5 {
		return ErrMalformed
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	var t token
	if crc32.ChecksumIEEE(body) != sum || json.Unmarshal(body, &t) != nil {
		return ErrMalformed
	}
	if t.Filter != fp {
		return ErrOtherFilter
	}
	dec := json.NewDecoder(bytes.NewReader(t.Pos))
	dec.DisallowUnknownFields()
	if err := dec.Decode(pos); err != nil {
		return ErrMalformed
	}
	return nil
}
