package sim

import (
	"context"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/flavors"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/usage"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/projects"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/users"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/layer3/floatingips"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/ports"
	"github.com/gophercloud/gophercloud/v2/pagination"
)

var testNow = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// TestGophercloud walks every API with the unmodified gophercloud v2 client
// and checks the answers against the ground truth.
func TestGophercloud(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Now = testNow
	cfg.Projects = 5
	cfg.ServersPerProject = 12
	s := startSim(t, cfg)
	truth := s.currentWorld().Truth(testNow)
	ctx := context.Background()

	provider, err := openstack.AuthenticatedClient(ctx, gophercloud.AuthOptions{
		IdentityEndpoint: "http://" + s.Addr() + "/v3", Username: "admin", Password: DefaultPassword,
		DomainName: "Default", TenantName: "admin",
	})
	if err != nil {
		t.Fatalf("authenticate: %v", err)
	}
	eo := gophercloud.EndpointOpts{Region: "RegionOne"}
	compute, err := openstack.NewComputeV2(provider, eo)
	if err != nil {
		t.Fatal(err)
	}

	var wantAll, wantLive []string
	flavorNow := map[string]string{}
	flavorName := map[string]string{}
	for _, f := range truth.Flavors {
		flavorName[f.ID] = f.Name
	}
	for _, sv := range truth.Servers {
		wantAll = append(wantAll, sv.ID)
		if sv.VMState != "deleted" {
			wantLive = append(wantLive, sv.ID)
		}
		flavorNow[sv.ID] = flavorName[sv.FlavorID]
	}
	sort.Strings(wantAll)
	sort.Strings(wantLive)

	for _, mv := range []string{"2.1", "2.47", "2.93"} {
		t.Run("servers/"+mv, func(t *testing.T) {
			compute.Microversion = mv
			for _, tc := range []struct {
				name string
				opts servers.ListOpts
				want []string
			}{
				{"changes-since", servers.ListOpts{AllTenants: true, Limit: 7, ChangesSince: testNow.AddDate(-1, 0, 0).Format(time.RFC3339)}, wantAll},
				{"live", servers.ListOpts{AllTenants: true, Limit: 7}, wantLive},
			} {
				var got []string
				pages := 0
				err := servers.List(compute, tc.opts).EachPage(ctx, func(_ context.Context, p pagination.Page) (bool, error) {
					pages++
					var page []struct {
						ID     string         `json:"id"`
						Flavor map[string]any `json:"flavor"`
					}
					if err := servers.ExtractServersInto(p, &page); err != nil {
						return false, err
					}
					for _, sv := range page {
						got = append(got, sv.ID)
						if mv != "2.1" && sv.Flavor["original_name"] != flavorNow[sv.ID] {
							t.Errorf("server %s flavor %v, want %s", sv.ID, sv.Flavor["original_name"], flavorNow[sv.ID])
						}
						if _, hasID := sv.Flavor["id"]; hasID == (mv != "2.1") {
							t.Errorf("server %s at %s: flavor %v", sv.ID, mv, sv.Flavor)
						}
					}
					return true, nil
				})
				if err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				sort.Strings(got)
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("%s: servers (-want +got):\n%s", tc.name, diff)
				}
				if pages < 2 {
					t.Errorf("%s: %d pages, want pagination", tc.name, pages)
				}
			}
		})
	}
	compute.Microversion = ""

	t.Run("flavors", func(t *testing.T) {
		pages, err := flavors.ListDetail(compute, flavors.ListOpts{AccessType: flavors.AllAccess}).AllPages(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fs, err := flavors.ExtractFlavors(pages)
		if err != nil {
			t.Fatal(err)
		}
		var want, got []string
		for _, f := range truth.Flavors {
			if !f.Deleted {
				want = append(want, f.Name)
			}
		}
		for _, f := range fs {
			got = append(got, f.Name)
			specs, err := flavors.ListExtraSpecs(ctx, compute, f.ID).Extract()
			if err != nil {
				t.Fatalf("extra specs of %s: %v", f.Name, err)
			}
			for _, tf := range truth.Flavors {
				if tf.ID == f.ID && len(tf.ExtraSpecs) > 0 {
					if diff := cmp.Diff(tf.ExtraSpecs, specs); diff != "" {
						t.Errorf("extra specs of %s (-want +got):\n%s", f.Name, diff)
					}
				}
			}
		}
		sort.Strings(want)
		sort.Strings(got)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("flavors (-want +got):\n%s", diff)
		}
	})

	t.Run("usage", func(t *testing.T) {
		compute.Microversion = "2.40"
		defer func() { compute.Microversion = "" }()
		start, end := testNow.Add(-30*24*time.Hour), testNow
		var want []string
		for _, sv := range truth.Servers {
			if sv.LaunchedAt != nil && sv.LaunchedAt.Before(end) && (sv.TerminatedAt == nil || sv.TerminatedAt.After(start)) {
				want = append(want, sv.ID)
			}
		}
		var got []string
		err := usage.AllTenants(compute, usage.AllTenantsOpts{Detailed: true, Start: &start, End: &end, Limit: 5}).EachPage(ctx,
			func(_ context.Context, p pagination.Page) (bool, error) {
				tus, err := usage.ExtractAllTenants(p)
				if err != nil {
					return false, err
				}
				for _, tu := range tus {
					for _, su := range tu.ServerUsages {
						got = append(got, su.InstanceID)
					}
				}
				return true, nil
			})
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(want)
		sort.Strings(got)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("usage instances (-want +got):\n%s", diff)
		}
	})

	t.Run("images", func(t *testing.T) {
		ic, err := openstack.NewImageV2(provider, eo)
		if err != nil {
			t.Fatal(err)
		}
		pages, err := images.List(ic, images.ListOpts{Limit: 2}).AllPages(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ims, err := images.ExtractImages(pages)
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		for _, im := range s.currentWorld().Images {
			if im.Deleted.IsZero() || im.Deleted.After(testNow) {
				want++
			}
		}
		if len(ims) != want {
			t.Errorf("%d images, want %d", len(ims), want)
		}
		mpuri := 0
		for _, im := range ims {
			if im.Properties["vmcatcher_event_ad_mpuri"] != nil {
				mpuri++
			}
		}
		if mpuri == 0 {
			t.Error("no image carries vmcatcher_event_ad_mpuri")
		}
	})

	t.Run("volumes", func(t *testing.T) {
		bc, err := openstack.NewBlockStorageV3(provider, eo)
		if err != nil {
			t.Fatal(err)
		}
		pages, err := volumes.List(bc, volumes.ListOpts{AllTenants: true, Limit: 4}).AllPages(ctx)
		if err != nil {
			t.Fatal(err)
		}
		vs, err := volumes.ExtractVolumes(pages)
		if err != nil {
			t.Fatal(err)
		}
		var want, got []string
		for _, v := range truth.Volumes {
			if v.DeletedAt == nil || v.DeletedAt.After(testNow) {
				want = append(want, v.ID)
			}
		}
		for _, v := range vs {
			got = append(got, v.ID)
		}
		sort.Strings(want)
		sort.Strings(got)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("volumes (-want +got):\n%s", diff)
		}
	})

	t.Run("floatingips", func(t *testing.T) {
		nc, err := openstack.NewNetworkV2(provider, eo)
		if err != nil {
			t.Fatal(err)
		}
		pages, err := floatingips.List(nc, floatingips.ListOpts{Limit: 3}).AllPages(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ips, err := floatingips.ExtractFloatingIPs(pages)
		if err != nil {
			t.Fatal(err)
		}
		var want, got []string
		for _, ip := range truth.FloatingIPs {
			if ip.Deleted == nil || ip.Deleted.After(testNow) {
				want = append(want, ip.ID)
			}
		}
		for _, ip := range ips {
			got = append(got, ip.ID)
		}
		sort.Strings(want)
		sort.Strings(got)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("floating IPs (-want +got):\n%s", diff)
		}
	})

	t.Run("ports", func(t *testing.T) {
		nc, err := openstack.NewNetworkV2(provider, eo)
		if err != nil {
			t.Fatal(err)
		}
		var ips []struct {
			ID          string         `json:"id"`
			PortID      string         `json:"port_id"`
			PortDetails map[string]any `json:"port_details"`
		}
		pages, err := floatingips.List(nc, floatingips.ListOpts{}).AllPages(ctx)
		if err == nil {
			err = floatingips.ExtractFloatingIPsInto(pages, &ips)
		}
		if err != nil {
			t.Fatal(err)
		}
		pages, err = ports.List(nc, ports.ListOpts{Limit: 5}).AllPages(ctx)
		if err != nil {
			t.Fatal(err)
		}
		all, err := ports.ExtractPorts(pages)
		if err != nil {
			t.Fatal(err)
		}
		byID := map[string]ports.Port{}
		owners := map[string]int{}
		for _, p := range all {
			byID[p.ID] = p
			owners[p.DeviceOwner]++
			if p.DeviceOwner == "network:router_gateway" && p.ProjectID != "" {
				t.Errorf("router gateway port %s has project %q", p.ID, p.ProjectID)
			}
		}
		if owners["compute:nova"] == 0 || owners["network:router_gateway"] == 0 || owners["Octavia"] == 0 {
			t.Errorf("port owners %v: want servers', routers' and load balancers'", owners)
		}
		// Each floating IP's port_details is its port's device, as
		// fip-port-details embeds it, and a server's port is the server's.
		servers := map[string]TruthServer{}
		for _, sv := range truth.Servers {
			servers[sv.ID] = sv
		}
		associated := 0
		for _, ip := range ips {
			if ip.PortID == "" {
				if ip.PortDetails != nil {
					t.Errorf("floating IP %s: port_details %v without a port", ip.ID, ip.PortDetails)
				}
				continue
			}
			associated++
			p, ok := byID[ip.PortID]
			if !ok || ip.PortDetails["device_id"] != p.DeviceID || ip.PortDetails["device_owner"] != p.DeviceOwner {
				t.Errorf("floating IP %s: port_details %v, port %+v", ip.ID, ip.PortDetails, p)
			}
			if sv, isServer := servers[p.DeviceID]; isServer && (p.DeviceOwner != "compute:nova" || sv.VMState == "deleted") {
				t.Errorf("floating IP %s on port %+v of server %s (%s)", ip.ID, p, sv.ID, sv.VMState)
			}
		}
		if associated == 0 {
			t.Fatal("no floating IP on a port")
		}
		// id= repeats (any of), fields= trims the answer.
		want := []string{all[0].ID, all[len(all)-1].ID}
		var trimmed []map[string]any
		pages, err = ports.List(nc, rawQuery("?id="+want[0]+"&id="+want[1]+"&fields=id&fields=device_id")).AllPages(ctx)
		if err == nil {
			err = ports.ExtractPortsInto(pages, &trimmed)
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(trimmed) != 2 || len(trimmed[0]) != 2 || trimmed[0]["id"] != want[0] || trimmed[1]["id"] != want[1] {
			t.Errorf("ports by id with fields: %v, want ids %v with id and device_id only", trimmed, want)
		}
		if _, err := ports.List(nc, rawQuery("?device_owner_prefix=compute")).AllPages(ctx); err == nil {
			t.Error("an unknown filter was accepted: Zed answers 400")
		}
	})

	t.Run("identity", func(t *testing.T) {
		ic, err := openstack.NewIdentityV3(provider, eo)
		if err != nil {
			t.Fatal(err)
		}
		pages, err := projects.List(ic, projects.ListOpts{Tags: "caso"}).AllPages(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ps, err := projects.ExtractProjects(pages)
		if err != nil {
			t.Fatal(err)
		}
		var want, got []string
		for _, p := range truth.Projects {
			if slices.Contains(p.Tags, "caso") {
				want = append(want, p.ID)
			}
		}
		for _, p := range ps {
			got = append(got, p.ID)
		}
		sort.Strings(want)
		sort.Strings(got)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("caso projects (-want +got):\n%s", diff)
		}
		upages, err := users.List(ic, users.ListOpts{}).AllPages(ctx)
		if err != nil {
			t.Fatal(err)
		}
		us, err := users.ExtractUsers(upages)
		if err != nil {
			t.Fatal(err)
		}
		if len(us) != len(s.currentWorld().Users) {
			t.Errorf("%d users, want %d", len(us), len(s.currentWorld().Users))
		}
	})
}

// TestGophercloudAccounting authenticates as the accounting user with its
// application credential and walks what the accounting role may see.
func TestGophercloudAccounting(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Now = testNow
	s := startSim(t, cfg)
	w := s.currentWorld()
	ac := w.AppCreds[0]
	ctx := context.Background()
	provider, err := openstack.AuthenticatedClient(ctx, gophercloud.AuthOptions{
		IdentityEndpoint: "http://" + s.Addr() + "/v3", ApplicationCredentialID: ac.ID, ApplicationCredentialSecret: ac.Secret,
	})
	if err != nil {
		t.Fatalf("application credential: %v", err)
	}
	compute, err := openstack.NewComputeV2(provider, gophercloud.EndpointOpts{})
	if err != nil {
		t.Fatal(err)
	}
	// Project-scoped listing with changes-since also returns deleted servers.
	pages, err := servers.List(compute, servers.ListOpts{ChangesSince: "2000-01-01T00:00:00Z", Limit: 3}).AllPages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := servers.ExtractServers(pages)
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, sv := range w.Servers {
		if sv.ProjectID == ac.ProjectID {
			want++
		}
	}
	if len(got) != want {
		t.Errorf("%d servers in the accounting project, want %d", len(got), want)
	}
	// all_tenants is refused to a non-admin, as Nova does.
	err = servers.List(compute, servers.ListOpts{AllTenants: true}).EachPage(ctx, func(context.Context, pagination.Page) (bool, error) { return false, nil })
	if !gophercloud.ResponseCodeIs(err, 403) {
		t.Errorf("all_tenants as accounting: %v, want 403", err)
	}
	start, end := testNow.Add(-24*time.Hour), testNow
	// AllPages cannot merge single-object pages; EachPage is what clients use.
	err = usage.SingleTenant(compute, ac.ProjectID, usage.SingleTenantOpts{Start: &start, End: &end}).EachPage(ctx,
		func(_ context.Context, p pagination.Page) (bool, error) {
			tu, err := usage.ExtractSingleTenant(p)
			if err == nil && tu.TenantID != ac.ProjectID {
				t.Errorf("usage of %s, want %s", tu.TenantID, ac.ProjectID)
			}
			return true, err
		})
	if err != nil {
		t.Errorf("own usage: %v", err)
	}
}

// rawQuery is a port listing query written out, for what ports.ListOpts
// cannot say (repeated filters, fields).
type rawQuery string

func (q rawQuery) ToPortListQuery() (string, error) { return string(q), nil }
