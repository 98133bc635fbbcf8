package verifier

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/tally-accounting/tally/services/verifier/oslo"
)

// The instance hours report (StackTach's reports/instance_hours.py,
// §1.10): over the verified exists inside a period, the hours each proves,
// per tenant and flavor.

// InstanceHoursReport is the report, ready for JSON.
type InstanceHoursReport struct {
	PeriodBegin    time.Time    `json:"period_begin"`
	PeriodEnd      time.Time    `json:"period_end"`
	TotalInstances int          `json:"total_instance_count"`
	TotalHours     int64        `json:"total_hours"`
	TotalUnitHours float64      `json:"total_unit_hours"`
	Groups         []HoursGroup `json:"groups"`
}

// HoursGroup is one tenant and flavor.
type HoursGroup struct {
	Tenant     string `json:"tenant"`
	FlavorID   string `json:"flavor_id"`
	FlavorName string `json:"flavor_name"`
	Instances  int    `json:"instance_count"`
	Hours      int64  `json:"hours"`
	// UnitHours is hours x memory_mb / 256, StackTach's flavor units. Its
	// class weights knew only "standard" (1.0), so every class weighs 1.
	UnitHours    float64 `json:"unit_hours"`
	PercentHours float64 `json:"percent_hours"`
}

// InstanceHours reports on [begin, end). As StackTach, each exists counts
// ceil((min(deleted_at, ending) - max(launched_at, beginning)) / 1 h)
// hours. Unlike StackTach, the legacy and versioned copies of one exists
// count once: tally ingests both formats.
func InstanceHours(ctx context.Context, s Store, begin, end time.Time) (*InstanceHoursReport, error) {
	if !begin.Before(end) {
		return nil, fmt.Errorf("instance hours: period end %s is not after its beginning %s", end, begin)
	}
	all, err := s.InstanceExistsList(ctx, ExistsFilter{Status: StatusVerified})
	if err != nil {
		return nil, err
	}
	type groupKey struct{ tenant, flavor string }
	groups := map[groupKey]*HoursGroup{}
	instances := map[groupKey]map[string]bool{}
	seen := map[string]bool{}
	everyInstance := map[string]bool{}
	r := &InstanceHoursReport{PeriodBegin: begin, PeriodEnd: end, Groups: []HoursGroup{}}
	for _, e := range all {
		if e.AuditBegin.Before(begin) || e.AuditEnd.After(end) || e.AuditEnd.IsZero() {
			continue
		}
		copyKey := fmt.Sprintf("%s/%d/%d/%d", e.Usage.Instance, e.Usage.LaunchedAt.Unix(), e.AuditBegin.UnixMicro(), e.AuditEnd.UnixMicro())
		if seen[copyKey] {
			continue
		}
		seen[copyKey] = true
		from, to := e.AuditBegin, e.AuditEnd
		if e.Usage.LaunchedAt.After(from) {
			from = e.Usage.LaunchedAt
		}
		if !e.DeletedAt.IsZero() && e.DeletedAt.Before(to) {
			to = e.DeletedAt
		}
		var hours int64
		if to.After(from) {
			hours = int64(math.Ceil(to.Sub(from).Hours()))
		}
		flavor := e.Usage.InstanceFlavorID
		if flavor == "" {
			flavor = e.Usage.InstanceTypeID
		}
		k := groupKey{e.Usage.Tenant, flavor}
		g := groups[k]
		if g == nil {
			g = &HoursGroup{Tenant: k.tenant, FlavorID: flavor, FlavorName: e.Usage.FlavorName}
			groups[k], instances[k] = g, map[string]bool{}
		}
		instances[k][e.Usage.Instance] = true
		everyInstance[e.Usage.Instance] = true
		g.Hours += hours
		g.UnitHours += float64(hours) * float64(memoryMB(e.Raw)) / 256
	}
	for k, g := range groups {
		g.Instances = len(instances[k])
		r.TotalHours += g.Hours
		r.TotalUnitHours += g.UnitHours
		r.Groups = append(r.Groups, *g)
	}
	r.TotalInstances = len(everyInstance)
	for i := range r.Groups {
		if r.TotalHours > 0 {
			r.Groups[i].PercentHours = 100 * float64(r.Groups[i].Hours) / float64(r.TotalHours)
		}
	}
	sort.Slice(r.Groups, func(i, j int) bool {
		a, b := r.Groups[i], r.Groups[j]
		if a.Tenant != b.Tenant {
			return a.Tenant < b.Tenant
		}
		return a.FlavorID < b.FlavorID
	})
	return r, nil
}

// memoryMB reads the flavor's memory from an exists body (StackTach read
// the raw payload too: the tracked usage does not keep it); 0 if absent.
func memoryMB(raw []byte) int64 {
	if len(raw) == 0 {
		return 0
	}
	m, err := oslo.Parse(raw)
	if err != nil {
		return 0
	}
	p, ok := decodeObject(m.Payload)
	if !ok {
		return 0
	}
	if d := sub(p, "nova_object.data"); d != nil {
		p = novaData(sub(d, "flavor"))
	}
	n, ok := p["memory_mb"].(json.Number)
	if !ok {
		return 0
	}
	v, _ := n.Int64()
	return v
}
