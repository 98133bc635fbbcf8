package sim

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Nova's microversion range in Zed.
var (
	novaMin = mversion{2, 1}
	novaMax = mversion{2, 93}
)

type mversion struct{ major, minor int }

func (v mversion) ge(major, minor int) bool {
	return v.major > major || v.major == major && v.minor >= minor
}

func (v mversion) String() string { return fmt.Sprintf("%d.%d", v.major, v.minor) }

// parseMicroversion reads OpenStack-API-Version ("<service> X.Y") or the legacy
// header; no header means the minimum, as Nova does for novaclient's v2.
func parseMicroversion(r *http.Request, service, legacy string, min, max mversion) (mversion, string, bool) {
	raw := ""
	for _, h := range r.Header.Values("OpenStack-API-Version") {
		f := strings.Fields(h)
		if len(f) == 2 && strings.EqualFold(f[0], service) {
			raw = f[1]
		}
	}
	if raw == "" && legacy != "" {
		raw = strings.TrimSpace(r.Header.Get(legacy))
	}
	if raw == "" {
		return min, "", true
	}
	if strings.EqualFold(raw, "latest") {
		return max, "", true
	}
	maj, mnr, ok := strings.Cut(raw, ".")
	a, err1 := strconv.Atoi(maj)
	b, err2 := strconv.Atoi(mnr)
	if !ok || err1 != nil || err2 != nil {
		return min, fmt.Sprintf("API Version String %s is of invalid format. Must be of format MajorNum.MinorNum.", raw), false
	}
	v := mversion{a, b}
	if !v.ge(min.major, min.minor) || !max.ge(v.major, v.minor) {
		return min, fmt.Sprintf("Version %s is not supported by the API. Minimum is %s and maximum is %s.", raw, min, max), false
	}
	return v, "", true
}

// novaReq is what a Nova handler needs about one request.
type novaReq struct {
	tok    *token
	mv     mversion
	world  *World
	sn     *snapshot
	now    time.Time
	region string
	base   string // the compute endpoint root, without /v2.1
	// hostStatus caches host_status per host for one page, as Nova does: the
	// first server of a host on the page decides, and a deleted one has no
	// service, so a whole page can show "" (recorded).
	hostStatus map[string]string
}

func (s *Server) novaRoutes(mux *http.ServeMux) {
	s.route(mux, "GET", "/compute/{$}", s.novaVersions)
	h := func(fn func(http.ResponseWriter, *http.Request, *novaReq)) http.HandlerFunc {
		return s.authed(s.nova(fn))
	}
	s.route(mux, "GET", "/compute/v2.1/{$}", s.nova(s.novaVersion))
	s.route(mux, "GET", "/compute/v2.1", s.nova(s.novaVersion))
	s.route(mux, "GET", "/compute/v2.1/servers", h(s.listServers(false)))
	s.route(mux, "GET", "/compute/v2.1/servers/detail", h(s.listServers(true)))
	s.route(mux, "GET", "/compute/v2.1/servers/{id}", h(s.showServer))
	s.route(mux, "GET", "/compute/v2.1/servers/{id}/os-instance-actions", h(s.instanceActions))
	s.route(mux, "GET", "/compute/v2.1/flavors", h(s.listFlavors(false)))
	s.route(mux, "GET", "/compute/v2.1/flavors/detail", h(s.listFlavors(true)))
	s.route(mux, "GET", "/compute/v2.1/flavors/{id}", h(s.showFlavor))
	s.route(mux, "GET", "/compute/v2.1/flavors/{id}/os-extra_specs", h(s.flavorExtraSpecs))
	s.route(mux, "GET", "/compute/v2.1/os-simple-tenant-usage", h(s.usageList))
	s.route(mux, "GET", "/compute/v2.1/os-simple-tenant-usage/{project}", h(s.usageShow))
	s.route(mux, "GET", "/compute/v2.1/os-instance_usage_audit_log", h(s.auditLog))
	s.route(mux, "GET", "/compute/v2.1/os-instance_usage_audit_log/{before}", h(s.auditLog))
	s.route(mux, "GET", "/compute/v2.1/os-migrations", h(s.migrations))
}

// nova negotiates the microversion and stamps the response headers.
func (s *Server) nova(fn func(http.ResponseWriter, *http.Request, *novaReq)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		mv, msg, ok := parseMicroversion(r, "compute", "X-OpenStack-Nova-API-Version", novaMin, novaMax)
		hdr := w.Header()
		if !ok {
			status := http.StatusNotAcceptable
			if strings.Contains(msg, "invalid format") {
				status = http.StatusBadRequest
			}
			novaError(w, status, msg)
			return
		}
		hdr.Set("OpenStack-API-Version", "compute "+mv.String())
		hdr.Set("X-OpenStack-Nova-API-Version", mv.String())
		hdr.Set("Vary", "OpenStack-API-Version, X-OpenStack-Nova-API-Version")
		reqID := "req-" + newUUID()
		hdr.Set("x-openstack-request-id", reqID)
		hdr.Set("x-compute-request-id", reqID)
		now := s.clock.Now()
		world, sn := s.view(now)
		region := s.regionOf(world, r)
		if region == "" {
			http.NotFound(w, r)
			return
		}
		fn(w, r, &novaReq{tok: tokenFrom(r.Context()), mv: mv, world: world, sn: sn, now: now, region: region,
			base: baseURL(r) + regionPrefix(world, region) + "/compute"})
	}
}

func (s *Server) regionOf(w *World, r *http.Request) string {
	name := r.PathValue("region")
	if name == "" {
		return w.Regions[0]
	}
	for _, reg := range w.Regions {
		if reg == name {
			return reg
		}
	}
	return ""
}

var novaErrorKeys = map[int]string{400: "badRequest", 403: "forbidden", 404: "itemNotFound", 406: "notAcceptable",
	409: "conflictingRequest", 500: "computeFault"}

func novaError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	writeJSON(w, code, obj{{novaErrorKeys[code], obj{{"code", code}, {"message", msg}}}})
}

func policyForbidden(w http.ResponseWriter, rule string) {
	novaError(w, 403, "Policy doesn't allow "+rule+" to be performed.")
}

func (s *Server) novaVersions(w http.ResponseWriter, r *http.Request) {
	base := baseURL(r) + regionPrefix(s.currentWorld(), s.regionOf(s.currentWorld(), r)) + "/compute"
	writeJSON(w, 200, obj{{"versions", []obj{
		{{"id", "v2.0"}, {"status", "SUPPORTED"}, {"version", ""}, {"min_version", ""}, {"updated", "2011-01-21T11:33:21Z"},
			{"links", []obj{{{"rel", "self"}, {"href", base + "/v2/"}}}}},
		{{"id", "v2.1"}, {"status", "CURRENT"}, {"version", novaMax.String()}, {"min_version", novaMin.String()},
			{"updated", "2013-07-23T11:33:21Z"}, {"links", []obj{{{"rel", "self"}, {"href", base + "/v2.1/"}}}}},
	}}})
}

func (s *Server) novaVersion(w http.ResponseWriter, r *http.Request, q *novaReq) {
	writeJSON(w, 200, obj{{"version", obj{{"id", "v2.1"}, {"status", "CURRENT"}, {"version", novaMax.String()},
		{"min_version", novaMin.String()}, {"updated", "2013-07-23T11:33:21Z"},
		{"links", []obj{{{"rel", "self"}, {"href", q.base + "/v2.1/"}},
			{{"rel", "describedby"}, {"type", "text/html"}, {"href", "http://docs.openstack.org/"}}}},
		{"media-types", []obj{{{"base", "application/json"}, {"type", "application/vnd.openstack.compute+json;version=2.1"}}}}}}})
}

// parseChangesSince accepts what Nova's iso8601 parser accepts: a zone or
// none (UTC), 'T' or ' ' between date and time, optional fraction.
func parseISO(s string) (time.Time, bool) {
	layouts := []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999Z07:00",
		"2006-01-02 15:04:05.999999999", "2006-01-02T15:04Z07:00", "2006-01-02T15:04", "2006-01-02"}
	for _, l := range layouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), true
		}
	}
	return time.Time{}, false
}

var digits = regexp.MustCompile(`^[0-9]*$`)

const novaMaxLimit = 1000

// limitParam returns the page size Nova uses: the request's limit clamped to
// [api]max_limit, or max_limit itself.
func limitParam(w http.ResponseWriter, v url.Values, maxLimit int) (int, bool) {
	raw := v.Get("limit")
	if raw == "" {
		return maxLimit, true
	}
	if !digits.MatchString(raw) {
		novaError(w, 400, fmt.Sprintf("Invalid input for query parameters limit. Value: %s. '%s' does not match '^[0-9]*$'", raw, raw))
		return 0, false
	}
	n, _ := strconv.Atoi(raw)
	if n > maxLimit {
		n = maxLimit
	}
	return n, true
}

// nextHref keeps the query string as the client sent it (percent-encoding
// included), drops any previous marker and appends the new one.
func nextHref(base, path, rawQuery, marker string) string {
	var keep []string
	for _, p := range strings.Split(rawQuery, "&") {
		if p == "" || strings.HasPrefix(p, "marker=") {
			continue
		}
		keep = append(keep, p)
	}
	keep = append(keep, "marker="+marker)
	return base + path + "?" + strings.Join(keep, "&")
}

func (s *Server) listServers(detail bool) func(http.ResponseWriter, *http.Request, *novaReq) {
	return func(w http.ResponseWriter, r *http.Request, q *novaReq) {
		v := r.URL.Query()
		admin := q.tok.isAdmin()
		allTenants := false
		if v.Has("all_tenants") {
			at := strings.ToLower(v.Get("all_tenants"))
			allTenants = at == "" || at == "1" || at == "true" || at == "t" || at == "yes" || at == "y" || at == "on"
		}
		rule := "os_compute_api:servers:index:get_all_tenants"
		if detail {
			rule = "os_compute_api:servers:detail:get_all_tenants"
		}
		if allTenants && !admin {
			policyForbidden(w, rule)
			return
		}
		if own := strings.TrimSuffix(rule, ":get_all_tenants"); !admin && s.forbids(own) {
			policyForbidden(w, own)
			return
		}
		var since, before time.Time
		hasSince, hasBefore := v.Has("changes-since"), v.Has("changes-before")
		for _, p := range []struct {
			name string
			t    *time.Time
		}{{"changes-since", &since}, {"changes-before", &before}} {
			if !v.Has(p.name) {
				continue
			}
			raw := v.Get(p.name)
			t, ok := parseISO(raw)
			if !ok {
				novaError(w, 400, fmt.Sprintf("Invalid input for query parameters %s. Value: %s. '%s' is not a 'date-time'", p.name, raw, raw))
				return
			}
			*p.t = t
		}
		if hasBefore && !q.mv.ge(2, 66) {
			hasBefore = false
		}
		if hasSince && hasBefore && before.Before(since) {
			novaError(w, 400, fmt.Sprintf("The value of changes-since must be less than or equal to changes-before."))
			return
		}
		onlyDeleted := false
		if d := strings.ToLower(v.Get("deleted")); admin && (d == "true" || d == "1" || d == "yes") {
			onlyDeleted = true
		}
		limit, ok := limitParam(w, v, novaMaxLimit)
		if !ok {
			return
		}
		order := q.world.byCreated
		switch {
		case !allTenants:
			order = q.world.byProject[q.tok.ProjectID]
		case v.Get("project_id") != "" || v.Get("tenant_id") != "":
			p := v.Get("project_id")
			if p == "" {
				p = v.Get("tenant_id")
			}
			order = q.world.byProject[p]
		}
		start := 0
		if m := v.Get("marker"); m != "" {
			idx, ok := q.world.srvByID[m]
			pos := -1
			if ok && q.sn.states[idx].Exists {
				for i, o := range order {
					if o == idx {
						pos = i
						break
					}
				}
			}
			if pos < 0 {
				novaError(w, 400, "marker ["+m+"] not found")
				return
			}
			start = pos + 1
		}
		status := strings.ToUpper(v.Get("status"))
		name := v.Get("name")
		// uuid is an admin-only filter; Nova ignores it for others.
		uuid := ""
		if admin {
			uuid = v.Get("uuid")
		}
		var nameRE *regexp.Regexp
		if name != "" {
			nameRE, _ = regexp.Compile(name)
		}
		page := make([]obj, 0, min(limit, 64))
		last := ""
		for _, idx := range order[start:] {
			if len(page) >= limit {
				break
			}
			st := &q.sn.states[idx]
			if !st.Exists {
				continue
			}
			srv := q.world.Servers[idx]
			if srv.Region != "" && srv.Region != q.region {
				continue
			}
			switch {
			case hasSince || hasBefore:
				if hasSince && st.Updated.Before(since) || hasBefore && st.Updated.After(before) {
					continue
				}
			case onlyDeleted:
				if !st.Deleted() {
					continue
				}
			default:
				if st.Deleted() {
					continue
				}
			}
			if status != "" && serverStatus(st.VMState) != status || uuid != "" && srv.ID != uuid {
				continue
			}
			if nameRE != nil && !nameRE.MatchString(srv.Name) {
				continue
			}
			if detail {
				page = append(page, q.serverJSON(srv, st, false))
			} else {
				page = append(page, obj{{"id", srv.ID}, {"links", serverLinks(q.base, srv.ID)}, {"name", srv.Name}})
			}
			last = srv.ID
		}
		out := obj{{"servers", page}}
		if len(page) > 0 && len(page) == limit {
			path := "/v2.1/servers"
			if detail {
				path += "/detail"
			}
			out.add("servers_links", []obj{{{"rel", "next"}, {"href", nextHref(q.base, path, r.URL.RawQuery, last)}}})
		}
		writeJSON(w, 200, out)
	}
}

func serverLinks(base, id string) []obj {
	return []obj{{{"rel", "self"}, {"href", base + "/v2.1/servers/" + id}},
		{{"rel", "bookmark"}, {"href", base + "/servers/" + id}}}
}

func serverStatus(vm string) string {
	switch vm {
	case "active":
		return "ACTIVE"
	case "building":
		return "BUILD"
	case "stopped":
		return "SHUTOFF"
	case "resized":
		return "VERIFY_RESIZE"
	case "shelved_offloaded":
		return "SHELVED_OFFLOADED"
	case "shelved":
		return "SHELVED"
	case "error":
		return "ERROR"
	case "deleted":
		return "DELETED"
	case "paused":
		return "PAUSED"
	case "suspended":
		return "SUSPENDED"
	}
	return "UNKNOWN"
}

// progressStatuses are the statuses for which Nova shows "progress".
var progressStatuses = map[string]bool{"ACTIVE": true, "BUILD": true, "REBUILD": true, "RESIZE": true,
	"VERIFY_RESIZE": true, "MIGRATING": true}

func nullStr(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func (q *novaReq) serverJSON(srv *Instance, st *ServerState, show bool) obj {
	admin := q.tok.isAdmin()
	status := serverStatus(st.VMState)
	o := make(obj, 0, 48)
	o = append(o, kv{"id", srv.ID}, kv{"name", srv.Name}, kv{"status", status}, kv{"tenant_id", srv.ProjectID},
		kv{"user_id", srv.UserID}, kv{"metadata", strMap(st.Metadata)}, kv{"hostId", hostID(srv.ProjectID, st.Host)})
	if srv.ImageID == "" {
		o.add("image", "")
	} else {
		o.add("image", obj{{"id", srv.ImageID}, {"links", []obj{{{"rel", "bookmark"}, {"href", q.base + "/images/" + srv.ImageID}}}}})
	}
	f := st.Flavor
	if q.mv.ge(2, 47) {
		fo := obj{{"vcpus", f.VCPUs}, {"ram", f.RAM}, {"disk", f.Disk}, {"ephemeral", f.Ephemeral}, {"swap", f.Swap},
			{"original_name", f.Name}}
		fo.add("extra_specs", strMap(f.ExtraSpecs))
		o.add("flavor", fo)
	} else {
		o.add("flavor", obj{{"id", f.ID}, {"links", []obj{{{"rel", "bookmark"}, {"href", q.base + "/flavors/" + f.ID}}}}})
	}
	o = append(o, kv{"created", zTime(srv.Created)}, kv{"updated", zTime(st.Updated)},
		kv{"addresses", q.addresses(srv, st)}, kv{"accessIPv4", ""}, kv{"accessIPv6", ""},
		kv{"links", serverLinks(q.base, srv.ID)}, kv{"OS-DCF:diskConfig", "MANUAL"})
	if progressStatuses[status] {
		o.add("progress", 0)
	}
	if show && srv.Fault != nil && (st.VMState == "error") {
		fo := obj{{"code", srv.Fault.Code}, {"created", zTime(srv.Fault.Created)}, {"message", srv.Fault.Message}}
		if admin {
			fo.add("details", srv.Fault.Details)
		}
		o.add("fault", fo)
	}
	az := "nova"
	if srv.Host == "" || (st.LaunchedAt.IsZero() && st.Host == "") {
		az = ""
	}
	o = append(o, kv{"OS-EXT-AZ:availability_zone", az}, kv{"config_drive", ""}, kv{"key_name", nullStr(srv.KeyName)},
		kv{"OS-SRV-USG:launched_at", nullDBTime(st.LaunchedAt)}, kv{"OS-SRV-USG:terminated_at", nullDBTime(st.TerminatedAt)})
	if admin {
		o = append(o, kv{"OS-EXT-SRV-ATTR:host", nullStr(st.Host)}, kv{"OS-EXT-SRV-ATTR:instance_name", srv.InstanceName},
			kv{"OS-EXT-SRV-ATTR:hypervisor_hostname", nullStr(st.Host)})
		if q.mv.ge(2, 3) {
			var rootDev any = "/dev/sda"
			if st.LaunchedAt.IsZero() && st.Host == "" {
				rootDev = nil
			}
			o = append(o, kv{"OS-EXT-SRV-ATTR:reservation_id", srv.ReservationID}, kv{"OS-EXT-SRV-ATTR:launch_index", 0},
				kv{"OS-EXT-SRV-ATTR:hostname", hostnameOf(srv.Name)}, kv{"OS-EXT-SRV-ATTR:kernel_id", ""},
				kv{"OS-EXT-SRV-ATTR:ramdisk_id", ""}, kv{"OS-EXT-SRV-ATTR:root_device_name", rootDev},
				kv{"OS-EXT-SRV-ATTR:user_data", nil})
		}
	} else if q.mv.ge(2, 90) {
		o.add("OS-EXT-SRV-ATTR:hostname", hostnameOf(srv.Name))
	}
	o = append(o, kv{"OS-EXT-STS:task_state", nil}, kv{"OS-EXT-STS:vm_state", st.VMState},
		kv{"OS-EXT-STS:power_state", st.PowerState}, kv{"os-extended-volumes:volumes_attached", q.attachedVolumes(srv, st)})
	hostStatus := func() {
		if admin && q.mv.ge(2, 16) {
			hs := ""
			if st.Host != "" {
				cached, ok := q.hostStatus[st.Host]
				switch {
				case ok:
					hs = cached
				case !st.Deleted():
					hs = "UP"
				}
				if !show {
					if q.hostStatus == nil {
						q.hostStatus = map[string]string{}
					}
					q.hostStatus[st.Host] = hs
				}
			}
			o.add("host_status", hs)
		}
	}
	if show {
		hostStatus()
	}
	if q.mv.ge(2, 9) {
		o.add("locked", false)
	}
	if q.mv.ge(2, 73) {
		o.add("locked_reason", nil)
	}
	if q.mv.ge(2, 19) {
		o.add("description", nil)
	}
	if q.mv.ge(2, 26) {
		o.add("tags", []string{})
	}
	if q.mv.ge(2, 63) {
		o.add("trusted_image_certificates", nil)
	}
	if !show {
		hostStatus()
	}
	if show && q.mv.ge(2, 71) {
		o.add("server_groups", []string{})
	}
	return o
}

// hostnameOf sanitises a display name the way Nova builds the hostname.
func hostnameOf(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
			b.WriteRune(r)
		case r == ' ' || r == '_' || r == '.':
			b.WriteRune('-')
		}
	}
	h := strings.Trim(b.String(), "-")
	if h == "" {
		return "server"
	}
	if len(h) > 63 {
		h = h[:63]
	}
	return h
}

func (q *novaReq) addresses(srv *Instance, st *ServerState) any {
	if srv.FixedIP == "" || st.Deleted() || st.Host == "" {
		return obj{}
	}
	mac := macOf(srv.ID)
	ips := []obj{{{"version", 4}, {"addr", srv.FixedIP}, {"OS-EXT-IPS:type", "fixed"}, {"OS-EXT-IPS-MAC:mac_addr", mac}}}
	for _, i := range q.world.ipsByServer[srv.ID] {
		ip := q.world.FloatingIPs[i]
		ok, sid, _, _ := ip.stateAt(q.now)
		if ok && sid == srv.ID {
			ver := 4
			if strings.Contains(ip.Address, ":") {
				ver = 6
			}
			ips = append(ips, obj{{"version", ver}, {"addr", ip.Address}, {"OS-EXT-IPS:type", "floating"}, {"OS-EXT-IPS-MAC:mac_addr", mac}})
		}
	}
	return obj{{"private", ips}}
}

func macOf(id string) string {
	h := sha256.Sum256([]byte(id))
	return fmt.Sprintf("fa:16:3e:%02x:%02x:%02x", h[0], h[1], h[2])
}

func (q *novaReq) attachedVolumes(srv *Instance, st *ServerState) []obj {
	out := []obj{}
	if st.Deleted() {
		return out
	}
	for _, vi := range q.world.volsByServer[srv.ID] {
		vs := q.world.Volumes[vi].stateAt(q.now)
		if vs.Exists && !vs.Deleted && vs.ServerID == srv.ID {
			o := obj{{"id", q.world.Volumes[vi].ID}}
			if q.mv.ge(2, 3) {
				o.add("delete_on_termination", false)
			}
			out = append(out, o)
		}
	}
	return out
}

// visible reports whether the token may see the server (Nova answers 404
// otherwise, not 403).
func (q *novaReq) visible(srv *Instance) bool {
	return q.tok.isAdmin() || srv.ProjectID == q.tok.ProjectID
}

func (s *Server) showServer(w http.ResponseWriter, r *http.Request, q *novaReq) {
	id := r.PathValue("id")
	idx, ok := q.world.srvByID[id]
	if !ok || !q.sn.states[idx].Exists || q.sn.states[idx].Deleted() || !q.visible(q.world.Servers[idx]) {
		novaError(w, 404, "Instance "+id+" could not be found.")
		return
	}
	writeJSON(w, 200, obj{{"server", q.serverJSON(q.world.Servers[idx], &q.sn.states[idx], true)}})
}

func requestID(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "/")))
	return "req-" + uuidFromHash(h[:16])
}

var actionNames = map[string]string{EvStop: "stop", EvStart: "start", EvShelve: "shelve", EvUnshelve: "unshelve",
	EvResize: "resize", EvConfirmResize: "confirmResize", EvRebuild: "rebuild", EvDelete: "delete"}

func (s *Server) instanceActions(w http.ResponseWriter, r *http.Request, q *novaReq) {
	id := r.PathValue("id")
	idx, ok := q.world.srvByID[id]
	if !ok || !q.sn.states[idx].Exists || !q.visible(q.world.Servers[idx]) {
		novaError(w, 404, "Instance "+id+" could not be found.")
		return
	}
	srv := q.world.Servers[idx]
	var out []obj
	act := func(name string, start, updated time.Time, msg any, i int) {
		o := obj{{"action", name}, {"instance_uuid", srv.ID}, {"request_id", requestID(srv.ID, strconv.Itoa(i))},
			{"user_id", srv.UserID}, {"project_id", srv.ProjectID}, {"start_time", dbTime(start)}, {"message", msg}}
		if q.mv.ge(2, 58) {
			o.add("updated_at", dbTime(updated))
		}
		out = append(out, o)
	}
	created := false
	for i, e := range srv.Events {
		if e.At.After(q.now) {
			break
		}
		start := e.Requested
		if start.IsZero() {
			start = e.At
		}
		switch {
		case (e.Kind == EvLaunch || e.Kind == EvError) && !created:
			created = true
			var msg any
			if e.Kind == EvError {
				msg = "Error"
			}
			act("create", start, e.At, msg, i)
		case actionNames[e.Kind] != "":
			act(actionNames[e.Kind], start, e.At, nil, i)
		}
	}
	// Newest first, as Nova lists them.
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	if out == nil {
		out = []obj{}
	}
	writeJSON(w, 200, obj{{"instanceActions", out}})
}

func (s *Server) migrations(w http.ResponseWriter, r *http.Request, q *novaReq) {
	if !q.tok.isAdmin() {
		policyForbidden(w, "os_compute_api:os-migrations:index")
		return
	}
	type mig struct {
		srv          *Instance
		from, to     *Flavor
		created, upd time.Time
		confirmed    bool
	}
	var ms []mig
	for _, idx := range q.world.byUUID {
		srv := q.world.Servers[idx]
		cur := q.world.flavByID[srv.FlavorID]
		for i, e := range srv.Events {
			if e.At.After(q.now) || e.Kind != EvResize {
				continue
			}
			// The migration record is written by prep_resize, shortly before
			// the resize finishes.
			m := mig{srv: srv, from: cur, to: q.world.flavByID[e.Flavor], created: e.At.Add(-2 * time.Second), upd: e.At}
			if m.created.Before(e.Requested) {
				m.created = e.Requested
			}
			for _, c := range srv.Events[i+1:] {
				if c.Kind == EvConfirmResize && !c.At.After(q.now) {
					m.confirmed, m.upd = true, c.At
					break
				}
			}
			cur = m.to
			ms = append(ms, m)
		}
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].created.After(ms[j].created) })
	out := []obj{}
	for i, m := range ms {
		status := "finished"
		if m.confirmed {
			status = "confirmed"
		}
		o := obj{{"id", len(ms) - i}}
		if q.mv.ge(2, 59) {
			o.add("uuid", uuidFromHash([]byte(m.srv.ID+m.created.String())))
		}
		o = append(o, kv{"source_compute", m.srv.Host}, kv{"dest_compute", m.srv.Host}, kv{"source_node", m.srv.Host},
			kv{"dest_node", m.srv.Host}, kv{"dest_host", "192.168.0.1"}, kv{"old_instance_type_id", m.from.InternalID},
			kv{"new_instance_type_id", m.to.InternalID}, kv{"instance_uuid", m.srv.ID}, kv{"status", status})
		if q.mv.ge(2, 23) {
			o.add("migration_type", "resize")
		}
		if q.mv.ge(2, 80) {
			o = append(o, kv{"user_id", m.srv.UserID}, kv{"project_id", m.srv.ProjectID})
		}
		o = append(o, kv{"created_at", dbTime(m.created)}, kv{"updated_at", dbTime(m.upd)})
		out = append(out, o)
	}
	writeJSON(w, 200, obj{{"migrations", out}})
}

// --- flavors ---

func (q *novaReq) flavorJSON(f *Flavor, detail bool) obj {
	links := []obj{{{"rel", "self"}, {"href", q.base + "/v2.1/flavors/" + f.ID}},
		{{"rel", "bookmark"}, {"href", q.base + "/flavors/" + f.ID}}}
	if !detail {
		o := obj{{"id", f.ID}, {"links", links}, {"name", f.Name}}
		if q.mv.ge(2, 55) {
			o.add("description", f.Description)
		}
		return o
	}
	var swap any = f.Swap
	if f.Swap == 0 && !q.mv.ge(2, 75) {
		swap = ""
	}
	o := obj{{"id", f.ID}, {"name", f.Name}, {"ram", f.RAM}, {"disk", f.Disk}, {"swap", swap},
		{"OS-FLV-EXT-DATA:ephemeral", f.Ephemeral}, {"OS-FLV-DISABLED:disabled", f.Disabled}, {"vcpus", f.VCPUs},
		{"os-flavor-access:is_public", f.IsPublic}, {"rxtx_factor", f.RxTx}, {"links", links}}
	if q.mv.ge(2, 55) {
		o.add("description", f.Description)
	}
	if q.mv.ge(2, 61) {
		o.add("extra_specs", strMap(f.ExtraSpecs))
	}
	return o
}

func (s *Server) listFlavors(detail bool) func(http.ResponseWriter, *http.Request, *novaReq) {
	return func(w http.ResponseWriter, r *http.Request, q *novaReq) {
		v := r.URL.Query()
		limit, ok := limitParam(w, v, novaMaxLimit)
		if !ok {
			return
		}
		fs := make([]*Flavor, 0, len(q.world.Flavors))
		for _, f := range q.world.Flavors {
			if f.Deleted {
				continue
			}
			isPublic := strings.ToLower(v.Get("is_public"))
			if !f.IsPublic && !(q.tok.isAdmin() && (isPublic == "none" || isPublic == "false")) {
				continue
			}
			fs = append(fs, f)
		}
		sort.Slice(fs, func(i, j int) bool { return fs[i].ID < fs[j].ID })
		if m := v.Get("marker"); m != "" {
			pos := sort.Search(len(fs), func(i int) bool { return fs[i].ID >= m })
			if pos == len(fs) || fs[pos].ID != m {
				novaError(w, 400, "marker ["+m+"] not found")
				return
			}
			fs = fs[pos+1:]
		}
		if len(fs) > limit {
			fs = fs[:limit]
		}
		out := make([]obj, 0, len(fs))
		for _, f := range fs {
			out = append(out, q.flavorJSON(f, detail))
		}
		res := obj{{"flavors", out}}
		if len(fs) > 0 && len(fs) == limit {
			path := "/v2.1/flavors"
			if detail {
				path += "/detail"
			}
			res.add("flavors_links", []obj{{{"rel", "next"}, {"href", nextHref(q.base, path, r.URL.RawQuery, fs[len(fs)-1].ID)}}})
		}
		writeJSON(w, 200, res)
	}
}

func (q *novaReq) flavor(w http.ResponseWriter, id string) *Flavor {
	f := q.world.flavByID[id]
	if f == nil || f.Deleted {
		novaError(w, 404, "Flavor "+id+" could not be found.")
		return nil
	}
	return f
}

func (s *Server) showFlavor(w http.ResponseWriter, r *http.Request, q *novaReq) {
	if f := q.flavor(w, r.PathValue("id")); f != nil {
		writeJSON(w, 200, obj{{"flavor", q.flavorJSON(f, true)}})
	}
}

func (s *Server) flavorExtraSpecs(w http.ResponseWriter, r *http.Request, q *novaReq) {
	if f := q.flavor(w, r.PathValue("id")); f != nil {
		writeJSON(w, 200, obj{{"extra_specs", strMap(f.ExtraSpecs)}})
	}
}

// --- os-instance_usage_audit_log ---

func (s *Server) auditLog(w http.ResponseWriter, r *http.Request, q *novaReq) {
	if !q.tok.isAdmin() {
		policyForbidden(w, "os_compute_api:os-instance-usage-audit-log:list")
		return
	}
	before := q.now
	key := "instance_usage_audit_logs"
	if b := r.PathValue("before"); b != "" {
		t, ok := parseISO(b)
		if !ok {
			novaError(w, 400, "Invalid timestamp for date "+b)
			return
		}
		before, key = t, "instance_usage_audit_log"
	}
	// Nova's "hour" audit period: the last full hour before the instant.
	end := before.UTC().Truncate(time.Hour)
	begin := end.Add(-time.Hour)
	perHost := map[string]int{}
	total := 0
	for _, srv := range q.world.Servers {
		if srv.Region != "" && srv.Region != q.region {
			continue
		}
		st := q.world.stateAt(srv, end)
		if !st.Exists || st.LaunchedAt.IsZero() {
			continue
		}
		if !st.TerminatedAt.IsZero() && st.TerminatedAt.Before(begin) {
			continue
		}
		perHost[srv.Host]++
		total++
	}
	logs := obj{}
	hosts := q.world.Hosts
	for _, h := range hosts {
		n := perHost[h]
		logs.add(h, obj{{"state", "DONE"}, {"instances", n}, {"errors", 0},
			{"message", fmt.Sprintf("Instance usage audit ran for host %s, %d instances in %v seconds.", h, n, 0.04155468940734863)}})
	}
	writeJSON(w, 200, obj{{key, obj{{"period_beginning", begin.Format(fmtSpace)}, {"period_ending", end.Format(fmtSpace)},
		{"num_hosts", len(hosts)}, {"num_hosts_done", len(hosts)}, {"num_hosts_running", 0}, {"num_hosts_not_run", 0},
		{"hosts_not_run", []string{}}, {"total_instances", total}, {"total_errors", 0},
		{"overall_status", "ALL hosts done. 0 errors."}, {"log", logs}}}})
}
