package verifier

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/tally-accounting/tally/services/verifier/oslo"
)

// How a Nova event changes the tracked usage of a launch (StackTach's
// USAGE_PROCESS_MAPPING, §1.3).
type usageEffect int

const (
	effectNone usageEffect = iota
	// effectFill: the .start events of an action fill the launch's empty
	// fields (StackTach's new_launch: "flavor if NULL").
	effectFill
	// effectUpdate: the .end events overwrite with their values
	// (StackTach's updates), the latest event winning.
	effectUpdate
	effectDelete
	effectExists
)

// novaEvents maps legacy and versioned Nova event types to their effect.
// Versioned names differ (resize_prep, resize_finish, resize_revert).
var novaEvents = map[string]usageEffect{
	"compute.instance.create.start":        effectFill,
	"compute.instance.rebuild.start":       effectFill,
	"compute.instance.resize.prep.start":   effectFill,
	"compute.instance.resize.revert.start": effectFill,
	"compute.instance.rescue.start":        effectFill,
	// compute.instance.finish_resize.start is left out: it carries the new
	// flavor with the old launched_at (nova sets launched_at after it, as
	// the recorded 0271 shows). StackTach keyed usage by request id, so its
	// overwrite landed on the new launch; keyed by launch it would corrupt
	// the old one, and finish_resize.end brings the same flavor anyway.
	"compute.instance.create.end":        effectUpdate,
	"compute.instance.rebuild.end":       effectUpdate,
	"compute.instance.rescue.end":        effectUpdate,
	"compute.instance.finish_resize.end": effectUpdate,
	"compute.instance.resize.revert.end": effectUpdate,
	// Beyond StackTach: unshelve spawns the instance again (new launched_at).
	"compute.instance.unshelve.end": effectUpdate,
	"compute.instance.delete.end":   effectDelete,
	"compute.instance.exists":       effectExists,

	"instance.create.start":        effectFill,
	"instance.rebuild.start":       effectFill,
	"instance.resize_prep.start":   effectFill,
	"instance.resize_revert.start": effectFill,
	"instance.rescue.start":        effectFill,
	"instance.create.end":          effectUpdate,
	"instance.rebuild.end":         effectUpdate,
	"instance.rescue.end":          effectUpdate,
	"instance.resize_finish.end":   effectUpdate,
	"instance.resize_revert.end":   effectUpdate,
	"instance.unshelve.end":        effectUpdate,
	"instance.delete.end":          effectDelete,
	"instance.exists":              effectExists,
}

// instanceEvent is what a Nova notification says about one instance.
type instanceEvent struct {
	MessageID string
	EventType string
	Effect    usageEffect
	When      time.Time
	Versioned bool
	Instance  string
	Usage     InstanceUsage // launched_at, tenant, flavor, image metadata
	DeletedAt time.Time     // terminated_at, else deleted_at
	// Message is create.end's payload "message" (a failed build says why).
	Message    string
	AuditBegin time.Time
	AuditEnd   time.Time
	Bandwidth  int64
	// Invalid names a time field that did not parse, with its value.
	Invalid string
}

// imageEvent is what a Glance notification says about its images.
type imageEvent struct {
	MessageID  string
	EventType  string
	When       time.Time
	Images     []ImageUsage
	Deleted    []ImageDelete
	AuditBegin time.Time
	AuditEnd   time.Time
}

type object = map[string]any

func decodeObject(raw json.RawMessage) (object, bool) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var o object
	if err := d.Decode(&o); err != nil {
		return nil, false
	}
	return o, o != nil
}

// str reads a string-ish field: strings as they are, numbers in their JSON
// spelling (instance_type_id is a number in Zed, a string in StackTach's
// tests), null and absent as "".
func str(o object, key string) string {
	switch v := o[key].(type) {
	case string:
		return v
	case json.Number:
		return v.String()
	case bool:
		return fmt.Sprint(v)
	}
	return ""
}

func sub(o object, key string) object {
	m, _ := o[key].(object)
	return m
}

// novaData unwraps a versioned payload ({"nova_object.data": {...}}).
func novaData(o object) object {
	if d := sub(o, "nova_object.data"); d != nil {
		return d
	}
	return o
}

type timeReader struct{ invalid string }

func (r *timeReader) read(o object, key string) time.Time {
	s := str(o, key)
	t, err := oslo.ParseTime(s)
	if err != nil && r.invalid == "" {
		r.invalid = key + "=" + s
	}
	return t
}

// parseNova reads a Nova notification, p its payload (nil unless an
// object); ok is false for event types that do not touch usage.
func parseNova(m *oslo.Message, p object) (ev instanceEvent, ok bool, err error) {
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

func firstOf(o object, keys ...string) string {
	for _, k := range keys {
		if v := str(o, k); v != "" {
			return v
		}
	}
	return ""
}

var glanceUsageEvents = map[string]bool{"image.create": true, "image.activate": true, "image.update": true, "image.upload": true}

// parseGlance reads a Glance notification, p its payload (nil unless an
// object); ok is false for event types that do not touch usage. A
// non-object payload (Glance sends error strings) is ignored, as StackTach
// did.
func parseGlance(m *oslo.Message, p object) (ev imageEvent, ok bool, err error) {
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
