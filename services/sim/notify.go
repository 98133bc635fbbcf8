package sim

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Notifications: what nova-compute emits for the same changes, in the
// oslo.messaging v2 envelope, legacy (notifications.info) and versioned
// (versioned_notifications.info) on the topic exchange "nova". Payload keys and
// time formats follow the recorded messages in fixtures/openstack-zed/notifications.

// Notification is one message before it is put in the envelope.
type Notification struct {
	Exchange   string // "" is nova
	RoutingKey string
	EventType  string
	Publisher  string
	Priority   string
	Timestamp  time.Time
	ServerID   string
	Payload    any
}

// auditDelay is how long after the end of an hour nova-compute's periodic
// task emits the exists notifications for it (12:00:16 in the recording).
const auditDelay = 16 * time.Second

// legacyEvents maps an event kind to the legacy and versioned event types
// nova-compute emits for it (the final ".end" message of the action).
var notifyEvents = map[string][2]string{
	EvLaunch:        {"compute.instance.create.end", "instance.create.end"},
	EvStop:          {"compute.instance.power_off.end", "instance.power_off.end"},
	EvStart:         {"compute.instance.power_on.end", "instance.power_on.end"},
	EvResize:        {"compute.instance.finish_resize.end", "instance.resize_finish.end"},
	EvConfirmResize: {"compute.instance.resize.confirm.end", "instance.resize_confirm.end"},
	EvRebuild:       {"compute.instance.rebuild.end", "instance.rebuild.end"},
	EvShelve:        {"compute.instance.shelve_offload.end", "instance.shelve_offload.end"},
	EvUnshelve:      {"compute.instance.unshelve.end", "instance.unshelve.end"},
	EvDelete:        {"compute.instance.delete.end", "instance.delete.end"},
	EvTouch:         {"compute.instance.update", "instance.update"},
	EvError:         {"compute.instance.create.error", "instance.create.error"},
}

// notifyStartEvents are the ".start" messages sent when the request is
// taken, before the change.
var notifyStartEvents = map[string][2]string{
	EvLaunch: {"compute.instance.create.start", "instance.create.start"},
	EvStop:   {"compute.instance.power_off.start", "instance.power_off.start"},
	EvStart:  {"compute.instance.power_on.start", "instance.power_on.start"},
	EvResize: {"compute.instance.resize.start", "instance.resize.start"},
	EvDelete: {"compute.instance.delete.start", "instance.delete.start"},
}

// Notifications lists, in time order, the messages for everything that
// happens in (from, to]: every lifecycle event and every hourly audit.
func (w *World) Notifications(from, to time.Time, imageBase string) []Notification {
	return w.notifications(from, to, imageBase, time.Hour)
}

func (w *World) notifications(from, to time.Time, imageBase string, period time.Duration) []Notification {
	var out []Notification
	for _, s := range w.Servers {
		for i, e := range s.Events {
			if !e.At.After(from) || e.At.After(to) {
				continue
			}
			types, ok := notifyEvents[e.Kind]
			if !ok {
				continue
			}
			if e.Kind == EvResize {
				// prep_resize emits an exists with the old flavor for the
				// current period up to now.
				before := w.stateAt(s, e.At.Add(-time.Nanosecond))
				out = append(out, w.exists(s, before, e.At.Truncate(time.Hour), e.At, e.At, imageBase)...)
			}
			before := w.stateAt(s, e.At.Add(-time.Nanosecond))
			if startTypes, ok := notifyStartEvents[e.Kind]; ok {
				at := e.Requested
				if at.IsZero() || !at.Before(e.At) {
					at = e.At.Add(-time.Second)
				}
				if at.After(from) {
					st := before
					if !st.Exists {
						// create.start comes before the instance row is
						// visible; describe it as building.
						st = w.stateAt(s, s.Created)
						st.Exists, st.VMState = true, "building"
						if st.Flavor == nil {
							st.Flavor = w.flavByID[s.FlavorID]
						}
					}
					out = append(out, w.instanceMessages(s, st, at, startTypes[0], startTypes[1], imageBase, i)...)
				}
			}
			if e.Kind == EvDelete {
				out = append(out, w.instanceMessages(s, before, e.At, "compute.instance.shutdown.end", "instance.shutdown.end", imageBase, i)...)
			}
			st := w.stateAt(s, e.At)
			out = append(out, w.instanceMessages(s, st, e.At, types[0], types[1], imageBase, i)...)
		}
	}
	// Audits (hourly or daily) whose emission time falls in the window.
	for h := from.Truncate(period); !h.After(to); h = h.Add(period) {
		emit := h.Add(auditDelay)
		if !emit.After(from) || emit.After(to) {
			continue
		}
		begin := h.Add(-period)
		out = append(out, w.imageExists(begin, h, emit)...)
		for _, s := range w.Servers {
			st := w.stateAt(s, emit)
			if !st.Exists || st.LaunchedAt.IsZero() || !st.LaunchedAt.Before(h) ||
				!st.TerminatedAt.IsZero() && st.TerminatedAt.Before(begin) {
				continue
			}
			out = append(out, w.exists(s, st, begin, h, emit, imageBase)...)
		}
	}
	out = append(out, w.imageEvents(from, to)...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Timestamp.Before(out[j].Timestamp) })
	return out
}

// Glance sends image.* notifications on its own exchange, with the image as
// the flat payload.
func imagePayload(im *Image, at time.Time) obj {
	status, deleted, deletedAt := im.Status, false, any(nil)
	if !im.Deleted.IsZero() && !im.Deleted.After(at) {
		status, deleted, deletedAt = "deleted", true, zTime(im.Deleted)
	}
	o := obj{{"id", im.ID}, {"name", im.Name}, {"status", status}, {"visibility", im.Visibility}, {"owner", im.Owner},
		{"size", im.Size}, {"virtual_size", im.Size}, {"disk_format", im.DiskFormat},
		{"container_format", im.ContainerFormat}, {"checksum", im.Checksum}, {"min_disk", 0}, {"min_ram", 0},
		{"protected", false}, {"created_at", zTime(im.Created)}, {"updated_at", zTime(im.Updated)},
		{"deleted", deleted}, {"deleted_at", deletedAt}, {"tags", []string{}}}
	props := obj{}
	keys := make([]string, 0, len(im.Properties))
	for k := range im.Properties {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		props.add(k, im.Properties[k])
	}
	return append(o, kv{"properties", props})
}

func glanceMessage(im *Image, typ string, at time.Time, payload any) Notification {
	return Notification{Exchange: "glance", RoutingKey: "notifications.info", EventType: typ,
		Publisher: "image.localhost", Priority: "INFO", Timestamp: at, ServerID: im.ID, Payload: payload}
}

func (w *World) imageEvents(from, to time.Time) []Notification {
	var out []Notification
	in := func(t time.Time) bool { return t.After(from) && !t.After(to) }
	for _, im := range w.Images {
		if in(im.Created) {
			out = append(out, glanceMessage(im, "image.create", im.Created, imagePayload(im, im.Created)))
		}
		if in(im.Updated) && im.Updated.After(im.Created) {
			out = append(out, glanceMessage(im, "image.activate", im.Updated, imagePayload(im, im.Updated)))
		}
		if !im.Deleted.IsZero() && in(im.Deleted) {
			out = append(out, glanceMessage(im, "image.delete", im.Deleted, imagePayload(im, im.Deleted)))
		}
	}
	return out
}

// imageExists announces every image that existed during the audit period,
// for consumers that bill image storage.
func (w *World) imageExists(begin, end, at time.Time) []Notification {
	var out []Notification
	for _, im := range w.Images {
		if !im.Created.Before(end) || !im.Deleted.IsZero() && im.Deleted.Before(begin) {
			continue
		}
		p := append(imagePayload(im, at), kv{"audit_period_beginning", begin.Format("2006-01-02 15:04:05")},
			kv{"audit_period_ending", end.Format("2006-01-02 15:04:05")})
		out = append(out, glanceMessage(im, "image.exists", at, p))
	}
	return out
}

func legacyTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return dbTime(t)
}

func versionedTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return zTime(t)
}

func (w *World) legacyPayload(s *Instance, st ServerState, imageBase string) obj {
	f := st.Flavor
	var deleted time.Time
	if st.Deleted() {
		deleted = st.Updated
	}
	az := "nova"
	if s.Host == "" {
		az = ""
	}
	return obj{{"tenant_id", s.ProjectID}, {"user_id", s.UserID}, {"instance_id", s.ID}, {"display_name", s.Name},
		{"reservation_id", s.ReservationID}, {"hostname", hostnameOf(s.Name)}, {"instance_type", f.Name},
		{"instance_type_id", f.InternalID}, {"instance_flavor_id", f.ID}, {"architecture", nil}, {"memory_mb", f.RAM},
		{"disk_gb", f.Disk + f.Ephemeral}, {"vcpus", f.VCPUs}, {"root_gb", f.Disk}, {"ephemeral_gb", f.Ephemeral},
		{"host", nullStr(st.Host)}, {"node", nullStr(st.Host)}, {"availability_zone", az}, {"cell_name", ""},
		{"created_at", s.Created.UTC().Truncate(time.Second).Format("2006-01-02 15:04:05") + "+00:00"},
		{"terminated_at", legacyTime(st.TerminatedAt)}, {"deleted_at", legacyTime(deleted)},
		{"launched_at", legacyTime(st.LaunchedAt)}, {"image_ref_url", imageBase + "/images/" + s.ImageID},
		{"os_type", nil}, {"kernel_id", ""}, {"ramdisk_id", ""}, {"state", st.VMState}, {"state_description", ""},
		{"progress", ""}, {"access_ip_v4", nil}, {"access_ip_v6", nil},
		{"image_meta", obj{{"min_ram", "0"}, {"min_disk", fmt.Sprint(f.Disk)}, {"disk_format", "raw"},
			{"container_format", "bare"}, {"base_image_ref", s.ImageID}}},
		{"metadata", strMap(st.Metadata)}}
}

func novaObject(name, version string, data obj) obj {
	return obj{{"nova_object.name", name}, {"nova_object.namespace", "nova"}, {"nova_object.version", version},
		{"nova_object.data", data}}
}

func (w *World) versionedData(s *Instance, st ServerState) obj {
	f := st.Flavor
	var deleted time.Time
	if st.Deleted() {
		deleted = st.Updated
	}
	power := "running"
	if st.VMState != "active" {
		power = "shutdown"
	}
	if st.Deleted() {
		power = "pending"
	}
	flavor := novaObject("FlavorPayload", "1.4", obj{{"flavorid", f.ID}, {"memory_mb", f.RAM}, {"vcpus", f.VCPUs},
		{"root_gb", f.Disk}, {"ephemeral_gb", f.Ephemeral}, {"name", f.Name}, {"swap", f.Swap}, {"rxtx_factor", f.RxTx},
		{"vcpu_weight", 0}, {"disabled", f.Disabled}, {"is_public", f.IsPublic}, {"extra_specs", strMap(f.ExtraSpecs)},
		{"projects", nil}, {"description", f.Description}})
	return obj{{"uuid", s.ID}, {"user_id", s.UserID}, {"tenant_id", s.ProjectID}, {"reservation_id", s.ReservationID},
		{"display_name", s.Name}, {"display_description", nil}, {"host_name", hostnameOf(s.Name)},
		{"host", nullStr(st.Host)}, {"node", nullStr(st.Host)}, {"os_type", nil}, {"architecture", nil},
		{"availability_zone", "nova"}, {"flavor", flavor}, {"image_uuid", s.ImageID}, {"key_name", nil},
		{"kernel_id", ""}, {"ramdisk_id", ""}, {"created_at", zTime(s.Created)},
		{"launched_at", versionedTime(st.LaunchedAt)}, {"terminated_at", versionedTime(st.TerminatedAt)},
		{"deleted_at", versionedTime(deleted)}, {"updated_at", zTime(st.Updated)}, {"state", st.VMState},
		{"power_state", power}, {"task_state", nil}, {"progress", 0}, {"ip_addresses", []obj{}},
		{"block_devices", nil}, {"metadata", strMap(st.Metadata)}, {"locked", false}, {"auto_disk_config", "MANUAL"}}
}

func (w *World) instanceMessages(s *Instance, st ServerState, at time.Time, legacy, versioned, imageBase string, i int) []Notification {
	prio, legacyKey, versionedKey := "INFO", "notifications.info", "versioned_notifications.info"
	if strings.HasSuffix(legacy, ".error") {
		prio, legacyKey, versionedKey = "ERROR", "notifications.error", "versioned_notifications.error"
	}
	host := st.Host
	if host == "" {
		host = "conductor"
	}
	reqID := requestID(s.ID, fmt.Sprint(i))
	data := append(obj{{"fault", nil}, {"request_id", reqID}}, w.versionedData(s, st)...)
	data = append(data, kv{"action_initiator_user", s.UserID}, kv{"action_initiator_project", s.ProjectID},
		kv{"locked_reason", nil})
	return []Notification{
		{RoutingKey: legacyKey, EventType: legacy, Publisher: "compute." + host, Priority: prio, Timestamp: at,
			ServerID: s.ID, Payload: w.legacyPayload(s, st, imageBase)},
		{RoutingKey: versionedKey, EventType: versioned, Publisher: "nova-compute:" + host, Priority: prio,
			Timestamp: at.Add(time.Millisecond), ServerID: s.ID, Payload: novaObject("InstanceActionPayload", "1.8", data)},
	}
}

func (w *World) exists(s *Instance, st ServerState, begin, end, at time.Time, imageBase string) []Notification {
	legacy := w.legacyPayload(s, st, imageBase)
	endStr := end.Format("2006-01-02 15:04:05")
	if !end.Equal(end.Truncate(time.Second)) {
		endStr = end.Format("2006-01-02 15:04:05.000000")
	}
	legacy = append(legacy, kv{"audit_period_beginning", begin.Format("2006-01-02 15:04:05")}, kv{"audit_period_ending", endStr})
	period := novaObject("AuditPeriodPayload", "1.0", obj{{"audit_period_beginning", zTime(begin)}, {"audit_period_ending", zTime(end)}})
	data := append(obj{{"audit_period", period}}, w.versionedData(s, st)...)
	data = append(data, kv{"request_id", nil}, kv{"action_initiator_user", nil}, kv{"action_initiator_project", nil},
		kv{"locked_reason", nil})
	host := s.Host
	return []Notification{
		{RoutingKey: "notifications.info", EventType: "compute.instance.exists", Publisher: "compute." + host,
			Priority: "INFO", Timestamp: at, ServerID: s.ID, Payload: legacy},
		{RoutingKey: "versioned_notifications.info", EventType: "instance.exists", Publisher: "nova-compute:" + host,
			Priority: "INFO", Timestamp: at.Add(time.Millisecond), ServerID: s.ID,
			Payload: novaObject("InstanceExistsPayload", "2.0", data)},
	}
}

// Envelope renders n as the oslo.messaging v2 body: the message is a JSON
// string inside the JSON envelope.
func (n Notification) Envelope() ([]byte, error) {
	ts := n.Timestamp.UTC().Format("2006-01-02 15:04:05.000000")
	payload, err := marshalNoEscape(n.Payload)
	if err != nil {
		return nil, err
	}
	// Ids are uuids as in a real cloud: deterministic here, from a hash of
	// what makes the message unique (two exists of one server in one
	// microsecond differ by their payload).
	id := sha256.Sum256([]byte(n.EventType + "\x00" + n.ServerID + "\x00" + ts + "\x00" + n.Publisher + "\x00" + string(payload)))
	uniq := sha256.Sum256(append([]byte("u"), id[:]...))
	inner := obj{{"message_id", uuidFromHash(id[:])}, {"publisher_id", n.Publisher},
		{"event_type", n.EventType}, {"priority", n.Priority}, {"payload", n.Payload}, {"timestamp", ts},
		{"_unique_id", strings.ReplaceAll(uuidFromHash(uniq[:]), "-", "")},
		{"_context_is_admin", true}, {"_context_read_deleted", "no"}, {"_context_roles", []string{}},
		{"_context_request_id", requestID(n.ServerID, ts)}, {"_context_user_identity", "- - - - -"},
		{"_context_timestamp", n.Timestamp.UTC().Format(fmtUsage)}, {"_context_service_catalog", []string{}}}
	b, err := marshalNoEscape(inner)
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]string{"oslo.version": "2.0", "oslo.message": string(b)})
}

// notifier publishes the notifications of the simulated time that passes.
type notifier struct {
	conn   *amqp.Connection
	ch     *amqp.Channel
	last   time.Time
	seed   int64
	faults NotifyFaults
	period time.Duration

	mu      sync.Mutex
	applied []NotifyFault
}

// Faults lists the messages damaged so far.
func (n *notifier) Faults() []NotifyFault {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.applied)
}

func newNotifier(url string, now time.Time, seed int64, faults NotifyFaults, period time.Duration) (*notifier, error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", redactURL(url), err)
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("open AMQP channel: %w", err)
	}
	// oslo.messaging declares its exchanges non-durable by default.
	for _, ex := range []string{"nova", "glance"} {
		if err := ch.ExchangeDeclare(ex, "topic", false, false, false, false, nil); err != nil {
			conn.Close()
			return nil, fmt.Errorf("declare exchange %s: %w", ex, err)
		}
	}
	return &notifier{conn: conn, ch: ch, last: now, seed: seed, faults: faults, period: period}, nil
}

func redactURL(u string) string {
	if at := strings.LastIndex(u, "@"); at > 0 {
		if p := strings.Index(u, "://"); p > 0 {
			return u[:p+3] + "***@" + u[at+1:]
		}
	}
	return u
}

// run publishes until ctx ends, polling the simulated clock so advances made
// through /sim/clock are picked up.
func (n *notifier) run(ctx context.Context, s *Server, imageBase string) error {
	defer n.conn.Close()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if err := n.flush(ctx, s, imageBase); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (n *notifier) flush(ctx context.Context, s *Server, imageBase string) error {
	now := s.clock.Now()
	if !now.After(n.last) {
		return nil
	}
	msgs, faults := applyNotifyFaults(n.seed, n.faults, s.currentWorld().notifications(n.last, now, imageBase, n.period))
	n.mu.Lock()
	n.applied = append(n.applied, faults...)
	n.mu.Unlock()
	for _, m := range msgs {
		body, err := m.Envelope()
		if err != nil {
			return err
		}
		exchange := m.Exchange
		if exchange == "" {
			exchange = "nova"
		}
		err = n.ch.PublishWithContext(ctx, exchange, m.RoutingKey, false, false, amqp.Publishing{
			ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: amqp.Persistent, Body: body})
		if err != nil {
			return fmt.Errorf("publish %s: %w", m.EventType, err)
		}
	}
	n.last = now
	return nil
}
