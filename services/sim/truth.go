package sim

import (
	"time"
)

// Truth is the ground truth of a world: every lifecycle with its times, flavor
// over time, states and owners. Accounting tests compute expected records from
// it, independently of any extractor.
type Truth struct {
	Now         time.Time      `json:"now"`
	Regions     []string       `json:"regions"`
	Projects    []TruthProject `json:"projects"`
	Flavors     []TruthFlavor  `json:"flavors"`
	Servers     []TruthServer  `json:"servers"`
	Volumes     []TruthVolume  `json:"volumes"`
	FloatingIPs []TruthIP      `json:"floating_ips"`
	// NotificationFaults lists the notifications damaged on purpose so far
	// (only in GET /sim/truth: nothing is sent before Start).
	NotificationFaults []NotifyFault `json:"notification_faults,omitempty"`
}

type TruthProject struct {
	ID    string            `json:"id"`
	Name  string            `json:"name"`
	Tags  []string          `json:"tags"`
	Extra map[string]string `json:"extra,omitempty"`
}

type TruthFlavor struct {
	ID         string            `json:"id"`
	Name       string            `json:"name"`
	VCPUs      int               `json:"vcpus"`
	RAM        int               `json:"ram_mb"`
	Disk       int               `json:"disk_gb"`
	Ephemeral  int               `json:"ephemeral_gb"`
	ExtraSpecs map[string]string `json:"extra_specs,omitempty"`
	Deleted    bool              `json:"deleted"`
}

// TruthSpan is a period [From, To) in one state with one flavor; To is nil
// while it lasts.
type TruthSpan struct {
	From     time.Time  `json:"from"`
	To       *time.Time `json:"to"`
	VMState  string     `json:"vm_state"`
	FlavorID string     `json:"flavor_id"`
}

type TruthEvent struct {
	At             time.Time `json:"at"`
	Kind           string    `json:"kind"`
	FlavorID       string    `json:"flavor_id,omitempty"`
	NoTerminatedAt bool      `json:"no_terminated_at,omitempty"`
}

type TruthServer struct {
	ID        string       `json:"id"`
	Name      string       `json:"name"`
	ProjectID string       `json:"project_id"`
	UserID    string       `json:"user_id"`
	Region    string       `json:"region"`
	Host      string       `json:"host"`
	ImageID   string       `json:"image_id"`
	Created   time.Time    `json:"created"`
	Events    []TruthEvent `json:"events"`
	Spans     []TruthSpan  `json:"spans"`
	// What the API shows now.
	VMState      string     `json:"vm_state"`
	FlavorID     string     `json:"flavor_id"`
	LaunchedAt   *time.Time `json:"launched_at"`
	TerminatedAt *time.Time `json:"terminated_at"`
	DeletedAt    *time.Time `json:"deleted_at"`
}

type TruthVolume struct {
	ID        string        `json:"id"`
	Name      string        `json:"name"`
	ProjectID string        `json:"project_id"`
	UserID    string        `json:"user_id"`
	Region    string        `json:"region"`
	Size      int           `json:"size_gb"`
	Created   time.Time     `json:"created"`
	Events    []VolumeEvent `json:"events"`
	DeletedAt *time.Time    `json:"deleted_at"`
}

type TruthIP struct {
	ID           string     `json:"id"`
	ProjectID    string     `json:"project_id"`
	Region       string     `json:"region"`
	Address      string     `json:"address"`
	Version      int        `json:"ip_version"`
	Created      time.Time  `json:"created"`
	Deleted      *time.Time `json:"deleted"`
	Associations []IPEvent  `json:"associations"`
}

func tptr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// Truth describes the world as of now (events after now are included: they
// are the scripted future).
func (w *World) Truth(now time.Time) Truth {
	t := Truth{Now: now, Regions: w.Regions}
	for _, p := range w.Projects {
		t.Projects = append(t.Projects, TruthProject{ID: p.ID, Name: p.Name, Tags: p.Tags, Extra: p.Extra})
	}
	for _, f := range w.Flavors {
		t.Flavors = append(t.Flavors, TruthFlavor{ID: f.ID, Name: f.Name, VCPUs: f.VCPUs, RAM: f.RAM, Disk: f.Disk,
			Ephemeral: f.Ephemeral, ExtraSpecs: f.ExtraSpecs, Deleted: f.Deleted})
	}
	region := func(r string) string {
		if r == "" {
			return w.Regions[0]
		}
		return r
	}
	for _, s := range w.Servers {
		ts := TruthServer{ID: s.ID, Name: s.Name, ProjectID: s.ProjectID, UserID: s.UserID, Region: region(s.Region),
			Host: s.Host, ImageID: s.ImageID, Created: s.Created}
		prev := w.stateAt(s, s.Created)
		ts.Spans = append(ts.Spans, TruthSpan{From: s.Created, VMState: prev.VMState, FlavorID: prev.Flavor.ID})
		for _, e := range s.Events {
			ts.Events = append(ts.Events, TruthEvent{At: e.At, Kind: e.Kind, FlavorID: e.Flavor, NoTerminatedAt: e.NoTerminatedAt})
			st := w.stateAt(s, e.At)
			last := &ts.Spans[len(ts.Spans)-1]
			if st.VMState != last.VMState || st.Flavor.ID != last.FlavorID {
				at := e.At
				last.To = &at
				if st.VMState != "deleted" {
					ts.Spans = append(ts.Spans, TruthSpan{From: e.At, VMState: st.VMState, FlavorID: st.Flavor.ID})
				}
			}
			if e.Kind == EvDelete {
				ts.DeletedAt = tptr(e.At)
			}
		}
		cur := w.stateAt(s, now)
		ts.VMState, ts.LaunchedAt, ts.TerminatedAt = cur.VMState, tptr(cur.LaunchedAt), tptr(cur.TerminatedAt)
		if cur.Flavor != nil {
			ts.FlavorID = cur.Flavor.ID
		}
		t.Servers = append(t.Servers, ts)
	}
	for _, v := range w.Volumes {
		tv := TruthVolume{ID: v.ID, Name: v.Name, ProjectID: v.ProjectID, UserID: v.UserID, Region: region(v.Region),
			Size: v.Size, Created: v.Created, Events: v.Events}
		for _, e := range v.Events {
			if e.Kind == "delete" {
				tv.DeletedAt = tptr(e.At)
			}
		}
		t.Volumes = append(t.Volumes, tv)
	}
	for _, ip := range w.FloatingIPs {
		ver := 4
		for _, c := range ip.Address {
			if c == ':' {
				ver = 6
			}
		}
		t.FloatingIPs = append(t.FloatingIPs, TruthIP{ID: ip.ID, ProjectID: ip.ProjectID, Region: region(ip.Region),
			Address: ip.Address, Version: ver, Created: ip.Created, Deleted: tptr(ip.Deleted), Associations: ip.PortEvents})
	}
	return t
}
