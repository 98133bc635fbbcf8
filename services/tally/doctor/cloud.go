package doctor

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"

	"github.com/tally-accounting/tally/pkg/directory"
	"github.com/tally-accounting/tally/pkg/extract"
	"github.com/tally-accounting/tally/pkg/openstack"
	"github.com/tally-accounting/tally/services/enricher"
)

// tokenInfo is what the token says about its scope.
type tokenInfo struct {
	UserID, UserName string
	ProjectID        string
	ProjectName      string
	ProjectDomain    string
	DomainName       string
	System           bool
	Roles            []string
}

func (t tokenInfo) scope() string {
	switch {
	case t.System:
		return "the system (all)"
	case t.ProjectID != "":
		return fmt.Sprintf("project %s (%s) in domain %s", t.ProjectName, t.ProjectID, t.ProjectDomain)
	case t.DomainName != "":
		return "domain " + t.DomainName
	}
	return "nothing (unscoped)"
}

func readToken(cloud *openstack.Cloud) (tokenInfo, error) {
	res, ok := cloud.Provider.GetAuthResult().(interface{ ExtractInto(any) error })
	if !ok {
		return tokenInfo{}, errors.New("no token body to read")
	}
	// ExtractInto unwraps the "token" object.
	var t struct {
		User struct {
			ID     string `json:"id"`
			Name   string `json:"name"`
			Domain struct {
				Name string `json:"name"`
			} `json:"domain"`
		} `json:"user"`
		Project *struct {
			ID     string `json:"id"`
			Name   string `json:"name"`
			Domain struct {
				Name string `json:"name"`
			} `json:"domain"`
		} `json:"project"`
		Domain *struct {
			Name string `json:"name"`
		} `json:"domain"`
		System map[string]any `json:"system"`
		Roles  []struct {
			Name string `json:"name"`
		} `json:"roles"`
	}
	if err := res.ExtractInto(&t); err != nil {
		return tokenInfo{}, err
	}
	info := tokenInfo{UserID: t.User.ID, UserName: t.User.Name, System: t.System != nil}
	if t.Project != nil {
		info.ProjectID, info.ProjectName, info.ProjectDomain = t.Project.ID, t.Project.Name, t.Project.Domain.Name
	}
	if t.Domain != nil {
		info.DomainName = t.Domain.Name
	}
	for _, r := range t.Roles {
		info.Roles = append(info.Roles, r.Name)
	}
	sort.Strings(info.Roles)
	return info, nil
}

// cloud runs every check that needs the OpenStack APIs.
func (d *doctor) cloud(ctx context.Context) {
	auth := d.cfg.Auth
	cloud, err := openstack.Connect(ctx, auth, d.cfg.Nova.Retry)
	if err != nil {
		d.rep.add(Fail, "auth", "check the credentials (OS_* variables, OS_CLOUD and clouds.yaml, or the openstack section of the config file)",
			"cannot authenticate: %v", err)
		return
	}
	tok, err := readToken(cloud)
	if err != nil {
		d.rep.add(Fail, "auth", "", "authenticated, but the token cannot be read: %v", err)
		return
	}
	if tok.ProjectID == "" && !tok.System && tok.DomainName == "" {
		d.rep.add(Fail, "auth", "set project_name (OS_PROJECT_NAME) or system_scope: all (OS_SYSTEM_SCOPE=all)",
			"user %s authenticated, but the token is unscoped: it has no service catalog", tok.UserName)
		return
	}
	d.rep.add(OK, "auth", "", "user %s, token scoped to %s, roles %s", tok.UserName, tok.scope(), strings.Join(tok.Roles, ", "))
	c := &cloudCheck{doctor: d, cloud: cloud, tok: tok, scoped: map[string]*openstack.Cloud{}, scopeErr: map[string]error{}}
	projects := c.projects(ctx)
	if projects == nil {
		return
	}
	c.vo(projects)
	if d.cfg.NovaEnabled || d.cfg.EnergyEnabled {
		c.nova(ctx, projects)
	}
	if d.cfg.NovaEnabled {
		c.glance(ctx)
	}
	if d.cfg.CinderEnabled {
		c.perService(ctx, projects, "cinder", c.cinderProbe)
	}
	if d.cfg.NeutronEnabled {
		c.perService(ctx, projects, "neutron", c.neutronProbe)
	}
	c.users(ctx)
}

type cloudCheck struct {
	*doctor
	cloud *openstack.Cloud
	tok   tokenInfo

	mu       sync.Mutex
	scoped   map[string]*openstack.Cloud // project id → a token scoped to it
	scopeErr map[string]error
}

func (c *cloudCheck) admin() bool { return slices.Contains(c.tok.Roles, "admin") }

// systemReaderFix is cASO's documented grant for reading project tags and
// other users (its configuration guide), with tally's way to use it.
func (c *cloudCheck) systemReaderFix() string {
	return fmt.Sprintf("give the user the reader role on the system (openstack role add --system all --user %s reader) "+
		"and authenticate with system_scope: all (OS_SYSTEM_SCOPE=all), as cASO's documentation asks", c.tok.UserName)
}

// projects checks listing projects by tag and returns the projects a run
// selects, or nil when none.
func (c *cloudCheck) projects(ctx context.Context) []directory.Project {
	cfg := c.cfg.Nova.Config
	wanted, tag := cfg.Projects, cfg.Tag
	if len(c.cfg.Projects) > 0 {
		wanted, tag = c.cfg.Projects, ""
	}
	if tag != "" {
		ks, err := gopenstack.NewIdentityV3(c.cloud.Provider, c.cloud.Endpoint)
		if err == nil {
			var body struct {
				Projects []struct{} `json:"projects"`
			}
			_, err = ks.Get(ctx, ks.ServiceURL("projects")+"?tags="+url.QueryEscape(tag), &body, nil)
			switch st := openstack.StatusOf(err); {
			case err == nil:
				c.rep.add(OK, "keystone.projects", "", "identity:list_projects allowed: %d projects tagged %q", len(body.Projects), tag)
			case st == http.StatusForbidden:
				c.rep.add(Warn, "keystone.projects", c.systemReaderFix(),
					"listing projects by tag %q is refused (identity:list_projects): a run selects only the tagged projects "+
						"this user has a role on, and skips any other tagged project without a word", tag)
			default:
				c.rep.add(Fail, "keystone.projects", "", "GET /v3/projects?tags=%s: %v", tag, openstack.Explain(err))
				return nil
			}
		}
	}
	projects, _, err := extract.SelectProjects(ctx, c.cloud, tag, wanted)
	if err != nil {
		c.rep.add(Fail, "keystone.projects", "", "selecting projects: %v", err)
		return nil
	}
	for _, w := range wanted {
		if !slices.ContainsFunc(projects, func(p directory.Project) bool { return p.ID == w || p.Name == w }) {
			c.rep.add(Fail, "keystone.projects", fmt.Sprintf("fix the project list, or give %s a role on it: openstack role add --user %s --project %s reader",
				c.tok.UserName, c.tok.UserName, w),
				"configured project %q does not exist or is not visible to user %s: it would never be extracted", w, c.tok.UserName)
		}
	}
	if len(projects) == 0 {
		c.rep.add(Fail, "keystone.projects", fmt.Sprintf("tag the projects to account (openstack project set --tag %s <project>) or list them in extractors.nova.projects", orQuote(tag)),
			"no project selected: none tagged %q is visible and no configured project was found", tag)
		return nil
	}
	c.rep.add(OK, "keystone.selection", "", "%d projects selected: %s", len(projects), names(projects, 8))
	return projects
}

// vo checks that every selected project has a VO, as the enricher finds it.
func (c *cloudCheck) vo(projects []directory.Project) {
	var mapping map[string]string
	if c.cfg.MappingFile != "" {
		m, err := enricher.LoadMappingFile(c.cfg.MappingFile)
		if err != nil {
			c.rep.add(Fail, "vo", "fix enricher.mapping_file (cASO's voms.json format)", "%v", err)
			return
		}
		mapping = m
	}
	var fromProp, fromMap, fromDefault int
	var missing []directory.Project
	for _, p := range projects {
		switch {
		case p.Properties[c.cfg.VOProperty] != "":
			fromProp++
		case mapping[p.ID] != "" || mapping[p.Name] != "":
			fromMap++
		case c.cfg.DefaultVO != "":
			fromDefault++
		default:
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		c.rep.add(Fail, "vo", fmt.Sprintf("openstack project set --property %s=<vo> <project> for each, or map them in enricher.mapping_file, or set enricher.default_vo",
			c.cfg.VOProperty),
			"%d of %d selected projects have no VO (property %q, mapping file, default_vo): %s; their records would be held until one is set",
			len(missing), len(projects), c.cfg.VOProperty, names(missing, 8))
		return
	}
	detail := fmt.Sprintf("every selected project has a VO: %d from property %q", fromProp, c.cfg.VOProperty)
	if fromMap > 0 {
		detail += fmt.Sprintf(", %d from the mapping file", fromMap)
	}
	if fromDefault > 0 {
		detail += fmt.Sprintf(", %d get default_vo %q", fromDefault, c.cfg.DefaultVO)
	}
	c.rep.add(OK, "vo", "", "%s", detail)
}

// scopedTo returns a token scoped to project, once per project.
func (c *cloudCheck) scopedTo(ctx context.Context, project string) (*openstack.Cloud, error) {
	c.mu.Lock()
	cl, err := c.scoped[project], c.scopeErr[project]
	c.mu.Unlock()
	if cl != nil || err != nil {
		return cl, err
	}
	cl, err = extract.Scoped(ctx, c.cloud, c.cfg.Auth, c.cfg.Nova.Retry, project)
	c.mu.Lock()
	c.scoped[project], c.scopeErr[project] = cl, err
	c.mu.Unlock()
	return cl, err
}

// eachProject runs fn on every project, cfg.Concurrency at a time, and
// returns the failures by project id.
func (c *cloudCheck) eachProject(ctx context.Context, projects []directory.Project, fn func(directory.Project) error) map[string]error {
	out := map[string]error{}
	var mu sync.Mutex
	sem := make(chan struct{}, max(c.cfg.Nova.Concurrency, 1))
	var wg sync.WaitGroup
	for _, p := range projects {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := fn(p); err != nil {
				mu.Lock()
				out[p.ID] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
}

// scopeFailure is a per-project FAIL line: the token could not be scoped,
// or the API refused the scoped token.
func (c *cloudCheck) scopeFailure(name string, p directory.Project, err error, policy string) {
	var serr *scopeError
	if errors.As(err, &serr) {
		c.rep.add(Fail, name, fmt.Sprintf("openstack role add --user %s --project %s reader", c.tok.UserName, p.ID),
			"project %s (%s): no token scoped to it (%v): user %s has no role there, and per-project mode needs the reader role on each project",
			p.Name, p.ID, serr.err, c.tok.UserName)
		return
	}
	c.rep.add(Fail, name, fmt.Sprintf("allow %s for a reader of the project in the service's policy, or give %s the reader role on it", policy, c.tok.UserName),
		"project %s (%s): %v", p.Name, p.ID, err)
}

type scopeError struct{ err error }

func (e *scopeError) Error() string { return e.err.Error() }

// perProject probes every project with a token scoped to it and reports
// the failures one line each and the rest in one line.
func (c *cloudCheck) perProject(ctx context.Context, name, policy string, projects []directory.Project,
	probe func(ctx context.Context, cloud *openstack.Cloud, p directory.Project) error) {
	failed := c.eachProject(ctx, projects, func(p directory.Project) error {
		cl, err := c.scopedTo(ctx, p.ID)
		if err != nil {
			return &scopeError{err}
		}
		return probe(ctx, cl, p)
	})
	for _, p := range projects {
		if err := failed[p.ID]; err != nil {
			c.scopeFailure(name, p, err, policy)
		}
	}
	if n := len(projects) - len(failed); n > 0 {
		c.rep.add(OK, name, "", "%d of %d projects readable with a token scoped to each", n, len(projects))
	}
}

func get(ctx context.Context, sc *gophercloud.ServiceClient, path string, into any) error {
	_, err := sc.Get(ctx, sc.ServiceURL(path), into, nil)
	return openstack.Explain(err)
}

func names(ps []directory.Project, n int) string {
	var out []string
	for i, p := range ps {
		if i == n {
			out = append(out, fmt.Sprintf("and %d more", len(ps)-n))
			break
		}
		out = append(out, fmt.Sprintf("%s (%s)", p.Name, p.ID))
	}
	return strings.Join(out, ", ")
}

func orQuote(tag string) string {
	if tag == "" {
		return "caso"
	}
	return tag
}
