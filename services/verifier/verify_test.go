package verifier

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tally-accounting/tally/pkg/openstack"
)

var (
	l1   = time.Date(2026, 11, 23, 10, 0, 5, 123456000, time.UTC)
	apb  = time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC)
	ape  = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	del1 = time.Date(2026, 11, 23, 11, 30, 0, 500000, time.UTC)
)

const (
	inst   = "2f6f9a0e-5b0f-4c53-9d55-6b1b8d1b0001"
	tenant = "c9a9ee822ef148159e0fc394466a970e"
)

func launch() InstanceUsage {
	return InstanceUsage{Instance: inst, LaunchedAt: l1, Tenant: tenant, InstanceTypeID: "12345", InstanceFlavorID: "performance2-120",
		FlavorName: "p2.120", OSArchitecture: "x64", OSDistro: "ubuntu", OSVersion: "22.04", RaxOptions: "4"}
}

func exists(mut func(*InstanceExists)) InstanceExists {
	u := launch()
	u.LaunchedAt = l1.Truncate(time.Second) // exists carry whole seconds
	e := InstanceExists{MessageID: "m1", EventType: "compute.instance.exists", Usage: u, AuditBegin: apb, AuditEnd: ape}
	if mut != nil {
		mut(&e)
	}
	return e
}

// TestVerifyInstance ports the cases of StackTach's test_nova_verifier.py.
func TestVerifyInstance(t *testing.T) {
	tests := []struct {
		name      string
		cfg       func(*rules)
		e         InstanceExists
		launches  []InstanceUsage
		deletes   []InstanceDelete
		wantField string // "" = verified
	}{
		{name: "launched_at in range", e: exists(nil), launches: []InstanceUsage{launch()}},
		{name: "launched_at other second", e: exists(func(e *InstanceExists) { e.Usage.LaunchedAt = l1.Add(time.Second) }),
			launches: []InstanceUsage{launch()}, wantField: "launched_at"},
		{name: "no launched_at", e: exists(func(e *InstanceExists) { e.Usage.LaunchedAt = time.Time{} }),
			launches: []InstanceUsage{launch()}, wantField: "launched_at"},
		{name: "unparseable launched_at", e: exists(func(e *InstanceExists) { e.Invalid = "launched_at=soon" }), wantField: "launched_at"},
		{name: "no usage", e: exists(nil), wantField: "instance"},
		{name: "flavor id mismatch", e: exists(func(e *InstanceExists) { e.Usage.InstanceFlavorID = "1" }),
			launches: []InstanceUsage{launch()}, wantField: "instance_flavor_id"},
		{name: "type id mismatch ignored with flavor id", e: exists(func(e *InstanceExists) { e.Usage.InstanceTypeID = "1" }),
			launches: []InstanceUsage{launch()}},
		{name: "type id mismatch", cfg: func(r *rules) { r.flavorField = "instance_type_id" },
			e: exists(func(e *InstanceExists) { e.Usage.InstanceTypeID = "1" }), launches: []InstanceUsage{launch()}, wantField: "instance_type_id"},
		{name: "versioned falls back to flavor id", cfg: func(r *rules) { r.flavorField = "instance_type_id" },
			e: exists(func(e *InstanceExists) { e.Versioned, e.Usage.InstanceTypeID = true, "" }), launches: []InstanceUsage{launch()}},
		{name: "flavor name mismatch", e: exists(func(e *InstanceExists) { e.Usage.FlavorName = "m1.corrupted" }),
			launches: []InstanceUsage{launch()}, wantField: "instance_type"},
		{name: "tenant mismatch", e: exists(func(e *InstanceExists) { e.Usage.Tenant = "0123abcd" }),
			launches: []InstanceUsage{launch()}, wantField: "tenant"},
		{name: "rax_options mismatch", e: exists(func(e *InstanceExists) { e.Usage.RaxOptions = "5" }),
			launches: []InstanceUsage{launch()}, wantField: "rax_options"},
		{name: "os_architecture mismatch", e: exists(func(e *InstanceExists) { e.Usage.OSArchitecture = "x86" }),
			launches: []InstanceUsage{launch()}, wantField: "os_architecture"},
		{name: "os_version mismatch", e: exists(func(e *InstanceExists) { e.Usage.OSVersion = "20.04" }),
			launches: []InstanceUsage{launch()}, wantField: "os_version"},
		{name: "os_distro mismatch", e: exists(func(e *InstanceExists) { e.Usage.OSDistro = "debian" }),
			launches: []InstanceUsage{launch()}, wantField: "os_distro"},
		{name: "versioned has no image metadata", e: exists(func(e *InstanceExists) {
			e.Versioned, e.Usage.OSDistro, e.Usage.OSVersion, e.Usage.RaxOptions, e.Usage.OSArchitecture = true, "", "", "", ""
		}), launches: []InstanceUsage{launch()}},
		{name: "delete found", e: exists(func(e *InstanceExists) { e.DeletedAt = del1.Truncate(time.Second) }),
			launches: []InstanceUsage{launch()}, deletes: []InstanceDelete{{Instance: inst, LaunchedAt: l1, DeletedAt: del1}}},
		{name: "delete missing", e: exists(func(e *InstanceExists) { e.DeletedAt = del1 }),
			launches: []InstanceUsage{launch()}, wantField: "deleted_at"},
		{name: "deleted_at mismatch", e: exists(func(e *InstanceExists) { e.DeletedAt = del1.Add(2 * time.Second) }),
			launches: []InstanceUsage{launch()}, deletes: []InstanceDelete{{Instance: inst, LaunchedAt: l1, DeletedAt: del1}}, wantField: "deleted_at"},
		{name: "non-delete exists found deletes", e: exists(nil), launches: []InstanceUsage{launch()},
			deletes: []InstanceDelete{{Instance: inst, LaunchedAt: l1, DeletedAt: del1}}, wantField: "deleted_at"},
		{name: "delete after the period is fine", e: exists(nil), launches: []InstanceUsage{launch()},
			deletes: []InstanceDelete{{Instance: inst, LaunchedAt: l1, DeletedAt: ape.Add(time.Minute)}}},
		{name: "delete of another launch is fine", e: exists(nil), launches: []InstanceUsage{launch()},
			deletes: []InstanceDelete{{Instance: inst, LaunchedAt: l1.Add(-time.Hour), DeletedAt: del1}}},
		{name: "basic: null tenant", e: exists(func(e *InstanceExists) { e.Usage.Tenant = "" }), launches: []InstanceUsage{launch()}, wantField: "tenant"},
		{name: "basic: null flavor", e: exists(func(e *InstanceExists) { e.Usage.InstanceFlavorID = "" }), launches: []InstanceUsage{launch()}, wantField: "instance_flavor_id"},
		{name: "basic: tenant not hex", e: exists(func(e *InstanceExists) { e.Usage.Tenant = "atlas-prod" }), launches: []InstanceUsage{launch()}, wantField: "tenant"},
		{name: "none: tenant not hex only mismatches", cfg: func(r *rules) { r.level = LevelNone },
			e: exists(func(e *InstanceExists) { e.Usage.Tenant = "atlas-prod" }), launches: []InstanceUsage{launch()}, wantField: "tenant"},
		{name: "all: rax_options not int", cfg: func(r *rules) { r.level = LevelAll },
			e:        exists(func(e *InstanceExists) { e.Usage.RaxOptions = "four" }),
			launches: []InstanceUsage{func() InstanceUsage { u := launch(); u.RaxOptions = "four"; return u }()}, wantField: "rax_options"},
		{name: "all: os_distro format", cfg: func(r *rules) { r.level = LevelAll },
			e:        exists(func(e *InstanceExists) { e.Usage.OSDistro = "ubuntu linux" }),
			launches: []InstanceUsage{func() InstanceUsage { u := launch(); u.OSDistro = "ubuntu linux"; return u }()}, wantField: "os_distro"},
		{name: "all: required image meta", cfg: func(r *rules) { r.level, r.requiredMeta = LevelAll, []string{"os_version"} },
			e:        exists(func(e *InstanceExists) { e.Usage.OSVersion = "" }),
			launches: []InstanceUsage{func() InstanceUsage { u := launch(); u.OSVersion = ""; return u }()}, wantField: "os_version"},
		{name: "all: import images need no distro", cfg: func(r *rules) { r.level, r.requiredMeta = LevelAll, []string{"os_distro"} },
			e:        exists(func(e *InstanceExists) { e.Usage.OSDistro, e.Usage.ImageType = "", "import" }),
			launches: []InstanceUsage{func() InstanceUsage { u := launch(); u.OSDistro, u.ImageType = "", "import"; return u }()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rules{level: LevelBasic, flavorField: "instance_flavor_id"}
			if tt.cfg != nil {
				tt.cfg(&r)
			}
			f := r.verifyInstance(tt.e, tt.launches, tt.deletes)
			got := ""
			if f != nil {
				got = f.Field
				if f.Reason == "" {
					t.Error("failure without a reason")
				}
			}
			if got != tt.wantField {
				t.Errorf("failed field %q, want %q (%+v)", got, tt.wantField, f)
			}
		})
	}
}

func TestVerifyImage(t *testing.T) {
	created := time.Date(2026, 11, 23, 9, 0, 0, 250000, time.UTC)
	usage := &ImageUsage{UUID: "9b000001-0000-4000-8000-000000000001", Owner: tenant, Size: 1024, HasSize: true, CreatedAt: created}
	ex := func(mut func(*ImageExists)) ImageExists {
		e := ImageExists{MessageID: "g", Image: *usage, AuditBegin: apb, AuditEnd: ape}
		e.Image.CreatedAt = created.Truncate(time.Second)
		if mut != nil {
			mut(&e)
		}
		return e
	}
	tests := []struct {
		name      string
		e         ImageExists
		usage     *ImageUsage
		deletes   []ImageDelete
		wantField string
	}{
		{name: "verified", e: ex(nil), usage: usage},
		{name: "no usage", e: ex(nil), wantField: "uuid"},
		{name: "created_at", e: ex(func(e *ImageExists) { e.Image.CreatedAt = created.Add(time.Hour) }), usage: usage, wantField: "created_at"},
		{name: "owner", e: ex(func(e *ImageExists) { e.Image.Owner = "abcdef" }), usage: usage, wantField: "owner"},
		{name: "size", e: ex(func(e *ImageExists) { e.Image.Size = 1 }), usage: usage, wantField: "size"},
		{name: "null size", e: ex(func(e *ImageExists) { e.Image.HasSize = false }), usage: usage, wantField: "size"},
		{name: "owner not hex", e: ex(func(e *ImageExists) { e.Image.Owner = "admin" }), usage: usage, wantField: "owner"},
		{name: "uuid shape", e: ex(func(e *ImageExists) { e.Image.UUID = "x" }), usage: usage, wantField: "uuid"},
		{name: "deleted, no delete", e: ex(func(e *ImageExists) { e.DeletedAt = del1 }), usage: usage, wantField: "deleted_at"},
		{name: "deleted", e: ex(func(e *ImageExists) { e.DeletedAt = del1 }), usage: usage, deletes: []ImageDelete{{DeletedAt: del1}}},
		{name: "non-delete exists found delete", e: ex(nil), usage: usage, deletes: []ImageDelete{{DeletedAt: del1}}, wantField: "deleted_at"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := rules{level: LevelBasic}.verifyImage(tt.e, tt.usage, tt.deletes)
			got := ""
			if f != nil {
				got = f.Field
			}
			if got != tt.wantField {
				t.Errorf("failed field %q, want %q (%+v)", got, tt.wantField, f)
			}
		})
	}
}

// TestMergeUsageOrderIndependent applies the same events in every order.
func TestMergeUsageOrderIndependent(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	type ev struct {
		u         InstanceUsage
		overwrite bool
	}
	events := []ev{
		{InstanceUsage{Instance: inst, LaunchedAt: l1.Truncate(time.Second), InstanceFlavorID: "old", Tenant: "a", Updated: t0}, false},
		{InstanceUsage{Instance: inst, LaunchedAt: l1, InstanceFlavorID: "new", InstanceTypeID: "2", Tenant: "b", Updated: t0.Add(time.Minute)}, true},
		{InstanceUsage{Instance: inst, LaunchedAt: l1, InstanceFlavorID: "older", Tenant: "c", OSDistro: "ubuntu", Updated: t0.Add(30 * time.Second)}, true},
	}
	want := InstanceUsage{Instance: inst, LaunchedAt: l1, InstanceFlavorID: "new", InstanceTypeID: "2", Tenant: "b", OSDistro: "ubuntu",
		Updated: t0.Add(time.Minute)}
	perms := [][]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}}
	for _, p := range perms {
		var got InstanceUsage
		for _, i := range p {
			got = mergeUsage(got, events[i].u, events[i].overwrite)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("order %v (-want +got):\n%s", p, diff)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantKey string
	}{
		{name: "default", mutate: func(*Config) {}},
		{name: "tick", mutate: func(c *Config) { c.TickTime = 0 }, wantKey: "tick_time"},
		{name: "settle units", mutate: func(c *Config) { c.SettleUnits = "fortnights" }, wantKey: "settle_units"},
		{name: "pool", mutate: func(c *Config) { c.PoolSize = 0 }, wantKey: "pool_size"},
		{name: "batch", mutate: func(c *Config) { c.BatchSize = 0 }, wantKey: "batchsize"},
		{name: "level", mutate: func(c *Config) { c.ValidationLevel = "some" }, wantKey: "validation_level"},
		{name: "flavor field", mutate: func(c *Config) { c.FlavorFieldName = "flavor" }, wantKey: "flavor_field_name"},
		{name: "required meta", mutate: func(c *Config) { c.RequiredImageMeta = []string{"os_kernel"} }, wantKey: "required_image_meta"},
		{name: "topics", mutate: func(c *Config) { c.Rabbit.Topics = nil }, wantKey: "rabbit.topics"},
		{name: "driver", mutate: func(c *Config) { c.Store.Driver = "mysql" }, wantKey: "store.driver"},
		{name: "postgres", mutate: func(c *Config) { c.Store = StoreConfig{Driver: "postgres", DSN: "postgres://db/verifier"} }},
		{name: "postgres dsn", mutate: func(c *Config) { c.Store = StoreConfig{Driver: "postgres", Path: "x.db"} }, wantKey: "store.dsn"},
		{name: "negative sqlite cache", mutate: func(c *Config) { c.Store.CacheMiB = -1 }, wantKey: "store.cache_mib"},
		{name: "reconcile without credentials", mutate: func(c *Config) { c.Reconcile = true }, wantKey: "reconciler.client"},
		{name: "reconcile without password", mutate: func(c *Config) {
			c.Reconcile, c.Reconciler.Client = true, openstack.AuthConfig{AuthURL: "http://keystone/v3", Username: "admin"}
		}, wantKey: "reconciler.client.password"},
		{name: "reconcile", mutate: func(c *Config) {
			c.Reconcile, c.Reconciler.Client = true, openstack.AuthConfig{AuthURL: "http://keystone/v3", Username: "admin", Password: "p"}
		}},
		{name: "reconcile pool", mutate: func(c *Config) {
			c.Reconcile, c.Reconciler.Client, c.Reconciler.PoolSize = true, openstack.AuthConfig{Cloud: "admin"}, 0
		}, wantKey: "reconciler.pool_size"},
		{name: "credentials unused when off", mutate: func(c *Config) { c.Reconciler.Client = openstack.AuthConfig{AuthURL: "x"} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mutate(&c)
			err := c.Validate()
			switch {
			case tt.wantKey == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.wantKey != "" && (err == nil || !strings.Contains(err.Error(), tt.wantKey)):
				t.Fatalf("error %v, want one about %s", err, tt.wantKey)
			}
		})
	}
	if got := DefaultConfig().Settle(); got != 5*time.Minute {
		t.Errorf("default settle %s, want StackTach's 5 minutes", got)
	}
}
