package nova

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"github.com/tally-accounting/tally/pkg/extract"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/openstack"
)

// Name is the extractor's service name and provenance.
const Name = "extractor-nova"

// MarketplaceProperty is the image property that replaces the image id in
// ImageId (EGI's AppDB marketplace URI).
const MarketplaceProperty = "vmcatcher_event_ad_mpuri"

// Source lists servers. Per server it needs no other call: the flavor is
// embedded (2.47+), images are listed once per run, and a server that has
// not changed since the window started is found by the second listing of
// live servers, where cASO asked the usage API and then GET each server.
type Source struct {
	cfg       Config
	cloudType string
	logger    *slog.Logger
	compute   *gophercloud.ServiceClient
	imageRefs map[string]string
}

// NewSource returns the Nova source; cloudType names the producer.
func NewSource(cfg Config, cloudType string, logger *slog.Logger) *Source {
	return &Source{cfg: cfg, cloudType: cloudType, logger: logger}
}

// Name implements extract.Source.
func (s *Source) Name() string { return Name }

func (s *Source) computeFor(cloud *openstack.Cloud) (*gophercloud.ServiceClient, error) {
	c, err := gopenstack.NewComputeV2(cloud.Provider, cloud.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("nova endpoint (region %q): %w", cloud.Endpoint.Region, err)
	}
	c.Microversion = s.cfg.Microversion
	return c, nil
}

// Open implements extract.Source: the compute client, and the images'
// marketplace URIs once for the run.
func (s *Source) Open(ctx context.Context, cloud *openstack.Cloud) error {
	c, err := s.computeFor(cloud)
	if err != nil {
		return err
	}
	s.compute = c
	s.imageRefs = map[string]string{}
	img, err := gopenstack.NewImageV2(cloud.Provider, cloud.Endpoint)
	if err != nil {
		s.logger.Warn("no Glance endpoint: ImageId is the image id", "error", err)
		return nil
	}
	err = images.List(img, images.ListOpts{Limit: s.cfg.PageSize}).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		is, err := images.ExtractImages(page)
		if err != nil {
			return false, err
		}
		for _, im := range is {
			if v, ok := im.Properties[MarketplaceProperty].(string); ok && v != "" {
				s.imageRefs[im.ID] = v
			}
		}
		return true, nil
	})
	if err != nil {
		s.logger.Warn("cannot list Glance images: ImageId is the image id", "error", openstack.Explain(err))
	}
	return nil
}

// CanListAll implements extract.Source.
func (s *Source) CanListAll(ctx context.Context) (bool, error) {
	return openstack.CanListAllServers(ctx, s.compute)
}

// All implements extract.Source: the servers changed since the earliest
// window start (deleted ones included) and every live server (those not
// changed since still accrue usage), each once.
func (s *Source) All(ctx context.Context, windows map[string]extract.Window, since time.Time, emit extract.Emit) error {
	seen := map[string]bool{}
	visit := func(sv Server) error {
		if seen[sv.ID] {
			return nil
		}
		seen[sv.ID] = true
		w, ok := windows[sv.ProjectID]
		if !ok {
			return nil
		}
		return s.emit(ctx, sv, w, emit)
	}
	sinceStr := since.UTC().Format(time.RFC3339)
	if err := s.each(ctx, s.compute, servers.ListOpts{AllTenants: true, ChangesSince: sinceStr}, visit); err != nil {
		return fmt.Errorf("list servers changed since %s: %w", sinceStr, err)
	}
	if err := s.each(ctx, s.compute, servers.ListOpts{AllTenants: true}, visit); err != nil {
		return fmt.Errorf("list live servers: %w", err)
	}
	return nil
}

// Project implements extract.Source.
func (s *Source) Project(ctx context.Context, cloud *openstack.Cloud, project string, w extract.Window, emit extract.Emit) error {
	c, err := s.computeFor(cloud)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	visit := func(sv Server) error {
		if seen[sv.ID] || sv.ProjectID != project {
			return nil
		}
		seen[sv.ID] = true
		return s.emit(ctx, sv, w, emit)
	}
	if err := s.each(ctx, c, servers.ListOpts{ChangesSince: w.From.UTC().Format(time.RFC3339)}, visit); err != nil {
		return fmt.Errorf("list servers: %w", err)
	}
	if err := s.each(ctx, c, servers.ListOpts{}, visit); err != nil {
		return fmt.Errorf("list live servers: %w", err)
	}
	return nil
}

// emit builds a server's cloud and accelerator records.
func (s *Source) emit(ctx context.Context, sv Server, w extract.Window, emit extract.Emit) error {
	win := Window{From: w.From, To: w.To}
	if !Included(sv, win) {
		return nil
	}
	site := Site{CloudType: s.cloudType}
	warn := func(format string, args ...any) {
		s.logger.Warn(fmt.Sprintf(format, args...), "vm_uuid", sv.ID, "project_id", sv.ProjectID)
	}
	imageRef := func(id string) string {
		if ref, ok := s.imageRefs[id]; ok {
			return ref
		}
		return id
	}
	cloud := Cloud(sv, win, site, s.cfg.Keys(), imageRef, warn)
	recs := []*tallyv1.Record{{Key: CloudKey(sv.ID), Payload: &tallyv1.Record_Cloud{Cloud: cloud}}}
	for _, acc := range Accelerators(sv, win, site, s.cfg.Keys()) {
		recs = append(recs, &tallyv1.Record{Key: AcceleratorKey(sv.ID, acc.MeasurementYear, acc.MeasurementMonth),
			Payload: &tallyv1.Record_Accelerator{Accelerator: acc}})
	}
	for _, r := range recs {
		// The accelerator record has no user id: the enricher names the
		// owner from here.
		r.Provenance = &tallyv1.Provenance{OwnerUserId: sv.UserID}
		if err := emit(ctx, sv.ProjectID, r); err != nil {
			return err
		}
	}
	return nil
}

// each walks a server listing page by page, so memory holds one page.
// Each page is decoded once, straight into the fields the rules need:
// gophercloud's pager decodes a page into generic maps, then re-encodes and
// decodes it again for IsEmpty and once more for ExtractServers, which made
// JSON the bottleneck of a large cloud (10 s for 10,000 servers).
func (s *Source) each(ctx context.Context, c *gophercloud.ServiceClient, opts servers.ListOpts, fn func(Server) error) error {
	opts.Limit = s.cfg.PageSize
	q, err := opts.ToServerListQuery()
	if err != nil {
		return err
	}
	url := c.ServiceURL("servers", "detail") + q
	for url != "" {
		var page novaPage
		if _, err := c.Get(ctx, url, &page, nil); err != nil {
			return openstack.Explain(err)
		}
		for i := range page.Servers {
			if err := fn(page.Servers[i].server()); err != nil {
				return err
			}
		}
		url = ""
		for _, l := range page.Links {
			if l.Rel == "next" && len(page.Servers) > 0 {
				url = l.Href
			}
		}
	}
	return nil
}

// novaPage is one page of GET /servers/detail (microversion 2.47+).
type novaPage struct {
	Servers []novaServer `json:"servers"`
	Links   []struct {
		Href string `json:"href"`
		Rel  string `json:"rel"`
	} `json:"servers_links"`
}

type novaServer struct {
	ID           string          `json:"id"`
	Name         string          `json:"name"`
	Status       string          `json:"status"`
	TenantID     string          `json:"tenant_id"`
	UserID       string          `json:"user_id"`
	Created      time.Time       `json:"created"`
	Updated      time.Time       `json:"updated"`
	LaunchedAt   *string         `json:"OS-SRV-USG:launched_at"`
	TerminatedAt *string         `json:"OS-SRV-USG:terminated_at"`
	Image        json.RawMessage `json:"image"` // "" when booted from a volume
	Flavor       *struct {
		OriginalName string            `json:"original_name"`
		VCPUs        int               `json:"vcpus"`
		RAM          int64             `json:"ram"`
		Disk         int64             `json:"disk"`
		Ephemeral    int64             `json:"ephemeral"`
		ExtraSpecs   map[string]string `json:"extra_specs"`
	} `json:"flavor"`
	Addresses map[string][]struct {
		Type string `json:"OS-EXT-IPS:type"`
	} `json:"addresses"`
}

// usageTime parses Nova's OS-SRV-USG times: no zone (UTC), microseconds.
func usageTime(s *string) time.Time {
	if s == nil || *s == "" {
		return time.Time{}
	}
	for _, layout := range []string{"2006-01-02T15:04:05.999999", time.RFC3339Nano} {
		if t, err := time.Parse(layout, *s); err == nil {
			return t.UTC()
		}
	}
	return time.Time{}
}

func (n *novaServer) server() Server {
	out := Server{
		ID: n.ID, Name: n.Name, ProjectID: n.TenantID, UserID: n.UserID, Status: n.Status,
		Created: n.Created, Updated: n.Updated, LaunchedAt: usageTime(n.LaunchedAt), TerminatedAt: usageTime(n.TerminatedAt),
	}
	var img struct {
		ID string `json:"id"`
	}
	if len(n.Image) > 0 && n.Image[0] == '{' && json.Unmarshal(n.Image, &img) == nil {
		out.ImageID = img.ID
	}
	if f := n.Flavor; f != nil {
		specs := f.ExtraSpecs
		if specs == nil {
			specs = map[string]string{}
		}
		out.Flavor = &Flavor{Name: f.OriginalName, VCPUs: f.VCPUs, RAM: f.RAM, Disk: f.Disk, Ephemeral: f.Ephemeral, ExtraSpecs: specs}
	}
	for _, addrs := range n.Addresses {
		for _, a := range addrs {
			if strings.EqualFold(a.Type, "floating") {
				out.FloatingIPs++
			}
		}
	}
	return out
}
