package verifier

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
)

// instanceIDs are the numbers of the instances (their iid in the
// instances table), kept in memory since store version 3 took the table's
// index of UUIDs away: a new instance's UUID took a random page of that
// index at every commit, and the lookups behind it were a fifth of the
// committer's time at a million notifications. Loaded at open (about
// 50-60 bytes an instance), they are caught up with the table before each
// group transaction and before a reader misses, so that instances another
// process numbered in the same file are found too.
type instanceIDs struct {
	mu sync.RWMutex
	// uuids holds the canonical UUIDs (Nova's, lower-case hex) by their
	// 16 bytes, a map the garbage collector need not scan; other holds
	// any other id as it is.
	uuids map[[16]byte]int64
	other map[string]int64
	// last is the highest iid loaded from the table.
	last int64
}

func newInstanceIDs() *instanceIDs {
	return &instanceIDs{uuids: map[[16]byte]int64{}, other: map[string]int64{}}
}

// uuidKey is id's 16 bytes when id is a canonical UUID: each such string
// has one key and each key one string, so the map is exact. It allocates
// nothing: the committer asks it for every notification's instance.
func uuidKey(id string) ([16]byte, bool) {
	var k [16]byte
	if len(id) != 36 {
		return k, false
	}
	// Every group of hex digits has an even length, so a byte's two digits
	// never straddle a dash.
	for i, j := 0, 0; i < len(id); {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if id[i] != '-' {
				return k, false
			}
			i++
			continue
		}
		hi, ok1 := lowerHex(id[i])
		lo, ok2 := lowerHex(id[i+1])
		if !ok1 || !ok2 {
			return k, false
		}
		k[j] = hi<<4 | lo
		i, j = i+2, j+1
	}
	return k, true
}

// lowerHex is the value of a lower-case hex digit.
func lowerHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

func (x *instanceIDs) get(id string) (int64, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.getLocked(id)
}

func (x *instanceIDs) getLocked(id string) (int64, bool) {
	if k, ok := uuidKey(id); ok {
		iid, found := x.uuids[k]
		return iid, found
	}
	iid, found := x.other[id]
	return iid, found
}

// put records committed numbers.
func (x *instanceIDs) put(ids []numbered) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.putLocked(ids)
}

func (x *instanceIDs) putLocked(ids []numbered) {
	for _, n := range ids {
		if k, ok := uuidKey(n.uuid); ok {
			x.uuids[k] = n.iid
		} else {
			x.other[n.uuid] = n.iid
		}
		x.last = max(x.last, n.iid)
	}
}

// wrapErr is err with what, or nil.
func wrapErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// numbered is an instance and its number.
type numbered struct {
	uuid string
	iid  int64
}

// catchUp loads the instances numbered after the last one loaded, by this
// process or another. q must see only committed rows (a pooled
// connection, or a transaction that has not numbered any yet).
func (x *instanceIDs) catchUp(ctx context.Context, q interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	rows, err := q.QueryContext(ctx, `SELECT iid, uuid FROM instances WHERE iid > ? ORDER BY iid`, x.last)
	if err != nil {
		return fmt.Errorf("instances: %w", err)
	}
	ids, err := collectRows(rows, func(r scanner) (numbered, error) {
		var n numbered
		err := r.Scan(&n.iid, &n.uuid)
		return n, err
	})
	if err != nil {
		return fmt.Errorf("instances: %w", err)
	}
	x.putLocked(ids)
	return nil
}

// iidOf is the number of a committed instance, for readers; false when
// no instance has that id.
func (s *SQLiteStore) iidOf(ctx context.Context, id string) (int64, bool, error) {
	if iid, ok := s.iids.get(id); ok {
		return iid, true, nil
	}
	if err := s.iids.catchUp(ctx, s.db); err != nil {
		return 0, false, err
	}
	iid, ok := s.iids.get(id)
	return iid, ok, nil
}

// txIIDs are the instances the committer's current group transaction
// numbered, published to s.iids only once it committed. The committer
// alone touches them.
type txIIDs struct {
	of    map[string]int64
	added []numbered
}

// undo forgets what an op numbered after mark, when its savepoint is
// rolled back.
func (t *txIIDs) undo(mark int) {
	for _, n := range t.added[mark:] {
		delete(t.of, n.uuid)
	}
	t.added = t.added[:mark]
}

// batchIIDs are the numbers of a batch's instances (of), and which of
// them the batch numbered (added).
type batchIIDs struct {
	of    map[string]int64
	added map[string]bool
}

// instanceNumbers reads the numbers of b's instances and numbers the new
// ones, after every instance before them. A new instance's launches,
// deletes and exists then go at the end of their tables' keys, where its
// UUID put each at a random page of three indexes (at a million
// notifications, ingest ran at under a third of the rate it had with ids
// in order); an exists of an older instance still goes to that
// instance's place in (iid, msg_key), one random page where there were
// two (msg_key and instance). It runs on the committer, inside the group
// transaction.
func (s *SQLiteStore) instanceNumbers(ctx context.Context, tx *sql.Tx, b *Batch) (batchIIDs, error) {
	ids := batchIIDs{of: map[string]int64{}, added: map[string]bool{}}
	var ins *sql.Stmt
	defer func() {
		if ins != nil {
			ins.Close()
		}
	}()
	number := func(id string) error {
		if _, ok := ids.of[id]; ok {
			return nil
		}
		if iid, ok := s.newIIDs.of[id]; ok {
			ids.of[id] = iid
			return nil
		}
		if iid, ok := s.iids.get(id); ok {
			ids.of[id] = iid
			return nil
		}
		if ins == nil {
			var err error
			if ins, err = tx.PrepareContext(ctx, sqliteInsertIID); err != nil {
				return err
			}
		}
		res, err := ins.ExecContext(ctx, id)
		if err != nil {
			return err
		}
		iid, err := res.LastInsertId()
		if err != nil {
			return err
		}
		ids.of[id], ids.added[id] = iid, true
		s.newIIDs.of[id] = iid
		s.newIIDs.added = append(s.newIIDs.added, numbered{id, iid})
		return nil
	}
	for _, ev := range b.Usage {
		if err := number(ev.Usage.Instance); err != nil {
			return ids, err
		}
	}
	for _, d := range b.Deletes {
		if err := number(d.Instance); err != nil {
			return ids, err
		}
	}
	for _, e := range b.Exists {
		if err := number(e.Usage.Instance); err != nil {
			return ids, err
		}
	}
	return ids, nil
}
