// Package sim is an OpenStack cloud simulator whose answers are shaped like
// those of the real OpenStack Zed cloud recorded in
// shared/fixtures/openstack-zed, backed by a deterministic population (or a
// scripted scenario) whose state is evaluated at a simulated "now".
//
// One listener serves every API. Keystone is at the root (OS_AUTH_URL is
// http://HOST:PORT/v3); the other services are under a path prefix, for the
// first region without more and for region R under /regions/R:
//
//	/v3/...                          Keystone v3 (auth, projects, users, roles, role_assignments)
//	/compute/v2.1/...                Nova (servers, flavors, os-simple-tenant-usage, audit log, actions, migrations)
//	/volume/v3/{project}/volumes/... Cinder v3
//	/image/v2/images                 Glance v2
//	/network/v2.0/floatingips, ports Neutron v2.0 (ML2 + L3 router: floating IPs with port_details)
//	/prometheus/api/v1/query_range   Prometheus, metric vm_power_watts{uuid,project_id,instance,host}
//
// The token catalog publishes these URLs, so any OpenStack client works from
// OS_AUTH_URL alone. Every user's password is "secret" (DefaultPassword).
//
// Admin endpoints (no token) drive the simulation:
//
//	GET  /sim/clock                 {"now", "frozen"}
//	POST /sim/clock                 {"advance": "90m"} or {"set": "2026-11-23T12:00:00Z"}
//	POST /sim/events                [{"server": "<name or id>", "kind": "stop", "at": "<RFC 3339, default now>"}]
//	GET  /sim/truth                 the ground truth (see Truth), with the notification faults applied so far
//
// Event kinds: create, launch, error, stop, start, shelve, unshelve, resize
// (with "flavor"), confirm_resize, rebuild, delete (optionally
// "no_terminated_at": true), touch (bumps "updated" only, like a
// nova-compute restart). testdata/zed.yaml is a complete scenario example.
package sim
