package sim

import (
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"
)

// os-simple-tenant-usage, reproducing Nova's arithmetic: it looks at the
// servers' *current* launched_at/terminated_at (a resize moved launched_at),
// charges wall-clock hours whatever the power state, and never lists servers
// that were not launched.

const fmtUsage = "2006-01-02T15:04:05.000000"

// parseUsageTime accepts only the strptime formats Nova tries: no zone, so a
// trailing Z is a 400.
func parseUsageTime(s string) (time.Time, bool) {
	for _, l := range []string{"2006-01-02T15:04:05", "2006-01-02T15:04:05.999999", "2006-01-02 15:04:05.999999"} {
		if t, err := time.Parse(l, s); err == nil {
			if l != "2006-01-02T15:04:05" && !strings.Contains(s, ".") {
				continue
			}
			return t.UTC(), true
		}
	}
	return time.Time{}, false
}

type usageWindow struct {
	start, stop time.Time
	detailed    bool
	limit       int
	marker      string
	paged       bool
}

func (s *Server) usageWindow(w http.ResponseWriter, r *http.Request, q *novaReq) (usageWindow, bool) {
	v := r.URL.Query()
	uw := usageWindow{detailed: v.Get("detailed") == "1"}
	get := func(name string, def time.Time) (time.Time, bool) {
		raw := v.Get(name)
		if raw == "" {
			return def, true
		}
		t, ok := parseUsageTime(raw)
		if !ok {
			novaError(w, 400, "Invalid datetime string: Datetime is in invalid format")
		}
		return t, ok
	}
	var ok bool
	if uw.start, ok = get("start", q.now); !ok {
		return uw, false
	}
	// Nova reads utcnow twice; a frozen clock would make start == stop,
	// which Nova never sees, so the default end is a few microseconds later.
	if uw.stop, ok = get("end", q.now.Add(9*time.Microsecond)); !ok {
		return uw, false
	}
	if !uw.start.Before(uw.stop) {
		novaError(w, 400, "Invalid start time. The start time cannot occur after the end time.")
		return uw, false
	}
	if uw.stop.After(q.now) {
		uw.stop = q.now
		if v.Get("end") == "" {
			uw.stop = q.now.Add(9 * time.Microsecond)
		}
	}
	uw.limit = -1
	if q.mv.ge(2, 40) {
		uw.paged = true
		if uw.limit, ok = limitParam(w, v, novaMaxLimit); !ok {
			return uw, false
		}
		uw.marker = v.Get("marker")
	}
	return uw, true
}

func hoursFor(launched, terminated, start, stop time.Time) float64 {
	if launched.IsZero() {
		return 0
	}
	if !terminated.IsZero() && terminated.Before(start) {
		return 0
	}
	if launched.After(stop) {
		return 0
	}
	from := launched
	if start.After(from) {
		from = start
	}
	to := stop
	if !terminated.IsZero() && terminated.Before(stop) {
		to = terminated
	}
	return to.Sub(from).Seconds() / 3600.0
}

type tenantUsage struct {
	tenant                       string
	servers                      []obj
	localGB, vcpus, memMB, hours float64
}

// usages computes the usage rows of the servers of project ("" = all).
func (s *Server) usages(w http.ResponseWriter, q *novaReq, uw usageWindow, project string) ([]*tenantUsage, string, bool) {
	order := q.world.byUUID
	start := 0
	if uw.marker != "" {
		start = sort.Search(len(order), func(i int) bool { return q.world.Servers[order[i]].ID >= uw.marker })
		if start == len(order) || q.world.Servers[order[start]].ID != uw.marker {
			novaError(w, 400, "marker ["+uw.marker+"] not found")
			return nil, "", false
		}
		start++
	}
	byTenant := map[string]*tenantUsage{}
	var out []*tenantUsage
	n, last := 0, ""
	for _, idx := range order[start:] {
		if uw.limit >= 0 && n >= uw.limit {
			break
		}
		srv := q.world.Servers[idx]
		if project != "" && srv.ProjectID != project || srv.Region != "" && srv.Region != q.region {
			continue
		}
		st := &q.sn.states[idx]
		if !st.Exists {
			continue
		}
		launched := st.LaunchedAt.Truncate(time.Second)
		terminated := st.TerminatedAt.Truncate(time.Second)
		if launched.IsZero() || !launched.Before(uw.stop) || !terminated.IsZero() && !terminated.After(uw.start) {
			continue
		}
		n++
		last = srv.ID
		f := st.Flavor
		hours := hoursFor(launched, terminated, uw.start, uw.stop)
		state := st.VMState
		var ended any
		delta := q.now.Sub(launched)
		if !terminated.IsZero() {
			state, ended = "terminated", dbTime(terminated)
			delta = terminated.Sub(launched)
		}
		localGB := f.Disk + f.Ephemeral
		tu := byTenant[srv.ProjectID]
		if tu == nil {
			tu = &tenantUsage{tenant: srv.ProjectID, servers: []obj{}}
			byTenant[srv.ProjectID] = tu
			out = append(out, tu)
		}
		tu.localGB += float64(localGB) * hours
		tu.vcpus += float64(f.VCPUs) * hours
		tu.memMB += float64(f.RAM) * hours
		tu.hours += hours
		if uw.detailed {
			tu.servers = append(tu.servers, obj{{"hours", hours}, {"flavor", f.Name}, {"instance_id", srv.ID},
				{"name", srv.Name}, {"tenant_id", srv.ProjectID}, {"memory_mb", f.RAM}, {"local_gb", localGB},
				{"vcpus", f.VCPUs}, {"started_at", dbTime(launched)}, {"ended_at", ended}, {"state", state},
				{"uptime", int64(delta.Seconds())}})
		}
	}
	if uw.limit < 0 || n < uw.limit {
		last = ""
	}
	return out, last, true
}

func (tu *tenantUsage) json(uw usageWindow) obj {
	o := obj{{"tenant_id", tu.tenant}}
	if uw.detailed {
		o.add("server_usages", tu.servers)
	}
	return append(o, kv{"total_local_gb_usage", tu.localGB}, kv{"total_vcpus_usage", tu.vcpus},
		kv{"total_memory_mb_usage", tu.memMB}, kv{"total_hours", tu.hours},
		kv{"start", uw.start.Format(fmtUsage)}, kv{"stop", uw.stop.Format(fmtUsage)})
}

// usageNext sorts the query parameters, as Nova's link builder does, and
// appends the marker.
func usageNext(base, path string, r *http.Request, marker string) string {
	v := r.URL.Query()
	v.Del("marker")
	return base + path + "?" + v.Encode() + "&marker=" + url.QueryEscape(marker)
}

func (s *Server) usageList(w http.ResponseWriter, r *http.Request, q *novaReq) {
	if !q.tok.isAdmin() {
		policyForbidden(w, "os_compute_api:os-simple-tenant-usage:list")
		return
	}
	uw, ok := s.usageWindow(w, r, q)
	if !ok {
		return
	}
	tus, last, ok := s.usages(w, q, uw, "")
	if !ok {
		return
	}
	list := make([]obj, 0, len(tus))
	for _, tu := range tus {
		list = append(list, tu.json(uw))
	}
	out := obj{{"tenant_usages", list}}
	if uw.paged && last != "" {
		out.add("tenant_usages_links", []obj{{{"rel", "next"}, {"href", usageNext(q.base, "/v2.1/os-simple-tenant-usage", r, last)}}})
	}
	writeJSON(w, 200, out)
}

func (s *Server) usageShow(w http.ResponseWriter, r *http.Request, q *novaReq) {
	project := r.PathValue("project")
	if !q.tok.isAdmin() && q.tok.ProjectID != project {
		policyForbidden(w, "os_compute_api:os-simple-tenant-usage:show")
		return
	}
	uw, ok := s.usageWindow(w, r, q)
	if !ok {
		return
	}
	// Nova always lists a single tenant's servers in detail.
	uw.detailed = true
	tus, last, ok := s.usages(w, q, uw, project)
	if !ok {
		return
	}
	out := obj{{"tenant_usage", obj{}}}
	if len(tus) > 0 {
		out = obj{{"tenant_usage", tus[0].json(uw)}}
	}
	if uw.paged && last != "" {
		out.add("tenant_usage_links", []obj{{{"rel", "next"}, {"href", usageNext(q.base, "/v2.1/os-simple-tenant-usage/"+project, r, last)}}})
	}
	writeJSON(w, 200, out)
}
