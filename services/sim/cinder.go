package sim

import (
	"net/http"
	"sort"
	"strings"
	"time"
)

var (
	cinderMin = mversion{3, 0}
	cinderMax = mversion{3, 70}
)

func (s *Server) cinderRoutes(mux *http.ServeMux) {
	s.route(mux, "GET", "/volume/{$}", s.cinderVersions)
	s.route(mux, "GET", "/volume/v3/{project}/volumes", s.authed(s.listVolumes(false)))
	s.route(mux, "GET", "/volume/v3/{project}/volumes/detail", s.authed(s.listVolumes(true)))
	s.route(mux, "GET", "/volume/v3/{project}/volumes/{id}", s.authed(s.showVolume))
}

func cinderError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, obj{{novaErrorKeys[code], obj{{"code", code}, {"message", msg}}}})
}

func (s *Server) cinderVersions(w http.ResponseWriter, r *http.Request) {
	world := s.currentWorld()
	base := baseURL(r) + regionPrefix(world, s.regionOf(world, r)) + "/volume"
	w.Header().Set("OpenStack-API-Version", "volume 3.0")
	writeJSON(w, http.StatusMultipleChoices, obj{{"versions", []obj{{{"id", "v3.0"}, {"status", "CURRENT"},
		{"version", cinderMax.String()}, {"min_version", cinderMin.String()}, {"updated", "2022-08-31T00:00:00Z"},
		{"links", []obj{{{"rel", "describedby"}, {"type", "text/html"}, {"href", "https://docs.openstack.org/"}},
			{{"rel", "self"}, {"href", base + "/v3/"}}}},
		{"media-types", []obj{{{"base", "application/json"}, {"type", "application/vnd.openstack.volume+json;version=3"}}}}}}}})
}

type cinderReq struct {
	tok     *token
	mv      mversion
	world   *World
	now     time.Time
	region  string
	base    string
	project string // project id in the URL
}

// cinder negotiates the microversion and checks the URL's project: Cinder
// answers 400 "Malformed request url" when it is not the token's.
func (s *Server) cinder(w http.ResponseWriter, r *http.Request) (*cinderReq, bool) {
	mv, msg, ok := parseMicroversion(r, "volume", "", cinderMin, cinderMax)
	if !ok {
		cinderError(w, 406, msg)
		return nil, false
	}
	w.Header().Set("OpenStack-API-Version", "volume "+mv.String())
	w.Header().Set("x-openstack-request-id", "req-"+newUUID())
	tok := tokenFrom(r.Context())
	project := r.PathValue("project")
	if project != tok.ProjectID {
		cinderError(w, 400, "Malformed request url")
		return nil, false
	}
	world := s.currentWorld()
	region := s.regionOf(world, r)
	return &cinderReq{tok: tok, mv: mv, world: world, now: s.clock.Now(), region: region,
		base: baseURL(r) + regionPrefix(world, region) + "/volume", project: project}, true
}

func (s *Server) listVolumes(detail bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q, ok := s.cinder(w, r)
		if !ok {
			return
		}
		v := r.URL.Query()
		admin := q.tok.isAdmin()
		allTenants := admin && v.Has("all_tenants") && v.Get("all_tenants") != "0" && !strings.EqualFold(v.Get("all_tenants"), "false")
		limit, ok := limitParam(w, v, novaMaxLimit)
		if !ok {
			return
		}
		// The admin path hands changes-since to the DB layer as a column
		// filter, which matches nothing; non-admin requests drop it.
		if admin && v.Has("changes-since") {
			writeJSON(w, 200, obj{{"volumes", []obj{}}})
			return
		}
		var updatedGTE time.Time
		if u := v.Get("updated_at"); u != "" && q.mv.ge(3, 60) {
			if op, val, ok := strings.Cut(u, ":"); ok && op == "gte" {
				if t, ok := parseISO(val); ok {
					updatedGTE = t
				}
			}
		}
		type row struct {
			vol *Volume
			st  VolumeState
		}
		var rows []row
		for _, vol := range q.world.Volumes {
			if !allTenants && vol.ProjectID != q.tok.ProjectID || vol.Region != "" && vol.Region != q.region {
				continue
			}
			if p := v.Get("project_id"); allTenants && p != "" && vol.ProjectID != p {
				continue
			}
			st := vol.stateAt(q.now)
			if !st.Exists || st.Deleted {
				continue
			}
			if !updatedGTE.IsZero() && st.Updated.Before(updatedGTE) {
				continue
			}
			if status := v.Get("status"); status != "" && st.Status != status {
				continue
			}
			rows = append(rows, row{vol, st})
		}
		sort.Slice(rows, func(i, j int) bool {
			a, b := rows[i].vol, rows[j].vol
			if !a.Created.Equal(b.Created) {
				return a.Created.After(b.Created)
			}
			return a.ID > b.ID
		})
		if m := v.Get("marker"); m != "" {
			pos := -1
			for i, rw := range rows {
				if rw.vol.ID == m {
					pos = i
				}
			}
			if pos < 0 {
				cinderError(w, 400, "Marker "+m+" could not be found.")
				return
			}
			rows = rows[pos+1:]
		}
		if len(rows) > limit {
			rows = rows[:limit]
		}
		out := make([]obj, 0, len(rows))
		for _, rw := range rows {
			if detail {
				out = append(out, q.volumeJSON(rw.vol, rw.st))
			} else {
				out = append(out, obj{{"id", rw.vol.ID}, {"links", q.volumeLinks(rw.vol)}, {"name", rw.vol.Name}})
			}
		}
		res := obj{{"volumes", out}}
		if len(rows) > 0 && len(rows) == limit {
			path := "/v3/" + q.project + "/volumes"
			if detail {
				path += "/detail"
			}
			res.add("volumes_links", []obj{{{"rel", "next"}, {"href", nextHref(q.base, path, r.URL.RawQuery, rows[len(rows)-1].vol.ID)}}})
		}
		writeJSON(w, 200, res)
	}
}

func (s *Server) showVolume(w http.ResponseWriter, r *http.Request) {
	q, ok := s.cinder(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	i, found := q.world.volByID[id]
	if found {
		vol := q.world.Volumes[i]
		st := vol.stateAt(q.now)
		if st.Exists && !st.Deleted && (q.tok.isAdmin() || vol.ProjectID == q.tok.ProjectID) {
			writeJSON(w, 200, obj{{"volume", q.volumeJSON(vol, st)}})
			return
		}
	}
	cinderError(w, 404, "Volume "+id+" could not be found.")
}

func (q *cinderReq) volumeLinks(v *Volume) []obj {
	return []obj{{{"rel", "self"}, {"href", q.base + "/v3/" + q.project + "/volumes/" + v.ID}},
		{{"rel", "bookmark"}, {"href", q.base + "/" + q.project + "/volumes/" + v.ID}}}
}

func (q *cinderReq) volumeJSON(v *Volume, st VolumeState) obj {
	admin := q.tok.isAdmin()
	bootable := "false"
	if v.Bootable {
		bootable = "true"
	}
	attachments := []obj{}
	if st.ServerID != "" {
		aid := uuidFromHash([]byte(v.ID + st.ServerID + st.Attached.String()))
		attachments = append(attachments, obj{{"id", v.ID}, {"attachment_id", aid}, {"volume_id", v.ID},
			{"server_id", st.ServerID}, {"host_name", nil}, {"device", "/dev/vdb"}, {"attached_at", dbTime(st.Attached)}})
	}
	o := obj{{"id", v.ID}, {"status", st.Status}, {"size", st.Size}, {"availability_zone", "nova"},
		{"created_at", dbTime(v.Created)}, {"updated_at", dbTime(st.Updated)}, {"name", v.Name}, {"description", nil},
		{"volume_type", "__DEFAULT__"}, {"snapshot_id", nil}, {"source_volid", nil}, {"metadata", strMap(v.Metadata)},
		{"links", q.volumeLinks(v)}, {"user_id", v.UserID}, {"bootable", bootable}, {"encrypted", false},
		{"replication_status", nil}, {"consistencygroup_id", nil}, {"multiattach", false}, {"attachments", attachments}}
	if admin {
		o.add("migration_status", nil)
	}
	if q.mv.ge(3, 13) {
		o.add("group_id", nil)
	}
	if admin && q.mv.ge(3, 21) {
		o.add("provider_id", nil)
	}
	if q.mv.ge(3, 48) {
		o.add("shared_targets", false)
		o.add("service_uuid", uuidFromHash([]byte("cinder-volume"+v.Host)))
	}
	if admin && q.mv.ge(3, 61) {
		o.add("cluster_name", nil)
	}
	if q.mv.ge(3, 63) {
		o.add("volume_type_id", uuidFromHash([]byte("__DEFAULT__")))
	}
	if q.mv.ge(3, 65) {
		o.add("consumes_quota", true)
	}
	o.add("os-vol-tenant-attr:tenant_id", v.ProjectID)
	if admin {
		o = append(o, kv{"os-vol-mig-status-attr:migstat", nil}, kv{"os-vol-mig-status-attr:name_id", nil},
			kv{"os-vol-host-attr:host", v.Host})
	}
	return o
}
