package query

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

func TestCommand(t *testing.T) {
	const token = "cli-token-0123456789"
	svc, f := apiService(t, backends[0], WatchBuffer)
	addr := serve(t, svc, Auth{Token: token})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	env := map[string]string{"TALLY_QUERY_ADDR": addr, "TALLY_QUERY_TOKEN": token}
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := Command(ctx, args, &out, &errb, func(k string) string { return env[k] })
		return code, out.String(), errb.String()
	}

	// Not a terminal: JSON lines, one record per line.
	code, out, errs := run("records", "--vo", "atlas", "--type", "cloud", "--from", "2026-03", "--to", "2026-04")
	if code != 0 {
		t.Fatalf("records: exit %d: %s", code, errs)
	}
	var got []*tallyv1.Record
	for line := range strings.Lines(out) {
		r := &tallyv1.Record{}
		if err := protojson.Unmarshal([]byte(line), r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		got = append(got, r)
	}
	if diff := cmp.Diff([]string{f.vmC.GetKey(), f.vmA2.GetKey()}, keys(got)); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}

	code, out, errs = run("records", "--limit", "4", "--page-size", "3")
	if code != 0 || strings.Count(out, "\n") != 4 {
		t.Errorf("records --limit 4: exit %d, %d lines: %s", code, strings.Count(out, "\n"), errs)
	}

	code, out, errs = run("summary", "--group-by", "month,vo", "--type", "cloud", "--metrics", "record_count,wall_hours")
	if code != 0 {
		t.Fatalf("summary: exit %d: %s", code, errs)
	}
	var groups []*tallyv1.UsageGroup
	for line := range strings.Lines(out) {
		g := &tallyv1.UsageGroup{}
		if err := protojson.Unmarshal([]byte(line), g); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if g.GetValues().CpuHours != nil {
			t.Errorf("cpu_hours given though not asked for: %v", g)
		}
		groups = append(groups, g)
	}
	// vm-a's rows are measured at its windows' ends, 02-01 and 03-01:
	// atlas February and March, cms February.
	if len(groups) != 3 {
		t.Errorf("%d groups, want 3:\n%s", len(groups), out)
	}

	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"summary", "--group-by", "flavour"}, 2, "--group-by"},
		{[]string{"records", "--from", "yesterday"}, 2, "--from"},
		{[]string{"records", "--type", "vm"}, 2, "--type"},
		{[]string{"frobnicate"}, 2, "unknown subcommand"},
		{[]string{"records", "--token", "wrong-token"}, 1, "Unauthenticated"},
		{[]string{"get", "cloud/none"}, 1, "NotFound"},
	} {
		code, _, errs := run(tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.msg) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errs, tc.code, tc.msg)
		}
	}

	// watch prints records as they come, until the context ends.
	wctx, wcancel := context.WithCancel(ctx)
	var wout, werr lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- Command(wctx, []string{"watch", "--vo", "cms"}, &wout, &werr, func(k string) string { return env[k] })
	}()
	waitFor(t, "the watcher", svc.hub.active)
	if err := svc.Sink().Write(ctx, "b9", f.all); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the watched record", func() bool { return svc.hub.active() && strings.Contains(wout.String(), "vm-b") })
	wcancel()
	if code := <-done; code != 0 {
		t.Errorf("watch: exit %d: %s", code, werr.String())
	}
}

// lockedBuffer is a buffer one goroutine writes while another reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestTable(t *testing.T) {
	f := newFixture()
	var b bytes.Buffer
	p := newPrinter(&b, false)
	p.record(f.vmA2)
	p.record(f.stor)
	p.flush()
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "TYPE") || !strings.Contains(lines[1], "alice") || !strings.Contains(lines[1], "1200.00") {
		t.Errorf("table:\n%s", b.String())
	}
}
