package e2e

import (
	"slices"
	"strconv"
	"strings"
	"time"
)

// Expected records, computed from the simulator's ground truth by the rules
// of shared/docs/accounting-rules.md, written here without the extractor's
// code.

// facts is what the test knows of a scenario beyond /sim/truth: user names
// and the images' marketplace URIs.
type facts struct {
	userNames map[string]string // user id → Keystone name
	imageRefs map[string]string // image id → vmcatcher_event_ad_mpuri
}

// twoMonths are the facts of testdata/two-months.yaml.
var twoMonths = facts{
	userNames: map[string]string{
		"1b000000000000000000000000000001": "admin",
		"1b0000000000000000000000000000a1": "alice",
		"1b0000000000000000000000000000a2": "José Müller",
		"1b0000000000000000000000000000a3": "Łukasz 山",
		"1b0000000000000000000000000000a4": "山田太郎",
		"1b0000000000000000000000000000a5": "carol",
		"1b00000000000000000000000000ac01": "acct",
	},
	imageRefs: map[string]string{
		"3d000000-0000-4000-8000-000000000002": "https://appdb.egi.eu/store/vo/image/2a3b4c5d-6e7f-4000-8000-0123456789ab:1234/",
	},
}

// transliterations are the Latin letters the scenario's names use, as
// ASCII: apel-formats.md §10 lets tally transliterate rather than drop
// them; every other non-ASCII character is removed (accounting-rules.md).
var transliterations = map[rune]string{'é': "e", 'ü': "u", 'Ł': "L", 'ł': "l", 'ö': "o", 'ë': "e"}

// ascii is a name as APEL may receive it: 7-bit ASCII, no surrounding
// blanks (APEL strips them).
func ascii(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r < 0x80:
			b.WriteRune(r)
		default:
			b.WriteString(transliterations[r])
		}
	}
	return strings.TrimSpace(b.String())
}

// novaStatus is the API status of a vm_state (what Nova shows).
var novaStatus = map[string]string{
	"active": "ACTIVE", "building": "BUILD", "stopped": "SHUTOFF", "resized": "VERIFY_RESIZE",
	"shelved_offloaded": "SHELVED_OFFLOADED", "shelved": "SHELVED", "error": "ERROR", "deleted": "DELETED",
	"paused": "PAUSED", "suspended": "SUSPENDED",
}

// apelStatus maps a Nova status to the record's (accounting-rules.md).
func apelStatus(nova string) string {
	switch strings.ToLower(nova) {
	case "active", "build", "confirming_resize", "hard_reboot", "migrating", "reboot", "rebuild", "rescue",
		"resize", "revert_resize", "verify_resize", "saving", "password":
		return "started"
	case "deleted", "shutoff", "terminated":
		return "completed"
	case "error", "paused", "suspended", "stopped":
		return strings.ToLower(nova)
	}
	return "unknown"
}

// expectation is one window's expected records.
type expectation struct {
	cloud map[string]map[string]string // by VMUUID
	accel map[string]map[string]string // by accelKey
	// running lists the VMs still running at the window's end.
	running map[string]bool
}

// voFor returns a project's VO, or the default; ok is false when the
// project's records are held.
func voFor(extra map[string]string, defaultVO string) (string, bool) {
	if vo := extra["VO"]; vo != "" {
		return vo, true
	}
	return defaultVO, defaultVO != ""
}

func epoch(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }

// expect computes the records of the window [from, to] from tr, taken with
// the simulator's clock at to. userNames nil means Keystone refused the
// names (no GlobalUserName).
func expect(tr truth, f facts, from, to time.Time, defaultVO string, withNames bool) expectation {
	ex := expectation{cloud: map[string]map[string]string{}, accel: map[string]map[string]string{}, running: map[string]bool{}}
	vos := map[string]string{}
	for _, p := range tr.Projects {
		if !slices.Contains(p.Tags, "caso") {
			continue
		}
		if vo, ok := voFor(p.Extra, defaultVO); ok {
			vos[p.ID] = vo
		}
	}
	flavors := map[string]truthFlavor{}
	for _, fl := range tr.Flavors {
		flavors[fl.ID] = fl
	}
	cloudType := "tally/" + tallyVersion + " (OpenStack)"
	for _, s := range tr.Servers {
		vo, ok := vos[s.ProjectID]
		if !ok || s.Created.After(tr.Now) {
			continue
		}
		// Nova shows times in whole seconds.
		start := s.Created.Truncate(time.Second)
		updated := start
		for _, e := range s.Events {
			if !e.At.After(tr.Now) && e.At.After(updated) {
				updated = e.At.Truncate(time.Second)
			}
		}
		status := novaStatus[s.VMState]
		var end time.Time
		switch {
		case s.TerminatedAt != nil:
			end = s.TerminatedAt.Truncate(time.Second)
		case s.LaunchedAt == nil:
			end = start
		case status == "DELETED":
			end = updated
		}
		if start.After(to) || !end.IsZero() && end.Before(from) {
			continue
		}
		rec := map[string]string{
			"VMUUID":              s.ID,
			"SiteName":            siteName,
			"CloudComputeService": siteName,
			"CloudType":           cloudType,
			"MachineName":         ascii(s.Name),
			"LocalUserId":         s.UserID,
			"LocalGroupId":        s.ProjectID,
			"FQAN":                vo,
			"Status":              apelStatus(status),
			"StartTime":           epoch(start),
			"PublicIPCount":       "0", // the simulator gives scenario servers no ports
		}
		userName, rawUserName := "", ""
		if withNames {
			rawUserName = f.userNames[s.UserID]
			userName = ascii(rawUserName)
		}
		if userName != "" {
			rec["GlobalUserName"] = userName
		}
		var wall int64
		running := end.IsZero() || end.After(to)
		if running {
			wall = int64(to.Sub(start) / time.Second)
			rec["EndTime"] = "0"
			if rec["Status"] == "completed" {
				rec["Status"] = "started"
			}
			ex.running[s.ID] = true
		} else {
			wall = int64(end.Sub(start) / time.Second)
			rec["EndTime"] = epoch(end)
		}
		fl := flavors[s.FlavorID]
		rec["CpuCount"] = strconv.FormatInt(fl.VCPUs, 10)
		rec["Memory"] = strconv.FormatInt(fl.RAM, 10)
		rec["Disk"] = strconv.FormatInt(fl.Disk+fl.Ephemeral, 10)
		rec["WallDuration"] = strconv.FormatInt(max(wall, 1), 10)
		rec["CpuDuration"] = strconv.FormatInt(max(wall*fl.VCPUs, 1), 10)
		bt, okT := fl.ExtraSpecs["accounting:benchmark_type"]
		bv, okV := fl.ExtraSpecs["accounting:benchmark_value"]
		if okT && okV {
			v, _ := strconv.ParseFloat(bv, 64)
			rec["BenchmarkType"] = bt
			rec["Benchmark"] = strconv.FormatFloat(v, 'f', -1, 64)
		}
		if s.ImageID != "" {
			rec["ImageId"] = s.ImageID
			if ref, ok := f.imageRefs[s.ImageID]; ok {
				rec["ImageId"] = ref
			}
		}
		ex.cloud[s.ID] = rec

		// Accelerator records: one per month between max(start, from) and
		// min(end, to), each month to date.
		typ, ok1 := fl.ExtraSpecs["Accelerator:Type"]
		vendor, ok2 := fl.ExtraSpecs["Accelerator:Vendor"]
		model, ok3 := fl.ExtraSpecs["Accelerator:Model"]
		num, ok4 := fl.ExtraSpecs["Accelerator:Number"]
		if !ok1 || !ok2 || !ok3 || !ok4 {
			continue
		}
		stop := to
		if !end.IsZero() && end.Before(stop) {
			stop = end
		}
		lo := later(start, from)
		for m := time.Date(lo.Year(), lo.Month(), 1, 0, 0, 0, 0, time.UTC); m.Before(stop); m = m.AddDate(0, 1, 0) {
			next := m.AddDate(0, 1, 0)
			d := int64(earlier(next, stop).Sub(later(m, start)) / time.Second)
			if d < 0 {
				continue
			}
			acc := map[string]string{
				"SiteName":             siteName,
				"CloudType":            cloudType,
				"CloudComputeService":  siteName,
				"AssociatedRecord":     s.ID,
				"AssociatedRecordType": "cloud",
				"FQAN":                 vo,
				"Count":                num,
				"AvailableDuration":    strconv.FormatInt(d, 10),
				"ActiveDuration":       strconv.FormatInt(d, 10),
				"MeasurementMonth":     strconv.Itoa(int(m.Month())),
				"MeasurementYear":      strconv.Itoa(m.Year()),
				"Type":                 typ,
				"Model":                vendor + " " + model,
			}
			// JSON carries the name itself, \u-escaped (ASCII bytes, as
			// cASO's json.dumps writes it); only key-value folds names.
			if rawUserName != "" {
				acc["GlobalUserName"] = rawUserName
			}
			ex.accel[accelKey(s.ID, acc["MeasurementYear"], acc["MeasurementMonth"])] = acc
		}
	}
	return ex
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
