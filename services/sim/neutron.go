package sim

import (
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"
)

func (s *Server) neutronRoutes(mux *http.ServeMux) {
	s.route(mux, "GET", "/network/{$}", s.neutronVersions)
	s.route(mux, "GET", "/network/v2.0/floatingips", s.authed(s.listFloatingIPs))
	s.route(mux, "GET", "/network/v2.0/floatingips/{id}", s.authed(s.showFloatingIP))
	s.route(mux, "GET", "/network/v2.0/ports", s.authed(s.listPorts))
	s.route(mux, "GET", "/network/v2.0/ports/{id}", s.authed(s.showPort))
}

func neutronError(w http.ResponseWriter, code int, typ, msg string) {
	writeJSON(w, code, obj{{"NeutronError", obj{{"type", typ}, {"message", msg}, {"detail", ""}}}})
}

// neutronView is what Neutron shows at one instant in one region: ports
// follow their servers (Nova deletes a server's port with it, and Neutron
// then disassociates its floating IPs).
type neutronView struct {
	w       *World
	sn      *snapshot
	now     time.Time
	region  string
	details bool // the fip-port-details extension is loaded
}

func (s *Server) neutronView(r *http.Request) *neutronView {
	now := s.clock.Now()
	w, sn := s.view(now)
	return &neutronView{w: w, sn: sn, now: now, region: s.regionOf(w, r), details: !s.cfg.NeutronNoFIPPortDetails}
}

// simPort is a Neutron port.
type simPort struct {
	ID, ProjectID, NetworkID, DeviceID, DeviceOwner, FixedIP, Region string
	Created                                                          time.Time
}

func privateNetwork(project string) string { return uuidFromHash([]byte("private" + project)) }

func publicNetwork(address string) string {
	if strings.Contains(address, ":") {
		return uuidFromHash([]byte("public6"))
	}
	return uuidFromHash([]byte("public"))
}

func routerOf(project string) string { return uuidFromHash([]byte("router" + project)) }

// serverPort is the port nova-compute made for a server when building it
// on a host (a server that never got one has none), until the server is
// deleted; shelving keeps it.
func (v *neutronView) serverPort(id string) *simPort {
	idx, ok := v.w.srvByID[id]
	if !ok {
		return nil
	}
	srv, st := v.w.Servers[idx], &v.sn.states[idx]
	if !st.Exists || st.Deleted() || srv.FixedIP == "" || srv.Host == "" {
		return nil
	}
	return &simPort{ID: uuidFromHash([]byte("port" + srv.ID)), ProjectID: srv.ProjectID, NetworkID: privateNetwork(srv.ProjectID),
		DeviceID: srv.ID, DeviceOwner: "compute:nova", FixedIP: srv.FixedIP, Region: srv.Region, Created: srv.Created}
}

// ipPort is the port a floating IP is on now, nil when none.
func (v *neutronView) ipPort(ip *FloatingIP) (exists bool, port *simPort, fixed string, updated time.Time) {
	exists, e, updated := ip.assocAt(v.now)
	if !exists || !e.associated() {
		return exists, nil, "", updated
	}
	if e.ServerID != "" {
		port = v.serverPort(e.ServerID)
	} else {
		port = &simPort{ID: e.PortID, ProjectID: ip.ProjectID, NetworkID: privateNetwork(ip.ProjectID), DeviceID: e.DeviceID,
			DeviceOwner: e.DeviceOwner, FixedIP: e.FixedIP, Region: ip.Region, Created: e.At}
	}
	if port == nil {
		return true, nil, "", updated
	}
	return true, port, cmpOr(e.FixedIP, port.FixedIP), updated
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (v *neutronView) inRegion(r string) bool { return r == "" || r == v.region }

// ports lists every port of the region: the servers', the ports of floating
// IPs no server owns, and each project router's interface and gateway (the
// gateway belongs to no project, as in Neutron).
func (v *neutronView) ports() []*simPort {
	byID := map[string]*simPort{}
	for _, srv := range v.w.Servers {
		if p := v.serverPort(srv.ID); p != nil && v.inRegion(p.Region) {
			byID[p.ID] = p
		}
	}
	routed := map[string]bool{}
	for _, ip := range v.w.FloatingIPs {
		exists, p, _, _ := v.ipPort(ip)
		if !exists || !v.inRegion(ip.Region) {
			continue
		}
		if p != nil && byID[p.ID] == nil {
			byID[p.ID] = p
		}
		if !routed[ip.ProjectID] {
			routed[ip.ProjectID] = true
			r := routerOf(ip.ProjectID)
			for _, rp := range []*simPort{
				{ID: uuidFromHash([]byte("gw" + r)), NetworkID: publicNetwork(ip.Address), DeviceID: r, DeviceOwner: "network:router_gateway", Region: ip.Region, Created: ip.Created},
				{ID: uuidFromHash([]byte("if" + r)), ProjectID: ip.ProjectID, NetworkID: privateNetwork(ip.ProjectID), DeviceID: r, DeviceOwner: "network:router_interface", Region: ip.Region, Created: ip.Created},
			} {
				byID[rp.ID] = rp
			}
		}
	}
	out := make([]*simPort, 0, len(byID))
	for _, p := range byID {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (s *Server) listFloatingIPs(w http.ResponseWriter, r *http.Request) {
	tok := tokenFrom(r.Context())
	nv := s.neutronView(r)
	v := r.URL.Query()
	limit, ok := limitParam(w, v, 1<<30)
	if !ok {
		return
	}
	project := v.Get("project_id")
	if project == "" {
		project = v.Get("tenant_id")
	}
	ips := make([]*FloatingIP, 0, len(nv.w.FloatingIPs))
	for _, ip := range nv.w.FloatingIPs {
		if !nv.inRegion(ip.Region) || !tok.isAdmin() && ip.ProjectID != tok.ProjectID {
			continue
		}
		if project != "" && ip.ProjectID != project {
			continue
		}
		if a := v.Get("floating_ip_address"); a != "" && ip.Address != a {
			continue
		}
		if exists, _, _, _ := ip.stateAt(nv.now); exists {
			ips = append(ips, ip)
		}
	}
	sort.Slice(ips, func(i, j int) bool { return ips[i].ID < ips[j].ID })
	marker := v.Get("marker")
	if marker != "" {
		pos := sort.Search(len(ips), func(i int) bool { return ips[i].ID > marker })
		ips = ips[pos:]
	}
	if len(ips) > limit {
		ips = ips[:limit]
	}
	out := make([]obj, 0, len(ips))
	for _, ip := range ips {
		out = append(out, nv.floatingIPJSON(ip))
	}
	res := obj{{"floatingips", out}}
	base := baseURL(r) + regionPrefix(nv.w, nv.region) + "/network/v2.0/floatingips"
	var links []obj
	if len(ips) > 0 && len(ips) == limit {
		links = append(links, obj{{"rel", "next"}, {"href", nextHref(base, "", r.URL.RawQuery, ips[len(ips)-1].ID)}})
	}
	if marker != "" && len(ips) > 0 {
		prev := nextHref(base, "", r.URL.RawQuery, ips[0].ID) + "&page_reverse=True"
		links = append(links, obj{{"rel", "previous"}, {"href", prev}})
	}
	if links != nil {
		res.add("floatingips_links", links)
	}
	writeJSON(w, 200, res)
}

func (s *Server) showFloatingIP(w http.ResponseWriter, r *http.Request) {
	tok := tokenFrom(r.Context())
	nv := s.neutronView(r)
	id := r.PathValue("id")
	for _, ip := range nv.w.FloatingIPs {
		if ip.ID == id && (tok.isAdmin() || ip.ProjectID == tok.ProjectID) {
			if exists, _, _, _ := ip.stateAt(nv.now); exists {
				writeJSON(w, 200, obj{{"floatingip", nv.floatingIPJSON(ip)}})
				return
			}
		}
	}
	neutronError(w, 404, "FloatingIPNotFound", "Floating IP "+id+" could not be found")
}

// floatingIPJSON is a floating IP as Zed's ML2 with the L3 router plugin
// shows it: that plugin loads fip-port-details, which embeds the port's
// device in port_details (null when unassociated).
func (v *neutronView) floatingIPJSON(ip *FloatingIP) obj {
	_, p, fixed, updated := v.ipPort(ip)
	status, port, router, details := "DOWN", any(nil), any(nil), any(nil)
	var fixedIP any
	if p != nil {
		status, port, router, fixedIP = "ACTIVE", p.ID, routerOf(ip.ProjectID), fixed
		details = obj{{"name", ""}, {"network_id", p.NetworkID}, {"mac_address", macOf(p.ID)}, {"admin_state_up", true},
			{"status", "ACTIVE"}, {"device_id", p.DeviceID}, {"device_owner", p.DeviceOwner}}
	}
	network := ip.Network
	if network == "" {
		network = publicNetwork(ip.Address)
	}
	o := obj{{"id", ip.ID}, {"tenant_id", ip.ProjectID}, {"floating_ip_address", ip.Address},
		{"floating_network_id", network}, {"router_id", router}, {"port_id", port}, {"fixed_ip_address", fixedIP},
		{"status", status}, {"project_id", ip.ProjectID}, {"description", ""}, {"qos_policy_id", nil}}
	if v.details {
		o.add("port_details", details)
	}
	return append(o, obj{{"dns_domain", ""}, {"dns_name", ""}, {"tags", []string{}},
		{"created_at", zTime(ip.Created)}, {"updated_at", zTime(updated)}, {"revision_number", len(ip.PortEvents)}}...)
}

// portFilters are the port attributes a listing filters on (repeating one
// means any of the values); portParams are the listing's other parameters.
// Zed validates filters: any other parameter is a 400.
var (
	portFilters = []string{"id", "name", "network_id", "project_id", "tenant_id", "device_id", "device_owner", "mac_address", "status"}
	portParams  = []string{"limit", "marker", "page_reverse", "fields", "sort_key", "sort_dir", "admin_state_up", "fixed_ips",
		"description", "tags", "tags-any", "not-tags", "not-tags-any", "revision_number", "security_groups"}
)

func (p *simPort) attr(name string) string {
	switch name {
	case "id":
		return p.ID
	case "network_id":
		return p.NetworkID
	case "project_id", "tenant_id":
		return p.ProjectID
	case "device_id":
		return p.DeviceID
	case "device_owner":
		return p.DeviceOwner
	case "mac_address":
		return macOf(p.ID)
	case "status":
		return "ACTIVE"
	}
	return ""
}

// forbids reports whether the site's policy refuses rule to non-admins.
func (s *Server) forbids(rule string) bool { return slices.Contains(s.cfg.Forbid, rule) }

// portVisible applies get_port: admins see every port, others their project's
// (a router's gateway port has no project, so only admins see it), unless a
// site's policy refuses get_port: Neutron then drops the ports from lists
// rather than answering 403.
func (s *Server) portVisible(tok *token, p *simPort) bool {
	if tok.isAdmin() {
		return true
	}
	return p.ProjectID == tok.ProjectID && !s.forbids("get_port")
}

func (s *Server) listPorts(w http.ResponseWriter, r *http.Request) {
	tok := tokenFrom(r.Context())
	nv := s.neutronView(r)
	v := r.URL.Query()
	for k := range v {
		if !slices.Contains(portFilters, k) && !slices.Contains(portParams, k) {
			neutronError(w, 400, "HTTPBadRequest", "["+k+"] is invalid attribute for filtering")
			return
		}
	}
	limit, ok := limitParam(w, v, 1<<30)
	if !ok {
		return
	}
	var ports []*simPort
	for _, p := range nv.ports() {
		if s.portVisible(tok, p) && matches(p, v) {
			ports = append(ports, p)
		}
	}
	marker := v.Get("marker")
	if marker != "" {
		pos := sort.Search(len(ports), func(i int) bool { return ports[i].ID > marker })
		ports = ports[pos:]
	}
	if len(ports) > limit {
		ports = ports[:limit]
	}
	out := make([]obj, 0, len(ports))
	for _, p := range ports {
		out = append(out, selectFields(portJSON(p, tok.isAdmin()), v["fields"]))
	}
	res := obj{{"ports", out}}
	if len(ports) > 0 && len(ports) == limit {
		base := baseURL(r) + regionPrefix(nv.w, nv.region) + "/network/v2.0/ports"
		res.add("ports_links", []obj{{{"rel", "next"}, {"href", nextHref(base, "", r.URL.RawQuery, ports[len(ports)-1].ID)}}})
	}
	writeJSON(w, 200, res)
}

func matches(p *simPort, v url.Values) bool {
	for _, f := range portFilters {
		if want, ok := v[f]; ok && !slices.Contains(want, p.attr(f)) {
			return false
		}
	}
	return true
}

func selectFields(o obj, fields []string) obj {
	if len(fields) == 0 {
		return o
	}
	out := obj{}
	for _, f := range o {
		if slices.Contains(fields, f.K) {
			out = append(out, f)
		}
	}
	return out
}

func (s *Server) showPort(w http.ResponseWriter, r *http.Request) {
	tok := tokenFrom(r.Context())
	nv := s.neutronView(r)
	id := r.PathValue("id")
	for _, p := range nv.ports() {
		if p.ID == id && s.portVisible(tok, p) {
			writeJSON(w, 200, obj{{"port", portJSON(p, tok.isAdmin())}})
			return
		}
	}
	neutronError(w, 404, "PortNotFound", "Port "+id+" could not be found.")
}

func portJSON(p *simPort, admin bool) obj {
	var fixed []obj
	if p.FixedIP != "" {
		fixed = append(fixed, obj{{"subnet_id", uuidFromHash([]byte("subnet" + p.NetworkID))}, {"ip_address", p.FixedIP}})
	}
	groups := []string{}
	if strings.HasPrefix(p.DeviceOwner, "compute:") {
		groups = append(groups, uuidFromHash([]byte("default-sg"+p.ProjectID)))
	}
	o := obj{{"id", p.ID}, {"name", ""}, {"network_id", p.NetworkID}, {"tenant_id", p.ProjectID},
		{"mac_address", macOf(p.ID)}, {"admin_state_up", true}, {"status", "ACTIVE"}, {"device_id", p.DeviceID},
		{"device_owner", p.DeviceOwner}, {"fixed_ips", nonNil(fixed)}, {"allowed_address_pairs", []obj{}},
		{"extra_dhcp_opts", []obj{}}, {"security_groups", groups}, {"description", ""}, {"binding:vnic_type", "normal"}}
	if admin {
		o = append(o, obj{{"binding:host_id", ""}, {"binding:profile", obj{}}, {"binding:vif_details", obj{}},
			{"binding:vif_type", "unbound"}}...)
	}
	return append(o, obj{{"port_security_enabled", len(groups) > 0}, {"qos_policy_id", nil}, {"qos_network_policy_id", nil},
		{"propagate_uplink_status", false}, {"ip_allocation", "immediate"}, {"dns_name", ""}, {"tags", []string{}},
		{"created_at", zTime(p.Created)}, {"updated_at", zTime(p.Created)}, {"revision_number", 1},
		{"project_id", p.ProjectID}}...)
}

func nonNil(o []obj) []obj {
	if o == nil {
		return []obj{}
	}
	return o
}

func (s *Server) neutronVersions(w http.ResponseWriter, r *http.Request) {
	world := s.currentWorld()
	base := baseURL(r) + regionPrefix(world, s.regionOf(world, r)) + "/network"
	writeJSON(w, 200, obj{{"versions", []obj{{{"id", "v2.0"}, {"status", "CURRENT"},
		{"links", []obj{{{"href", base + "/v2.0/"}, {"rel", "self"}}}}}}}})
}
