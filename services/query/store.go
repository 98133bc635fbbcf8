package query

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// ErrNotFound is returned by Store.Get for an unknown key.
var ErrNotFound = errors.New("query: record not found")

// Cursor is a position in the List order (newest start first, then
// identity descending).
type Cursor struct {
	Start int64  `json:"s"`
	Ident string `json:"i"`
}

// Store keeps the records the query service serves. Both implementations
// share the schema and its migrations (schema.go).
type Store interface {
	// Write upserts records by identity in one transaction.
	Write(ctx context.Context, recs []*tallyv1.Record) error
	// Get returns the record with the key (the latest extracted, should
	// two sites send the same key); ErrNotFound if there is none.
	Get(ctx context.Context, key string) (*tallyv1.Record, error)
	// List returns up to limit records matching f after the cursor (nil:
	// from the start), and the cursor of the next page (nil on the last).
	List(ctx context.Context, f *tallyv1.RecordFilter, after *Cursor, limit int) ([]*tallyv1.Record, *Cursor, error)
	// Summarize returns every metric for the groups of the records
	// matching f, sorted by key.
	Summarize(ctx context.Context, f *tallyv1.RecordFilter, groupBy []tallyv1.UsageGroupBy) ([]*tallyv1.UsageGroup, error)
	// SchemaVersion is the store's migration level.
	SchemaVersion(ctx context.Context) (int, error)
	Close() error
}

// OpenStore opens (creating or upgrading) the store at location: empty for
// <dataDir>/query.db, sqlite:///path, or a postgres:// URL.
func OpenStore(ctx context.Context, location, dataDir string) (Store, error) {
	return openStore(ctx, location, dataDir, len(migrations), DefaultCacheMiB)
}

// openStore migrates to at most version target; tests use it to build
// stores of an old schema.
func openStore(ctx context.Context, location, dataDir string, target, cacheMiB int) (Store, error) {
	kind, where, err := parseStore(location, dataDir)
	if err != nil {
		return nil, err
	}
	if kind == "postgres" {
		return openPostgres(ctx, where, target)
	}
	return openSQLite(ctx, where, target, cacheMiB)
}

// parseStore splits a store location into its kind and the path or URL.
func parseStore(location, dataDir string) (kind, where string, err error) {
	switch {
	case location == "":
		if dataDir == "" {
			return "", "", errors.New("no store given and no data dir")
		}
		return "sqlite", filepath.Join(dataDir, "query.db"), nil
	case strings.HasPrefix(location, "sqlite://"):
		u, err := url.Parse(location)
		if err != nil {
			return "", "", fmt.Errorf("store %q: %w", location, err)
		}
		if u.Host != "" || u.Path == "" {
			return "", "", fmt.Errorf("store %q: want sqlite:///absolute/path", location)
		}
		return "sqlite", u.Path, nil
	case strings.HasPrefix(location, "postgres://"), strings.HasPrefix(location, "postgresql://"):
		if _, err := url.Parse(location); err != nil {
			return "", "", fmt.Errorf("store: %w", err)
		}
		return "postgres", location, nil
	}
	return "", "", fmt.Errorf("store %q is neither sqlite:///path nor postgres://...", location)
}

// batch is a write, planned: rows deduplicated by identity (the latest
// extraction wins, then the later in the batch), ready for one upsert.
type batch struct {
	recs    []attrs
	windows []window // one per (ident, window)
	vms     []vmKey
	clouds  map[vmKey][]monthRow
}

// keySites are the sites of the batch's records with derived keys whose
// identity holds the site: the sites GetRecord tries for such a key.
func (b *batch) keySites() []string {
	var out []string
	for i := range b.recs {
		a := &b.recs[i]
		kind, _, _ := strings.Cut(a.ident, sep)
		if a.keyDerived && identKinds[kind] && !slices.Contains(out, a.site) {
			out = append(out, a.site)
		}
	}
	return out
}

// knownSites are the sites key_sites holds already, as far as this
// process knows: a write inserts only the others.
type knownSites struct {
	mu sync.Mutex
	m  map[string]bool
}

// missing are the batches' key sites (keySites) not known yet.
func (k *knownSites) missing(bs ...*batch) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for _, b := range bs {
		for _, site := range b.keySites() {
			if !k.m[site] && !slices.Contains(out, site) {
				out = append(out, site)
			}
		}
	}
	// In order, as the rollup rows (rollKey.compare).
	slices.Sort(out)
	return out
}

// add records sites as held by key_sites, once their write committed.
func (k *knownSites) add(sites []string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil {
		k.m = map[string]bool{}
	}
	for _, site := range sites {
		k.m[site] = true
	}
}

// window is a row of record_windows.
type window struct {
	ident                 string
	from, to, extractedAt int64
}

// planChunk is the fewest records worth deriving on a goroutine of
// their own.
const planChunk = 128

func planBatch(recs []*tallyv1.Record) (*batch, error) {
	// Deriving the columns (encoding each record among them) is most of
	// planning, and the database waits for it: it runs on every core.
	as := make([]attrs, len(recs))
	errs := make([]error, len(recs))
	workers := min(runtime.GOMAXPROCS(0), (len(recs)+planChunk-1)/planChunk)
	var wg sync.WaitGroup
	for w := range workers {
		lo, hi := w*len(recs)/workers, (w+1)*len(recs)/workers
		wg.Go(func() {
			for i := lo; i < hi; i++ {
				as[i], errs[i] = attrsOf(recs[i])
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err // the first, as planning in order would
		}
	}
	b := &batch{clouds: make(map[vmKey][]monthRow, len(recs)), recs: make([]attrs, 0, len(recs)), windows: make([]window, 0, len(recs))}
	byIdent := make(map[string]int, len(recs))
	type win struct {
		ident    string
		from, to int64
	}
	byWin := make(map[win]int, len(recs))
	for j, r := range recs {
		a := &as[j]
		if i, ok := byIdent[a.ident]; !ok {
			byIdent[a.ident] = len(b.recs)
			b.recs = append(b.recs, *a)
		} else if a.extractedAt >= b.recs[i].extractedAt {
			b.recs[i] = *a
		}
		w := win{a.ident, a.windowFrom, a.windowTo}
		if i, ok := byWin[w]; !ok {
			byWin[w] = len(b.windows)
			b.windows = append(b.windows, window{a.ident, a.windowFrom, a.windowTo, a.extractedAt})
		} else if a.extractedAt > b.windows[i].extractedAt {
			b.windows[i].extractedAt = a.extractedAt
		}
		if c := r.GetCloud(); c != nil {
			k := vmKey{a.site, c.GetVmUuid()}
			if _, ok := b.clouds[k]; !ok {
				b.vms = append(b.vms, k)
			}
			b.clouds[k] = append(b.clouds[k], newMonthRow(a, c))
		}
	}
	return b, nil
}

// months merges the batch's cloud rows with the stored ones: the rows to
// write, and the change to cloud_rollup.
func (b *batch) months(stored map[vmKey][]monthRow) ([]monthRow, rollup) {
	var out []monthRow
	roll := rollup{}
	for _, k := range b.vms {
		write, replaced := mergeMonths(stored[k], b.clouds[k])
		for i := range replaced {
			roll.add(&replaced[i], -1)
		}
		for i := range write {
			roll.add(&write[i], 1)
		}
		out = append(out, write...)
	}
	return out, roll
}

// recordColumns are the columns of records, in recordValues order.
var recordColumns = []string{
	"ident", "key", "rtype", "region", "site", "project_id", "vo", "local_user", "global_user", "status", "cpu_count",
	"start_ts", "end_ts", "year", "month", "extracted_at", "window_from", "window_to",
	"wall_s", "cpu_s", "norm_s", "gpu_s", "gb_s", "ip_version", "ip_count", "data",
}

func recordValues(a *attrs) []any {
	return []any{
		a.ident, a.key, int64(a.typ), a.region, a.site, a.project, a.vo, a.localUser, a.globalUser, a.status, a.cpuCount,
		a.start, a.end, a.year, a.month, a.extractedAt, a.windowFrom, a.windowTo,
		a.wall, a.cpu, a.norm, a.gpu, a.gbSeconds, a.ipVersion, a.ipCount, a.data,
	}
}

// upsertSet is the ON CONFLICT clause's SET list: every column but keys.
func upsertSet(cols []string, keys ...string) string {
	var parts []string
	for _, c := range cols {
		if !slices.Contains(keys, c) {
			parts = append(parts, c+" = excluded."+c)
		}
	}
	return strings.Join(parts, ", ")
}

// dialect is what differs in the SQL text of the two stores.
type dialect struct {
	real   string // the float type for CAST
	dollar bool   // $1 placeholders instead of ?
}

// bind rewrites ? placeholders for the dialect. Queries here never hold a
// literal question mark.
func (d dialect) bind(q string) string {
	if !d.dollar {
		return q
	}
	var b strings.Builder
	n := 0
	for _, c := range q {
		if c == '?' {
			n++
			fmt.Fprintf(&b, "$%d", n)
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}
