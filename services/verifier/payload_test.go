package verifier

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/tally-accounting/tally/services/verifier/oslo"

	"github.com/tally-accounting/tally/services/verifier/verifiertest"
)

// The map-based readers parseNova and parseGlance replaced: decoding into
// typed structs must read every notification as they did.
func parseNovaMap(m *oslo.Message, p object) (ev instanceEvent, ok bool, err error) {
	effect, ok := novaEvents[m.EventType]
	if !ok {
		return ev, false, nil
	}
	if p == nil {
		return ev, false, fmt.Errorf("%s %s: payload is not an object", m.EventType, m.MessageID)
	}
	ev = instanceEvent{MessageID: m.MessageID, EventType: m.EventType, Effect: effect, When: m.When()}
	var tr timeReader
	if d := sub(p, "nova_object.data"); d != nil {
		ev.Versioned = true
		ev.Instance = str(d, "uuid")
		ev.Usage.Tenant = str(d, "tenant_id")
		ev.Usage.LaunchedAt = tr.read(d, "launched_at")
		if f := novaData(sub(d, "flavor")); f != nil {
			ev.Usage.InstanceFlavorID = str(f, "flavorid")
			ev.Usage.FlavorName = str(f, "name")
		}
		ev.Usage.OSArchitecture = str(d, "architecture")
		ev.DeletedAt = tr.read(d, "terminated_at")
		if ev.DeletedAt.IsZero() {
			ev.DeletedAt = tr.read(d, "deleted_at")
		}
		if a := novaData(sub(d, "audit_period")); a != nil {
			ev.AuditBegin = tr.read(a, "audit_period_beginning")
			ev.AuditEnd = tr.read(a, "audit_period_ending")
		}
		if f := sub(d, "fault"); f != nil && strings.HasSuffix(m.EventType, "create.end") {
			ev.Message = str(novaData(f), "exception")
		}
	} else {
		ev.Instance = str(p, "instance_id")
		if ev.Instance == "" {
			ev.Instance = str(p, "instance_uuid")
		}
		if ev.Instance == "" {
			ev.Instance = str(sub(sub(p, "exception"), "kwargs"), "uuid")
		}
		if ev.Instance == "" {
			ev.Instance = str(sub(p, "instance"), "uuid")
		}
		ev.Usage.Tenant = str(p, "tenant_id")
		ev.Usage.LaunchedAt = tr.read(p, "launched_at")
		ev.Usage.InstanceTypeID = str(p, "instance_type_id")
		ev.Usage.InstanceFlavorID = str(p, "instance_flavor_id")
		ev.Usage.FlavorName = str(p, "instance_type")
		meta := sub(p, "image_meta")
		ev.Usage.OSArchitecture = firstOf(meta, "org.openstack__1__architecture", "architecture")
		ev.Usage.OSDistro = firstOf(meta, "org.openstack__1__os_distro", "os_distro")
		ev.Usage.OSVersion = firstOf(meta, "org.openstack__1__os_version", "os_version")
		ev.Usage.RaxOptions = str(meta, "com.rackspace__1__options")
		ev.Usage.ImageType = str(meta, "image_type")
		ev.DeletedAt = tr.read(p, "terminated_at")
		if ev.DeletedAt.IsZero() {
			ev.DeletedAt = tr.read(p, "deleted_at")
		}
		ev.AuditBegin = tr.read(p, "audit_period_beginning")
		ev.AuditEnd = tr.read(p, "audit_period_ending")
		if msg := str(p, "message"); msg != "" && msg != "Success" {
			ev.Message = msg
		}
		if bw := sub(sub(p, "bandwidth"), "public"); bw != nil {
			if n, ok := bw["bw_out"].(json.Number); ok {
				ev.Bandwidth, _ = n.Int64()
			}
		}
	}
	if ev.Usage.Tenant == "" {
		ev.Usage.Tenant = m.ContextProjectID
	}
	ev.Usage.Instance = ev.Instance
	ev.Invalid = tr.invalid
	if ev.Instance == "" {
		return ev, false, fmt.Errorf("%s %s: no instance id in the payload", m.EventType, m.MessageID)
	}
	return ev, true, nil
}

func parseGlanceMap(m *oslo.Message, p object) (ev imageEvent, ok bool, err error) {
	if !glanceUsageEvents[m.EventType] && m.EventType != "image.delete" && m.EventType != "image.exists" {
		return ev, false, nil
	}
	if p == nil {
		return ev, false, nil
	}
	ev = imageEvent{MessageID: m.MessageID, EventType: m.EventType, When: m.When()}
	var tr timeReader
	// image.exists lists its images (StackTach's format) or is one flat
	// image (the simulator's, one message per image).
	images := []object{p}
	if list, ok := p["images"].([]any); ok && m.EventType == "image.exists" {
		images = images[:0]
		for _, it := range list {
			if o, ok := it.(object); ok {
				images = append(images, o)
			}
		}
	}
	owner := str(p, "owner")
	for _, im := range images {
		u := ImageUsage{UUID: str(im, "id"), Owner: str(im, "owner"), CreatedAt: tr.read(im, "created_at"), Updated: ev.When}
		if u.Owner == "" {
			u.Owner = owner
		}
		if n, ok := im["size"].(json.Number); ok {
			if v, err := n.Int64(); err == nil {
				u.Size, u.HasSize = v, true
			}
		}
		if u.UUID == "" {
			continue
		}
		ev.Images = append(ev.Images, u)
		if d := tr.read(im, "deleted_at"); !d.IsZero() {
			ev.Deleted = append(ev.Deleted, ImageDelete{UUID: u.UUID, DeletedAt: d})
		}
	}
	if m.EventType == "image.exists" {
		ev.AuditBegin = tr.read(p, "audit_period_beginning")
		ev.AuditEnd = tr.read(p, "audit_period_ending")
	}
	if m.EventType == "image.delete" && len(ev.Deleted) == 0 {
		for _, u := range ev.Images {
			// Glance's delete may carry no deleted_at: the message time is it.
			ev.Deleted = append(ev.Deleted, ImageDelete{UUID: u.UUID, DeletedAt: ev.When})
		}
	}
	if tr.invalid != "" {
		return ev, false, fmt.Errorf("%s %s: unparseable %s", m.EventType, m.MessageID, tr.invalid)
	}
	return ev, len(ev.Images) > 0, nil
}

// TestTypedPayloadAgrees checks that the typed decode reads the recorded
// notifications, and payloads with fields of unexpected types, as the
// map reader did.
func TestTypedPayloadAgrees(t *testing.T) {
	var bodies []string
	for _, r := range verifiertest.RecordedNotifications(t, "*.json", 100) {
		bodies = append(bodies, string(r.Body))
	}
	for _, ev := range []string{"compute.instance.exists", "compute.instance.create.end", "image.exists", "image.delete"} {
		for _, p := range []string{
			`"x"`, `null`, `[1]`, `{}`,
			`{"instance_id":7,"tenant_id":true,"launched_at":"2026-11-23 10:00:00","instance_type_id":1.50,"image_meta":"x","bandwidth":{"public":{"bw_out":12}}}`,
			`{"instance_id":{"a":1},"instance_uuid":"u\u00e9\"","exception":{"kwargs":"x"},"instance":[1],"launched_at":"yesterday","bandwidth":{"public":{"bw_out":1.5}}}`,
			`{"exception":{"kwargs":{"uuid":"k"}},"image_meta":{"architecture":"x86","org.openstack__1__architecture":"","os_distro":null,"com.rackspace__1__options":3},"message":"Success"}`,
			`{"instance":{"uuid":"i"},"message":"boom","deleted_at":"2026-11-23T10:00:00Z","terminated_at":null,"audit_period_beginning":5}`,
			`{"nova_object.data":"x","instance_id":"legacy"}`,
			`{"nova_object.data":{"uuid":"v","flavor":{"nova_object.data":{"flavorid":"f","name":"n"}},"audit_period":{"audit_period_beginning":"2026-11-23T10:00:00Z"},"fault":"x","launched_at":"2026-11-23T10:00:00.5Z"}}`,
			`{"nova_object.data":{"uuid":"v","flavor":{"flavorid":2,"nova_object.data":"x"},"audit_period":{"nova_object.data":{"audit_period_ending":"bad"}},"fault":{"nova_object.data":{"exception":"E"}},"terminated_at":"","deleted_at":"2026-11-23 10:00:00"}}`,
			`{"id":"img","owner":"o","size":"12","created_at":"2026-11-23 10:00:00","deleted_at":"2026-11-23 11:00:00"}`,
			`{"id":"img","size":99999999999999999999,"images":[{"id":"a","size":-3},"x",null,{"id":"b","owner":5,"created_at":"bad"}],"owner":"top","audit_period_beginning":"2026-11-23 10:00:00"}`,
			`{"images":{"id":"a"},"id":"flat","size":1e3}`,
			`{"images":[],"id":"flat"}`,
		} {
			bodies = append(bodies, fmt.Sprintf(`{"event_type":%q,"message_id":"m","timestamp":"2026-11-23 12:00:00","payload":%s}`, ev, p))
		}
	}
	for _, body := range bodies {
		m, p, err := oslo.ParseTyped[payload]([]byte(body))
		wm, wp, werr := oslo.ParseDecoded([]byte(body))
		if (err == nil) != (werr == nil) || !reflect.DeepEqual(m, wm) || (p == nil) != (wp == nil) {
			t.Errorf("%.200s: ParseTyped %+v, %v, %v; ParseDecoded %+v, %v, %v", body, m, p == nil, err, wm, wp == nil, werr)
			continue
		}
		if err != nil {
			continue
		}
		if strings.HasPrefix(m.EventType, "image.") {
			ev, ok, err := parseGlance(m, p)
			wev, wok, werr := parseGlanceMap(wm, wp)
			if !reflect.DeepEqual(ev, wev) || ok != wok || fmt.Sprint(err) != fmt.Sprint(werr) {
				t.Errorf("%.200s:\n got %+v %v %v\nwant %+v %v %v", body, ev, ok, err, wev, wok, werr)
			}
			continue
		}
		ev, ok, err := parseNova(m, p)
		wev, wok, werr := parseNovaMap(wm, wp)
		if !reflect.DeepEqual(ev, wev) || ok != wok || fmt.Sprint(err) != fmt.Sprint(werr) {
			t.Errorf("%.200s:\n got %+v %v %v\nwant %+v %v %v", body, ev, ok, err, wev, wok, werr)
		}
	}
}
