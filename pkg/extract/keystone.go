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
	var warnings []string
	var all []projects.Project
	listed := false
	opts := projects.ListOpts{}
	if len(wanted) == 0 {
		opts.Tags = tag
	}
	page, err := projects.List(k.client, opts).AllPages(ctx)
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
