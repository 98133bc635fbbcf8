package nova

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/projects"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/users"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"github.com/tally-accounting/tally/pkg/directory"
	"github.com/tally-accounting/tally/pkg/openstack"
)

// MarketplaceProperty is the image property that replaces the image id in
// ImageId (EGI's AppDB marketplace URI).
const MarketplaceProperty = "vmcatcher_event_ad_mpuri"

// api is one region's Keystone, Nova and Glance.
type api struct {
	cloud    *openstack.Cloud
	auth     openstack.AuthConfig
	retry    openstack.RetryConfig
	identity *gophercloud.ServiceClient
	compute  *gophercloud.ServiceClient
	image    *gophercloud.ServiceClient
	mv       string
	pageSize int
}

func connect(ctx context.Context, auth openstack.AuthConfig, cfg Config) (*api, error) {
	cloud, err := openstack.Connect(ctx, auth, cfg.Retry)
	if err != nil {
		return nil, err
	}
	a := &api{cloud: cloud, auth: auth, retry: cfg.Retry, mv: cfg.Microversion, pageSize: cfg.PageSize}
	if a.identity, err = gopenstack.NewIdentityV3(cloud.Provider, cloud.Endpoint); err != nil {
		return nil, fmt.Errorf("keystone endpoint: %w", err)
	}
	if a.compute, err = a.computeClient(cloud.Provider); err != nil {
		return nil, err
	}
	if a.image, err = gopenstack.NewImageV2(cloud.Provider, cloud.Endpoint); err != nil {
		// Without Glance, ImageId falls back to the image id: not fatal.
		a.image = nil
	}
	return a, nil
}

func (a *api) computeClient(pc *gophercloud.ProviderClient) (*gophercloud.ServiceClient, error) {
	c, err := gopenstack.NewComputeV2(pc, a.cloud.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("nova endpoint (region %q): %w", a.cloud.Endpoint.Region, err)
	}
	c.Microversion = a.mv
	return c, nil
}

// scoped returns a compute client with a token scoped to project, for the
// per-project access mode (what cASO does for every project).
func (a *api) scoped(ctx context.Context, projectID string) (*gophercloud.ServiceClient, error) {
	if a.auth.ApplicationCredentialID != "" || a.auth.ApplicationCredentialName != "" {
		// An application credential is bound to its project.
		return a.compute, nil
	}
	auth := a.auth
	auth.ProjectID, auth.ProjectName, auth.DomainID, auth.DomainName, auth.SystemScope = projectID, "", "", "", ""
	c, err := openstack.Connect(ctx, auth, a.retry)
	if err != nil {
		return nil, fmt.Errorf("token for project %s: %w", projectID, err)
	}
	a.cloud.Stats.Calls.Add(c.Stats.Calls.Load())
	return a.computeClient(c.Provider)
}

// projects returns the selected projects: those tagged tag plus wanted (ids
// or names). A token that may not list projects (the accounting role) falls
// back to the projects it has a role on.
func (a *api) projects(ctx context.Context, tag string, wanted []string) ([]directory.Project, []string, error) {
	var warnings []string
	var all []projects.Project
	listed := false
	if tag != "" || len(wanted) > 0 {
		opts := projects.ListOpts{}
		if len(wanted) == 0 {
			opts.Tags = tag
		}
		page, err := projects.List(a.identity, opts).AllPages(ctx)
		if err == nil {
			all, err = projects.ExtractProjects(page)
			listed = err == nil
		}
		if err != nil && openstack.StatusOf(err) != http.StatusForbidden {
			return nil, nil, fmt.Errorf("list projects: %w", openstack.Explain(err))
		}
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("listing projects is forbidden (%v); using the projects this user has a role on", openstack.Explain(err)))
		}
	}
	if !listed {
		page, err := projects.ListAvailable(a.identity).AllPages(ctx)
		if err != nil {
			return nil, warnings, fmt.Errorf("list the user's projects: %w", openstack.Explain(err))
		}
		if all, err = projects.ExtractProjects(page); err != nil {
			return nil, warnings, fmt.Errorf("list the user's projects: %w", err)
		}
	}
	var out []directory.Project
	seen := map[string]bool{}
	for _, p := range all {
		selected := tag != "" && hasTag(p.Tags, tag)
		for _, w := range wanted {
			if w == p.ID || w == p.Name {
				selected = true
			}
		}
		if selected && !seen[p.ID] {
			seen[p.ID] = true
			out = append(out, toDirectory(p))
		}
	}
	for _, w := range wanted {
		found := false
		for _, p := range out {
			found = found || w == p.ID || w == p.Name
		}
		if !found {
			warnings = append(warnings, fmt.Sprintf("configured project %q not found (or not visible to these credentials)", w))
		}
	}
	return out, warnings, nil
}

func hasTag(tags []string, tag string) bool {
	for _, t := range tags {
		if t == tag {
			return true
		}
	}
	return false
}

func toDirectory(p projects.Project) directory.Project {
	props := map[string]string{}
	for k, v := range p.Extra {
		if s, ok := v.(string); ok {
			props[k] = s
		}
	}
	return directory.Project{ID: p.ID, Name: p.Name, DomainID: p.DomainID, Tags: p.Tags, Properties: props}
}

// users returns every user's name by id, or an error (403 for the
// accounting role under Keystone's default policy).
func (a *api) users(ctx context.Context) (map[string]directory.User, error) {
	out := map[string]directory.User{}
	err := users.List(a.identity, users.ListOpts{}).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		us, err := users.ExtractUsers(page)
		if err != nil {
			return false, err
		}
		for _, u := range us {
			out[u.ID] = directory.User{ID: u.ID, Name: u.Name, DomainID: u.DomainID}
		}
		return true, nil
	})
	if err != nil {
		return nil, openstack.Explain(err)
	}
	return out, nil
}

// user fetches one user, for when listing is not allowed but reading is.
func (a *api) user(ctx context.Context, id string) (directory.User, error) {
	u, err := users.Get(ctx, a.identity, id).Extract()
	if err != nil {
		return directory.User{}, openstack.Explain(err)
	}
	return directory.User{ID: u.ID, Name: u.Name, DomainID: u.DomainID}, nil
}

// imageRefs maps image ids to their marketplace URI, for the images that
// have one.
func (a *api) imageRefs(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	if a.image == nil {
		return out, nil
	}
	err := images.List(a.image, images.ListOpts{Limit: a.pageSize}).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		is, err := images.ExtractImages(page)
		if err != nil {
			return false, err
		}
		for _, im := range is {
			if v, ok := im.Properties[MarketplaceProperty].(string); ok && v != "" {
				out[im.ID] = v
			}
		}
		return true, nil
	})
	if err != nil {
		return out, openstack.Explain(err)
	}
	return out, nil
}

// canListAllTenants asks Nova for one server of any project.
func (a *api) canListAllTenants(ctx context.Context) (bool, error) {
	_, err := servers.List(a.compute, servers.ListOpts{AllTenants: true, Limit: 1}).AllPages(ctx)
	if err == nil {
		return true, nil
	}
	if s := openstack.StatusOf(err); s == http.StatusForbidden || s == http.StatusUnauthorized {
		return false, nil
	}
	return false, fmt.Errorf("probe all_tenants listing: %w", openstack.Explain(err))
}

// eachServer walks a server listing page by page, so memory holds one page.
func (a *api) eachServer(ctx context.Context, c *gophercloud.ServiceClient, opts servers.ListOpts, fn func(Server) error) error {
	opts.Limit = a.pageSize
	err := servers.List(c, opts).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		ss, err := servers.ExtractServers(page)
		if err != nil {
			return false, err
		}
		for i := range ss {
			if err := fn(fromNova(&ss[i])); err != nil {
				return false, err
			}
		}
		return true, nil
	})
	if err != nil {
		return openstack.Explain(err)
	}
	return nil
}

func fromNova(s *servers.Server) Server {
	out := Server{
		ID: s.ID, Name: s.Name, ProjectID: s.TenantID, UserID: s.UserID, Status: s.Status,
		Created: s.Created, Updated: s.Updated, LaunchedAt: s.LaunchedAt, TerminatedAt: s.TerminatedAt,
	}
	if id, ok := s.Image["id"].(string); ok {
		out.ImageID = id
	}
	if len(s.Flavor) > 0 {
		f := &Flavor{ExtraSpecs: map[string]string{}}
		f.Name, _ = s.Flavor["original_name"].(string)
		f.VCPUs = int(num(s.Flavor["vcpus"]))
		f.RAM = int64(num(s.Flavor["ram"]))
		f.Disk = int64(num(s.Flavor["disk"]))
		f.Ephemeral = int64(num(s.Flavor["ephemeral"]))
		if specs, ok := s.Flavor["extra_specs"].(map[string]any); ok {
			for k, v := range specs {
				f.ExtraSpecs[k] = fmt.Sprint(v)
			}
		}
		out.Flavor = f
	}
	for _, addrs := range s.Addresses {
		list, _ := addrs.([]any)
		for _, a := range list {
			m, _ := a.(map[string]any)
			if t, _ := m["OS-EXT-IPS:type"].(string); strings.EqualFold(t, "floating") {
				out.FloatingIPs++
			}
		}
	}
	return out
}

func num(v any) float64 {
	switch n := v.(type) {
	case float64:
		return n
	case int:
		return float64(n)
	case string:
		var f float64
		fmt.Sscan(n, &f)
		return f
	}
	return 0
}
