package verifier

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tally-accounting/tally/pkg/openstack"
	"github.com/tally-accounting/tally/services/sim"
)

// Servers of testdata/lifecycle.yaml.
const (
	vStopStartDelete = "9c000001-0000-4000-8000-00000000000a"
	vResize          = "9c000001-0000-4000-8000-00000000000b"
	vSteady          = "9c000001-0000-4000-8000-000000000011"
	vUnknown         = "9c000001-0000-4000-8000-0000000000ff"
	projectAlpha     = "1b2c3d4e5f60718293a4b5c6d7e8f90a"
	flavorSmall      = "9a000001-0000-4000-8000-000000000001"
	flavorLarge      = "9a000001-0000-4000-8000-000000000002"
)

// setField sets key in a notification payload, legacy (flat) or versioned
// (under nova_object.data, at any depth).
func setField(p map[string]any, key string, v any) bool {
	found := false
	for k, x := range p {
		if k == key {
			p[k], found = v, true
		}
		if m, ok := x.(map[string]any); ok && setField(m, key, v) {
			found = true
		}
	}
	return found
}

// envelope renders n, changed by edit when it is not nil.
func envelope(t *testing.T, n sim.Notification, edit func(map[string]any)) []byte {
	t.Helper()
	body, err := n.Envelope()
	if err != nil {
		t.Fatal(err)
	}
	if edit == nil {
		return body
	}
	var env map[string]string
	var inner map[string]any
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(env["oslo.message"]), &inner); err != nil {
		t.Fatal(err)
	}
	payload, _ := inner["payload"].(map[string]any)
	edit(payload)
	b, err := json.Marshal(inner)
	if err != nil {
		t.Fatal(err)
	}
	env["oslo.message"] = string(b)
	out, _ := json.Marshal(env)
	return out
}

// outcome is what one exists (format, instance, audit period start) must
// end as.
type outcome struct {
	eventType, instance string
	begin               time.Time
	status              Status
	// reason: substrings the failure reason must have; notReason: must not.
	reason, notReason []string
	reconciled        bool // a reconcile row of this launch, from Nova's API
}

func hour(h int) time.Time {
	return scenarioStart.Truncate(24 * time.Hour).Add(time.Duration(h) * time.Hour)
}

// TestReconciler drives the verifier with the simulator's notifications,
// some dropped or changed, and the reconciler asking the simulator's Nova.
func TestReconciler(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	scfg := sim.DefaultConfig()
	scfg.Listen, scfg.Scenario, scfg.Now, scfg.AuditPeriod = "127.0.0.1:0", scenarioFile, scenarioEnd, "hour"
	s, err := sim.New(scfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	runService(t, "sim", s.Start, s.Run, s.Stop)
	base := "http://" + s.Addr()
	t.Cleanup(http.DefaultClient.CloseIdleConnections)
	world, err := sim.LoadScenario(scenarioFile)
	if err != nil {
		t.Fatal(err)
	}
	admin := openstack.AuthConfig{AuthURL: base + "/v3", Username: "vadmin", Password: sim.DefaultPassword,
		ProjectName: "vadmin", UserDomainName: "Default", ProjectDomainName: "Default"}
	member := admin
	member.Username, member.ProjectName = "vera", "verify-alpha"
	unreachable := admin
	unreachable.AuthURL = "http://" + closedAddr(t) + "/v3"

	const legacy, versioned = "compute.instance.exists", "instance.exists"
	isExists := func(n sim.Notification, typ, id string, begin time.Time) bool {
		return n.EventType == typ && n.ServerID == id && n.Timestamp.Truncate(time.Hour).Equal(begin.Add(time.Hour))
	}
	tests := []struct {
		name      string
		reconcile bool
		client    openstack.AuthConfig
		faults    sim.NotifyFaults
		// edit changes a notification's payload; nil leaves it.
		edit func(n sim.Notification) func(map[string]any)
		// extra are more notifications, built from the scenario's.
		extra func(msgs []sim.Notification) []sim.Notification
		want  []outcome
	}{{
		name: "launches dropped, reconcile off", faults: sim.NotifyFaults{DropLaunch: 1},
		want: []outcome{
			{eventType: legacy, instance: vSteady, begin: hour(11), status: StatusFailed, reason: []string{"couldn't find InstanceUsage"}, notReason: []string{"reconciler"}},
		},
	}, {
		name: "launches dropped, Nova confirms", reconcile: true, client: admin, faults: sim.NotifyFaults{DropLaunch: 1},
		want: []outcome{
			{eventType: legacy, instance: vSteady, begin: hour(11), status: StatusVerified, reconciled: true},
			{eventType: versioned, instance: vSteady, begin: hour(11), status: StatusVerified, reconciled: true},
			{eventType: legacy, instance: vSteady, begin: hour(15), status: StatusVerified, reconciled: true},
			// Deleted: Nova shows it only in the admin listing of deleted servers.
			{eventType: legacy, instance: vStopStartDelete, begin: hour(14), status: StatusVerified, reconciled: true},
			{eventType: legacy, instance: vStopStartDelete, begin: hour(12), status: StatusVerified, reconciled: true},
			// Resized at 12:30: Nova knows only the launch since, so the
			// exists of the first launch fail, naming Nova's launched_at.
			{eventType: legacy, instance: vResize, begin: hour(11), status: StatusFailed,
				reason: []string{"couldn't find InstanceUsage", "Nova says launched_at '2026-11-20 12:30:00.000000'"}},
		},
	}, {
		name: "launches dropped, no admin role", reconcile: true, client: member, faults: sim.NotifyFaults{DropLaunch: 1},
		want: []outcome{
			// Another project's server: 404 to the member, and the listing
			// of deleted servers of all projects is refused.
			{eventType: legacy, instance: vSteady, begin: hour(11), status: StatusFailed,
				reason: []string{"couldn't find InstanceUsage", "Nova refused", "403"}},
		},
	}, {
		name: "exists flavor differs, Nova sides with the tracked launch", reconcile: true, client: admin,
		edit: func(n sim.Notification) func(map[string]any) {
			if !isExists(n, legacy, vSteady, hour(12)) {
				return nil
			}
			return func(p map[string]any) {
				setField(p, "instance_flavor_id", flavorSmall)
				setField(p, "instance_type", "v1.small")
			}
		},
		want: []outcome{
			{eventType: legacy, instance: vSteady, begin: hour(12), status: StatusFailed,
				reason: []string{"instance_flavor_id", "Nova says instance_flavor_id '" + flavorLarge + "', instance_type 'v1.large'"}},
			{eventType: versioned, instance: vSteady, begin: hour(12), status: StatusVerified},
		},
	}, {
		name: "tracked tenant wrong, Nova sides with the exists", reconcile: true, client: admin,
		edit: func(n sim.Notification) func(map[string]any) {
			if n.ServerID != vSteady || !strings.Contains(n.EventType, "create.end") {
				return nil
			}
			return func(p map[string]any) { setField(p, "tenant_id", projectAlpha) }
		},
		want: []outcome{
			{eventType: legacy, instance: vSteady, begin: hour(11), status: StatusVerified, reconciled: true},
			{eventType: versioned, instance: vSteady, begin: hour(13), status: StatusVerified, reconciled: true},
		},
	}, {
		// Nothing listens there: Nova's silence says nothing about the
		// exists, so it is left for the next pass, not failed.
		name: "launches dropped, Nova unreachable", reconcile: true, client: unreachable, faults: sim.NotifyFaults{DropLaunch: 1},
		want: []outcome{
			{eventType: legacy, instance: vSteady, begin: hour(11), status: StatusPending},
			{eventType: legacy, instance: vStopStartDelete, begin: hour(12), status: StatusPending},
		},
	}, {
		name: "instance Nova never had", reconcile: true, client: admin,
		extra: func(msgs []sim.Notification) []sim.Notification {
			for _, n := range msgs {
				if isExists(n, legacy, vSteady, hour(11)) {
					n.ServerID = vUnknown
					return []sim.Notification{n}
				}
			}
			return nil
		},
		edit: func(n sim.Notification) func(map[string]any) {
			if n.ServerID != vUnknown {
				return nil
			}
			return func(p map[string]any) { setField(p, "instance_id", vUnknown) }
		},
		want: []outcome{
			{eventType: legacy, instance: vUnknown, begin: hour(11), status: StatusFailed,
				reason: []string{"couldn't find InstanceUsage", "Nova has no instance " + vUnknown + " (404)"}},
			{eventType: legacy, instance: vSteady, begin: hour(11), status: StatusVerified},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			cfg := testConfig()
			cfg.Reconcile, cfg.Reconciler.Client, cfg.Reconciler.Region = tt.reconcile, tt.client, "RegionOne"
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			store := openStore(t)
			v := New(cfg, nil, nil, logger, WithStore(store), WithClock(func() time.Time { return scenarioEnd.Add(time.Hour) }))
			msgs := world.Notifications(scenarioStart, scenarioEnd, base+"/image")
			if tt.extra != nil {
				msgs = append(msgs, tt.extra(msgs)...)
			}
			msgs, faults := tt.faults.Apply(7, msgs)
			if tt.faults.DropLaunch > 0 && len(faults) == 0 {
				t.Fatal("the simulator dropped no launch")
			}
			for _, n := range msgs {
				var edit func(map[string]any)
				if tt.edit != nil {
					edit = tt.edit(n)
				}
				if err := v.Ingest(ctx, envelope(t, n, edit), n.RoutingKey); err != nil {
					t.Fatalf("%s %s: %v", n.EventType, n.ServerID, err)
				}
			}
			if _, err := v.VerifyPending(ctx); err != nil {
				t.Fatal(err)
			}
			all, err := store.InstanceExistsList(ctx, ExistsFilter{})
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				n := 0
				for _, e := range all {
					if e.EventType != w.eventType || e.Usage.Instance != w.instance || !e.AuditBegin.Equal(w.begin) {
						continue
					}
					n++
					reason := ""
					if e.Failure != nil {
						reason = e.Failure.Reason
					}
					if e.Status != w.status {
						t.Errorf("%s %s %s: %s (%s), want %s", w.eventType, w.instance, w.begin.Format("15:04"), e.Status, reason, w.status)
					}
					for _, r := range w.reason {
						if !strings.Contains(reason, r) {
							t.Errorf("%s %s %s: reason %q does not say %q", w.eventType, w.instance, w.begin.Format("15:04"), reason, r)
						}
					}
					for _, r := range w.notReason {
						if strings.Contains(reason, r) {
							t.Errorf("%s %s %s: reason %q says %q", w.eventType, w.instance, w.begin.Format("15:04"), reason, r)
						}
					}
					if reason != "" {
						t.Logf("%s %s %s: %s", w.eventType, w.instance, w.begin.Format("15:04"), reason)
					}
					recs, err := store.Reconciles(ctx, w.instance)
					if err != nil {
						t.Fatal(err)
					}
					got := false
					for _, rc := range recs {
						if sameSecond(rc.Usage.LaunchedAt, e.Usage.LaunchedAt) && rc.Source == SourceNovaAPI && !rc.Reconciled.IsZero() {
							got = true
						}
					}
					if got != w.reconciled {
						t.Errorf("%s %s %s: launch reconciled %v, want %v (%+v)", w.eventType, w.instance, w.begin.Format("15:04"), got, w.reconciled, recs)
					}
				}
				if n != 1 {
					t.Errorf("%d %s for %s from %s, want 1", n, w.eventType, w.instance, w.begin.Format("15:04"))
				}
			}
		})
	}
}

// TestReconcileAgree checks the comparison with Nova's answer alone.
func TestReconcileAgree(t *testing.T) {
	nova := novaServer{Found: true, Status: "ACTIVE", Tenant: tenant, FlavorID: "performance2-120", FlavorName: "p2.120", LaunchedAt: l1}
	deleted := nova
	deleted.Status, deleted.Deleted, deleted.DeletedAt = "DELETED", true, del1
	tests := []struct {
		name   string
		e      InstanceExists
		failed string
		s      novaServer
		want   string // "" agrees, else a substring of the disagreement
	}{
		{name: "agrees", e: exists(nil), s: nova},
		{name: "404", e: exists(nil), s: novaServer{}, want: "(404)"},
		{name: "403", e: exists(nil), s: novaServer{Refused: "HTTP 403: Policy doesn't allow"}, want: "Nova refused to show instance " + inst + ": HTTP 403"},
		{name: "never launched", e: exists(nil), s: novaServer{Found: true, Status: "ERROR", Tenant: tenant, FlavorID: "performance2-120"}, want: "launched_at is null"},
		{name: "launched later", e: exists(nil), s: func() novaServer { s := nova; s.LaunchedAt = ape; return s }(), want: "launched_at '2026-11-23 12:00:00.000000'"},
		{name: "tenant", e: exists(nil), s: func() novaServer { s := nova; s.Tenant = "abc"; return s }(), want: "tenant 'abc'"},
		{name: "flavor", e: exists(nil), s: func() novaServer { s := nova; s.FlavorID = "1"; return s }(), want: "instance_flavor_id '1'"},
		{name: "flavor name", e: exists(nil), s: func() novaServer { s := nova; s.FlavorName = "other"; return s }(), want: "instance_type 'other'"},
		{name: "flavor name unknown", e: exists(nil), failed: "instance_type", s: func() novaServer { s := nova; s.FlavorName = ""; return s }(), want: "deleted flavor"},
		{name: "no flavor id in exists", e: exists(func(e *InstanceExists) { e.Usage.InstanceFlavorID = "" }), s: nova, want: "no instance_flavor_id"},
		{name: "deleted, exists agrees", e: exists(func(e *InstanceExists) { e.DeletedAt = del1.Truncate(time.Second) }), s: deleted},
		{name: "deleted at another time", e: exists(func(e *InstanceExists) { e.DeletedAt = del1.Add(time.Minute) }), s: deleted, want: "deleted_at '2026-11-23 11:30:00.000500'"},
		{name: "exists deleted, Nova not", e: exists(func(e *InstanceExists) { e.DeletedAt = del1 }), s: nova, want: "not deleted (status ACTIVE)"},
		{name: "deleted within the period", e: exists(nil), s: deleted, want: "before the audit period ended"},
		{name: "deleted after the period", e: exists(nil), s: func() novaServer { s := deleted; s.DeletedAt = ape.Add(time.Second); return s }()},
	}
	r := newRules(DefaultConfig())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc, no := r.agree(tt.e, tt.failed, tt.s)
			switch {
			case tt.want == "" && no != "":
				t.Errorf("disagrees: %s", no)
			case tt.want != "" && !strings.Contains(no, tt.want):
				t.Errorf("disagreement %q, want one saying %q", no, tt.want)
			case tt.want == "" && (rc.Source != SourceNovaAPI || rc.Usage != tt.e.Usage || !rc.DeletedAt.Equal(tt.e.DeletedAt)):
				t.Errorf("reconciled launch %+v, want the exists' from %s", rc, SourceNovaAPI)
			}
		})
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
