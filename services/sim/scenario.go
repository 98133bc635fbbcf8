package sim

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"time"

	"go.yaml.in/yaml/v3"
)

// Scenario is the YAML form of a world: exact objects and lifecycles at exact
// times, as an alternative to generating a population. References to projects,
// users, flavors and images may use names or ids.
type Scenario struct {
	Regions      []string             `yaml:"regions"`
	Hosts        []string             `yaml:"hosts"`
	PowerRunning *int                 `yaml:"power_running"` // 1 for libvirt, 0 for the fake driver
	Admin        scenarioAdmin        `yaml:"admin"`
	Roles        []scenarioRole       `yaml:"roles"`
	Projects     []scenarioProject    `yaml:"projects"`
	Users        []scenarioUser       `yaml:"users"`
	Assignments  []scenarioAssignment `yaml:"assignments"`
	AppCreds     []scenarioAppCred    `yaml:"application_credentials"`
	Flavors      []scenarioFlavor     `yaml:"flavors"`
	Images       []scenarioImage      `yaml:"images"`
	Servers      []scenarioServer     `yaml:"servers"`
	Volumes      []scenarioVolume     `yaml:"volumes"`
	FloatingIPs  []scenarioFIP        `yaml:"floating_ips"`
	// Events are applied after the objects above, so they can script changes
	// to servers declared elsewhere (e.g. the same change to many servers).
	Events []scenarioEvent `yaml:"events"`
}

type scenarioAdmin struct {
	Project string `yaml:"project"`
	User    string `yaml:"user"`
}

type scenarioRole struct {
	ID        string `yaml:"id"`
	Name      string `yaml:"name"`
	Immutable bool   `yaml:"immutable"`
}

type scenarioProject struct {
	ID          string            `yaml:"id"`
	Name        string            `yaml:"name"`
	Description string            `yaml:"description"`
	Tags        []string          `yaml:"tags"`
	Extra       map[string]string `yaml:"extra"`
	Disabled    bool              `yaml:"disabled"`
}

type scenarioUser struct {
	ID          string `yaml:"id"`
	Name        string `yaml:"name"`
	Email       string `yaml:"email"`
	Description string `yaml:"description"`
	Password    string `yaml:"password"`
}

type scenarioAssignment struct {
	User    string `yaml:"user"`
	Project string `yaml:"project"`
	System  bool   `yaml:"system"`
	Role    string `yaml:"role"`
}

type scenarioAppCred struct {
	ID      string `yaml:"id"`
	Name    string `yaml:"name"`
	Secret  string `yaml:"secret"`
	User    string `yaml:"user"`
	Project string `yaml:"project"`
}

type scenarioFlavor struct {
	ID          string            `yaml:"id"`
	InternalID  int               `yaml:"internal_id"`
	Name        string            `yaml:"name"`
	VCPUs       int               `yaml:"vcpus"`
	RAM         int               `yaml:"ram"`
	Disk        int               `yaml:"disk"`
	Ephemeral   int               `yaml:"ephemeral"`
	Swap        int               `yaml:"swap"`
	Private     bool              `yaml:"private"`
	Description *string           `yaml:"description"`
	ExtraSpecs  map[string]string `yaml:"extra_specs"`
	Deleted     bool              `yaml:"deleted"`
}

type scenarioImage struct {
	ID         string            `yaml:"id"`
	Name       string            `yaml:"name"`
	Owner      string            `yaml:"owner"`
	Visibility string            `yaml:"visibility"`
	Size       int64             `yaml:"size"`
	Checksum   string            `yaml:"checksum"`
	HashValue  string            `yaml:"hash"`
	Created    string            `yaml:"created"`
	Updated    string            `yaml:"updated"`
	Deleted    string            `yaml:"deleted"`
	Properties map[string]string `yaml:"properties"`
}

type scenarioServer struct {
	ID            string            `yaml:"id"`
	Name          string            `yaml:"name"`
	Project       string            `yaml:"project"`
	User          string            `yaml:"user"`
	Image         string            `yaml:"image"`
	Flavor        string            `yaml:"flavor"`
	Host          string            `yaml:"host"`
	Created       string            `yaml:"created"`
	InstanceName  string            `yaml:"instance_name"`
	ReservationID string            `yaml:"reservation_id"`
	Metadata      map[string]string `yaml:"metadata"`
	Fault         *struct {
		Code    int    `yaml:"code"`
		Message string `yaml:"message"`
		Details string `yaml:"details"`
		Created string `yaml:"created"`
	} `yaml:"fault"`
	Events []scenarioEvent `yaml:"events"`
}

type scenarioEvent struct {
	At             string `yaml:"at"`
	Requested      string `yaml:"requested"`
	Kind           string `yaml:"kind"`
	Server         string `yaml:"server"` // only in the top-level events list
	Flavor         string `yaml:"flavor"`
	NoTerminatedAt bool   `yaml:"no_terminated_at"`
}

type scenarioVolume struct {
	ID       string            `yaml:"id"`
	Name     string            `yaml:"name"`
	Project  string            `yaml:"project"`
	User     string            `yaml:"user"`
	Size     int               `yaml:"size"`
	Bootable bool              `yaml:"bootable"`
	Host     string            `yaml:"host"`
	Created  string            `yaml:"created"`
	Metadata map[string]string `yaml:"metadata"`
	Events   []struct {
		At     string `yaml:"at"`
		Kind   string `yaml:"kind"`
		Server string `yaml:"server"`
		Size   int    `yaml:"size"`
	} `yaml:"events"`
}

type scenarioFIP struct {
	ID      string `yaml:"id"`
	Project string `yaml:"project"`
	Address string `yaml:"address"`
	Network string `yaml:"network"`
	Created string `yaml:"created"`
	Deleted string `yaml:"deleted"`
	Ports   []struct {
		At      string `yaml:"at"`
		Server  string `yaml:"server"`
		FixedIP string `yaml:"fixed_ip"`
		// Port, DeviceOwner and DeviceID associate the IP with a port no
		// server owns (a load balancer's VIP: device_owner Octavia).
		Port        string `yaml:"port"`
		DeviceOwner string `yaml:"device_owner"`
		DeviceID    string `yaml:"device_id"`
	} `yaml:"associations"`
}

// LoadScenario reads a scenario file into a world.
func LoadScenario(path string) (*World, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read scenario: %w", err)
	}
	w, err := ParseScenario(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("scenario %s: %w", path, err)
	}
	return w, nil
}

// ParseScenario decodes a YAML scenario; unknown keys are errors so typos in
// hand-written scenarios do not pass silently.
func ParseScenario(r io.Reader) (*World, error) {
	var sc Scenario
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(&sc); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	return sc.build()
}

func parseTime(field, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: %q is not an RFC 3339 time", field, s)
	}
	return t.UTC(), nil
}

func (sc *Scenario) build() (*World, error) {
	w := &World{Regions: sc.Regions, Hosts: sc.Hosts, PowerRunning: 1}
	if len(w.Regions) == 0 {
		w.Regions = []string{"RegionOne"}
	}
	if len(w.Hosts) == 0 {
		w.Hosts = []string{"compute1"}
	}
	if sc.PowerRunning != nil {
		w.PowerRunning = *sc.PowerRunning
	}
	for _, r := range sc.Roles {
		w.Roles = append(w.Roles, &Role{ID: r.ID, Name: r.Name, Immutable: r.Immutable})
	}
	for _, p := range sc.Projects {
		w.Projects = append(w.Projects, &Project{ID: p.ID, Name: p.Name, Description: p.Description,
			DomainID: "default", Enabled: !p.Disabled, Tags: p.Tags, Extra: p.Extra})
	}
	for _, u := range sc.Users {
		pw := u.Password
		if pw == "" {
			pw = DefaultPassword
		}
		w.Users = append(w.Users, &User{ID: u.ID, Name: u.Name, Email: u.Email, Description: u.Description,
			DomainID: "default", Enabled: true, Password: pw})
	}
	for _, f := range sc.Flavors {
		w.Flavors = append(w.Flavors, &Flavor{ID: f.ID, InternalID: f.InternalID, Name: f.Name, VCPUs: f.VCPUs,
			RAM: f.RAM, Disk: f.Disk, Ephemeral: f.Ephemeral, Swap: f.Swap, RxTx: 1.0, IsPublic: !f.Private,
			Description: f.Description, ExtraSpecs: f.ExtraSpecs, Deleted: f.Deleted})
	}
	if err := w.index(); err != nil {
		return nil, err
	}
	proj := func(ref string) (string, error) {
		if p, ok := w.projByName[ref]; ok {
			return p.ID, nil
		}
		if p, ok := w.projByID[ref]; ok {
			return p.ID, nil
		}
		return "", fmt.Errorf("unknown project %q", ref)
	}
	user := func(ref string) (string, error) {
		if u, ok := w.userByName[ref]; ok {
			return u.ID, nil
		}
		if u, ok := w.userByID[ref]; ok {
			return u.ID, nil
		}
		return "", fmt.Errorf("unknown user %q", ref)
	}
	flavor := func(ref string) (string, error) {
		for _, f := range w.Flavors {
			if f.Name == ref || f.ID == ref {
				return f.ID, nil
			}
		}
		return "", fmt.Errorf("unknown flavor %q", ref)
	}
	role := func(ref string) (string, error) {
		for _, r := range w.Roles {
			if r.Name == ref || r.ID == ref {
				return r.ID, nil
			}
		}
		return "", fmt.Errorf("unknown role %q", ref)
	}
	var err error
	if w.AdminProjectID, err = proj(sc.Admin.Project); err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	if w.AdminUserID, err = user(sc.Admin.User); err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	for i, a := range sc.Assignments {
		as := Assignment{System: a.System}
		if as.UserID, err = user(a.User); err != nil {
			return nil, fmt.Errorf("assignments[%d]: %w", i, err)
		}
		if !a.System {
			if as.ProjectID, err = proj(a.Project); err != nil {
				return nil, fmt.Errorf("assignments[%d]: %w", i, err)
			}
		}
		if as.RoleID, err = role(a.Role); err != nil {
			return nil, fmt.Errorf("assignments[%d]: %w", i, err)
		}
		w.Assignments = append(w.Assignments, as)
	}
	for i, a := range sc.AppCreds {
		ac := &AppCred{ID: a.ID, Name: a.Name, Secret: a.Secret}
		if ac.UserID, err = user(a.User); err != nil {
			return nil, fmt.Errorf("application_credentials[%d]: %w", i, err)
		}
		if ac.ProjectID, err = proj(a.Project); err != nil {
			return nil, fmt.Errorf("application_credentials[%d]: %w", i, err)
		}
		w.AppCreds = append(w.AppCreds, ac)
	}
	for i, im := range sc.Images {
		img := &Image{ID: im.ID, Name: im.Name, Visibility: im.Visibility, Status: "active", DiskFormat: "raw",
			ContainerFormat: "bare", Size: im.Size, Checksum: im.Checksum, HashValue: im.HashValue, Properties: im.Properties}
		if img.Visibility == "" {
			img.Visibility = "public"
		}
		if img.Owner, err = proj(im.Owner); err != nil {
			return nil, fmt.Errorf("images[%d]: %w", i, err)
		}
		if img.Created, err = parseTime("created", im.Created); err != nil {
			return nil, fmt.Errorf("images[%d]: %w", i, err)
		}
		if img.Updated, err = parseTime("updated", im.Updated); err != nil {
			return nil, fmt.Errorf("images[%d]: %w", i, err)
		}
		if img.Updated.IsZero() {
			img.Updated = img.Created
		}
		if img.Deleted, err = parseTime("deleted", im.Deleted); err != nil {
			return nil, fmt.Errorf("images[%d]: %w", i, err)
		}
		w.Images = append(w.Images, img)
	}
	for i, s := range sc.Servers {
		srv, err := s.build(w, proj, user, flavor)
		if err != nil {
			return nil, fmt.Errorf("servers[%d] (%s): %w", i, s.Name, err)
		}
		w.Servers = append(w.Servers, srv)
	}
	srvByRef := map[string]*Instance{}
	for _, s := range w.Servers {
		srvByRef[s.ID] = s
		srvByRef[s.Name] = s
	}
	for i, e := range sc.Events {
		s, ok := srvByRef[e.Server]
		if !ok {
			return nil, fmt.Errorf("events[%d]: unknown server %q", i, e.Server)
		}
		ev, err := e.build(flavor)
		if err != nil {
			return nil, fmt.Errorf("events[%d]: %w", i, err)
		}
		s.Events = append(s.Events, ev)
	}
	for i, v := range sc.Volumes {
		vol := &Volume{ID: v.ID, Name: v.Name, Size: v.Size, Bootable: v.Bootable, Metadata: v.Metadata, Host: v.Host}
		if vol.Host == "" {
			vol.Host = w.Hosts[0] + "@lvm#lvm"
		}
		if vol.ProjectID, err = proj(v.Project); err != nil {
			return nil, fmt.Errorf("volumes[%d]: %w", i, err)
		}
		if vol.UserID, err = user(v.User); err != nil {
			return nil, fmt.Errorf("volumes[%d]: %w", i, err)
		}
		if vol.Created, err = parseTime("created", v.Created); err != nil {
			return nil, fmt.Errorf("volumes[%d]: %w", i, err)
		}
		for _, e := range v.Events {
			at, err := parseTime("at", e.At)
			if err != nil {
				return nil, fmt.Errorf("volumes[%d]: %w", i, err)
			}
			sid := e.Server
			if s, ok := srvByRef[sid]; ok {
				sid = s.ID
			}
			vol.Events = append(vol.Events, VolumeEvent{At: at, Kind: e.Kind, ServerID: sid, Size: e.Size})
		}
		w.Volumes = append(w.Volumes, vol)
	}
	for i, f := range sc.FloatingIPs {
		ip := &FloatingIP{ID: f.ID, Address: f.Address, Network: f.Network}
		if ip.ProjectID, err = proj(f.Project); err != nil {
			return nil, fmt.Errorf("floating_ips[%d]: %w", i, err)
		}
		if ip.Created, err = parseTime("created", f.Created); err != nil {
			return nil, fmt.Errorf("floating_ips[%d]: %w", i, err)
		}
		if ip.Deleted, err = parseTime("deleted", f.Deleted); err != nil {
			return nil, fmt.Errorf("floating_ips[%d]: %w", i, err)
		}
		for _, p := range f.Ports {
			at, err := parseTime("at", p.At)
			if err != nil {
				return nil, fmt.Errorf("floating_ips[%d]: %w", i, err)
			}
			sid := p.Server
			if s, ok := srvByRef[sid]; ok {
				sid = s.ID
			}
			if sid != "" && p.Port != "" {
				return nil, fmt.Errorf("floating_ips[%d]: an association names a server or a port, not both", i)
			}
			ip.PortEvents = append(ip.PortEvents, IPEvent{At: at, ServerID: sid, FixedIP: p.FixedIP,
				PortID: p.Port, DeviceOwner: p.DeviceOwner, DeviceID: p.DeviceID})
		}
		w.FloatingIPs = append(w.FloatingIPs, ip)
	}
	if err := w.index(); err != nil {
		return nil, err
	}
	return w, nil
}

func (e scenarioEvent) build(flavor func(string) (string, error)) (Event, error) {
	ev := Event{Kind: e.Kind, NoTerminatedAt: e.NoTerminatedAt}
	var err error
	if ev.At, err = parseTime("at", e.At); err != nil {
		return ev, err
	}
	if ev.At.IsZero() {
		return ev, fmt.Errorf("event %s has no time", e.Kind)
	}
	if ev.Requested, err = parseTime("requested", e.Requested); err != nil {
		return ev, err
	}
	switch e.Kind {
	case EvCreate, EvLaunch, EvError, EvStop, EvStart, EvShelve, EvUnshelve, EvConfirmResize, EvRebuild, EvDelete, EvTouch:
	case EvResize:
		if ev.Flavor, err = flavor(e.Flavor); err != nil {
			return ev, err
		}
	default:
		return ev, fmt.Errorf("unknown event kind %q", e.Kind)
	}
	return ev, nil
}

func (s scenarioServer) build(w *World, proj, user, flavor func(string) (string, error)) (*Instance, error) {
	srv := &Instance{ID: s.ID, Name: s.Name, Host: s.Host, InstanceName: s.InstanceName,
		ReservationID: s.ReservationID, Metadata: s.Metadata, ImageID: s.Image}
	var err error
	if srv.ProjectID, err = proj(s.Project); err != nil {
		return nil, err
	}
	if srv.UserID, err = user(s.User); err != nil {
		return nil, err
	}
	if srv.FlavorID, err = flavor(s.Flavor); err != nil {
		return nil, err
	}
	if srv.Created, err = parseTime("created", s.Created); err != nil {
		return nil, err
	}
	if srv.Created.IsZero() {
		return nil, fmt.Errorf("no created time")
	}
	switch {
	case srv.Host == "none": // never scheduled (NoValidHost, cell0)
		srv.Host = ""
	case srv.Host == "" && len(w.Hosts) > 0:
		srv.Host = w.Hosts[0]
	}
	if s.Fault != nil {
		ft, err := parseTime("fault.created", s.Fault.Created)
		if err != nil {
			return nil, err
		}
		srv.Fault = &Fault{Code: s.Fault.Code, Message: s.Fault.Message, Details: s.Fault.Details, Created: ft}
	}
	for _, e := range s.Events {
		ev, err := e.build(flavor)
		if err != nil {
			return nil, err
		}
		srv.Events = append(srv.Events, ev)
	}
	return srv, nil
}
