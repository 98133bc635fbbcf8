package sim

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"
)

type token struct {
	ID        string
	UserID    string
	ProjectID string
	System    bool
	Methods   []string
	Issued    time.Time
	Expires   time.Time
	AuditID   string
	Roles     []*Role
	AppCred   *AppCred
}

func (t *token) hasRole(name string) bool {
	for _, r := range t.Roles {
		if r.Name == name {
			return true
		}
	}
	return false
}

// isAdmin follows Zed's legacy policies (enforce_new_defaults=false): the
// admin role in any scope is admin everywhere.
func (t *token) isAdmin() bool { return t.hasRole("admin") }

// readsIdentity is who may read Keystone's projects and users. With
// enforce_new_defaults=false Zed accepts the legacy rule (admin) or the new
// default, which adds a system-scoped reader: cASO's documented accounting
// setup ("openstack role add --system all --user accounting reader").
func (t *token) readsIdentity() bool { return t.isAdmin() || t.System && t.hasRole("reader") }

type tokenKey struct{}

func tokenFrom(ctx context.Context) *token {
	t, _ := ctx.Value(tokenKey{}).(*token)
	return t
}

func keystoneError(w http.ResponseWriter, code int, title, msg string) {
	writeJSON(w, code, obj{{"error", obj{{"code", code}, {"message", msg}, {"title", title}}}})
}

func unauthorized(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("WWW-Authenticate", "Keystone uri=\""+baseURL(r)+"/v3\"")
	keystoneError(w, 401, "Unauthorized", "The request you have made requires authentication.")
}

// authed wraps a service handler: the X-Auth-Token must be a live token, as
// keystonemiddleware checks.
func (s *Server) authed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok := s.lookupToken(r.Header.Get("X-Auth-Token"))
		if tok == nil {
			unauthorized(w, r)
			return
		}
		if s.regionOf(s.currentWorld(), r) == "" {
			http.NotFound(w, r)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), tokenKey{}, tok)))
	}
}

func (s *Server) lookupToken(id string) *token {
	if id == "" {
		return nil
	}
	s.mu.RLock()
	tok := s.tokens[id]
	s.mu.RUnlock()
	if tok == nil || !s.clock.Now().Before(tok.Expires) {
		return nil
	}
	return tok
}

func (s *Server) keystoneRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", s.keystoneVersions)
	mux.HandleFunc("GET /v3", s.keystoneV3)
	mux.HandleFunc("GET /v3/{$}", s.keystoneV3)
	mux.HandleFunc("POST /v3/auth/tokens", s.issueToken)
	mux.HandleFunc("GET /v3/auth/tokens", s.authed(s.validateToken))
	mux.HandleFunc("GET /v3/auth/projects", s.authed(s.authProjects))
	mux.HandleFunc("GET /v3/projects", s.authed(s.listProjects))
	mux.HandleFunc("GET /v3/projects/{id}", s.authed(s.getProject))
	mux.HandleFunc("GET /v3/users", s.authed(s.listUsers))
	mux.HandleFunc("GET /v3/users/{id}", s.authed(s.getUser))
	mux.HandleFunc("GET /v3/roles", s.authed(s.listRoles))
	mux.HandleFunc("GET /v3/role_assignments", s.authed(s.listRoleAssignments))
}

func identityVersion(base string) obj {
	return obj{{"id", "v3.14"}, {"status", "stable"}, {"updated", "2020-04-07T00:00:00Z"},
		{"links", []obj{{{"rel", "self"}, {"href", base + "/v3/"}}}},
		{"media-types", []obj{{{"base", "application/json"}, {"type", "application/vnd.openstack.identity-v3+json"}}}}}
}

func (s *Server) keystoneVersions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusMultipleChoices, obj{{"versions", obj{{"values", []obj{identityVersion(baseURL(r))}}}}})
}

func (s *Server) keystoneV3(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, obj{{"version", identityVersion(baseURL(r))}})
}

type authRequest struct {
	Auth struct {
		Identity struct {
			Methods  []string `json:"methods"`
			Password struct {
				User struct {
					ID       string     `json:"id"`
					Name     string     `json:"name"`
					Domain   *domainRef `json:"domain"`
					Password string     `json:"password"`
				} `json:"user"`
			} `json:"password"`
			AppCred struct {
				ID     string `json:"id"`
				Name   string `json:"name"`
				Secret string `json:"secret"`
				User   struct {
					ID   string `json:"id"`
					Name string `json:"name"`
				} `json:"user"`
			} `json:"application_credential"`
			Token struct {
				ID string `json:"id"`
			} `json:"token"`
		} `json:"identity"`
		Scope json.RawMessage `json:"scope"`
	} `json:"auth"`
}

type domainRef struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

func domainOK(d *domainRef) bool {
	return d == nil || d.ID == "default" || strings.EqualFold(d.Name, "Default") || (d.ID == "" && d.Name == "")
}

func (s *Server) issueToken(w http.ResponseWriter, r *http.Request) {
	var req authRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		keystoneError(w, 400, "Bad Request", "Expecting to find auth in request body. The server could not comply with the request since it is either malformed or otherwise incorrect. The client is assumed to be in error.")
		return
	}
	world := s.currentWorld()
	id := req.Auth.Identity
	now := s.clock.Now().Truncate(time.Second)
	tok := &token{Methods: id.Methods, Issued: now, Expires: now.Add(s.cfg.TokenTTL)}
	var user *User
	switch {
	case slices.Contains(id.Methods, "password"):
		pu := id.Password.User
		if pu.ID != "" {
			user = world.userByID[pu.ID]
		} else if domainOK(pu.Domain) {
			user = world.userByName[pu.Name]
		}
		if user == nil || user.Password != pu.Password || !user.Enabled {
			keystoneError(w, 401, "Unauthorized", "The request you have made requires authentication.")
			return
		}
	case slices.Contains(id.Methods, "application_credential"):
		ac := id.AppCred
		for _, c := range world.AppCreds {
			if (ac.ID != "" && c.ID == ac.ID) || (ac.ID == "" && c.Name == ac.Name &&
				(c.UserID == ac.User.ID || world.userByID[c.UserID].Name == ac.User.Name)) {
				if c.Secret == ac.Secret {
					tok.AppCred = c
				}
			}
		}
		if tok.AppCred == nil {
			keystoneError(w, 401, "Unauthorized", "The request you have made requires authentication.")
			return
		}
		user = world.userByID[tok.AppCred.UserID]
		tok.ProjectID = tok.AppCred.ProjectID
	case slices.Contains(id.Methods, "token"):
		old := s.lookupToken(id.Token.ID)
		if old == nil {
			keystoneError(w, 404, "Not Found", "Could not find token: "+id.Token.ID+".")
			return
		}
		user = world.userByID[old.UserID]
		tok.Methods = old.Methods
	default:
		keystoneError(w, 401, "Unauthorized", "The request you have made requires authentication.")
		return
	}
	tok.UserID = user.ID
	if tok.AppCred == nil && len(req.Auth.Scope) > 0 && string(req.Auth.Scope) != "null" {
		var scope struct {
			Project *struct {
				ID     string     `json:"id"`
				Name   string     `json:"name"`
				Domain *domainRef `json:"domain"`
			} `json:"project"`
			System *struct {
				All bool `json:"all"`
			} `json:"system"`
			Domain *domainRef `json:"domain"`
		}
		if err := json.Unmarshal(req.Auth.Scope, &scope); err != nil {
			keystoneError(w, 400, "Bad Request", "Invalid scope: "+err.Error())
			return
		}
		switch {
		case scope.Project != nil:
			var p *Project
			if scope.Project.ID != "" {
				p = world.projByID[scope.Project.ID]
			} else if domainOK(scope.Project.Domain) {
				p = world.projByName[scope.Project.Name]
			}
			if p == nil {
				keystoneError(w, 401, "Unauthorized", "The request you have made requires authentication.")
				return
			}
			tok.ProjectID = p.ID
		case scope.System != nil:
			tok.System = true
		case scope.Domain != nil:
			// Domain scope: only the default domain exists; roles come from
			// system assignments, which is enough for admin tooling.
			tok.System = true
		}
	}
	if tok.ProjectID != "" || tok.System {
		tok.Roles = world.rolesOf(user.ID, tok.ProjectID, tok.System)
		if len(tok.Roles) == 0 {
			target := "project " + tok.ProjectID
			if tok.System {
				target = "the system"
			}
			keystoneError(w, 401, "Unauthorized", "User "+user.ID+" has no access to "+target+".")
			return
		}
	}
	tok.ID = newTokenID()
	tok.AuditID = base64.RawURLEncoding.EncodeToString([]byte(tok.ID[10:26]))
	s.mu.Lock()
	s.tokens[tok.ID] = tok
	s.mu.Unlock()
	w.Header().Set("X-Subject-Token", tok.ID)
	w.Header().Set("Vary", "X-Auth-Token")
	writeJSON(w, http.StatusCreated, obj{{"token", s.tokenBody(r, world, tok)}})
}

func (s *Server) validateToken(w http.ResponseWriter, r *http.Request) {
	tok := s.lookupToken(r.Header.Get("X-Subject-Token"))
	if tok == nil {
		keystoneError(w, 404, "Not Found", "Could not find token: "+r.Header.Get("X-Subject-Token")+".")
		return
	}
	w.Header().Set("X-Subject-Token", tok.ID)
	writeJSON(w, 200, obj{{"token", s.tokenBody(r, s.currentWorld(), tok)}})
}

func newTokenID() string {
	b := make([]byte, 140)
	_, _ = rand.Read(b)
	return "gAAAAA" + base64.RawURLEncoding.EncodeToString(b)[:177]
}

func defaultDomain() obj { return obj{{"id", "default"}, {"name", "Default"}} }

func (s *Server) tokenBody(r *http.Request, world *World, tok *token) obj {
	u := world.userByID[tok.UserID]
	o := obj{{"methods", tok.Methods},
		{"user", obj{{"domain", defaultDomain()}, {"id", u.ID}, {"name", u.Name}, {"password_expires_at", nil}}},
		{"audit_ids", []string{tok.AuditID}},
		{"expires_at", tok.Expires.UTC().Format(fmtTokenTS)},
		{"issued_at", tok.Issued.UTC().Format(fmtTokenTS)}}
	if tok.ProjectID == "" && !tok.System {
		return o
	}
	if tok.ProjectID != "" {
		p := world.projByID[tok.ProjectID]
		o.add("project", obj{{"domain", defaultDomain()}, {"id", p.ID}, {"name", p.Name}})
		o.add("is_domain", false)
	}
	roles := make([]obj, 0, len(tok.Roles))
	for _, rl := range tok.Roles {
		roles = append(roles, obj{{"id", rl.ID}, {"name", rl.Name}})
	}
	o.add("roles", roles)
	if tok.System {
		o.add("system", obj{{"all", true}})
	}
	if tok.AppCred != nil {
		o.add("application_credential", obj{{"id", tok.AppCred.ID}, {"name", tok.AppCred.Name}, {"restricted", true}})
	}
	o.add("catalog", s.catalog(baseURL(r), world, tok.ProjectID))
	return o
}

// stableID derives a Keystone-style 32-hex id from parts, so catalog ids do
// not change between runs.
func stableID(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(h[:16])
}

// ServiceURL is the endpoint of one service type in one region, as the
// catalog publishes it.
func ServiceURL(base string, w *World, region, typ, projectID string) string {
	p := base + regionPrefix(w, region)
	switch typ {
	case "identity":
		return base + "/v3/"
	case "compute":
		return p + "/compute/v2.1"
	case "image":
		return p + "/image"
	case "network":
		return p + "/network"
	case "volumev3", "block-storage":
		return p + "/volume/v3/" + projectID
	case "prometheus":
		return p + "/prometheus"
	}
	return ""
}

func (s *Server) catalog(base string, w *World, projectID string) []obj {
	services := []struct{ typ, name string }{
		{"identity", "keystone"}, {"compute", "nova"}, {"image", "glance"}, {"network", "neutron"},
		{"volumev3", "cinderv3"}, {"block-storage", "cinder"},
	}
	var out []obj
	for _, svc := range services {
		var eps []obj
		for _, region := range w.Regions {
			for _, iface := range []string{"public", "internal", "admin"} {
				eps = append(eps, obj{{"id", stableID(svc.typ, region, iface)}, {"interface", iface},
					{"region_id", region}, {"url", ServiceURL(base, w, region, svc.typ, projectID)}, {"region", region}})
			}
		}
		out = append(out, obj{{"endpoints", eps}, {"id", stableID(svc.typ)}, {"type", svc.typ}, {"name", svc.name}})
	}
	return out
}

func projectJSON(base string, p *Project) obj {
	var o obj
	keys := make([]string, 0, len(p.Extra))
	for k := range p.Extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		o.add(k, p.Extra[k])
	}
	tags := p.Tags
	if tags == nil {
		tags = []string{}
	}
	o = append(o, obj{{"id", p.ID}, {"name", p.Name}, {"domain_id", p.DomainID}, {"description", p.Description},
		{"enabled", p.Enabled}, {"parent_id", p.DomainID}, {"is_domain", false}, {"tags", tags},
		{"options", obj{}}, {"links", obj{{"self", base + "/v3/projects/" + p.ID}}}}...)
	return o
}

func userJSON(base string, u *User) obj {
	var o obj
	if u.Email != "" {
		o.add("email", u.Email)
	}
	if u.Description != "" {
		o.add("description", u.Description)
	}
	return append(o, obj{{"id", u.ID}, {"name", u.Name}, {"domain_id", u.DomainID}, {"enabled", u.Enabled},
		{"password_expires_at", nil}, {"options", obj{}}, {"links", obj{{"self", base + "/v3/users/" + u.ID}}}}...)
}

func collectionLinks(r *http.Request) obj {
	self := baseURL(r) + r.URL.Path
	if r.URL.RawQuery != "" {
		self += "?" + r.URL.RawQuery
	}
	return obj{{"next", nil}, {"self", self}, {"previous", nil}}
}

func forbiddenIdentity(w http.ResponseWriter, action string) {
	keystoneError(w, 403, "Forbidden", "You are not authorized to perform the requested action: "+action+".")
}

func sortedProjects(w *World) []*Project {
	ps := slices.Clone(w.Projects)
	sort.Slice(ps, func(i, j int) bool { return ps[i].ID < ps[j].ID })
	return ps
}

func (s *Server) authProjects(w http.ResponseWriter, r *http.Request) {
	tok := tokenFrom(r.Context())
	world := s.currentWorld()
	mine := map[string]bool{}
	for _, a := range world.Assignments {
		if a.UserID == tok.UserID && !a.System {
			mine[a.ProjectID] = true
		}
	}
	out := []obj{}
	for _, p := range sortedProjects(world) {
		if mine[p.ID] {
			out = append(out, projectJSON(baseURL(r), p))
		}
	}
	writeJSON(w, 200, obj{{"projects", out}, {"links", collectionLinks(r)}})
}

func (s *Server) listProjects(w http.ResponseWriter, r *http.Request) {
	tok := tokenFrom(r.Context())
	if !tok.readsIdentity() {
		forbiddenIdentity(w, "identity:list_projects")
		return
	}
	q := r.URL.Query()
	split := func(k string) []string {
		if v := q.Get(k); v != "" {
			return strings.Split(v, ",")
		}
		return nil
	}
	all, any_, notAll, notAny := split("tags"), split("tags-any"), split("not-tags"), split("not-tags-any")
	out := []obj{}
	for _, p := range sortedProjects(s.currentWorld()) {
		has := func(t string) bool { return slices.Contains(p.Tags, t) }
		ok := true
		for _, t := range all {
			ok = ok && has(t)
		}
		if len(any_) > 0 && !slices.ContainsFunc(any_, has) {
			ok = false
		}
		if len(notAll) > 0 && !slices.ContainsFunc(notAll, func(t string) bool { return !has(t) }) {
			ok = false
		}
		if slices.ContainsFunc(notAny, has) {
			ok = false
		}
		if n := q.Get("name"); n != "" && p.Name != n {
			ok = false
		}
		if e := q.Get("enabled"); e != "" && (strings.EqualFold(e, "true") || e == "1") != p.Enabled {
			ok = false
		}
		if ok {
			out = append(out, projectJSON(baseURL(r), p))
		}
	}
	writeJSON(w, 200, obj{{"projects", out}, {"links", collectionLinks(r)}})
}

func (s *Server) getProject(w http.ResponseWriter, r *http.Request) {
	tok := tokenFrom(r.Context())
	id := r.PathValue("id")
	if !tok.readsIdentity() && tok.ProjectID != id {
		forbiddenIdentity(w, "identity:get_project")
		return
	}
	p := s.currentWorld().projByID[id]
	if p == nil {
		keystoneError(w, 404, "Not Found", "Could not find project: "+id+".")
		return
	}
	writeJSON(w, 200, obj{{"project", projectJSON(baseURL(r), p)}})
}

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request) {
	tok := tokenFrom(r.Context())
	if !tok.readsIdentity() {
		forbiddenIdentity(w, "identity:list_users")
		return
	}
	us := slices.Clone(s.currentWorld().Users)
	sort.Slice(us, func(i, j int) bool { return us[i].ID < us[j].ID })
	out := []obj{}
	name := r.URL.Query().Get("name")
	for _, u := range us {
		if name == "" || u.Name == name {
			out = append(out, userJSON(baseURL(r), u))
		}
	}
	writeJSON(w, 200, obj{{"users", out}, {"links", collectionLinks(r)}})
}

func (s *Server) getUser(w http.ResponseWriter, r *http.Request) {
	tok := tokenFrom(r.Context())
	id := r.PathValue("id")
	policyRole := s.cfg.GetUserRole != "" && tok.hasRole(s.cfg.GetUserRole)
	if !tok.readsIdentity() && tok.UserID != id && !policyRole {
		forbiddenIdentity(w, "identity:get_user")
		return
	}
	u := s.currentWorld().userByID[id]
	if u == nil {
		keystoneError(w, 404, "Not Found", "Could not find user: "+id+".")
		return
	}
	writeJSON(w, 200, obj{{"user", userJSON(baseURL(r), u)}})
}

func (s *Server) listRoles(w http.ResponseWriter, r *http.Request) {
	tok := tokenFrom(r.Context())
	if !tok.isAdmin() {
		forbiddenIdentity(w, "identity:list_roles")
		return
	}
	rs := slices.Clone(s.currentWorld().Roles)
	sort.Slice(rs, func(i, j int) bool { return rs[i].ID < rs[j].ID })
	out := []obj{}
	for _, rl := range rs {
		opts := obj{}
		if rl.Immutable {
			opts = obj{{"immutable", true}}
		}
		out = append(out, obj{{"id", rl.ID}, {"name", rl.Name}, {"domain_id", nil}, {"description", nil},
			{"options", opts}, {"links", obj{{"self", baseURL(r) + "/v3/roles/" + rl.ID}}}})
	}
	writeJSON(w, 200, obj{{"roles", out}, {"links", collectionLinks(r)}})
}

func (s *Server) listRoleAssignments(w http.ResponseWriter, r *http.Request) {
	tok := tokenFrom(r.Context())
	q := r.URL.Query()
	if !tok.isAdmin() && q.Get("user.id") != tok.UserID {
		forbiddenIdentity(w, "identity:list_role_assignments")
		return
	}
	names := q.Has("include_names") && q.Get("include_names") != "false" && q.Get("include_names") != "0"
	world := s.currentWorld()
	base := baseURL(r)
	out := []obj{}
	for _, a := range world.Assignments {
		if v := q.Get("scope.project.id"); v != "" && (a.System || a.ProjectID != v) {
			continue
		}
		if v := q.Get("user.id"); v != "" && a.UserID != v {
			continue
		}
		if v := q.Get("role.id"); v != "" && a.RoleID != v {
			continue
		}
		if q.Has("scope.system") && !a.System {
			continue
		}
		u, rl := world.userByID[a.UserID], world.roleByID[a.RoleID]
		user := obj{{"id", u.ID}}
		role := obj{{"id", rl.ID}}
		if names {
			user = append(user, kv{"name", u.Name}, kv{"domain", defaultDomain()})
			role = append(role, kv{"name", rl.Name})
		}
		var scope obj
		var link string
		if a.System {
			scope = obj{{"system", obj{{"all", true}}}}
			link = base + "/v3/system/users/" + u.ID + "/roles/" + rl.ID
		} else {
			p := world.projByID[a.ProjectID]
			ps := obj{{"id", p.ID}}
			if names {
				ps = append(ps, kv{"name", p.Name}, kv{"domain", defaultDomain()})
			}
			scope = obj{{"project", ps}}
			link = base + "/v3/projects/" + p.ID + "/users/" + u.ID + "/roles/" + rl.ID
		}
		out = append(out, obj{{"links", obj{{"assignment", link}}}, {"scope", scope}, {"user", user}, {"role", role}})
	}
	writeJSON(w, 200, obj{{"role_assignments", out}, {"links", collectionLinks(r)}})
}
