// Package neutron is the Neutron extractor: APEL public IP records (v0.2),
// the floating IPs of each project counted per IP version at the window's
// end.
//
// A floating IP names its project but not a user, so counts are per
// project (LocalUser omitted), as cASO's; attributing them to the user of
// the server behind the port is left for later.
package neutron

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/layer3/floatingips"
	"github.com/gophercloud/gophercloud/v2/pagination"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tally-accounting/tally/pkg/extract"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/openstack"
)

// Name is the extractor's service name.
const Name = "extractor-neutron"

// Source lists floating IPs.
type Source struct {
	pageSize int
	client   *gophercloud.ServiceClient
	admin    bool
}

// NewSource returns the Neutron source.
func NewSource(cfg extract.Config) *Source { return &Source{pageSize: cfg.PageSize} }

// Name implements extract.Source.
func (s *Source) Name() string { return Name }

func clientFor(cloud *openstack.Cloud) (*gophercloud.ServiceClient, error) {
	c, err := gopenstack.NewNetworkV2(cloud.Provider, cloud.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("neutron endpoint (region %q): %w", cloud.Endpoint.Region, err)
	}
	return c, nil
}

// Open implements extract.Source.
func (s *Source) Open(_ context.Context, cloud *openstack.Cloud) error {
	c, err := clientFor(cloud)
	s.client = c
	s.admin = slices.Contains(cloud.Roles(), "admin")
	return err
}

// CanListAll implements extract.Source: Neutron lists every project's
// floating IPs to an admin and only the token's own to anyone else.
func (s *Source) CanListAll(context.Context) (bool, error) { return s.admin, nil }

type counts map[string]map[int]int32 // project → IP version → count

// All implements extract.Source.
func (s *Source) All(ctx context.Context, windows map[string]extract.Window, _ time.Time, emit extract.Emit) error {
	c := counts{}
	if err := s.count(ctx, s.client, floatingips.ListOpts{}, windows, c); err != nil {
		return err
	}
	return emitCounts(ctx, windows, c, emit)
}

// Project implements extract.Source.
func (s *Source) Project(ctx context.Context, cloud *openstack.Cloud, project string, w extract.Window, emit extract.Emit) error {
	cl, err := clientFor(cloud)
	if err != nil {
		return err
	}
	windows := map[string]extract.Window{project: w}
	c := counts{}
	if err := s.count(ctx, cl, floatingips.ListOpts{ProjectID: project}, windows, c); err != nil {
		return err
	}
	return emitCounts(ctx, windows, c, emit)
}

func (s *Source) count(ctx context.Context, cl *gophercloud.ServiceClient, opts floatingips.ListOpts, windows map[string]extract.Window, c counts) error {
	opts.Limit = s.pageSize
	err := floatingips.List(cl, opts).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		ips, err := floatingips.ExtractFloatingIPs(page)
		if err != nil {
			return false, err
		}
		for _, ip := range ips {
			project := ip.ProjectID
			if project == "" {
				project = ip.TenantID
			}
			w, ok := windows[project]
			if !ok || ip.CreatedAt.After(w.To) {
				continue
			}
			addr, err := netip.ParseAddr(ip.FloatingIP)
			if err != nil {
				return false, fmt.Errorf("floating IP %s has address %q: %w", ip.ID, ip.FloatingIP, err)
			}
			version := 6
			if addr.Unmap().Is4() {
				version = 4
			}
			if c[project] == nil {
				c[project] = map[int]int32{}
			}
			c[project][version]++
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("list floating IPs: %w", openstack.Explain(err))
	}
	return nil
}

// emitCounts reports every project of the run, with zero counts too: "this
// project held no public IP at the end of the window" is a measurement.
func emitCounts(ctx context.Context, windows map[string]extract.Window, c counts, emit extract.Emit) error {
	for _, project := range slices.Sorted(maps.Keys(windows)) {
		w := windows[project]
		for _, version := range []int{4, 6} {
			n := c[project][version]
			p := project
			r := &tallyv1.IPRecord{
				MeasurementTime: timestamppb.New(w.To),
				LocalGroup:      p,
				IpVersion:       int32(version),
				IpCount:         n,
			}
			rec := &tallyv1.Record{Key: Key(project, version, w.To), Payload: &tallyv1.Record_Ip{Ip: r}}
			if err := emit(ctx, project, rec); err != nil {
				return err
			}
		}
	}
	return nil
}

// Key is an IP record's identity: one per project, user, version and
// measurement (no user: "-").
func Key(project string, version int, measured time.Time) string {
	return fmt.Sprintf("ip/%s/-/%d/%d", project, version, measured.Unix())
}
