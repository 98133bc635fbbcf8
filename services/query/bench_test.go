package query

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/pgtest"
)

// benchSizes are the store sizes benchmarked: 100,000 records always,
// 1,000,000 with TALLY_BENCH_FULL=1 (several minutes per store).
func benchSizes() []int {
	if !testing.Short() && os.Getenv("TALLY_BENCH_FULL") == "1" {
		return []int{100_000, 1_000_000}
	}
	return []int{100_000}
}

const benchBatch = 1000

// benchWriters is the concurrent writers of the second ingest: as many
// as the enricher's default workers, which push batches at once.
const benchWriters = 4

var benchVOs = []string{"atlas", "cms", "lhcb", "alice", "belle", "dune", "icecube", "lsst", "ska", "virgo"}

// benchID is the id of the i-th VM or volume: a UUID, as clouds give
// them, so that ids arrive in no order and every index keyed by one takes
// its entry at a random place, as in production. TALLY_BENCH_IDS=sequential
// gives ids in insertion order instead ("vm-0000001"), which the figures
// before 2026-11-25 used; they hide that cost.
func benchID(kind string, i int) string {
	if benchSequentialIDs {
		return fmt.Sprintf("%s-%07d", kind, i)
	}
	h := sha256.Sum256([]byte(kind + strconv.Itoa(i)))
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

var benchSequentialIDs = os.Getenv("TALLY_BENCH_IDS") == "sequential"

// benchBatches calls fn with n records in batches: 80% cloud records (one
// VM each, started over 2026 and measured at a month's end), 10%
// accelerator and 10% storage records.
func benchBatches(n int, fn func([]*tallyv1.Record) error) error {
	base := at("2026-01-01T00:00:00Z")
	b := make([]*tallyv1.Record, 0, benchBatch)
	for i := range n {
		vo := benchVOs[i%len(benchVOs)]
		project := fmt.Sprintf("project-%03d", i%200)
		start := base.Add(time.Duration(i%(360*24)) * time.Hour)
		var r *tallyv1.Record
		switch i % 10 {
		case 8:
			y, m, _ := start.Date()
			r = accel(benchID("vm", i-1), "SITE", vo, project, int32(y), int32(m), 1, 86400, start.Add(24*time.Hour))
		case 9:
			r = storage(benchID("vol", i), "SITE", vo, project, 10, start, start.Add(24*time.Hour))
		default:
			v := vm{id: benchID("vm", i), site: "SITE", vo: vo, project: project, user: fmt.Sprintf("user-%03d", i%500),
				cpus: int32(1 + i%8), benchmark: float64(i % 3 * 5), start: start}
			if i%2 == 0 {
				v.end = start.Add(time.Duration(1+i%200) * time.Hour)
			}
			y, m, _ := start.Date()
			monthEnd := time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
			r = v.cloud(monthEnd.Add(-24*time.Hour), monthEnd)
		}
		b = append(b, r)
		if len(b) == benchBatch || i == n-1 {
			if err := fn(b); err != nil {
				return err
			}
			b = b[:0]
		}
	}
	return nil
}

// ingest writes n records from writers goroutines at once: the query
// messenger's store is written by concurrent pushes, one per enricher
// worker (enricher.workers, 4 by default), so one batch is planned while
// another is written. One writer is the sequential rate.
func ingest(ctx context.Context, s Store, n, writers int) error {
	if writers <= 1 {
		return benchBatches(n, func(b []*tallyv1.Record) error { return s.Write(ctx, b) })
	}
	batches := make(chan []*tallyv1.Record, writers)
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			var first error
			for b := range batches {
				if err := s.Write(ctx, b); err != nil && first == nil {
					first = err
				}
			}
			errs <- first
		})
	}
	// benchBatches reuses its slice: each writer gets a copy.
	err := benchBatches(n, func(b []*tallyv1.Record) error {
		batches <- slices.Clone(b)
		return nil
	})
	close(batches)
	wg.Wait()
	close(errs)
	for e := range errs {
		err = errors.Join(err, e)
	}
	return err
}

// BenchmarkStore fills an empty store and queries it, on each backend:
//
//   - ingest: the upsert rate in batches of 1000 from one writer, and
//     ingest-4-writers from four at once, as the enricher's workers push
//     them (target 20,000 records/s);
//   - list-vo-month: ListRecords' first page with a VO and month filter
//     (target p99 < 10 ms); list-month, with a month filter alone;
//   - summary-month-vo: SummarizeUsage by month and VO over everything
//     (target < 500 ms).
func BenchmarkStore(b *testing.B) {
	ctx := context.Background()
	for _, be := range backends {
		for _, n := range benchSizes() {
			b.Run(fmt.Sprintf("%s/%d", be.name, n), func(pb *testing.B) {
				b := pb
				// The store the last ingest filled, for the queries; it
				// belongs to this benchmark, not to the ingest one.
				var s Store
				var loc string
				for _, writers := range []int{1, benchWriters} {
					name := "ingest"
					if writers > 1 {
						name = fmt.Sprintf("ingest-%d-writers", writers)
					}
					b.Run(name, func(b *testing.B) {
						var total, cpu time.Duration
						for range b.N {
							b.StopTimer()
							if s != nil {
								// The last ingest's store goes, so that the
								// next starts on a server (or disk) holding
								// no other million records.
								s.Close()
								dropLocation(b, loc)
							}
							loc = be.location(pb)
							s = openAt(pb, loc)
							b.StartTimer()
							t0, c0 := time.Now(), cpuTime()
							if err := ingest(ctx, s, n, writers); err != nil {
								b.Fatal(err)
							}
							total += time.Since(t0)
							cpu += cpuTime() - c0
						}
						b.ReportMetric(float64(n*b.N)/total.Seconds(), "records/s")
						// The machine may be shared: the rate per CPU second of
						// this process (for PostgreSQL, without the server's
						// share) shows what contention hides.
						b.ReportMetric(float64(n*b.N)/cpu.Seconds(), "records/cpu-s")
						// SQLite's WAL at the end: how far the checkpoints
						// let it grow (see sqliteStore.checkpointer).
						if path, ok := strings.CutPrefix(loc, "sqlite://"); ok {
							if fi, err := os.Stat(path + "-wal"); err == nil {
								b.ReportMetric(float64(fi.Size())/(1<<20), "walMiB")
							}
						}
					})
				}
				if s == nil {
					b.Fatal("ingest did not run")
				}
				if _, ok := s.(*sqliteStore); ok {
					// SQLite's open loads every record's identity hash
					// into memory (identIndex): the time a start takes,
					// and the heap it holds, per record.
					b.Run("reopen", func(b *testing.B) {
						var took time.Duration
						var heap int64
						for range b.N {
							s.Close()
							h0 := heapAlloc()
							t0 := time.Now()
							s = openAt(pb, loc)
							took += time.Since(t0)
							heap = int64(heapAlloc()) - int64(h0)
						}
						b.ReportMetric(float64(took.Milliseconds())/float64(b.N), "ms/open")
						b.ReportMetric(float64(heap)/float64(n), "heap-B/record")
					})
				}
				if pg, ok := s.(*pgStore); ok {
					// Fresh tables: give the planner statistics, as
					// autovacuum soon would.
					if _, err := pg.pool.Exec(ctx, "ANALYZE"); err != nil {
						b.Fatal(err)
					}
				}
				srv := NewServer(s, discard())
				// The first page of each month, of one VO (the target's
				// query) and of all.
				for _, byVO := range []bool{true, false} {
					name := "list-month"
					if byVO {
						name = "list-vo-month"
					}
					b.Run(name, func(b *testing.B) {
						var lat []time.Duration
						i := 0
						for b.Loop() {
							m := time.Month(1 + i%12)
							f := &tallyv1.RecordFilter{
								Start: ts(time.Date(2026, m, 1, 0, 0, 0, 0, time.UTC)), End: ts(time.Date(2026, m+1, 1, 0, 0, 0, 0, time.UTC)),
							}
							if byVO {
								f.Vos = []string{benchVOs[i%len(benchVOs)]}
							}
							t0 := time.Now()
							resp, err := srv.ListRecords(ctx, &tallyv1.ListRecordsRequest{Filter: f})
							lat = append(lat, time.Since(t0))
							if err != nil {
								b.Fatal(err)
							}
							if len(resp.GetRecords()) != DefaultPageSize {
								b.Fatalf("%d records on the first page", len(resp.GetRecords()))
							}
							i++
						}
						slices.Sort(lat)
						b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
					})
				}
				b.Run("summary-month-vo", func(b *testing.B) {
					req := &tallyv1.SummarizeUsageRequest{GroupBy: []tallyv1.UsageGroupBy{
						tallyv1.UsageGroupBy_USAGE_GROUP_BY_MONTH, tallyv1.UsageGroupBy_USAGE_GROUP_BY_VO}}
					var worst time.Duration
					for b.Loop() {
						t0 := time.Now()
						resp, err := srv.SummarizeUsage(ctx, req)
						worst = max(worst, time.Since(t0))
						if err != nil {
							b.Fatal(err)
						}
						if len(resp.GetGroups()) < 12*len(benchVOs) {
							b.Fatalf("%d groups", len(resp.GetGroups()))
						}
					}
					b.ReportMetric(float64(worst.Microseconds())/1000, "max-ms")
				})
			})
		}
	}
}

// BenchmarkListManyVOs times List without a VO at a site of many VOs:
// PostgreSQL walks each VO of the store (schema 10), so the first page
// reads up to a page per VO. 200,000 cloud records over 500 VOs; the
// first page of a month and of everything, the worst of the runs.
func BenchmarkListManyVOs(b *testing.B) {
	ctx := context.Background()
	const n, vos = 200_000, 500
	for _, be := range backends {
		b.Run(be.name, func(pb *testing.B) {
			s := openAt(pb, be.location(pb))
			base := at("2026-01-01T00:00:00Z")
			var batch []*tallyv1.Record
			for i := range n {
				start := base.Add(time.Duration(i%(360*24)) * time.Hour)
				v := vm{id: benchID("vm", i), site: "SITE", vo: fmt.Sprintf("vo-%03d", i%vos), project: "p", cpus: 1, start: start}
				y, m, _ := start.Date()
				monthEnd := time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
				batch = append(batch, v.cloud(monthEnd.Add(-24*time.Hour), monthEnd))
				if len(batch) == benchBatch {
					if err := s.Write(ctx, batch); err != nil {
						pb.Fatal(err)
					}
					batch = batch[:0]
				}
			}
			if pg, ok := s.(*pgStore); ok {
				// As autovacuum soon would.
				if _, err := pg.pool.Exec(ctx, "VACUUM ANALYZE"); err != nil {
					pb.Fatal(err)
				}
			}
			for _, tc := range []struct {
				name string
				f    *tallyv1.RecordFilter
			}{
				{"month", &tallyv1.RecordFilter{Start: ts(at("2026-05-01T00:00:00Z")), End: ts(at("2026-06-01T00:00:00Z"))}},
				{"all", &tallyv1.RecordFilter{}},
			} {
				pb.Run(tc.name, func(b *testing.B) {
					var worst time.Duration
					for b.Loop() {
						t0 := time.Now()
						recs, _, err := s.List(ctx, tc.f, nil, DefaultPageSize)
						worst = max(worst, time.Since(t0))
						if err != nil {
							b.Fatal(err)
						}
						if len(recs) != DefaultPageSize {
							b.Fatalf("%d records on the first page", len(recs))
						}
					}
					b.ReportMetric(float64(worst.Microseconds())/1000, "max-ms")
				})
			}
		})
	}
}

// dropLocation removes a store a benchmark has done with.
func dropLocation(b *testing.B, loc string) {
	if path, ok := strings.CutPrefix(loc, "sqlite://"); ok {
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if err := os.Remove(path + suffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
				b.Fatal(err)
			}
		}
		return
	}
	pgtest.Drop(b, loc)
}

// heapAlloc is the live heap after a collection.
func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// cpuTime is the CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkUpgrade times a store's upgrade to the latest version from
// those before its largest rebuilds: SQLite from 6 (7, ridsVersion,
// rebuilds record_windows and cloud_months; 8, derivedKeysVersion, builds
// the index of given keys; 11, hashedVersion, rebuilds records) and from
// 10 (11 alone), PostgreSQL from 8 (9, pgRidsVersion, numbers the records
// and rebuilds both tables; 10, pgVOListVersion, builds records_vo_list).
// It is the pause an upgraded tally's first start takes. The store is
// filled with four writers, as BenchmarkStore's.
func BenchmarkUpgrade(b *testing.B) {
	ctx := context.Background()
	for _, be := range backends {
		froms := []int{ridsVersion - 1, hashedVersion - 1}
		if be.name == "postgres" {
			froms = []int{pgRidsVersion - 1}
		}
		for _, from := range froms {
			for _, n := range benchSizes() {
				b.Run(fmt.Sprintf("%s-from-%d/%d", be.name, from, n), func(b *testing.B) {
					var took time.Duration
					for range b.N {
						b.StopTimer()
						loc := be.location(b)
						old, err := openStore(ctx, loc, "", from, DefaultCacheMiB)
						if err != nil {
							b.Fatal(err)
						}
						if err := ingest(ctx, old, n, benchWriters); err != nil {
							b.Fatal(err)
						}
						old.Close()
						b.StartTimer()
						t0 := time.Now()
						s, err := OpenStore(ctx, loc, "")
						if err != nil {
							b.Fatal(err)
						}
						took += time.Since(t0)
						if v, err := s.SchemaVersion(ctx); err != nil || v != len(migrations) {
							b.Fatalf("upgraded store at version %d (%v)", v, err)
						}
						s.Close()
						b.StopTimer()
						dropLocation(b, loc)
						b.StartTimer()
					}
					b.ReportMetric(took.Seconds()/float64(b.N), "s/upgrade")
				})
			}
		}
	}
}
