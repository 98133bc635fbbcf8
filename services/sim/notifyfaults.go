package sim

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"
	"time"
)

// NotifyFaults are the share of messages the notifier damages, to test
// consumers that reconcile notifications with the APIs. Which messages were
// damaged is in the ground truth (GET /sim/truth, notification_faults).
type NotifyFaults struct {
	DropExists float64
	// DropLaunch is the share of launches (compute.instance.create.end and
	// instance.create.end) never sent, kind dropped_launch.
	DropLaunch    float64
	CorruptExists float64
	Duplicate     float64
	Reorder       float64
}

func (f NotifyFaults) any() bool {
	return f.DropExists > 0 || f.DropLaunch > 0 || f.CorruptExists > 0 || f.Duplicate > 0 || f.Reorder > 0
}

// NotifyFault records one damaged message.
type NotifyFault struct {
	At        time.Time `json:"at"`
	EventType string    `json:"event_type"`
	ServerID  string    `json:"server_id"`
	Kind      string    `json:"kind"` // dropped, dropped_launch, corrupted_launched_at, corrupted_flavor, duplicated, reordered
}

// chance is a deterministic draw in [0, 1) for one message and fault kind,
// so that the same seed damages the same messages.
func chance(seed int64, kind string, n Notification) float64 {
	h := sha256.Sum256([]byte(fmt.Sprint(seed, kind, n.EventType, n.ServerID, n.Timestamp.UnixNano())))
	return float64(binary.BigEndian.Uint64(h[:8])>>11) / (1 << 53)
}

func setPayload(p any, key string, v any) {
	o, ok := p.(obj)
	if !ok {
		return
	}
	for i := range o {
		if o[i].K == key {
			o[i].V = v
		}
		if o[i].K == "nova_object.data" {
			setPayload(o[i].V, key, v)
		}
	}
}

// Apply damages msgs as the notifier would with seed, for consumers tested
// without RabbitMQ, and reports what it did.
func (f NotifyFaults) Apply(seed int64, msgs []Notification) ([]Notification, []NotifyFault) {
	return applyNotifyFaults(seed, f, msgs)
}

// applyNotifyFaults damages msgs as the knobs say and reports what it did.
func applyNotifyFaults(seed int64, f NotifyFaults, msgs []Notification) ([]Notification, []NotifyFault) {
	if !f.any() {
		return msgs, nil
	}
	var out []Notification
	var faults []NotifyFault
	record := func(n Notification, kind string) {
		faults = append(faults, NotifyFault{At: n.Timestamp, EventType: n.EventType, ServerID: n.ServerID, Kind: kind})
	}
	for _, n := range msgs {
		exists := strings.HasSuffix(n.EventType, "exists")
		if exists && chance(seed, "drop", n) < f.DropExists {
			record(n, "dropped")
			continue
		}
		// Both formats of one launch go together, as when nova-compute's
		// notifier is down: the draw is made for the server and the second.
		launch := n.EventType == "compute.instance.create.end" || n.EventType == "instance.create.end"
		if launch && chance(seed, "drop_launch", Notification{ServerID: n.ServerID, Timestamp: n.Timestamp.Truncate(time.Second)}) < f.DropLaunch {
			record(n, "dropped_launch")
			continue
		}
		if exists && chance(seed, "corrupt", n) < f.CorruptExists {
			if chance(seed, "which", n) < 0.5 {
				setPayload(n.Payload, "launched_at", nil)
				record(n, "corrupted_launched_at")
			} else {
				setPayload(n.Payload, "instance_type", "m1.corrupted")
				setPayload(n.Payload, "flavor", nil)
				record(n, "corrupted_flavor")
			}
		}
		out = append(out, n)
		if chance(seed, "dup", n) < f.Duplicate {
			out = append(out, n)
			record(n, "duplicated")
		}
	}
	for i := 0; i+1 < len(out); i++ {
		if chance(seed, "reorder", out[i]) < f.Reorder {
			record(out[i], "reordered")
			out[i], out[i+1] = out[i+1], out[i]
			i++
		}
	}
	return out, faults
}
