package openstack

import (
	"context"
	"fmt"
	"net/http"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"github.com/gophercloud/gophercloud/v2/pagination"
)

// CanListAllServers probes whether compute may list every project's
// servers: Nova refuses all_tenants (403,
// os_compute_api:servers:detail:get_all_tenants) to who may not. It reads
// one page of one server: AllPages would walk every server.
func CanListAllServers(ctx context.Context, compute *gophercloud.ServiceClient) (bool, error) {
	err := servers.List(compute, servers.ListOpts{AllTenants: true, Limit: 1}).EachPage(ctx,
		func(context.Context, pagination.Page) (bool, error) { return false, nil })
	if err == nil {
		return true, nil
	}
	if st := StatusOf(err); st == http.StatusForbidden || st == http.StatusUnauthorized {
		return false, nil
	}
	return false, fmt.Errorf("probe all_tenants listing: %w", Explain(err))
}
