package query

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/messenger"
	"github.com/tally-accounting/tally/pkg/record"
)

// sep joins the parts of an identity. It cannot occur in the names and ids
// it joins, and unlike NUL PostgreSQL text accepts it.
const sep = "\x1f"

// attrs are the columns a record is indexed, filtered and summed by, taken
// from its payload (and its provenance where the payload is silent).
type attrs struct {
	// ident is the upsert identity (the primary key), which is finer than
	// Record.Key where the key omits the site.
	ident string
	key   string
	typ   tallyv1.RecordType
	// keyDerived: key is the one derived from the identity (identify), so
	// GetRecord finds the record through the identity's index, and the
	// key needs no index entry of its own (schema version 8).
	keyDerived bool

	region, site, project, vo, localUser, globalUser, status string
	cpuCount                                                 int64

	// start and end (unix seconds) bound the record for time filters; end
	// is nil while a VM runs.
	start int64
	end   *int64
	// year and month the record's usage is summed in.
	year, month int64

	extractedAt, windowFrom, windowTo int64 // unix microseconds

	// Usage contributions. For cloud records these are cumulative; monthly
	// figures come from the cloud_months deltas.
	wall, cpu            int64
	norm, gpu, gbSeconds float64
	ipVersion, ipCount   int64

	data []byte
}

// identKinds are the record kinds whose identity identify builds, and
// whether it holds the site (after the kind, before the parts).
var identKinds = map[string]bool{"cloud": true, "energy": true, "accelerator": false, "storage": false}

// identify sets the identity of a record of kind from its parts (and the
// site, for the kinds that hold it), and whether the key is the one the
// extractors derive from them: the kind and the parts joined by "/"
// ("cloud/<vm uuid>", "storage/<volume>/<unix time>"), the site left
// out. Only a part free of "/" is derived, so that keyIdents inverts it.
func (a *attrs) identify(kind string, parts ...string) {
	id := []string{kind}
	if identKinds[kind] {
		id = append(id, a.site)
	}
	a.ident = strings.Join(append(id, parts...), sep)
	a.keyDerived = a.key == kind+"/"+strings.Join(parts, "/")
	for _, p := range parts {
		if strings.Contains(p, "/") {
			a.keyDerived = false
		}
	}
}

// keyIdents are the identities a record whose key was derived (identify)
// may have, given the sites such records were stored under.
func keyIdents(key string, sites []string) []string {
	parts := strings.Split(key, "/")
	sited, ok := identKinds[parts[0]]
	if !ok || len(parts) < 2 {
		return nil
	}
	if !sited {
		return []string{strings.Join(parts, sep)}
	}
	rest := strings.Join(parts[1:], sep)
	out := make([]string, len(sites))
	for i, site := range sites {
		out[i] = parts[0] + sep + site + sep + rest
	}
	return out
}

func unixMicro(ts *timestamppb.Timestamp) int64 {
	if ts == nil {
		return 0
	}
	return ts.AsTime().UnixMicro()
}

func secs(ts *timestamppb.Timestamp) int64 { return ts.GetSeconds() }

func ym(sec int64) (int64, int64) {
	t := time.Unix(sec, 0).UTC()
	return int64(t.Year()), int64(t.Month())
}

func pick(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// attrsOf derives a record's columns. A record the store can never hold
// is an error wrapping messenger.ErrRejected.
func attrsOf(r *tallyv1.Record) (attrs, error) {
	p := r.GetProvenance()
	a := attrs{
		key: r.GetKey(), typ: record.TypeOf(r), region: p.GetRegion(), project: p.GetProjectId(),
		extractedAt: unixMicro(p.GetExtractedAt()), windowFrom: unixMicro(p.GetWindowFrom()), windowTo: unixMicro(p.GetWindowTo()),
	}
	reject := func(format string, args ...any) (attrs, error) {
		return attrs{}, fmt.Errorf("%w: record %q: %s", messenger.ErrRejected, r.GetKey(), fmt.Sprintf(format, args...))
	}
	switch pl := r.GetPayload().(type) {
	case *tallyv1.Record_Cloud:
		c := pl.Cloud
		if c.GetVmUuid() == "" {
			return reject("cloud record without VMUUID")
		}
		a.site = pick(c.GetSiteName(), p.GetSite())
		a.identify("cloud", c.GetVmUuid())
		a.project = pick(c.GetLocalGroupId(), a.project)
		a.vo, a.localUser, a.globalUser, a.status = c.GetFqan(), c.GetLocalUserId(), c.GetGlobalUserName(), c.GetStatus()
		a.cpuCount = int64(c.GetCpuCount())
		a.start = secs(c.GetStartTime())
		if c.GetEndTime() != nil {
			e := secs(c.GetEndTime())
			a.end = &e
		}
		a.wall, a.cpu = c.GetWallDuration(), c.GetCpuDuration()
		a.norm = float64(a.cpu) * c.GetBenchmark()
		m := measurement(c)
		a.year, a.month = m.year, m.month
	case *tallyv1.Record_Accelerator:
		c := pl.Accelerator
		if c.GetAssociatedRecord() == "" || c.GetMeasurementMonth() < 1 || c.GetMeasurementMonth() > 12 {
			return reject("accelerator record without AssociatedRecord or with MeasurementMonth %d", c.GetMeasurementMonth())
		}
		a.site = pick(c.GetSiteName(), p.GetSite())
		a.year, a.month = int64(c.GetMeasurementYear()), int64(c.GetMeasurementMonth())
		a.identify("accelerator", c.GetAssociatedRecord(), fmt.Sprintf("%04d-%02d", a.year, a.month))
		a.vo, a.globalUser = c.GetFqan(), c.GetGlobalUserName()
		from := time.Date(int(a.year), time.Month(a.month), 1, 0, 0, 0, 0, time.UTC)
		a.start = from.Unix()
		e := from.AddDate(0, 1, 0).Unix() - 1
		a.end = &e
		a.gpu = float64(c.GetCount()) * float64(c.GetAvailableDuration())
	case *tallyv1.Record_Ip:
		c := pl.Ip
		if c.GetMeasurementTime() == nil {
			return reject("IP record without MeasurementTime")
		}
		a.site = pick(c.GetSiteName(), p.GetSite())
		a.project = pick(c.GetLocalGroup(), a.project)
		a.vo, a.localUser, a.globalUser = c.GetFqan(), c.GetLocalUser(), c.GetGlobalUserName()
		a.start = secs(c.GetMeasurementTime())
		a.end = &a.start
		a.year, a.month = ym(a.start)
		a.ipVersion, a.ipCount = int64(c.GetIpVersion()), int64(c.GetIpCount())
		a.ident = "ip" + sep + a.site + sep + a.project + sep + pick(a.localUser, a.globalUser) + sep +
			strconv.FormatInt(a.ipVersion, 10) + sep + strconv.FormatInt(a.start, 10)
	case *tallyv1.Record_Storage:
		c := pl.Storage
		if c.GetRecordId() == "" {
			return reject("storage record without RecordId")
		}
		a.site = pick(c.GetSite(), p.GetSite())
		a.project = pick(c.GetLocalGroup(), a.project)
		a.vo, a.localUser, a.globalUser, a.status = c.GetGroup(), c.GetLocalUser(), c.GetUserIdentity(), c.GetVolumeStatus()
		a.start = secs(c.GetStartTime())
		e := secs(c.GetEndTime())
		a.end = &e
		measured := secs(c.GetCreateTime())
		if c.GetCreateTime() == nil {
			measured = e
		}
		a.year, a.month = ym(measured)
		a.identify("storage", c.GetRecordId(), strconv.FormatInt(measured, 10))
		active := e - a.start
		if c.ActiveDuration != nil {
			active = c.GetActiveDuration()
		}
		// Cinder sizes are GiB, sent as bytes: back to the GB a site sells.
		a.gbSeconds = float64(c.GetResourceCapacityUsed()) / (1 << 30) * float64(active)
	case *tallyv1.Record_Energy:
		c := pl.Energy
		if c.GetExecUnitId() == "" {
			return reject("energy record without ExecUnitID")
		}
		a.site = pick(c.GetSiteName(), p.GetSite())
		a.vo, a.status = c.GetOwner(), c.GetStatus()
		a.start = secs(c.GetStartExecTime())
		measured := a.start
		if c.GetEndExecTime() != nil {
			e := secs(c.GetEndExecTime())
			a.end, measured = &e, e
		}
		a.year, a.month = ym(measured)
		a.identify("energy", c.GetExecUnitId(), strconv.FormatInt(measured, 10))
	default:
		return reject("no payload")
	}
	// PostgreSQL's text cannot hold a NUL byte: refused here, on both
	// stores, the record is rejected with the field named; refused by the
	// server, its batch would fail as unavailable and be retried forever.
	// The identity comes last: it is made of the fields before it.
	for _, f := range []struct{ name, v string }{{"key", a.key}, {"region", a.region},
		{"site", a.site}, {"project", a.project}, {"VO", a.vo}, {"local user", a.localUser},
		{"global user", a.globalUser}, {"status", a.status}, {"identity", a.ident}} {
		if strings.IndexByte(f.v, 0) >= 0 {
			return reject("%s %q contains a NUL byte", f.name, f.v)
		}
	}
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	if err != nil {
		return reject("%v", err)
	}
	a.data = data
	return a, nil
}

// user is the name a usage summary groups a user under: APEL's
// GlobalUserName where known, the local id otherwise.
func (a *attrs) user() string { return pick(a.globalUser, a.localUser) }

// month0 marks APEL's zero-date measurement (a completed VM without an end
// time): it is summed in month 0 of year 0 and never a previous record.
type meas struct {
	ts          int64
	year, month int64
}

func (m meas) zero() bool { return m.month == 0 }

// measurement is APEL's MeasurementTime (ReplaceCloudRecord in
// schemas/cloud.sql): EndTime for completed VMs, otherwise StartTime +
// SuspendDuration + WallDuration (tally sends no RecordCreateTime).
func measurement(c *tallyv1.CloudRecord) meas {
	if c.GetStatus() == "completed" {
		if c.GetEndTime() == nil {
			return meas{}
		}
		t := secs(c.GetEndTime())
		y, m := ym(t)
		return meas{t, y, m}
	}
	t := secs(c.GetStartTime()) + c.GetSuspendDuration() + c.GetWallDuration()
	y, m := ym(t)
	return meas{t, y, m}
}

// matches reports whether a record passes a (validated) filter, for
// WatchRecords; the SQL in where() is the same test for stored rows.
func (a *attrs) matches(f *tallyv1.RecordFilter) bool {
	in := func(list []string, v string) bool { return len(list) == 0 || slices.Contains(list, v) }
	if len(f.GetTypes()) > 0 && !slices.Contains(f.GetTypes(), a.typ) {
		return false
	}
	if !in(f.GetRegions(), a.region) || !in(f.GetSites(), a.site) || !in(f.GetProjectIds(), a.project) ||
		!in(f.GetVos(), a.vo) || !in(f.GetStatuses(), a.status) {
		return false
	}
	if us := f.GetUsers(); len(us) > 0 && !slices.Contains(us, a.localUser) && !(a.globalUser != "" && slices.Contains(us, a.globalUser)) {
		return false
	}
	if f.GetEnd() != nil && a.start >= filterEnd(f) {
		return false
	}
	if f.GetStart() != nil && a.end != nil && *a.end < secs(f.GetStart()) {
		return false
	}
	return true
}
