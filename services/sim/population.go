package sim

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"
)

// Generate builds a deterministic population from cfg.Seed: the same config
// and now give the same cloud, ids included.
func Generate(cfg Config, now time.Time) (*World, error) {
	if now.IsZero() {
		now = time.Now().UTC()
	}
	now = now.UTC().Truncate(time.Second)
	g := &gen{cfg: cfg, rnd: rand.New(rand.NewPCG(uint64(cfg.Seed), 0x0c0ffee)), now: now,
		histStart: now.AddDate(0, -cfg.Months, 0)}
	return g.world()
}

type gen struct {
	cfg       Config
	rnd       *rand.Rand
	now       time.Time
	histStart time.Time
	seq       int
}

// id derives a stable id from the seed and parts.
func (g *gen) hash(parts ...string) []byte {
	h := sha256.New()
	fmt.Fprint(h, g.cfg.Seed)
	for _, p := range parts {
		h.Write([]byte{0})
		h.Write([]byte(p))
	}
	return h.Sum(nil)
}

func (g *gen) hexID(parts ...string) string { return fmt.Sprintf("%x", g.hash(parts...)[:16]) }
func (g *gen) uuid(parts ...string) string  { return uuidFromHash(g.hash(parts...)) }

// at returns a time uniformly in [from, to).
func (g *gen) at(from, to time.Time) time.Time {
	if !to.After(from) {
		return from
	}
	return from.Add(time.Duration(g.rnd.Int64N(int64(to.Sub(from))))).Truncate(time.Second)
}

var (
	vos         = []string{"atlas", "cms", "lhcb", "alice", "belle2", "dune", "ska", "biomed", "virgo", "km3net"}
	projKinds   = []string{"prod", "dev", "ops", "analysis", "ci"}
	exoticProjs = []string{"équipe-données", "研究グループ", "física-altas-energías", "Zürich-Lab", "наука"}
	firstNames  = []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"}
	exoticUsers = []string{"José Müller", "Zoë Ñúñez", "Łukasz Żółć", "Søren Ærø", "山田太郎", "Ångström"}
	serverWords = []string{"worker", "db", "web", "batch", "gpu-node", "jupyter", "cvmfs", "squid"}
	exoticSrv   = []string{"nœud-calcul", "サーバー", "räknare", "узел"}
)

func (g *gen) world() (*World, error) {
	cfg := g.cfg
	w := &World{Regions: cfg.Regions, PowerRunning: 1}
	nHosts := min(max(1, cfg.Projects*cfg.ServersPerProject/50), 200)
	for i := range nHosts {
		w.Hosts = append(w.Hosts, fmt.Sprintf("compute-%03d", i+1))
	}
	for _, name := range []string{"admin", "member", "reader", "accounting", "service"} {
		w.Roles = append(w.Roles, &Role{ID: g.hexID("role", name), Name: name, Immutable: name != "accounting" && name != "service"})
	}
	roleID := func(name string) string { return g.hexID("role", name) }
	admin := &Project{ID: g.hexID("project", "admin"), Name: "admin", Description: "Bootstrap project for initializing the cloud.", DomainID: "default", Enabled: true}
	service := &Project{ID: g.hexID("project", "service"), Name: "service", DomainID: "default", Enabled: true}
	w.Projects = append(w.Projects, admin, service)
	adminUser := &User{ID: g.hexID("user", "admin"), Name: "admin", DomainID: "default", Enabled: true, Password: DefaultPassword}
	acct := &User{ID: g.hexID("user", "accounting"), Name: "accounting", Email: "accounting@example.org",
		Description: "accounting collector (accounting + reader on the caso-tagged projects)", DomainID: "default", Enabled: true, Password: DefaultPassword}
	// sysReader is cASO's documented setup (reader on the system for the
	// project tags and user names, reader on each project) with one grant
	// forgotten: it has no role on the last caso-tagged project.
	sysReader := &User{ID: g.hexID("user", SysReaderUser), Name: SysReaderUser, Email: "accounting-sys@example.org",
		Description: "reader on the system and on every caso project but the last", DomainID: "default", Enabled: true, Password: DefaultPassword}
	w.Users = append(w.Users, adminUser, acct, sysReader)
	w.Assignments = append(w.Assignments, Assignment{UserID: sysReader.ID, System: true, RoleID: roleID("reader")})
	var casoProjects []string
	w.AdminProjectID, w.AdminUserID = admin.ID, adminUser.ID
	w.Assignments = append(w.Assignments, Assignment{UserID: adminUser.ID, ProjectID: admin.ID, RoleID: roleID("admin")},
		Assignment{UserID: adminUser.ID, System: true, RoleID: roleID("admin")})
	w.AppCreds = append(w.AppCreds, &AppCred{ID: g.hexID("appcred", "accounting"), Name: "accounting",
		Secret: DefaultPassword, UserID: acct.ID})

	g.flavors(w)
	g.images(w, admin.ID)

	for i := range cfg.Projects {
		p := g.project(i)
		w.Projects = append(w.Projects, p)
		if slicesContains(p.Tags, "caso") {
			w.Assignments = append(w.Assignments, Assignment{UserID: acct.ID, ProjectID: p.ID, RoleID: roleID("accounting")},
				Assignment{UserID: acct.ID, ProjectID: p.ID, RoleID: roleID("reader")})
			if w.AppCreds[0].ProjectID == "" {
				w.AppCreds[0].ProjectID = p.ID
			}
			casoProjects = append(casoProjects, p.ID)
		}
		var users []*User
		for j := range cfg.UsersPerProject {
			u := g.user(i, j)
			users = append(users, u)
			w.Users = append(w.Users, u)
			w.Assignments = append(w.Assignments, Assignment{UserID: u.ID, ProjectID: p.ID, RoleID: roleID("member")})
		}
		if len(users) == 0 {
			users = []*User{adminUser}
		}
		region := ""
		if len(cfg.Regions) > 1 {
			region = cfg.Regions[i%len(cfg.Regions)]
		}
		first := len(w.Servers)
		for j := range cfg.ServersPerProject {
			w.Servers = append(w.Servers, g.server(w, p, users[g.rnd.IntN(len(users))], region, j))
		}
		servers := w.Servers[first:]
		for j := range cfg.VolumesPerProject {
			w.Volumes = append(w.Volumes, g.volume(p, users[g.rnd.IntN(len(users))], region, servers, j))
		}
		for j := range cfg.FloatingIPsPerProj {
			w.FloatingIPs = append(w.FloatingIPs, g.floatingIP(p, region, servers, j))
		}
	}
	if w.AppCreds[0].ProjectID == "" {
		w.AppCreds = nil
	}
	for i, id := range casoProjects {
		if i < len(casoProjects)-1 || i == 0 {
			w.Assignments = append(w.Assignments, Assignment{UserID: sysReader.ID, ProjectID: id, RoleID: roleID("reader")})
		}
	}
	// nova-compute restarts bump `updated` of every live instance, unrelated
	// to usage: changes-since must not be read as "changed usage".
	for k := range 2 {
		restart := g.at(g.histStart, g.now)
		_ = k
		for _, s := range w.Servers {
			if st := w.stateAtUnindexed(s, restart); st.Exists && !st.Deleted() && st.Host != "" {
				s.Events = append(s.Events, Event{At: restart, Kind: EvTouch})
			}
		}
	}
	if err := w.index(); err != nil {
		return nil, fmt.Errorf("generated world: %w", err)
	}
	return w, nil
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func (g *gen) projectName(i int) string {
	if i%7 == 5 {
		return fmt.Sprintf("%s-%03d", exoticProjs[(i/7)%len(exoticProjs)], i)
	}
	return fmt.Sprintf("%s-%s-%03d", vos[i%len(vos)], projKinds[(i/len(vos))%len(projKinds)], i)
}

func (g *gen) project(i int) *Project {
	vo := vos[i%len(vos)]
	name := g.projectName(i)
	p := &Project{ID: g.hexID("project", strconv.Itoa(i)), Name: name, DomainID: "default", Enabled: true,
		Description: "generated project " + strconv.Itoa(i), Tags: []string{}}
	// Project 0 is always an accounted project with a VO, so the accounting
	// user always has somewhere to scope to.
	switch r := g.rnd.Float64(); {
	case i == 0 || r < 0.6:
		p.Tags = []string{"caso"}
		p.Extra = map[string]string{"VO": vo}
	case r < 0.75:
		p.Tags = []string{"caso", "no-vo"}
	default:
	}
	return p
}

func (g *gen) user(i, j int) *User {
	n := i*1000 + j
	name := fmt.Sprintf("%s-%05d", firstNames[n%len(firstNames)], n)
	if n%9 == 4 {
		name = fmt.Sprintf("%s %05d", exoticUsers[n%len(exoticUsers)], n)
	}
	return &User{ID: g.hexID("user", strconv.Itoa(n)), Name: name, Email: fmt.Sprintf("user%05d@example.org", n),
		DomainID: "default", Enabled: true, Password: DefaultPassword}
}

func (g *gen) flavors(w *World) {
	type fl struct {
		name                       string
		vcpus, ram, disk, eph, swp int
		specs                      map[string]string
		deleted                    bool
	}
	list := []fl{
		{"m1.tiny", 1, 512, 1, 0, 0, nil, false},
		{"m1.small", 1, 2048, 20, 0, 0, nil, false},
		{"m1.medium", 2, 4096, 40, 0, 0, nil, false},
		{"m1.large", 4, 8192, 80, 10, 0, nil, false},
		{"m1.xlarge", 8, 16384, 160, 20, 1024, nil, false},
		{"hs06.medium", 4, 8192, 40, 0, 0, map[string]string{"accounting:benchmark_type": "HEPSPEC06", "accounting:benchmark_value": "12.5"}, false},
		{"hs23.large", 8, 16384, 80, 0, 0, map[string]string{"accounting:benchmark_type": "HEPscore23", "accounting:benchmark_value": "15.25"}, false},
		{"g1.a100x2", 16, 65536, 200, 0, 0, map[string]string{"Accelerator:Type": "GPU", "Accelerator:Vendor": "NVIDIA", "Accelerator:Model": "A100", "Accelerator:Number": "2"}, false},
		{"g1.mi210", 8, 32768, 100, 0, 0, map[string]string{"Accelerator:Type": "GPU", "Accelerator:Vendor": "AMD", "Accelerator:Model": "MI210", "Accelerator:Number": "1"}, false},
		{"m1.legacy", 2, 2048, 20, 0, 0, nil, true},
	}
	for i, f := range list {
		w.Flavors = append(w.Flavors, &Flavor{ID: g.uuid("flavor", f.name), InternalID: i + 1, Name: f.name, VCPUs: f.vcpus,
			RAM: f.ram, Disk: f.disk, Ephemeral: f.eph, Swap: f.swp, RxTx: 1.0, IsPublic: true, ExtraSpecs: f.specs, Deleted: f.deleted})
	}
}

func (g *gen) images(w *World, owner string) {
	names := []string{"ubuntu-22.04", "ubuntu-24.04", "almalinux-9", "rocky-9", "debian-12", "cirros-0.6", "fedora-40", "centos-7"}
	for i := range g.cfg.Images {
		name := names[i%len(names)]
		if i >= len(names) {
			name += "-" + strconv.Itoa(i/len(names))
		}
		created := g.at(g.histStart.AddDate(0, -1, 0), g.histStart)
		im := &Image{ID: g.uuid("image", strconv.Itoa(i)), Name: name, Owner: owner, Visibility: "public", Status: "active",
			DiskFormat: "qcow2", ContainerFormat: "bare", Size: int64(200+g.rnd.IntN(800)) << 20, Created: created,
			Updated: created.Add(time.Minute), Properties: map[string]string{}}
		im.Checksum = fmt.Sprintf("%x", g.hash("md5", im.ID)[:16])
		im.HashValue = fmt.Sprintf("%x", g.hash("sha512", im.ID))
		if i%2 == 0 {
			im.Properties["vmcatcher_event_ad_mpuri"] = fmt.Sprintf("https://appdb.egi.eu/store/vo/image/%s:%d/", im.ID, 100+i)
		}
		if i%5 == 4 {
			im.Deleted = g.at(g.histStart, g.now)
		}
		w.Images = append(w.Images, im)
	}
}

func (g *gen) server(w *World, p *Project, u *User, region string, j int) *Instance {
	g.seq++
	id := g.uuid("server", strconv.Itoa(g.seq))
	name := fmt.Sprintf("%s-%d", serverWords[g.rnd.IntN(len(serverWords))], j)
	if g.rnd.IntN(10) == 0 {
		name = fmt.Sprintf("%s-%d", exoticSrv[g.rnd.IntN(len(exoticSrv))], j)
	}
	created := g.at(g.histStart, g.now.Add(-time.Minute))
	flavors := w.Flavors
	f := flavors[g.rnd.IntN(len(flavors))]
	// Servers with the deleted flavor were booted before it was retired.
	if f.Deleted && created.After(g.histStart.Add(g.now.Sub(g.histStart)/3)) {
		f = flavors[0]
	}
	image := ""
	if len(w.Images) > 0 {
		image = w.Images[g.rnd.IntN(len(w.Images))].ID
	}
	s := &Instance{ID: id, Name: name, ProjectID: p.ID, UserID: u.ID, ImageID: image, FlavorID: f.ID,
		Host: w.Hosts[g.rnd.IntN(len(w.Hosts))], Created: created, Region: region,
		InstanceName: fmt.Sprintf("instance-%08x", g.seq), ReservationID: "r-" + g.uuid("res", id)[:8],
		Metadata: map[string]string{}, FixedIP: fmt.Sprintf("10.%d.%d.%d", (g.seq>>16)&255, (g.seq>>8)&255, g.seq&255|1)}
	c := g.cfg.Churn
	end := g.now
	if g.rnd.Float64() < c.Error {
		errAt := created.Add(time.Duration(2+g.rnd.IntN(20)) * time.Second)
		s.Host = ""
		s.Fault = &Fault{Code: 500, Message: "No valid host was found. ", Details: "Traceback (most recent call last):\n  nova.exception.NoValidHost", Created: errAt}
		s.Events = append(s.Events, Event{At: errAt, Requested: created, Kind: EvError})
		if g.rnd.IntN(2) == 0 {
			if del := g.at(errAt.Add(time.Minute), errAt.Add(72*time.Hour)); del.Before(end) {
				s.Events = append(s.Events, Event{At: del, Kind: EvDelete})
			}
		}
		return s
	}
	t := created.Add(time.Duration(5+g.rnd.IntN(60)) * time.Second)
	s.Events = append(s.Events, Event{At: t, Requested: created, Kind: EvLaunch})
	var deleteAt time.Time
	if g.rnd.Float64() < c.Delete {
		deleteAt = g.at(t.Add(time.Hour), end)
		if !deleteAt.Before(end) {
			deleteAt = time.Time{}
		}
	}
	life := end
	if !deleteAt.IsZero() {
		life = deleteAt
	}
	if g.rnd.Float64() < c.Resize {
		at := g.at(t.Add(time.Minute), life)
		if at.Before(life.Add(-2 * time.Minute)) {
			to := flavors[g.rnd.IntN(len(flavors))]
			if !to.Deleted && to.ID != f.ID {
				s.Events = append(s.Events, Event{At: at, Requested: at.Add(-30 * time.Second), Kind: EvResize, Flavor: to.ID},
					Event{At: at.Add(time.Minute), Requested: at.Add(50 * time.Second), Kind: EvConfirmResize})
				t = at.Add(time.Minute)
			}
		}
	}
	switch r := g.rnd.Float64(); {
	case r < c.Stop:
		at := g.at(t.Add(time.Minute), life)
		if at.Before(life) {
			s.Events = append(s.Events, Event{At: at, Kind: EvStop})
			if g.rnd.IntN(2) == 0 {
				if st := g.at(at.Add(time.Minute), life); st.Before(life) {
					s.Events = append(s.Events, Event{At: st, Kind: EvStart})
				}
			}
		}
	case r < c.Stop+c.Shelve:
		at := g.at(t.Add(time.Minute), life)
		if at.Before(life) {
			s.Events = append(s.Events, Event{At: at, Kind: EvShelve})
			if g.rnd.IntN(2) == 0 {
				if st := g.at(at.Add(time.Minute), life); st.Before(life) {
					s.Events = append(s.Events, Event{At: st, Kind: EvUnshelve})
				}
			}
		}
	}
	if !deleteAt.IsZero() {
		s.Events = append(s.Events, Event{At: deleteAt, Requested: deleteAt.Add(-time.Second), Kind: EvDelete,
			NoTerminatedAt: g.rnd.Float64() < c.NoTerminatedAt})
	}
	if g.rnd.IntN(3) == 0 {
		s.Metadata["purpose"] = "generated"
	}
	return s
}

func (g *gen) volume(p *Project, u *User, region string, servers []*Instance, j int) *Volume {
	g.seq++
	created := g.at(g.histStart, g.now.Add(-time.Minute))
	v := &Volume{ID: g.uuid("volume", strconv.Itoa(g.seq)), Name: fmt.Sprintf("vol-%s-%d", p.Name, j), ProjectID: p.ID,
		UserID: u.ID, Size: 1 + g.rnd.IntN(100), Created: created, Region: region, Host: "cinder-volume@lvm#lvm"}
	if len(servers) > 0 && g.rnd.IntN(2) == 0 {
		s := servers[g.rnd.IntN(len(servers))]
		at := created.Add(time.Minute)
		if s.Created.After(at) {
			at = s.Created.Add(2 * time.Minute)
		}
		if at.Before(g.now) {
			v.Events = append(v.Events, VolumeEvent{At: at, Kind: "attach", ServerID: s.ID})
			if d := g.at(at.Add(time.Hour), g.now.Add(30*24*time.Hour)); d.Before(g.now) {
				v.Events = append(v.Events, VolumeEvent{At: d, Kind: "detach"})
			}
		}
	}
	if g.rnd.Float64() < 0.3 {
		last := created
		if n := len(v.Events); n > 0 {
			last = v.Events[n-1].At
		}
		if d := g.at(last.Add(time.Minute), g.now.Add(30*24*time.Hour)); d.Before(g.now) {
			if n := len(v.Events); n > 0 && v.Events[n-1].Kind == "attach" {
				v.Events = append(v.Events, VolumeEvent{At: d, Kind: "detach"})
				d = d.Add(time.Second)
			}
			v.Events = append(v.Events, VolumeEvent{At: d, Kind: "delete"})
		}
	}
	return v
}

func (g *gen) floatingIP(p *Project, region string, servers []*Instance, j int) *FloatingIP {
	g.seq++
	addr := fmt.Sprintf("172.24.%d.%d", (g.seq>>8)&255, g.seq&255)
	if j%2 == 1 {
		addr = fmt.Sprintf("2001:db8::%x", g.seq)
	}
	ip := &FloatingIP{ID: g.uuid("fip", strconv.Itoa(g.seq)), ProjectID: p.ID, Address: addr, Region: region,
		Created: g.at(g.histStart, g.now.Add(-time.Minute))}
	if len(servers) > 0 {
		s := servers[g.rnd.IntN(len(servers))]
		at := ip.Created.Add(time.Minute)
		if s.Created.After(at) {
			at = s.Created.Add(3 * time.Minute)
		}
		if at.Before(g.now) && s.FixedIP != "" && s.Host != "" {
			ip.PortEvents = append(ip.PortEvents, IPEvent{At: at, ServerID: s.ID, FixedIP: s.FixedIP})
			for _, e := range s.Events {
				if e.Kind == EvDelete && e.At.After(at) {
					ip.PortEvents = append(ip.PortEvents, IPEvent{At: e.At})
				}
			}
		}
	}
	// Some IPs sit on ports no server owns: an Octavia load balancer's VIP,
	// or a bare port (a keepalived VIP). Chosen from seq, not the random
	// source, so the rest of the population stays what it was.
	if at := ip.Created.Add(2 * time.Minute); at.Before(g.now) {
		switch g.seq % 7 {
		case 3:
			lb := g.uuid("lb", strconv.Itoa(g.seq))
			ip.PortEvents = []IPEvent{{At: at, PortID: g.uuid("vip", lb), DeviceOwner: "Octavia", DeviceID: "lb-" + lb, FixedIP: "10.0.0.10"}}
		case 5:
			ip.PortEvents = []IPEvent{{At: at, PortID: g.uuid("bare", strconv.Itoa(g.seq)), FixedIP: "10.0.0.11"}}
		}
	}
	if g.rnd.IntN(5) == 0 {
		if d := g.at(ip.Created.Add(time.Hour), g.now.Add(30*24*time.Hour)); d.Before(g.now) {
			ip.Deleted = d
		}
	}
	return ip
}
