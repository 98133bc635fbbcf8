package sim

import (
	"net/http"
	"sort"
	"strings"
	"time"
)

func (s *Server) neutronRoutes(mux *http.ServeMux) {
	s.route(mux, "GET", "/network/{$}", s.neutronVersions)
	s.route(mux, "GET", "/network/v2.0/floatingips", s.authed(s.listFloatingIPs))
	s.route(mux, "GET", "/network/v2.0/floatingips/{id}", s.authed(s.showFloatingIP))
}

func neutronError(w http.ResponseWriter, code int, typ, msg string) {
	writeJSON(w, code, obj{{"NeutronError", obj{{"type", typ}, {"message", msg}, {"detail", ""}}}})
}

func (s *Server) listFloatingIPs(w http.ResponseWriter, r *http.Request) {
	tok := tokenFrom(r.Context())
	world := s.currentWorld()
	region := s.regionOf(world, r)
	now := s.clock.Now()
	v := r.URL.Query()
	limit, ok := limitParam(w, v, 1<<30)
	if !ok {
		return
	}
	project := v.Get("project_id")
	if project == "" {
		project = v.Get("tenant_id")
	}
	ips := make([]*FloatingIP, 0, len(world.FloatingIPs))
	for _, ip := range world.FloatingIPs {
		if ip.Region != "" && ip.Region != region || !tok.isAdmin() && ip.ProjectID != tok.ProjectID {
			continue
		}
		if project != "" && ip.ProjectID != project {
			continue
		}
		if a := v.Get("floating_ip_address"); a != "" && ip.Address != a {
			continue
		}
		if exists, _, _, _ := ip.stateAt(now); exists {
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
		out = append(out, floatingIPJSON(ip, now))
	}
	res := obj{{"floatingips", out}}
	base := baseURL(r) + regionPrefix(world, region) + "/network/v2.0/floatingips"
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
	now := s.clock.Now()
	id := r.PathValue("id")
	for _, ip := range s.currentWorld().FloatingIPs {
		if ip.ID == id && (tok.isAdmin() || ip.ProjectID == tok.ProjectID) {
			if exists, _, _, _ := ip.stateAt(now); exists {
				writeJSON(w, 200, obj{{"floatingip", floatingIPJSON(ip, now)}})
				return
			}
		}
	}
	neutronError(w, 404, "FloatingIPNotFound", "Floating IP "+id+" could not be found")
}

func floatingIPJSON(ip *FloatingIP, now time.Time) obj {
	_, serverID, fixed, updated := ip.stateAt(now)
	status, port, router := "DOWN", any(nil), any(nil)
	var fixedIP any
	if serverID != "" {
		status = "ACTIVE"
		port = uuidFromHash([]byte("port" + serverID))
		router = uuidFromHash([]byte("router" + ip.ProjectID))
		fixedIP = fixed
	}
	network := ip.Network
	if network == "" {
		network = uuidFromHash([]byte("public"))
		if strings.Contains(ip.Address, ":") {
			network = uuidFromHash([]byte("public6"))
		}
	}
	return obj{{"id", ip.ID}, {"tenant_id", ip.ProjectID}, {"floating_ip_address", ip.Address},
		{"floating_network_id", network}, {"router_id", router}, {"port_id", port}, {"fixed_ip_address", fixedIP},
		{"status", status}, {"project_id", ip.ProjectID}, {"description", ""}, {"qos_policy_id", nil},
		{"port_details", nil}, {"dns_domain", ""}, {"dns_name", ""}, {"tags", []string{}},
		{"created_at", zTime(ip.Created)}, {"updated_at", zTime(updated)}, {"revision_number", len(ip.PortEvents)}}
}

func (s *Server) neutronVersions(w http.ResponseWriter, r *http.Request) {
	world := s.currentWorld()
	base := baseURL(r) + regionPrefix(world, s.regionOf(world, r)) + "/network"
	writeJSON(w, 200, obj{{"versions", []obj{{{"id", "v2.0"}, {"status", "CURRENT"},
		{"links", []obj{{{"href", base + "/v2.0/"}, {"rel", "self"}}}}}}}})
}
