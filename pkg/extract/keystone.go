package extract

import (
	"context"
	"fmt"
	"net/http"
	"slices"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/projects"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/users"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"github.com/tally-accounting/tally/pkg/directory"
	"github.com/tally-accounting/tally/pkg/openstack"
)

// keystone is what the runner asks of Keystone.
type keystone struct {
	client *gophercloud.ServiceClient
}

func newKeystone(cloud *openstack.Cloud) (*keystone, error) {
	c, err := gopenstack.NewIdentityV3(cloud.Provider, cloud.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("keystone endpoint: %w", err)
	}
	return &keystone{client: c}, nil
}

// projects returns the selected projects: those tagged tag plus wanted (ids
// or names). A token that may not list projects (the accounting role) falls
// back to the projects it has a role on.
func (k *keystone) projects(ctx context.Context, tag string, wanted []string) ([]directory.Project, []string, error) {
	listTag := ""
	if len(wanted) == 0 {
		listTag = tag
	}
	all, warnings, err := k.list(ctx, listTag)
	if err != nil {
		return nil, warnings, err
	}
	var out []directory.Project
	seen := map[string]bool{}
	for _, p := range all {
		selected := tag != "" && slices.Contains(p.Tags, tag)
		selected = selected || slices.Contains(wanted, p.ID) || slices.Contains(wanted, p.Name)
		if selected && !seen[p.ID] {
			seen[p.ID] = true
			out = append(out, toDirectory(p))
		}
	}
	for _, w := range wanted {
		if !slices.ContainsFunc(out, func(p directory.Project) bool { return w == p.ID || w == p.Name }) {
			warnings = append(warnings, fmt.Sprintf("configured project %q not found (or not visible to these credentials)", w))
		}
	}
	return out, warnings, nil
}

// SelectProjects returns the projects a run of cloud's credentials selects,
// exactly as Run does (tally doctor checks them), with Run's warnings.
func SelectProjects(ctx context.Context, cloud *openstack.Cloud, tag string, wanted []string) ([]directory.Project, []string, error) {
	ks, err := newKeystone(cloud)
	if err != nil {
		return nil, nil, err
	}
	return ks.projects(ctx, tag, wanted)
}

// list returns the projects carrying tag (every one when tag is empty). A
// token that may not list projects (the accounting role) falls back to the
// projects it has a role on.
func (k *keystone) list(ctx context.Context, tag string) ([]projects.Project, []string, error) {
	var warnings []string
	var all []projects.Project
	listed := false
	page, err := projects.List(k.client, projects.ListOpts{Tags: tag}).AllPages(ctx)
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
	if !listed {
		page, err := projects.ListAvailable(k.client).AllPages(ctx)
		if err != nil {
			return nil, warnings, fmt.Errorf("list the user's projects: %w", openstack.Explain(err))
		}
		if all, err = projects.ExtractProjects(page); err != nil {
			return nil, warnings, fmt.Errorf("list the user's projects: %w", err)
		}
	}
	return all, warnings, nil
}

// ListProjects returns every project auth can see (its own when listing
// them all is forbidden), for tools that map a project name to its id.
func ListProjects(ctx context.Context, auth openstack.AuthConfig, retry openstack.RetryConfig) ([]directory.Project, []string, error) {
	cloud, err := openstack.Connect(ctx, auth, retry)
	if err != nil {
		return nil, nil, err
	}
	k, err := newKeystone(cloud)
	if err != nil {
		return nil, nil, err
	}
	all, warnings, err := k.list(ctx, "")
	if err != nil {
		return nil, warnings, err
	}
	out := make([]directory.Project, 0, len(all))
	for _, p := range all {
		out = append(out, toDirectory(p))
	}
	return out, warnings, nil
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
func (k *keystone) users(ctx context.Context) (map[string]directory.User, error) {
	out := map[string]directory.User{}
	err := users.List(k.client, users.ListOpts{}).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
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

// user fetches one user (identity:get_user): cASO's way to name a user, and
// tally's when listing them is forbidden.
func (k *keystone) user(ctx context.Context, id string) (directory.User, error) {
	u, err := users.Get(ctx, k.client, id).Extract()
	if err != nil {
		return directory.User{}, openstack.Explain(err)
	}
	return directory.User{ID: u.ID, Name: u.Name, DomainID: u.DomainID}, nil
}

// Scoped connects again with a token scoped to project, for the per-project
// access mode (what cASO does for every project). An application credential
// is bound to its project, so its cloud is returned as it is.
func Scoped(ctx context.Context, cloud *openstack.Cloud, auth openstack.AuthConfig, retry openstack.RetryConfig, project string) (*openstack.Cloud, error) {
	if auth.ApplicationCredentialID != "" || auth.ApplicationCredentialName != "" {
		return cloud, nil
	}
	auth.ProjectID, auth.ProjectName, auth.DomainID, auth.DomainName, auth.SystemScope = project, "", "", "", ""
	c, err := openstack.ConnectCounting(ctx, auth, retry, cloud.Stats)
	if err != nil {
		return nil, fmt.Errorf("token for project %s: %w", project, err)
	}
	return c, nil
}
