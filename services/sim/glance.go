package sim

import (
	"net/http"
	"net/url"
	"sort"
	"strconv"
)

const glanceDefaultLimit = 25

func (s *Server) glanceRoutes(mux *http.ServeMux) {
	s.route(mux, "GET", "/image/{$}", s.glanceVersions)
	s.route(mux, "GET", "/image/v2/images", s.authed(s.listImages))
	s.route(mux, "GET", "/image/v2/images/{id}", s.authed(s.showImage))
}

func glanceVisible(tok *token, im *Image) bool {
	return im.Visibility == "public" || im.Visibility == "community" || tok.isAdmin() || im.Owner == tok.ProjectID
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) {
	tok := tokenFrom(r.Context())
	world := s.currentWorld()
	now := s.clock.Now()
	v := r.URL.Query()
	limit := glanceDefaultLimit
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 0 {
			writeJSON(w, 400, obj{{"error", "limit param must be an integer"}})
			return
		}
		limit = min(n, 1000)
	}
	var ims []*Image
	for _, im := range world.Images {
		if im.Created.After(now) || !im.Deleted.IsZero() && !im.Deleted.After(now) || !glanceVisible(tok, im) {
			continue
		}
		// Without a visibility filter Glance hides community images.
		if vis := v.Get("visibility"); vis != "" && vis != "all" && im.Visibility != vis || vis == "" && im.Visibility == "community" {
			continue
		}
		if o := v.Get("owner"); o != "" && im.Owner != o {
			continue
		}
		ims = append(ims, im)
	}
	sort.Slice(ims, func(i, j int) bool {
		if !ims[i].Created.Equal(ims[j].Created) {
			return ims[i].Created.After(ims[j].Created)
		}
		return ims[i].ID > ims[j].ID
	})
	if m := v.Get("marker"); m != "" {
		pos := -1
		for i, im := range ims {
			if im.ID == m {
				pos = i
			}
		}
		if pos < 0 {
			w.Header().Set("Content-Type", "text/html; charset=UTF-8")
			w.WriteHeader(400)
			_, _ = w.Write([]byte("400 Bad Request\n\nmarker not found\n\n"))
			return
		}
		ims = ims[pos+1:]
	}
	if len(ims) > limit {
		ims = ims[:limit]
	}
	out := make([]obj, 0, len(ims))
	for _, im := range ims {
		out = append(out, imageJSON(im))
	}
	res := obj{{"images", out}, {"first", "/v2/images"}, {"schema", "/v2/schemas/images"}}
	if len(ims) > 0 && len(ims) == limit {
		nv := url.Values{}
		for k, vals := range v {
			if k != "marker" {
				nv[k] = vals
			}
		}
		nv.Set("marker", ims[len(ims)-1].ID)
		res = obj{{"images", out}, {"first", "/v2/images"}, {"schema", "/v2/schemas/images"}, {"next", "/v2/images?" + nv.Encode()}}
	}
	writeJSON(w, 200, res)
}

func (s *Server) showImage(w http.ResponseWriter, r *http.Request) {
	tok := tokenFrom(r.Context())
	now := s.clock.Now()
	id := r.PathValue("id")
	for _, im := range s.currentWorld().Images {
		if im.ID == id && !im.Created.After(now) && (im.Deleted.IsZero() || im.Deleted.After(now)) && glanceVisible(tok, im) {
			writeJSON(w, 200, imageJSON(im))
			return
		}
	}
	w.Header().Set("Content-Type", "text/html; charset=UTF-8")
	w.WriteHeader(404)
	_, _ = w.Write([]byte("404 Not Found\n\nNo image found with ID " + id + "\n\n"))
}

func imageJSON(im *Image) obj {
	o := obj{{"name", im.Name}, {"disk_format", im.DiskFormat}, {"container_format", im.ContainerFormat},
		{"visibility", im.Visibility}, {"size", im.Size}, {"virtual_size", im.Size}, {"status", im.Status},
		{"checksum", im.Checksum}, {"protected", false}, {"min_ram", 0}, {"min_disk", 0}, {"owner", im.Owner},
		{"os_hidden", false}, {"os_hash_algo", "sha512"}, {"os_hash_value", im.HashValue}, {"id", im.ID},
		{"created_at", zTime(im.Created)}, {"updated_at", zTime(im.Updated)}}
	keys := make([]string, 0, len(im.Properties))
	for k := range im.Properties {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		o.add(k, im.Properties[k])
	}
	tags := im.Tags
	if tags == nil {
		tags = []string{}
	}
	return append(o, kv{"tags", tags}, kv{"self", "/v2/images/" + im.ID}, kv{"file", "/v2/images/" + im.ID + "/file"},
		kv{"schema", "/v2/schemas/image"}, kv{"stores", "fs"})
}

func (s *Server) glanceVersions(w http.ResponseWriter, r *http.Request) {
	world := s.currentWorld()
	base := baseURL(r) + regionPrefix(world, s.regionOf(world, r)) + "/image"
	var vs []obj
	for i, v := range []string{"v2.16", "v2.15", "v2.9", "v2.7", "v2.6", "v2.5", "v2.4", "v2.3", "v2.2", "v2.1", "v2.0"} {
		status := "SUPPORTED"
		if i == 0 {
			status = "CURRENT"
		}
		vs = append(vs, obj{{"id", v}, {"status", status}, {"links", []obj{{{"rel", "self"}, {"href", base + "/v2/"}}}}})
	}
	writeJSON(w, http.StatusMultipleChoices, obj{{"versions", vs}})
}
