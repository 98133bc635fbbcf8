// Package verifiertest builds Nova notifications for tests that drive the
// verifier: the legacy payload in the oslo.messaging v2 envelope, as Nova
// sends it.
package verifiertest

import (
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// Instance is one launch of a VM.
type Instance struct {
	ID         string
	Tenant     string
	FlavorID   string
	FlavorName string
	MemoryMB   int
	Launched   time.Time
	// Deleted is zero while the VM runs.
	Deleted time.Time
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05.000000")
}

// Nova returns one legacy notification of eventType about in, sent at when.
// An exists gets the audit period [begin, end) and deleted_at when the
// instance was deleted by end.
func Nova(msgID, eventType string, in Instance, begin, end, when time.Time) []byte {
	payload := map[string]any{"tenant_id": in.Tenant, "instance_id": in.ID, "instance_type": in.FlavorName,
		"instance_flavor_id": in.FlavorID, "instance_type_id": 1, "memory_mb": in.MemoryMB, "vcpus": 1,
		"launched_at": stamp(in.Launched), "deleted_at": "", "terminated_at": "", "state": "active",
		"image_meta": map[string]string{}}
	switch eventType {
	case "compute.instance.exists":
		payload["audit_period_beginning"] = begin.UTC().Format("2006-01-02 15:04:05")
		payload["audit_period_ending"] = end.UTC().Format("2006-01-02 15:04:05")
		if !in.Deleted.IsZero() && !in.Deleted.After(end) {
			payload["terminated_at"] = stamp(in.Deleted)
		}
	case "compute.instance.delete.end":
		payload["terminated_at"] = stamp(in.Deleted)
		payload["state"] = "deleted"
	}
	inner, _ := json.Marshal(map[string]any{"message_id": msgID, "publisher_id": "compute.compute1", "event_type": eventType,
		"priority": "INFO", "payload": payload, "timestamp": when.UTC().Format("2006-01-02 15:04:05.000000"),
		"_context_project_id": in.Tenant})
	b, _ := json.Marshal(map[string]string{"oslo.version": "2.0", "oslo.message": string(inner)})
	return b
}

// Lifecycle is what Nova sends about in up to until: create.end, an hourly
// exists for every hour the instance was in use that ended by until, and
// delete.end if it was deleted.
func Lifecycle(in Instance, until time.Time) [][]byte {
	out := [][]byte{Nova(in.ID+"-create", "compute.instance.create.end", in, time.Time{}, time.Time{}, in.Launched)}
	for h := in.Launched.Truncate(time.Hour); !h.Add(time.Hour).After(until); h = h.Add(time.Hour) {
		if !in.Deleted.IsZero() && !in.Deleted.After(h) {
			break
		}
		out = append(out, HourlyExists(in, h))
	}
	if !in.Deleted.IsZero() && !in.Deleted.After(until) {
		out = append(out, Nova(in.ID+"-delete", "compute.instance.delete.end", in, time.Time{}, time.Time{}, in.Deleted))
	}
	return out
}

// HourlyExists is the periodic exists of in for the hour from h.
func HourlyExists(in Instance, h time.Time) []byte {
	return Nova(fmt.Sprintf("%s-exists-%d", in.ID, h.Unix()), "compute.instance.exists", in, h, h.Add(time.Hour), h.Add(time.Hour+16*time.Second))
}

// CloudRecord is the cloud record the Nova extractor makes of a VM of
// project over a window ending at windowTo; end is zero while it runs.
func CloudRecord(vm, project string, start, end, windowTo time.Time) *tallyv1.Record {
	c := &tallyv1.CloudRecord{VmUuid: vm, SiteName: "TEST", LocalGroupId: project, LocalUserId: "u1", Fqan: "ops", Status: "started",
		StartTime: timestamppb.New(start), CpuCount: 1}
	wall := windowTo.Sub(start)
	if !end.IsZero() {
		c.EndTime, c.Status, wall = timestamppb.New(end), "completed", end.Sub(start)
	}
	c.WallDuration, c.CpuDuration = int64(wall/time.Second), int64(wall/time.Second)
	return &tallyv1.Record{Key: "cloud/TEST/" + vm, Provenance: &tallyv1.Provenance{Region: "RegionOne", Site: "TEST", ProjectId: project,
		Extractor: "extractor-nova", WindowFrom: timestamppb.New(windowTo.Add(-time.Hour)), WindowTo: timestamppb.New(windowTo),
		ExtractedAt: timestamppb.New(windowTo)}, Payload: &tallyv1.Record_Cloud{Cloud: c}}
}

// ImageExists returns an image.exists of one image (the flat payload) for
// the audit period [begin, end).
func ImageExists(msgID, image, owner string, size int64, created, begin, end time.Time) []byte {
	payload := map[string]any{"id": image, "owner": owner, "size": size, "created_at": stamp(created), "deleted_at": "",
		"audit_period_beginning": begin.UTC().Format("2006-01-02 15:04:05"), "audit_period_ending": end.UTC().Format("2006-01-02 15:04:05")}
	inner, _ := json.Marshal(map[string]any{"message_id": msgID, "publisher_id": "glance", "event_type": "image.exists",
		"priority": "INFO", "payload": payload, "timestamp": end.UTC().Add(16 * time.Second).Format("2006-01-02 15:04:05.000000")})
	b, _ := json.Marshal(map[string]string{"oslo.version": "2.0", "oslo.message": string(inner)})
	return b
}
