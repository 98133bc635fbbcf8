// Package neutron is the Neutron extractor: APEL public IP records (v0.2),
// the floating IPs of each project counted per IP version at the window's
// end, and per owning user where Neutron says who.
//
// A floating IP names its project but no user. Its port does, indirectly:
// a port whose device_owner is "compute:<az>" belongs to the Nova server
// device_id, and that server's user_id owns the IP. An IP on no port, or on
// a port no server owns (a load balancer's VIP, a bare port), stays in the
// project's user-less count, which is all cASO reports.
package neutron

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/layer3/floatingips"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/ports"
	"github.com/gophercloud/gophercloud/v2/pagination"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tally-accounting/tally/pkg/extract"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/openstack"
)

// Name is the extractor's service name.
const Name = "extractor-neutron"

// Config is the Neutron extractor's section (extractors.neutron).
type Config struct {
	extract.Config `yaml:",inline"`
	// PerUser counts each project's floating IPs per owning user too: an
	// IP on a server's port is the server's user's (LocalUser, and the
	// enricher adds GlobalUserName), the others stay in the project's
	// user-less count. It costs one Nova server listing per run (per
	// project without all-tenants rights) and, where Neutron lacks the
	// fip-port-details extension, one port listing. When Nova refuses the
	// listing, the IPs are counted per project, with a warning. false
	// counts per project only, as cASO does (it never reports a user).
	PerUser bool `yaml:"per_user"`
}

// DefaultConfig returns cASO's defaults, with per-user counting on.
func DefaultConfig() Config { return Config{Config: extract.DefaultConfig(), PerUser: true} }

// Source lists floating IPs, and for their owners ports and servers.
type Source struct {
	cfg     Config
	logger  *slog.Logger
	network *gophercloud.ServiceClient
	compute *gophercloud.ServiceClient
	admin   bool

	// warned keeps a run's log to one line per kind of degradation, not
	// one per project.
	mu     sync.Mutex
	warned map[string]bool
}

// NewSource returns the Neutron source.
func NewSource(cfg Config, logger *slog.Logger) *Source {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Source{cfg: cfg, logger: logger.With("extractor", Name)}
}

// Name implements extract.Source.
func (s *Source) Name() string { return Name }

func networkClient(cloud *openstack.Cloud) (*gophercloud.ServiceClient, error) {
	c, err := gopenstack.NewNetworkV2(cloud.Provider, cloud.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("neutron endpoint (region %q): %w", cloud.Endpoint.Region, err)
	}
	return c, nil
}

// computeClient is nil, with a warning, when IPs cannot be given owners:
// per-user counting is off or the catalog has no Nova.
func (s *Source) computeClient(cloud *openstack.Cloud) *gophercloud.ServiceClient {
	if !s.cfg.PerUser {
		return nil
	}
	c, err := gopenstack.NewComputeV2(cloud.Provider, cloud.Endpoint)
	if err != nil {
		s.warnOnce("no-nova", "no Nova endpoint: floating IPs are counted per project, without their owners", "error", err)
		return nil
	}
	return c
}

// Open implements extract.Source.
func (s *Source) Open(_ context.Context, cloud *openstack.Cloud) error {
	s.mu.Lock()
	s.warned = map[string]bool{}
	s.mu.Unlock()
	c, err := networkClient(cloud)
	if err != nil {
		return err
	}
	s.network, s.compute = c, s.computeClient(cloud)
	s.admin = slices.Contains(cloud.Roles(), "admin")
	return nil
}

// CanListAll implements extract.Source: Neutron lists every project's
// floating IPs to an admin and only the token's own to anyone else.
func (s *Source) CanListAll(context.Context) (bool, error) { return s.admin, nil }

// All implements extract.Source.
func (s *Source) All(ctx context.Context, windows map[string]extract.Window, _ time.Time, emit extract.Emit) error {
	c, err := s.count(ctx, s.network, s.compute, "", windows)
	if err != nil {
		return err
	}
	return emitCounts(ctx, windows, c, emit)
}

// Project implements extract.Source.
func (s *Source) Project(ctx context.Context, cloud *openstack.Cloud, project string, w extract.Window, emit extract.Emit) error {
	network, err := networkClient(cloud)
	if err != nil {
		return err
	}
	windows := map[string]extract.Window{project: w}
	c, err := s.count(ctx, network, s.computeClient(cloud), project, windows)
	if err != nil {
		return err
	}
	return emitCounts(ctx, windows, c, emit)
}

// device is what a port says of its owner; Neutron's fip-port-details
// extension embeds it in each floating IP as port_details.
type device struct {
	ID    string `json:"device_id"`
	Owner string `json:"device_owner"`
}

// server reports whether the port is a Nova server's ("compute:<az>").
func (d *device) server() bool { return d != nil && strings.HasPrefix(d.Owner, "compute:") }

// floatingIP is the part of a Neutron floating IP counting needs.
type floatingIP struct {
	ID          string  `json:"id"`
	Address     string  `json:"floating_ip_address"`
	ProjectID   string  `json:"project_id"`
	TenantID    string  `json:"tenant_id"`
	PortID      string  `json:"port_id"`
	PortDetails *device `json:"port_details"`
	CreatedAt   string  `json:"created_at"`
}

// held is one floating IP of a counted project.
type held struct {
	project string
	version int
	portID  string
	device  *device // nil: unknown (no port, or no port_details)
}

// bucket is one record: a project's IPs of one version and one owner ("":
// nobody Neutron names).
type bucket struct {
	user    string
	version int
}

type counts map[string]map[bucket]int32 // project → bucket → count

// count lists the floating IPs of windows' projects (of project alone when
// set: a token scoped to it) and counts them per owner when compute is set.
func (s *Source) count(ctx context.Context, network, compute *gophercloud.ServiceClient, project string, windows map[string]extract.Window) (counts, error) {
	ips, err := s.floatingIPs(ctx, network, project, windows)
	if err != nil {
		return nil, err
	}
	var users map[string]string
	if compute != nil {
		if users, err = s.owners(ctx, network, compute, project, ips); err != nil {
			return nil, err
		}
	}
	c := counts{}
	for _, ip := range ips {
		if c[ip.project] == nil {
			c[ip.project] = map[bucket]int32{}
		}
		c[ip.project][bucket{owner(ip, users), ip.version}]++
	}
	return c, nil
}

// owner is the user an IP is counted for: the user of the server whose
// port holds it, or "" (the project's user-less count).
func owner(ip held, users map[string]string) string {
	if !ip.device.server() {
		return ""
	}
	return users[ip.device.ID]
}

func (s *Source) floatingIPs(ctx context.Context, network *gophercloud.ServiceClient, project string, windows map[string]extract.Window) ([]held, error) {
	var out []held
	opts := floatingips.ListOpts{ProjectID: project, Limit: s.cfg.PageSize}
	err := floatingips.List(network, opts).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		var ips []floatingIP
		if err := floatingips.ExtractFloatingIPsInto(page, &ips); err != nil {
			return false, err
		}
		for _, ip := range ips {
			p := ip.ProjectID
			if p == "" {
				p = ip.TenantID
			}
			w, ok := windows[p]
			if !ok {
				continue
			}
			created, err := parseTime(ip.CreatedAt)
			if err != nil {
				return false, fmt.Errorf("floating IP %s has created_at %q: %w", ip.ID, ip.CreatedAt, err)
			}
			if created.After(w.To) {
				continue
			}
			addr, err := netip.ParseAddr(ip.Address)
			if err != nil {
				return false, fmt.Errorf("floating IP %s has address %q: %w", ip.ID, ip.Address, err)
			}
			version := 6
			if addr.Unmap().Is4() {
				version = 4
			}
			h := held{project: p, version: version, portID: ip.PortID}
			if ip.PortID != "" {
				h.device = ip.PortDetails
			}
			out = append(out, h)
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list floating IPs: %w", openstack.Explain(err))
	}
	return out, nil
}

// parseTime reads Neutron's times, with a zone or (before Stein) without.
func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Parse("2006-01-02T15:04:05", s)
}

// owners fills in the devices of ports port_details did not describe and
// returns the user of every server holding an IP. Each takes at most one
// listing (of the project, or of every project), never a call per IP. A
// listing the policy refuses leaves those IPs user-less, with a warning.
func (s *Source) owners(ctx context.Context, network, compute *gophercloud.ServiceClient, project string, ips []held) (map[string]string, error) {
	if slices.ContainsFunc(ips, func(ip held) bool { return ip.portID != "" && ip.device == nil }) {
		devices, err := s.ports(ctx, network, project)
		if err != nil {
			return nil, err
		}
		missing := 0
		for i := range ips {
			if ips[i].portID != "" && ips[i].device == nil {
				if d, ok := devices[ips[i].portID]; ok {
					ips[i].device = &d
				} else {
					missing++
				}
			}
		}
		if missing > 0 {
			s.warnOnce("ports-hidden", "Neutron does not show the ports of some floating IPs (the get_port policy?): they are counted without their owners",
				"project_id", project, "floating_ips", missing)
		}
	}
	if !slices.ContainsFunc(ips, func(ip held) bool { return ip.device.server() }) {
		return nil, nil
	}
	users, err := s.servers(ctx, compute, project == "")
	if openstack.StatusOf(err) == http.StatusForbidden {
		s.warnOnce("nova-forbidden", "Nova refuses to list servers: floating IPs are counted per project, without their owners, as cASO does",
			"project_id", project, "reason", err)
		return nil, nil
	}
	return users, err
}

// portQuery asks only for the fields the join needs: a port listing of a
// whole cloud is otherwise the largest answer Neutron gives.
type portQuery struct {
	project string
	limit   int
}

func (q portQuery) ToPortListQuery() (string, error) {
	v := url.Values{"fields": {"id", "device_id", "device_owner"}}
	if q.project != "" {
		v.Set("project_id", q.project)
	}
	v.Set("limit", fmt.Sprint(q.limit))
	return "?" + v.Encode(), nil
}

// ports lists every port (of project when set) once: Neutron filters
// device_owner by exact value only, and repeating id= for every IP would
// outgrow a URL on a large cloud.
func (s *Source) ports(ctx context.Context, network *gophercloud.ServiceClient, project string) (map[string]device, error) {
	out := map[string]device{}
	err := ports.List(network, portQuery{project: project, limit: s.cfg.PageSize}).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		var ps []struct {
			ID string `json:"id"`
			device
		}
		if err := ports.ExtractPortsInto(page, &ps); err != nil {
			return false, err
		}
		for _, p := range ps {
			out[p.ID] = p.device
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list ports: %w", openstack.Explain(err))
	}
	return out, nil
}

// servers maps every live server (of every project when all) to its user.
// A floating IP can only be on the port of a server that still exists, so
// deleted servers are not asked for.
func (s *Source) servers(ctx context.Context, compute *gophercloud.ServiceClient, all bool) (map[string]string, error) {
	out := map[string]string{}
	err := servers.List(compute, servers.ListOpts{AllTenants: all, Limit: s.cfg.PageSize}).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		var ss []struct {
			ID     string `json:"id"`
			UserID string `json:"user_id"`
		}
		if err := servers.ExtractServersInto(page, &ss); err != nil {
			return false, err
		}
		for _, sv := range ss {
			out[sv.ID] = sv.UserID
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list servers: %w", openstack.Explain(err))
	}
	return out, nil
}

func (s *Source) warnOnce(kind, msg string, args ...any) {
	s.mu.Lock()
	seen := s.warned[kind]
	if s.warned == nil {
		s.warned = map[string]bool{}
	}
	s.warned[kind] = true
	s.mu.Unlock()
	if !seen {
		s.logger.Warn(msg, args...)
	}
}

// emitCounts reports every project of the run, its user-less counts with
// zeros too ("this project held no public IP at the end of the window" is
// a measurement), then one record per owning user and version that holds
// IPs.
func emitCounts(ctx context.Context, windows map[string]extract.Window, c counts, emit extract.Emit) error {
	for _, project := range slices.Sorted(maps.Keys(windows)) {
		w := windows[project]
		buckets := []bucket{{"", 4}, {"", 6}}
		for _, b := range slices.SortedFunc(maps.Keys(c[project]), func(a, b bucket) int {
			return cmp.Or(strings.Compare(a.user, b.user), a.version-b.version)
		}) {
			if b.user != "" {
				buckets = append(buckets, b)
			}
		}
		for _, b := range buckets {
			r := &tallyv1.IPRecord{
				MeasurementTime: timestamppb.New(w.To),
				LocalGroup:      project,
				IpVersion:       int32(b.version),
				IpCount:         c[project][b],
			}
			rec := &tallyv1.Record{Key: Key(project, b.user, b.version, w.To), Payload: &tallyv1.Record_Ip{Ip: r}}
			if b.user != "" {
				r.LocalUser = &b.user
				// The runner makes sure the directory can name this user
				// before the enricher looks for its GlobalUserName.
				rec.Provenance = &tallyv1.Provenance{OwnerUserId: b.user}
			}
			if err := emit(ctx, project, rec); err != nil {
				return err
			}
		}
	}
	return nil
}

// Key is an IP record's identity: one per project, user, version and
// measurement (no user: "-"), so per-user counts never replace each other
// or the project's user-less count downstream.
func Key(project, user string, version int, measured time.Time) string {
	if user == "" {
		user = "-"
	}
	return fmt.Sprintf("ip/%s/%s/%d/%d", project, user, version, measured.Unix())
}
