package sim

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// The world is everything the simulated cloud knows. Static objects (projects,
// users, flavors) carry their attributes directly; servers, volumes and
// floating IPs carry a list of timed events and their state is evaluated at the
// simulated "now", so that the same world answers for any instant.

// Role is a Keystone role.
type Role struct {
	ID        string
	Name      string
	Immutable bool
}

// Project is a Keystone project; Extra holds top-level extra properties (VO).
type Project struct {
	ID          string
	Name        string
	Description string
	DomainID    string
	Enabled     bool
	Tags        []string
	Extra       map[string]string
}

// User is a Keystone user.
type User struct {
	ID          string
	Name        string
	Email       string
	Description string
	DomainID    string
	Enabled     bool
	Password    string
}

// Assignment grants RoleID to UserID on ProjectID, or on the system when
// System is true.
type Assignment struct {
	UserID    string
	ProjectID string
	System    bool
	RoleID    string
}

// AppCred is a Keystone application credential.
type AppCred struct {
	ID        string
	Name      string
	Secret    string
	UserID    string
	ProjectID string
}

// Flavor is a Nova flavor. InternalID is Nova's integer id (os-migrations).
type Flavor struct {
	ID          string
	InternalID  int
	Name        string
	VCPUs       int
	RAM         int
	Disk        int
	Ephemeral   int
	Swap        int
	RxTx        float64
	IsPublic    bool
	Disabled    bool
	Description *string
	ExtraSpecs  map[string]string
	Deleted     bool
}

// Image is a Glance image.
type Image struct {
	ID              string
	Name            string
	Owner           string
	Visibility      string
	Status          string
	DiskFormat      string
	ContainerFormat string
	Size            int64
	Checksum        string
	HashValue       string
	Created         time.Time
	Updated         time.Time
	Deleted         time.Time
	Properties      map[string]string
	Tags            []string
}

// Fault is the fault object Nova shows on an ERROR server.
type Fault struct {
	Code    int
	Message string
	Details string
	Created time.Time
}

// Event kinds understood by the server state machine.
const (
	EvCreate        = "create"
	EvLaunch        = "launch"
	EvError         = "error"
	EvStop          = "stop"
	EvStart         = "start"
	EvShelve        = "shelve"
	EvUnshelve      = "unshelve"
	EvResize        = "resize"
	EvConfirmResize = "confirm_resize"
	EvRebuild       = "rebuild"
	EvDelete        = "delete"
	EvTouch         = "touch"
)

// Event is one timed change of a server. Requested is when the API call was
// made (instance actions' start_time); At is when it took effect.
type Event struct {
	At        time.Time
	Requested time.Time
	Kind      string
	Flavor    string // resize target flavor id
	// NoTerminatedAt reproduces servers deleted by Nova without terminated_at.
	NoTerminatedAt bool
	RequestID      string
}

// Instance is a Nova server (instance) with its whole history.
type Instance struct {
	ID            string
	Name          string
	ProjectID     string
	UserID        string
	ImageID       string
	FlavorID      string // flavor at boot
	Host          string
	Created       time.Time
	InstanceName  string
	ReservationID string
	Metadata      map[string]string
	KeyName       string
	FixedIP       string // "" leaves addresses empty (booted with networks none)
	Region        string // "" is the first region
	Fault         *Fault
	Events        []Event // sorted by At
}

// VolumeEvent is a timed change of a volume.
type VolumeEvent struct {
	At       time.Time `json:"at"`
	Kind     string    `json:"kind"` // attach, detach, extend, error, available, delete
	ServerID string    `json:"server_id,omitempty"`
	Size     int       `json:"size_gb,omitempty"`
}

// Volume is a Cinder volume.
type Volume struct {
	ID        string
	Name      string
	ProjectID string
	UserID    string
	Size      int
	Bootable  bool
	Created   time.Time
	Metadata  map[string]string
	Host      string
	Region    string
	Events    []VolumeEvent
}

// FloatingIP is a Neutron floating IP.
type FloatingIP struct {
	ID         string
	ProjectID  string
	Address    string
	Network    string
	Region     string
	Created    time.Time
	Deleted    time.Time // zero: never
	PortEvents []IPEvent
}

// IPEvent associates the IP with a server's port (ServerID set), with a
// port no server owns (PortID set: a load balancer's VIP, a bare port) or
// disassociates it (neither).
type IPEvent struct {
	At       time.Time `json:"at"`
	ServerID string    `json:"server_id"`
	FixedIP  string    `json:"fixed_ip"`
	// PortID, DeviceOwner and DeviceID describe a port no server owns
	// (device_owner "Octavia" for a load balancer, "" for a bare port).
	PortID      string `json:"port_id,omitempty"`
	DeviceOwner string `json:"device_owner,omitempty"`
	DeviceID    string `json:"device_id,omitempty"`
}

// associated reports whether the event attaches the IP to some port.
func (e IPEvent) associated() bool { return e.ServerID != "" || e.PortID != "" }

// World is the simulated cloud.
type World struct {
	Regions        []string
	Hosts          []string
	PowerRunning   int
	AdminProjectID string
	AdminUserID    string
	Roles          []*Role
	Projects       []*Project
	Users          []*User
	Assignments    []Assignment
	AppCreds       []*AppCred
	Flavors        []*Flavor
	Images         []*Image
	Servers        []*Instance
	Volumes        []*Volume
	FloatingIPs    []*FloatingIP

	projByID   map[string]*Project
	projByName map[string]*Project
	userByID   map[string]*User
	userByName map[string]*User
	roleByID   map[string]*Role
	flavByID   map[string]*Flavor
	srvByID    map[string]int
	volByID    map[string]int
	// byCreated lists server indexes newest first (Nova's default sort).
	byCreated []int
	// byProject lists, per project, server indexes newest first.
	byProject map[string][]int
	// ipsByServer lists the floating IPs ever associated with a server.
	ipsByServer map[string][]int
	// volsByServer lists the volumes ever attached to a server.
	volsByServer map[string][]int
	// byUUID lists server indexes by uuid (os-simple-tenant-usage order).
	byUUID []int
}

// index builds the lookup tables; call it after any structural change.
func (w *World) index() error {
	w.projByID = map[string]*Project{}
	w.projByName = map[string]*Project{}
	for _, p := range w.Projects {
		if _, dup := w.projByID[p.ID]; dup {
			return fmt.Errorf("duplicate project id %s", p.ID)
		}
		w.projByID[p.ID] = p
		w.projByName[p.Name] = p
	}
	w.userByID = map[string]*User{}
	w.userByName = map[string]*User{}
	for _, u := range w.Users {
		w.userByID[u.ID] = u
		w.userByName[u.Name] = u
	}
	w.roleByID = map[string]*Role{}
	for _, r := range w.Roles {
		w.roleByID[r.ID] = r
	}
	w.flavByID = map[string]*Flavor{}
	for _, f := range w.Flavors {
		w.flavByID[f.ID] = f
	}
	w.srvByID = make(map[string]int, len(w.Servers))
	for i, s := range w.Servers {
		if _, dup := w.srvByID[s.ID]; dup {
			return fmt.Errorf("duplicate server id %s", s.ID)
		}
		if _, ok := w.flavByID[s.FlavorID]; !ok {
			return fmt.Errorf("server %s: unknown flavor %s", s.ID, s.FlavorID)
		}
		if _, ok := w.projByID[s.ProjectID]; !ok {
			return fmt.Errorf("server %s: unknown project %s", s.ID, s.ProjectID)
		}
		for _, e := range s.Events {
			if e.Kind == EvResize {
				if _, ok := w.flavByID[e.Flavor]; !ok {
					return fmt.Errorf("server %s: resize to unknown flavor %s", s.ID, e.Flavor)
				}
			}
		}
		sort.SliceStable(s.Events, func(a, b int) bool { return s.Events[a].At.Before(s.Events[b].At) })
		w.srvByID[s.ID] = i
	}
	w.byCreated = make([]int, len(w.Servers))
	for i := range w.byCreated {
		w.byCreated[i] = i
	}
	sort.Slice(w.byCreated, func(a, b int) bool {
		sa, sb := w.Servers[w.byCreated[a]], w.Servers[w.byCreated[b]]
		if !sa.Created.Equal(sb.Created) {
			return sa.Created.After(sb.Created)
		}
		return sa.ID > sb.ID
	})
	w.byProject = map[string][]int{}
	for _, i := range w.byCreated {
		p := w.Servers[i].ProjectID
		w.byProject[p] = append(w.byProject[p], i)
	}
	w.byUUID = slices.Clone(w.byCreated)
	sort.Slice(w.byUUID, func(a, b int) bool { return w.Servers[w.byUUID[a]].ID < w.Servers[w.byUUID[b]].ID })
	w.volByID = make(map[string]int, len(w.Volumes))
	w.volsByServer = map[string][]int{}
	w.ipsByServer = map[string][]int{}
	for i, ip := range w.FloatingIPs {
		seen := map[string]bool{}
		for _, e := range ip.PortEvents {
			if e.ServerID != "" && !seen[e.ServerID] {
				seen[e.ServerID] = true
				w.ipsByServer[e.ServerID] = append(w.ipsByServer[e.ServerID], i)
			}
		}
	}
	for i, v := range w.Volumes {
		sort.SliceStable(v.Events, func(a, b int) bool { return v.Events[a].At.Before(v.Events[b].At) })
		w.volByID[v.ID] = i
		seen := map[string]bool{}
		for _, e := range v.Events {
			if e.Kind == "attach" && !seen[e.ServerID] {
				seen[e.ServerID] = true
				w.volsByServer[e.ServerID] = append(w.volsByServer[e.ServerID], i)
			}
		}
	}
	return nil
}

// ServerState is a server as seen at one instant.
type ServerState struct {
	Exists       bool
	VMState      string
	Flavor       *Flavor
	LaunchedAt   time.Time
	TerminatedAt time.Time
	Updated      time.Time
	Host         string
	PowerState   int
	Metadata     map[string]string
}

// Deleted reports whether the server is deleted at that instant.
func (st ServerState) Deleted() bool { return st.VMState == "deleted" }

// stateAtUnindexed is stateAt for worlds still being built: it sorts the
// events first.
func (w *World) stateAtUnindexed(s *Instance, t time.Time) ServerState {
	if w.flavByID == nil {
		w.flavByID = map[string]*Flavor{}
		for _, f := range w.Flavors {
			w.flavByID[f.ID] = f
		}
	}
	sort.SliceStable(s.Events, func(a, b int) bool { return s.Events[a].At.Before(s.Events[b].At) })
	return w.stateAt(s, t)
}

// stateAt folds the server's events up to t (inclusive).
func (w *World) stateAt(s *Instance, t time.Time) ServerState {
	st := ServerState{}
	if s.Created.After(t) {
		return st
	}
	st.Exists = true
	st.VMState = "building"
	st.Flavor = w.flavByID[s.FlavorID]
	st.Updated = s.Created
	st.Metadata = s.Metadata
	for _, e := range s.Events {
		if e.At.After(t) {
			break
		}
		st.Updated = e.At
		switch e.Kind {
		case EvCreate:
		case EvLaunch, EvRebuild, EvUnshelve:
			st.VMState = "active"
			st.LaunchedAt = e.At
			st.Host = s.Host
			st.PowerState = w.PowerRunning
		case EvError:
			st.VMState = "error"
			st.PowerState = 0
		case EvStop:
			st.VMState = "stopped"
			st.PowerState = powerShutdown(w.PowerRunning)
		case EvStart:
			st.VMState = "active"
			st.PowerState = w.PowerRunning
		case EvShelve:
			st.VMState = "shelved_offloaded"
			st.Host = ""
			st.PowerState = powerShutdown(w.PowerRunning)
		case EvResize:
			st.VMState = "resized"
			st.Flavor = w.flavByID[e.Flavor]
			// Nova's finish_resize rewrites launched_at: the usage API forgets
			// the time spent under the old flavor.
			st.LaunchedAt = e.At
		case EvConfirmResize:
			st.VMState = "active"
		case EvDelete:
			st.VMState = "deleted"
			st.PowerState = 0
			if !e.NoTerminatedAt {
				st.TerminatedAt = e.At
			}
			st.Metadata = nil
		case EvTouch:
		}
	}
	return st
}

func powerShutdown(running int) int {
	if running == 0 {
		return 0 // the fake driver reports NOSTATE for everything
	}
	return 4
}

// nextEventAfter returns the first event time of s strictly after t.
func nextEventAfter(s *Instance, t time.Time) (time.Time, bool) {
	if s.Created.After(t) {
		return s.Created, true
	}
	i := sort.Search(len(s.Events), func(i int) bool { return s.Events[i].At.After(t) })
	if i < len(s.Events) {
		return s.Events[i].At, true
	}
	return time.Time{}, false
}

// snapshot caches every server's state for an interval during which no event
// happens, so a page of 1,000 servers never replays histories.
type snapshot struct {
	at, until time.Time // valid for at <= now < until (until zero: forever)
	version   int
	states    []ServerState
}

func (w *World) snapshotAt(t time.Time, version int) *snapshot {
	sn := &snapshot{at: t, version: version, states: make([]ServerState, len(w.Servers))}
	for i, s := range w.Servers {
		sn.states[i] = w.stateAt(s, t)
		if n, ok := nextEventAfter(s, t); ok && (sn.until.IsZero() || n.Before(sn.until)) {
			sn.until = n
		}
	}
	return sn
}

func (sn *snapshot) valid(t time.Time, version int) bool {
	return sn != nil && sn.version == version && !t.Before(sn.at) && (sn.until.IsZero() || t.Before(sn.until))
}

// hostID is Nova's hostId: sha224(project_id + host), empty without a host.
func hostID(projectID, host string) string {
	if host == "" {
		return ""
	}
	h := sha256.Sum224([]byte(projectID + host))
	return hex.EncodeToString(h[:])
}

// VolumeState is a volume as seen at one instant.
type VolumeState struct {
	Exists   bool
	Deleted  bool
	Status   string
	Size     int
	Updated  time.Time
	ServerID string
	Attached time.Time
}

func (v *Volume) stateAt(t time.Time) VolumeState {
	st := VolumeState{}
	if v.Created.After(t) {
		return st
	}
	st = VolumeState{Exists: true, Status: "available", Size: v.Size, Updated: v.Created}
	for _, e := range v.Events {
		if e.At.After(t) {
			break
		}
		st.Updated = e.At
		switch e.Kind {
		case "attach":
			st.Status = "in-use"
			st.ServerID = e.ServerID
			st.Attached = e.At
		case "detach":
			st.Status = "available"
			st.ServerID = ""
		case "extend":
			st.Size = e.Size
		case "error":
			st.Status = "error"
		case "available":
			st.Status = "available"
		case "delete":
			st.Deleted = true
			st.Status = "deleted"
		}
	}
	return st
}

// stateAt returns the server a floating IP is associated with at t.
func (f *FloatingIP) stateAt(t time.Time) (exists bool, serverID, fixed string, updated time.Time) {
	exists, e, updated := f.assocAt(t)
	return exists, e.ServerID, e.FixedIP, updated
}

// assocAt returns the last association event of a floating IP at t (the
// zero event when it was never associated).
func (f *FloatingIP) assocAt(t time.Time) (exists bool, e IPEvent, updated time.Time) {
	if f.Created.After(t) || (!f.Deleted.IsZero() && !f.Deleted.After(t)) {
		return false, IPEvent{}, time.Time{}
	}
	updated = f.Created
	for _, ev := range f.PortEvents {
		if ev.At.After(t) {
			break
		}
		e, updated = ev, ev.At
	}
	return true, e, updated
}

// hasRole reports whether user has role name on project (or system).
func (w *World) rolesOf(userID, projectID string, system bool) []*Role {
	var out []*Role
	for _, a := range w.Assignments {
		if a.UserID != userID {
			continue
		}
		if system && a.System || !system && !a.System && a.ProjectID == projectID {
			if r := w.roleByID[a.RoleID]; r != nil {
				out = append(out, r)
			}
		}
	}
	// Keystone expands implied roles: admin implies member implies reader.
	have := map[string]bool{}
	for _, r := range out {
		have[r.Name] = true
	}
	imply := func(from, to string) {
		if have[from] && !have[to] {
			for _, r := range w.Roles {
				if r.Name == to {
					out = append(out, r)
					have[to] = true
				}
			}
		}
	}
	imply("admin", "member")
	imply("member", "reader")
	return out
}

func lowerASCII(s string) string { return strings.ToLower(s) }

// newUUID is a random version-4 UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return uuidFromHash(b[:])
}

// uuidFromHash formats 16 bytes (e.g. of a hash) as a version-4 UUID, for ids
// that must not change between runs.
func uuidFromHash(h []byte) string {
	var b [16]byte
	copy(b[:], h)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
