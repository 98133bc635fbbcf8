package cli

import (
	"fmt"
	"io"
	"os"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"
)

// memProfileEnv names a heap profile file for "tally extract". It is a
// debugging hook, on purpose not in the config or the README: finding where
// a large run's memory goes (issue 4) needs the heap at its peak, which a
// profile taken at exit does not show. The file is rewritten each time the
// live heap grows by memProfileStep past its previous peak, and a line on
// stderr at exit compares the runtime's view with the kernel's peak RSS.
//
//	TALLY_MEMPROFILE=/tmp/heap.pprof tally extract ...
//	go tool pprof -sample_index=inuse_space -top /tmp/heap.pprof
const memProfileEnv = "TALLY_MEMPROFILE"

const memProfileStep = 4 << 20

// memProfiler watches the heap and writes the profile at each new peak.
type memProfiler struct {
	path string
	w    io.Writer
	stop chan struct{}
	done sync.WaitGroup

	peakLive, peakTotal uint64
	atPeak              string // the runtime's memory classes at peakTotal
	errs                int
}

// startMemProfile starts the hook when env asks for it; the returned
// function stops it and prints the summary.
func startMemProfile(env Env) func() {
	path := env.getenv(memProfileEnv)
	if path == "" {
		return func() {}
	}
	p := &memProfiler{path: path, w: env.Stderr, stop: make(chan struct{})}
	p.done.Add(1)
	go p.run()
	return p.finish
}

var memSamples = []string{
	"/gc/heap/live:bytes",
	"/memory/classes/total:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/released:bytes",
	"/memory/classes/heap/stacks:bytes",
	"/memory/classes/os-stacks:bytes",
	"/memory/classes/metadata/other:bytes",
	"/memory/classes/other:bytes",
	"/sched/goroutines:goroutines",
}

func (p *memProfiler) run() {
	defer p.done.Done()
	samples := make([]metrics.Sample, len(memSamples))
	for i, n := range memSamples {
		samples[i].Name = n
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
		metrics.Read(samples)
		live, total := samples[0].Value.Uint64(), samples[1].Value.Uint64()
		if total > p.peakTotal {
			p.peakTotal = total
			p.atPeak = ""
			for _, s := range samples[1:] {
				p.atPeak += " " + s.Name + "=" + mib(s)
			}
		}
		if live > p.peakLive+memProfileStep {
			p.peakLive = live
			p.write()
		}
	}
}

func (p *memProfiler) write() {
	f, err := os.Create(p.path)
	if err == nil {
		err = pprof.WriteHeapProfile(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil && p.errs == 0 {
		p.errs++
		fmt.Fprintf(p.w, "tally: %s: %v\n", memProfileEnv, err)
	}
}

func (p *memProfiler) finish() {
	close(p.stop)
	p.done.Wait()
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	fmt.Fprintf(p.w, "tally: %s: peak live heap %.1f MiB (profile %s), peak runtime total %.1f MiB:%s; peak RSS %.1f MiB\n",
		memProfileEnv, float64(p.peakLive)/(1<<20), p.path, float64(p.peakTotal)/(1<<20), p.atPeak, float64(ru.Maxrss)/1024)
}

func mib(s metrics.Sample) string {
	if s.Value.Kind() != metrics.KindUint64 {
		return "?"
	}
	if !strings.HasSuffix(s.Name, ":bytes") {
		return fmt.Sprint(s.Value.Uint64())
	}
	return fmt.Sprintf("%.1fMiB", float64(s.Value.Uint64())/(1<<20))
}
