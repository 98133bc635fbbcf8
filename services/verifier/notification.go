package verifier

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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
	return r.parse(key, jsonString(str(o, key)))
}

// parse reads the time s of field key, noting the first that is invalid.
func (r *timeReader) parse(key string, v jsonString) time.Time {
	s := string(v)
	t, err := oslo.ParseTime(s)
	if err != nil && r.invalid == "" {
		r.invalid = key + "=" + s
	}
	return t
}

// parseNova reads a Nova notification, p its payload (nil unless an
// object); ok is false for event types that do not touch usage.
func parseNova(m *oslo.Message, p *payload) (ev instanceEvent, ok bool, err error) {
	effect, ok := novaEvents[m.EventType]
	if !ok {
		return ev, false, nil
	}
	if p == nil {
		return ev, false, fmt.Errorf("%s %s: payload is not an object", m.EventType, m.MessageID)
	}
	ev = instanceEvent{MessageID: m.MessageID, EventType: m.EventType, Effect: effect, When: m.When()}
	var tr timeReader
	if d := p.NovaData.v; d != nil {
		ev.Versioned = true
		ev.Instance = string(d.UUID)
		ev.Usage.Tenant = string(d.TenantID)
		ev.Usage.LaunchedAt = tr.parse("launched_at", d.LaunchedAt)
		if f := d.Flavor.v; f != nil {
			if f.Data.v != nil {
				f = f.Data.v
			}
			ev.Usage.InstanceFlavorID = string(f.FlavorID)
			ev.Usage.FlavorName = string(f.Name)
		}
		ev.Usage.OSArchitecture = string(d.Architecture)
		ev.DeletedAt = tr.parse("terminated_at", d.TerminatedAt)
		if ev.DeletedAt.IsZero() {
			ev.DeletedAt = tr.parse("deleted_at", d.DeletedAt)
		}
		if a := d.AuditPeriod.v; a != nil {
			if a.Data.v != nil {
				a = a.Data.v
			}
			ev.AuditBegin = tr.parse("audit_period_beginning", a.Begin)
			ev.AuditEnd = tr.parse("audit_period_ending", a.End)
		}
		if f := d.Fault.v; f != nil && strings.HasSuffix(m.EventType, "create.end") {
			if f.Data.v != nil {
				f = f.Data.v
			}
			ev.Message = string(f.Exception)
		}
	} else {
		ev.Instance = string(p.InstanceID)
		if ev.Instance == "" {
			ev.Instance = string(p.InstanceUUID)
		}
		if ev.Instance == "" {
			ev.Instance = string(p.Exception.Kwargs.UUID)
		}
		if ev.Instance == "" {
			ev.Instance = string(p.Instance.UUID)
		}
		ev.Usage.Tenant = string(p.TenantID)
		ev.Usage.LaunchedAt = tr.parse("launched_at", p.LaunchedAt)
		ev.Usage.InstanceTypeID = string(p.InstanceTypeID)
		ev.Usage.InstanceFlavorID = string(p.InstanceFlavorID)
		ev.Usage.FlavorName = string(p.InstanceType)
		meta := &p.ImageMeta
		ev.Usage.OSArchitecture = string(cmp.Or(meta.OSArchitecture, meta.Architecture))
		ev.Usage.OSDistro = string(cmp.Or(meta.OSDistro, meta.Distro))
		ev.Usage.OSVersion = string(cmp.Or(meta.OSVersion, meta.Version))
		ev.Usage.RaxOptions = string(meta.RaxOptions)
		ev.Usage.ImageType = string(meta.ImageType)
		ev.DeletedAt = tr.parse("terminated_at", p.TerminatedAt)
		if ev.DeletedAt.IsZero() {
			ev.DeletedAt = tr.parse("deleted_at", p.DeletedAt)
		}
		ev.AuditBegin = tr.parse("audit_period_beginning", p.AuditBegin)
		ev.AuditEnd = tr.parse("audit_period_ending", p.AuditEnd)
		if msg := string(p.Message); msg != "" && msg != "Success" {
			ev.Message = msg
		}
		if bw := p.Bandwidth.Public.BWOut; bw.number {
			ev.Bandwidth = bw.value
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
func parseGlance(m *oslo.Message, p *payload) (ev imageEvent, ok bool, err error) {
	if !glanceUsageEvents[m.EventType] && m.EventType != "image.delete" && m.EventType != "image.exists" {
		return ev, false, nil
	}
	if p == nil {
		return ev, false, nil
	}
	ev = imageEvent{MessageID: m.MessageID, EventType: m.EventType, When: m.When()}
	var tr timeReader
	// image.exists lists its images (StackTach's format) or is one flat
	// image (the simulator's, one message per image). Elements of the list
	// that are not objects decode as empty images, skipped below for their
	// missing id.
	images := []glanceImage{p.glanceImage}
	if p.Images != nil && m.EventType == "image.exists" {
		images = p.Images
	}
	owner := string(p.Owner)
	for _, im := range images {
		u := ImageUsage{UUID: string(im.ID), Owner: string(im.Owner), CreatedAt: tr.parse("created_at", im.CreatedAt), Updated: ev.When}
		if u.Owner == "" {
			u.Owner = owner
		}
		if im.Size.number && im.Size.ok {
			u.Size, u.HasSize = im.Size.value, true
		}
		if u.UUID == "" {
			continue
		}
		ev.Images = append(ev.Images, u)
		if d := tr.parse("deleted_at", im.DeletedAt); !d.IsZero() {
			ev.Deleted = append(ev.Deleted, ImageDelete{UUID: u.UUID, DeletedAt: d})
		}
	}
	if m.EventType == "image.exists" {
		ev.AuditBegin = tr.parse("audit_period_beginning", p.AuditBegin)
		ev.AuditEnd = tr.parse("audit_period_ending", p.AuditEnd)
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

// payload holds the fields parseNova and parseGlance read, of legacy and
// versioned Nova payloads and Glance's, so that a notification is decoded
// once, into this, rather than into a map[string]any that allocates every
// key and value of the payload. The field types are lenient as the map
// reader was: str read strings, numbers and booleans, and anything else
// as ""; sub read non-objects as absent (oslo.ParseTyped leaves a field of
// the wrong JSON type zero). optional tells an object from no object where
// the readers ask. One difference remains: encoding/json matches a key to
// a field case-insensitively when no key matches exactly ("Tenant_ID"),
// where the map reader did not; OpenStack's payloads spell their keys one
// way, and TestTypedPayloadAgrees checks every recorded one.
type payload struct {
	NovaData optional[novaVersioned] `json:"nova_object.data"`

	InstanceID   jsonString `json:"instance_id"`
	InstanceUUID jsonString `json:"instance_uuid"`
	Exception    struct {
		Kwargs struct {
			UUID jsonString `json:"uuid"`
		} `json:"kwargs"`
	} `json:"exception"`
	Instance struct {
		UUID jsonString `json:"uuid"`
	} `json:"instance"`
	TenantID         jsonString `json:"tenant_id"`
	LaunchedAt       jsonString `json:"launched_at"`
	InstanceTypeID   jsonString `json:"instance_type_id"`
	InstanceFlavorID jsonString `json:"instance_flavor_id"`
	InstanceType     jsonString `json:"instance_type"`
	ImageMeta        struct {
		OSArchitecture jsonString `json:"org.openstack__1__architecture"`
		Architecture   jsonString `json:"architecture"`
		OSDistro       jsonString `json:"org.openstack__1__os_distro"`
		Distro         jsonString `json:"os_distro"`
		OSVersion      jsonString `json:"org.openstack__1__os_version"`
		Version        jsonString `json:"os_version"`
		RaxOptions     jsonString `json:"com.rackspace__1__options"`
		ImageType      jsonString `json:"image_type"`
	} `json:"image_meta"`
	TerminatedAt jsonString `json:"terminated_at"`
	AuditBegin   jsonString `json:"audit_period_beginning"`
	AuditEnd     jsonString `json:"audit_period_ending"`
	Message      jsonString `json:"message"`
	Bandwidth    struct {
		Public struct {
			BWOut jsonInt `json:"bw_out"`
		} `json:"public"`
	} `json:"bandwidth"`

	// Glance: the payload is an image (deleted_at is shared with Nova's),
	// or image.exists lists them.
	glanceImage
	Images []glanceImage `json:"images"`
}

// glanceImage is one image of a Glance payload.
type glanceImage struct {
	ID        jsonString `json:"id"`
	Owner     jsonString `json:"owner"`
	CreatedAt jsonString `json:"created_at"`
	Size      jsonInt    `json:"size"`
	DeletedAt jsonString `json:"deleted_at"`
}

// novaVersioned is a versioned payload's nova_object.data.
type novaVersioned struct {
	UUID         jsonString           `json:"uuid"`
	TenantID     jsonString           `json:"tenant_id"`
	LaunchedAt   jsonString           `json:"launched_at"`
	Architecture jsonString           `json:"architecture"`
	TerminatedAt jsonString           `json:"terminated_at"`
	DeletedAt    jsonString           `json:"deleted_at"`
	Flavor       optional[novaFlavor] `json:"flavor"`
	AuditPeriod  optional[novaAudit]  `json:"audit_period"`
	Fault        optional[novaFault]  `json:"fault"`
}

// The nested versioned objects are read from their nova_object.data when
// it is an object, else as they are (novaData).
type novaFlavor struct {
	FlavorID jsonString           `json:"flavorid"`
	Name     jsonString           `json:"name"`
	Data     optional[novaFlavor] `json:"nova_object.data"`
}

type novaAudit struct {
	Begin jsonString          `json:"audit_period_beginning"`
	End   jsonString          `json:"audit_period_ending"`
	Data  optional[novaAudit] `json:"nova_object.data"`
}

type novaFault struct {
	Exception jsonString          `json:"exception"`
	Data      optional[novaFault] `json:"nova_object.data"`
}

// optional is an object that may be absent, sub's reading: v is nil
// unless the value is an object. (A *T field would not do: encoding/json
// allocates it before it finds a value of another type, such as a string.)
// Fields of the wrong type inside are left zero, as in the payload.
type optional[T any] struct{ v *T }

func (o *optional[T]) UnmarshalJSON(b []byte) error {
	o.v = nil
	if b[0] != '{' {
		return nil
	}
	if v := new(T); oslo.FastUnmarshal(b, v) == nil {
		o.v = v
		return nil
	}
	o.v = new(T)
	err := json.Unmarshal(b, o.v)
	if _, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		return nil
	}
	return err
}

// jsonString is str's reading of a value: a string as it is, a number in
// its JSON spelling, a boolean as true or false, anything else "".
type jsonString string

func (s *jsonString) UnmarshalJSON(b []byte) error {
	switch b[0] {
	case '"':
		// The common string, without escapes or non-ASCII bytes, is its
		// bytes; encoding/json reads the others (escapes, invalid UTF-8).
		plain := true
		for _, c := range b[1 : len(b)-1] {
			if c == '\\' || c >= utf8.RuneSelf {
				plain = false
				break
			}
		}
		if plain {
			*s = jsonString(b[1 : len(b)-1])
			return nil
		}
		var v string
		if err := json.Unmarshal(b, &v); err != nil {
			return err
		}
		*s = jsonString(v)
	case 't':
		*s = "true"
	case 'f':
		*s = "false"
	case '{', '[', 'n':
		*s = ""
	default: // a number
		*s = jsonString(b)
	}
	return nil
}

// jsonInt is a value read as the map reader read json.Number.Int64: number
// says it was a number, ok that it was an int64 (value, else 0).
type jsonInt struct {
	value      int64
	number, ok bool
}

func (n *jsonInt) UnmarshalJSON(b []byte) error {
	*n = jsonInt{}
	if c := b[0]; c == '-' || c >= '0' && c <= '9' {
		n.number = true
		v, err := strconv.ParseInt(string(b), 10, 64)
		n.value, n.ok = v, err == nil
	}
	return nil
}
