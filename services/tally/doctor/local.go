package doctor

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tally-accounting/tally/pkg/dirq"
)

// stateDirName is the SSM messenger's default state directory inside the
// spool, invisible to dirq readers.
const stateDirName = ".tally-ssm"

// spool checks the SSM outgoing directory: writable, on a filesystem with
// hard links, and laid out as python-dirq's QueueSimple (apel-formats.md
// §8), which is all ssmsend reads.
func (d *doctor) spool() {
	dir := d.cfg.SSM.Spool
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		parent := filepath.Dir(dir)
		for {
			if _, err := os.Stat(parent); err == nil || parent == filepath.Dir(parent) {
				break
			}
			parent = filepath.Dir(parent)
		}
		if err := probeWrite(parent, false); err != nil {
			d.rep.add(Fail, "ssm.spool", fmt.Sprintf("create it (install -d -m 2770 -g <ssmsend's group> %s) or make %s writable", dir, parent),
				"%s does not exist and cannot be created: %v", dir, err)
			return
		}
		d.rep.add(OK, "ssm.spool", "", "%s does not exist yet: the first run creates it (%s is writable); point ssmsend's path at it", dir, parent)
		return
	}
	if err != nil {
		d.rep.add(Fail, "ssm.spool", "", "%v", err)
		return
	}
	if !fi.IsDir() {
		d.rep.add(Fail, "ssm.spool", "set messengers.ssm.spool_dir (--ssm-spool) to a directory", "%s is not a directory", dir)
		return
	}
	if err := probeWrite(dir, true); err != nil {
		d.rep.add(Fail, "ssm.spool", fmt.Sprintf("give tally's user write access to %s (group-writable, shared with ssmsend) on a local filesystem", dir),
			"%s: %v", dir, err)
		return
	}
	if sd := d.cfg.SSM.StateDir; sd != "" && sd != filepath.Join(dir, stateDirName) {
		if err := probeLink(sd, dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			d.rep.add(Fail, "ssm.spool", "leave messengers.ssm.state_dir empty (it defaults to inside the spool)",
				"state_dir %s cannot hard-link into %s (they must be on one filesystem): %v", sd, dir, err)
			return
		}
	}
	d.layout(dir)
}

// probeWrite creates and removes a file in dir; with link, it also
// hard-links it, as every dirq add does.
func probeWrite(dir string, link bool) error {
	f, err := os.CreateTemp(dir, ".tally-doctor-*")
	if err != nil {
		return fmt.Errorf("not writable: %w", err)
	}
	name := f.Name()
	f.Close()
	defer os.Remove(name)
	if link {
		if err := os.Link(name, name+".lnk"); err != nil {
			return fmt.Errorf("hard links fail (dirq adds messages by linking): %w", err)
		}
		os.Remove(name + ".lnk")
	}
	return nil
}

func probeLink(from, to string) error {
	f, err := os.CreateTemp(from, ".tally-doctor-*")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	defer os.Remove(name)
	dst := filepath.Join(to, filepath.Base(name))
	if err := os.Link(name, dst); err != nil {
		return err
	}
	return os.Remove(dst)
}

// layout reads the queue as ssmsend would and reports what it would
// ignore or trip over.
func (d *doctor) layout(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		d.rep.add(Fail, "ssm.spool", "", "%s: %v", dir, err)
		return
	}
	var (
		messages, queues int
		oldest           time.Time
		stale, foreign   []string
		nested           []string
	)
	for _, e := range ents {
		name := e.Name()
		switch {
		case e.IsDir() && isHex(name, 8):
			queues++
			sec, _ := strconv.ParseInt(name, 16, 64)
			elems, err := os.ReadDir(filepath.Join(dir, name))
			if err != nil {
				continue
			}
			for _, el := range elems {
				n := el.Name()
				switch {
				case isHex(n, 14):
					messages++
					if t := time.Unix(sec, 0); oldest.IsZero() || t.Before(oldest) {
						oldest = t
					}
				case strings.HasSuffix(n, dirq.LockSuffix):
					if info, err := el.Info(); err == nil && time.Since(info.ModTime()) > dirq.DefaultMaxLock {
						stale = append(stale, name+"/"+n)
					}
				case strings.HasSuffix(n, dirq.TempSuffix):
				default:
					foreign = append(foreign, name+"/"+n)
				}
			}
		case strings.HasPrefix(name, "."):
			// tally's state (.tally-ssm), probes, other tools' dot files:
			// dirq readers skip them.
		case e.IsDir() && holdsQueue(filepath.Join(dir, name)):
			nested = append(nested, name)
		default:
			foreign = append(foreign, name)
		}
	}
	warned := false
	if len(nested) > 0 {
		warned = true
		d.rep.add(Warn, "ssm.spool", fmt.Sprintf("set spool_dir to the queue itself (e.g. %s), the directory ssmsend's path names", filepath.Join(dir, nested[0])),
			"%s holds other dirq queues (%s): ssmsend reads only the 8-hex directories of its own path", dir, strings.Join(nested, ", "))
	}
	if len(stale) > 0 {
		warned = true
		d.rep.add(Warn, "ssm.spool", "look at ssmsend's log: a message it cannot send (often one with non-ASCII bytes) stays locked",
			"%d messages locked by ssmsend for more than %v (%s): a sender that died or failed on them", len(stale), dirq.DefaultMaxLock, list(stale, 4))
	}
	if len(foreign) > 0 {
		warned = true
		d.rep.add(Warn, "ssm.spool", "move them out of the spool", "%s holds entries that are not dirq messages (%s): ssmsend ignores them",
			dir, list(foreign, 4))
	}
	if messages > 0 && time.Since(oldest) > 24*time.Hour {
		warned = true
		d.rep.add(Warn, "ssm.spool", "check that ssmsend runs (cron or timer) with its path set to "+dir,
			"%d messages wait for ssmsend, the oldest since %s: is it sending?", messages, oldest.UTC().Format(time.RFC3339))
	}
	if !warned {
		d.rep.add(OK, "ssm.spool", "", "%s is writable, hard links work, dirq layout as ssmsend reads it (%d messages waiting in %d directories)",
			dir, messages, queues)
	}
}

func holdsQueue(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(ents, func(e fs.DirEntry) bool { return e.IsDir() && isHex(e.Name(), 8) })
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := range n {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// logstash connects to Logstash's tcp input.
func (d *doctor) logstash(ctx context.Context) {
	addr := net.JoinHostPort(d.cfg.Logstash.Host, strconv.Itoa(d.cfg.Logstash.Port))
	dctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(dctx, "tcp", addr)
	if err != nil {
		d.rep.add(Fail, "logstash", fmt.Sprintf("start Logstash's tcp input (codec json_lines) on %s, or fix messengers.logstash.host and port", addr),
			"cannot connect to %s: %v; records wait in the buffer until it answers", addr, err)
		return
	}
	conn.Close()
	d.rep.add(OK, "logstash", "", "%s accepts TCP connections", addr)
}

// prometheus asks for the energy metric over the last hour, as the energy
// extractor does over a window.
func (d *doctor) prometheus(ctx context.Context) {
	cfg := d.cfg.Energy
	var ms []string
	for _, l := range cfg.Labels {
		k, v, _ := strings.Cut(l, ":")
		ms = append(ms, fmt.Sprintf("%s=%q", strings.TrimSpace(k), strings.TrimSpace(v)))
	}
	query := cfg.MetricName
	if len(ms) > 0 {
		query += "{" + strings.Join(ms, ",") + "}"
	}
	end := time.Now().UTC().Truncate(time.Second)
	step := max(cfg.Step, time.Second)
	v := url.Values{"query": {query}, "start": {strconv.FormatInt(end.Add(-time.Hour).Unix(), 10)},
		"end": {strconv.FormatInt(end.Unix(), 10)}, "step": {strconv.FormatFloat(step.Seconds(), 'f', -1, 64)}}
	u := strings.TrimSuffix(cfg.Endpoint, "/") + "/api/v1/query_range?" + v.Encode()
	rt := http.DefaultTransport.(*http.Transport).Clone()
	if !cfg.VerifySSL {
		rt.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the operator asked for it
	}
	client := &http.Client{Transport: rt, Timeout: d.cfg.Timeout}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		d.rep.add(Fail, "prometheus", "fix extractors.energy.prometheus_endpoint", "%v", err)
		return
	}
	resp, err := client.Do(req)
	if err != nil {
		d.rep.add(Fail, "prometheus", "fix extractors.energy.prometheus_endpoint, or start Prometheus",
			"%s unreachable: %v; energy windows would not move", cfg.Endpoint, err)
		return
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Status != "success" {
		d.rep.add(Fail, "prometheus", "check prometheus_metric_name and labels",
			"query_range %s at %s: HTTP %d %s %v", query, cfg.Endpoint, resp.StatusCode, body.Error, err)
		return
	}
	if len(body.Data.Result) == 0 {
		d.rep.add(Warn, "prometheus", "check prometheus_metric_name, labels and that the exporter (Scaphandre) runs on the compute nodes",
			"%s answers, but %s had no series in the last hour: energy records would be empty", cfg.Endpoint, query)
		return
	}
	vms := map[string]bool{}
	for _, r := range body.Data.Result {
		vms[r.Metric[cfg.UUIDLabel]] = true
	}
	delete(vms, "")
	if len(vms) == 0 {
		d.rep.add(Warn, "prometheus", "set vm_uuid_label_name to the label that holds the VM's UUID",
			"%d series of %s, none with the label %q: no VM can be matched", len(body.Data.Result), query, cfg.UUIDLabel)
		return
	}
	d.rep.add(OK, "prometheus", "", "%s: %d VMs report %s in the last hour", cfg.Endpoint, len(vms), cfg.MetricName)
}
