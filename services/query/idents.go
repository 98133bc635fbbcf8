package query

import (
	"context"
	"database/sql/driver"
	"errors"
	"hash/fnv"
	"sync"

	"modernc.org/sqlite"
)

// identHash is the 64-bit FNV-1a hash of an identity, as SQLite's
// records keep it in ident_h (schema version 11). It only narrows a
// lookup: the rows it names are read and their identities compared, so
// two identities sharing a hash cost a read, never a record. A test
// replaces it to make every identity collide.
var identHash = func(ident string) int64 {
	h := fnv.New64a()
	h.Write([]byte(ident))
	return int64(h.Sum64())
}

// identHashFunc is the SQL name of identHash, which the migration to
// version 11 calls to fill ident_h. It is registered with the driver for
// every connection; nothing stored depends on it (no index, view or
// default names it), so a store stays readable without it.
const identHashFunc = "tally_ident_hash"

func init() {
	err := sqlite.RegisterDeterministicScalarFunction(identHashFunc, 1, func(_ *sqlite.FunctionContext, args []driver.Value) (driver.Value, error) {
		s, ok := args[0].(string)
		if !ok {
			return nil, errIdentNotText
		}
		return identHash(s), nil
	})
	if err != nil {
		panic(err)
	}
}

var errIdentNotText = errors.New("query: " + identHashFunc + ": identity is not text")

// identIndex finds a SQLite record's rid from its identity without an
// index on the identity in the file (schema version 11). Identities hold
// the cloud's UUIDs: such an index took each new record's entry at a
// random place, a page dirtied per record, written to the WAL at commit
// and copied at checkpoint; at a million records it was a third of a
// write (the ingest ran half as fast again with ordered ids). The index
// holds each record's hash (the records_hashes index, in rid order, so
// it appends and loads in one pass) and maps it to the rid in memory:
// about 40 bytes a record (38 at a million, loaded in 0.6 s).
type identIndex struct {
	mu sync.RWMutex
	// first is the rid of the first record of each hash, more those of
	// the others (hashes two identities share).
	first map[int64]int64
	more  map[int64][]int64
	// last is the greatest rid loaded: rows above it were written since,
	// by another process or this one's open transaction.
	last int64
}

func newIdentIndex() *identIndex {
	return &identIndex{first: map[int64]int64{}, more: map[int64][]int64{}}
}

// lookup appends the rids of the records whose identity hashes to h.
func (x *identIndex) lookup(out []int64, h int64) []int64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if rid, ok := x.first[h]; ok {
		out = append(out, rid)
		out = append(out, x.more[h]...)
	}
	return out
}

// addLocked records rid under h; adding it twice changes nothing (a
// reader's catch-up and the writer's publish may both see a row).
func (x *identIndex) addLocked(h, rid int64) {
	x.last = max(x.last, rid)
	first, ok := x.first[h]
	switch {
	case !ok:
		x.first[h] = rid
	case first == rid:
	default:
		for _, r := range x.more[h] {
			if r == rid {
				return
			}
		}
		x.more[h] = append(x.more[h], rid)
	}
}

// publish adds the rows a transaction committed.
func (x *identIndex) publish(rows []identRow) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, r := range rows {
		x.addLocked(r.h, r.rid)
	}
}

type identRow struct{ h, rid int64 }

// catchUp loads the hashes of the rows above the greatest loaded (load
// reads those after a rid), if the store's greatest rid, read by maxRid,
// is above it: rows another process wrote to the file, or at open every
// row.
func (x *identIndex) catchUp(ctx context.Context, maxRid func(ctx context.Context) (int64, error),
	load func(ctx context.Context, after int64, row func(h, rid int64)) error) error {
	top, err := maxRid(ctx)
	if err != nil {
		return err
	}
	x.mu.RLock()
	behind := top > x.last
	x.mu.RUnlock()
	if !behind {
		return nil
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	return load(ctx, x.last, x.addLocked)
}
