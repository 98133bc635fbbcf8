package doctor

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"

	"github.com/tally-accounting/tally/pkg/directory"
	"github.com/tally-accounting/tally/pkg/extract"
	"github.com/tally-accounting/tally/pkg/openstack"
)

const allTenantsPolicy = "os_compute_api:servers:detail:get_all_tenants"

type serverPage struct {
	Servers []struct {
		UserID string `json:"user_id"`
	} `json:"servers"`
}

func (c *cloudCheck) compute(cloud *openstack.Cloud, microversion string) (*gophercloud.ServiceClient, error) {
	sc, err := gopenstack.NewComputeV2(cloud.Provider, cloud.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("no Nova endpoint in the catalog (region %q): %w", cloud.Endpoint.Region, err)
	}
	sc.Microversion = microversion
	return sc, nil
}

// listServers reads one server, remembering its owner for the get_user
// check.
func (c *cloudCheck) listServers(ctx context.Context, sc *gophercloud.ServiceClient, query string) error {
	var page serverPage
	if err := get(ctx, sc, "servers/detail?limit=1"+query, &page); err != nil {
		return err
	}
	c.mu.Lock()
	for _, s := range page.Servers {
		if s.UserID != "" {
			c.owners[s.UserID] = true
		}
	}
	c.mu.Unlock()
	return nil
}

// nova checks the listing a run uses (all tenants, or each project), the
// usage API cASO uses, and the flavors' extra specs.
func (c *cloudCheck) nova(ctx context.Context, projects []directory.Project) {
	sc, err := c.compute(c.cloud, c.cfg.Nova.Microversion)
	if err != nil {
		c.rep.add(Fail, "nova", "check region_name (OS_REGION_NAME) and interface", "%v", err)
		return
	}
	mode := c.cfg.Nova.AccessMode
	if mode != extract.AccessPerProject {
		err := c.listServers(ctx, sc, "&all_tenants=1")
		st := openstack.StatusOf(err)
		switch {
		case err == nil:
			c.rep.add(OK, "nova.all_tenants", "", "%s allowed: a run lists every project's servers at once", allTenantsPolicy)
			mode = extract.AccessAllTenants
		case (st == http.StatusForbidden || st == http.StatusUnauthorized) && mode == extract.AccessAllTenants:
			c.rep.add(Fail, "nova.all_tenants", "set extractors.nova.access_mode: auto (project by project), or give the user the admin role",
				"access_mode is all_tenants but Nova refuses it (%s): %v", allTenantsPolicy, err)
			return
		case st == http.StatusForbidden || st == http.StatusUnauthorized:
			c.rep.add(OK, "nova.all_tenants", "", "%s refused: a run goes project by project with a token scoped to each, as cASO does", allTenantsPolicy)
			mode = extract.AccessPerProject
		default:
			c.rep.add(Fail, "nova.all_tenants", "", "GET /servers/detail?all_tenants=1: %v", err)
			return
		}
	}
	if mode == extract.AccessPerProject {
		c.perProject(ctx, "nova.project", "os_compute_api:servers:detail", projects, func(ctx context.Context, cl *openstack.Cloud, _ directory.Project) error {
			psc, err := c.compute(cl, c.cfg.Nova.Microversion)
			if err != nil {
				return err
			}
			return c.listServers(ctx, psc, "")
		})
	}
	c.usage(ctx, sc, mode, projects)
	c.flavors(ctx, sc)
}

// usage checks os-simple-tenant-usage. tally does not need it (servers
// embed their flavor, and a second listing finds the long-lived ones);
// cASO does, so a site comparing the two needs it allowed.
func (c *cloudCheck) usage(ctx context.Context, sc *gophercloud.ServiceClient, mode string, projects []directory.Project) {
	var body struct{}
	listErr := get(ctx, sc, "os-simple-tenant-usage", &body)
	p := projects[0]
	showSC := sc
	if mode == extract.AccessPerProject {
		cl, err := c.scopedTo(ctx, p.ID)
		if err != nil {
			return // reported by nova.project
		}
		if showSC, err = c.compute(cl, c.cfg.Nova.Microversion); err != nil {
			return
		}
	}
	showErr := get(ctx, showSC, "os-simple-tenant-usage/"+p.ID, &body)
	list := "os_compute_api:os-simple-tenant-usage:list allowed"
	if listErr != nil {
		list = fmt.Sprintf("os_compute_api:os-simple-tenant-usage:list refused (%v)", listErr)
	}
	if showErr != nil {
		c.rep.add(Warn, "nova.usage", fmt.Sprintf("only for cASO: give %s the reader role on each project", c.tok.UserName),
			"os_compute_api:os-simple-tenant-usage:show refused for project %s (%v); %s. tally does not use the usage API, cASO does",
			p.Name, showErr, list)
		return
	}
	c.rep.add(OK, "nova.usage", "", "os_compute_api:os-simple-tenant-usage:show allowed (project %s); %s (tally does not use it, cASO does)", p.Name, list)
}

// flavors checks the extra specs a record takes from the flavor.
func (c *cloudCheck) flavors(ctx context.Context, sc *gophercloud.ServiceClient) {
	fsc := *sc
	fsc.Microversion = "2.61" // the first to embed extra_specs in the flavor list
	query := ""
	if c.admin() {
		query = "?is_public=None" // private flavors too
	}
	var body struct {
		Flavors []struct {
			Name       string            `json:"name"`
			ExtraSpecs map[string]string `json:"extra_specs"`
		} `json:"flavors"`
	}
	if err := get(ctx, &fsc, "flavors/detail"+query, &body); err != nil {
		c.rep.add(Warn, "flavors", "", "cannot list flavors with their extra specs (microversion 2.61): %v", err)
		return
	}
	sort.Slice(body.Flavors, func(i, j int) bool { return body.Flavors[i].Name < body.Flavors[j].Name })
	k := c.cfg.Nova.Keys()
	var none, half, accOK, accBad []string
	for _, f := range body.Flavors {
		t, v := f.ExtraSpecs[k.BenchmarkType], f.ExtraSpecs[k.BenchmarkValue]
		switch {
		case t == "" && v == "":
			none = append(none, f.Name)
		case t == "" || v == "":
			half = append(half, f.Name)
		default:
			if _, err := strconv.ParseFloat(v, 64); err != nil {
				half = append(half, f.Name)
			}
		}
		if f.ExtraSpecs[k.AcceleratorType] == "" {
			continue
		}
		if n, err := strconv.Atoi(f.ExtraSpecs[k.AcceleratorNumber]); err != nil || n < 1 ||
			f.ExtraSpecs[k.AcceleratorVendor] == "" || f.ExtraSpecs[k.AcceleratorModel] == "" {
			accBad = append(accBad, f.Name)
		} else {
			accOK = append(accOK, f.Name)
		}
	}
	benchFix := fmt.Sprintf("openstack flavor set --property %s=<HEPscore23|HEPSPEC06> --property %s=<value> <flavor>", k.BenchmarkType, k.BenchmarkValue)
	switch {
	case len(half) > 0:
		c.rep.add(Warn, "flavors.benchmark", benchFix, "%d flavors have only one of %s and %s, or a value that is not a number: %s; their records carry no benchmark",
			len(half), k.BenchmarkType, k.BenchmarkValue, list(half, 8))
	case len(none) > 0:
		c.rep.add(Warn, "flavors.benchmark", benchFix, "%d of %d flavors lack %s and %s: %s; their records carry no benchmark (no CPU normalisation)",
			len(none), len(body.Flavors), k.BenchmarkType, k.BenchmarkValue, list(none, 8))
	default:
		c.rep.add(OK, "flavors.benchmark", "", "all %d flavors have %s and %s", len(body.Flavors), k.BenchmarkType, k.BenchmarkValue)
	}
	switch {
	case len(accBad) > 0:
		c.rep.add(Warn, "flavors.accelerator", fmt.Sprintf("set %s, %s and %s (a whole number) on them", k.AcceleratorVendor, k.AcceleratorModel, k.AcceleratorNumber),
			"%d flavors have %s but not a vendor, model and count: %s; their accelerator records are incomplete", len(accBad), k.AcceleratorType, list(accBad, 8))
	case len(accOK) > 0:
		c.rep.add(OK, "flavors.accelerator", "", "%d flavors describe accelerators: %s", len(accOK), list(accOK, 8))
	default:
		c.rep.add(OK, "flavors.accelerator", "", "no flavor has %s: no accelerator records", k.AcceleratorType)
	}
}

// glance checks the image listing that gives ImageId its marketplace URI.
func (c *cloudCheck) glance(ctx context.Context) {
	img, err := gopenstack.NewImageV2(c.cloud.Provider, c.cloud.Endpoint)
	if err != nil {
		c.rep.add(Warn, "glance", "", "no Glance endpoint (%v): ImageId is the image id, never the marketplace URI", err)
		return
	}
	var body struct{}
	if err := get(ctx, img, "images?limit=1", &body); err != nil {
		c.rep.add(Warn, "glance", "allow get_images (Glance's policy) for the user", "listing images is refused (%v): ImageId is the image id, never the marketplace URI", err)
		return
	}
	c.rep.add(OK, "glance", "", "images readable (ImageId takes the vmcatcher_event_ad_mpuri property)")
}

// perService checks Cinder or Neutron as a run reads it: every project at
// once with the admin role (their APIs ignore all_tenants otherwise), else
// each project with a token scoped to it.
func (c *cloudCheck) perService(ctx context.Context, projects []directory.Project, name string,
	probe func(ctx context.Context, cloud *openstack.Cloud, project string) error) {
	if c.admin() {
		if err := probe(ctx, c.cloud, ""); err != nil {
			c.rep.add(Fail, name, "", "listing every project's resources: %v", err)
			return
		}
		c.rep.add(OK, name, "", "admin role: a run lists every project's resources at once")
		return
	}
	policy := map[string]string{"cinder": "volume:get_all", "neutron": "get_floatingip"}[name]
	c.perProject(ctx, name+".project", policy, projects, func(ctx context.Context, cl *openstack.Cloud, p directory.Project) error {
		return probe(ctx, cl, p.ID)
	})
}

func (c *cloudCheck) cinderProbe(ctx context.Context, cloud *openstack.Cloud, project string) error {
	sc, err := gopenstack.NewBlockStorageV3(cloud.Provider, cloud.Endpoint)
	if err != nil {
		return fmt.Errorf("no Cinder v3 endpoint in the catalog: %w", err)
	}
	q := "volumes/detail?limit=1"
	if project == "" {
		q += "&all_tenants=1"
	}
	var body struct{}
	return get(ctx, sc, q, &body)
}

func (c *cloudCheck) neutronProbe(ctx context.Context, cloud *openstack.Cloud, project string) error {
	sc, err := gopenstack.NewNetworkV2(cloud.Provider, cloud.Endpoint)
	if err != nil {
		return fmt.Errorf("no Neutron endpoint in the catalog: %w", err)
	}
	q := "floatingips?limit=1"
	if project != "" {
		q += "&project_id=" + url.QueryEscape(project)
	}
	var body struct{}
	return get(ctx, sc, q, &body)
}

// users checks what gives records their GlobalUserName: tally lists the
// users (identity:list_users) and, when that is refused, gets each record
// owner (identity:get_user) as cASO does; with both refused, no names.
func (c *cloudCheck) users(ctx context.Context) {
	ks, err := gopenstack.NewIdentityV3(c.cloud.Provider, c.cloud.Endpoint)
	if err != nil {
		c.rep.add(Warn, "keystone.users", "", "no Keystone endpoint in the catalog: %v", err)
		return
	}
	var list struct{}
	listErr := get(ctx, ks, "users?name="+url.QueryEscape(c.tok.UserName), &list)
	var other []string
	for id := range c.owners {
		if id != c.tok.UserID {
			other = append(other, id)
		}
	}
	sort.Strings(other)
	var getErr error
	if len(other) > 0 {
		var user struct{}
		getErr = get(ctx, ks, "users/"+other[0], &user)
	}
	getOK := len(other) > 0 && getErr == nil

	switch st := openstack.StatusOf(listErr); {
	case listErr == nil:
		c.rep.add(OK, "keystone.list_users", "", "identity:list_users allowed: records carry the owner's user name (GlobalUserName)")
	case st == http.StatusForbidden && getOK:
		c.rep.add(OK, "keystone.list_users", "", "identity:list_users refused: tally gets each record owner with identity:get_user instead (one call per user and run), as cASO does")
	case st == http.StatusForbidden:
		c.rep.add(Warn, "keystone.list_users", c.systemReaderFix(),
			"identity:list_users refused (%v), and identity:get_user is not known to work: records may carry no GlobalUserName", listErr)
	default:
		c.rep.add(Warn, "keystone.list_users", "", "GET /v3/users: %v", listErr)
	}
	switch {
	case len(other) == 0:
		c.rep.add(OK, "keystone.get_user", "", "not checked: no server owned by another user was seen")
	case getOK:
		c.rep.add(OK, "keystone.get_user", "", "identity:get_user allowed (GET /v3/users/%s, a server's owner)", other[0])
	case listErr == nil:
		c.rep.add(OK, "keystone.get_user", "", "identity:get_user refused for a server's owner (%v): not needed, the user listing names them", getErr)
	default:
		fix := c.systemReaderFix() + `; or, in Keystone's policy, end "identity:get_user" with "or role:<the user's role>": ` +
			`"(role:reader and system_scope:all) or (role:reader and token.domain.id:%(target.user.domain_id)s) or user_id:%(target.user.id)s or role:accounting"`
		c.rep.add(Warn, "keystone.get_user", fix, "identity:get_user refused for a server's owner (%v): records carry no GlobalUserName (cASO's would not either)", getErr)
	}
}

func list(s []string, n int) string {
	if len(s) > n {
		return strings.Join(s[:n], ", ") + fmt.Sprintf(" and %d more", len(s)-n)
	}
	return strings.Join(s, ", ")
}
