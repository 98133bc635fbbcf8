package verifier

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The verification rules of StackTach's nova and glance verifiers (§1.6),
// as pure functions of an exists and the tracked usage. Where StackTach is
// weak the rules say so.

var (
	hexRe   = regexp.MustCompile(`^[0-9a-fA-F]+$`)
	metaRe  = regexp.MustCompile(`^[a-zA-Z0-9.]+$`)
	uuidRe  = regexp.MustCompile(`^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$`)
	timeFmt = "2006-01-02 15:04:05.000000"
)

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "null"
	}
	return t.UTC().Format(timeFmt)
}

func sameSecond(a, b time.Time) bool { return a.Unix() == b.Unix() }

type rules struct {
	level        string
	flavorField  string
	requiredMeta []string
}

func newRules(c Config) rules {
	return rules{level: c.ValidationLevel, flavorField: c.FlavorFieldName, requiredMeta: c.RequiredImageMeta}
}

func mismatch(uuid, field, entity, expected, actual string) *Failure {
	return &Failure{Field: field, Expected: expected, Actual: actual,
		Reason: fmt.Sprintf("%s: data mismatch for '%s' - 'exists' contains '%s' but '%s' contains '%s'", uuid, field, actual, entity, expected)}
}

func nullField(uuid, field, msgID string) *Failure {
	return &Failure{Field: field, Actual: "null", Reason: fmt.Sprintf("%s: %s field was null for exists %s", uuid, field, msgID)}
}

// flavorField is the flavor attribute compared for e: the configured one,
// except that versioned notifications carry no instance_type_id.
func (r rules) flavorOf(e InstanceExists, u InstanceUsage) (field, exists, usage string) {
	field = r.flavorField
	if field == "instance_type_id" && e.Versioned {
		field = "instance_flavor_id"
	}
	if field == "instance_type_id" {
		return field, e.Usage.InstanceTypeID, u.InstanceTypeID
	}
	return field, e.Usage.InstanceFlavorID, u.InstanceFlavorID
}

// verifyInstance returns nil when e verifies against the launches and
// deletes tracked for its instance.
func (r rules) verifyInstance(e InstanceExists, launches []InstanceUsage, deletes []InstanceDelete) *Failure {
	id := e.Usage.Instance
	if e.Invalid != "" {
		field, value, _ := strings.Cut(e.Invalid, "=")
		return &Failure{Field: field, Actual: value,
			Reason: fmt.Sprintf("%s: {%s: %s} was of incorrect type for exists %s", id, field, value, e.MessageID)}
	}
	if e.Usage.LaunchedAt.IsZero() {
		// StackTach dropped such an exists at ingest with a warning; it is
		// kept and failed here, with the launch it should have named.
		var expected string
		for _, l := range launches {
			if e.AuditEnd.IsZero() || !l.LaunchedAt.After(e.AuditEnd) {
				expected = fmtTime(l.LaunchedAt)
			}
		}
		return &Failure{Field: "launched_at", Expected: expected, Actual: "null", Reason: id + ": exists without a launched_at"}
	}
	if f := r.validity(e); f != nil {
		return f
	}
	if len(launches) == 0 {
		return &Failure{Field: "instance", Actual: id, Reason: fmt.Sprintf("couldn't find InstanceUsage using {instance: %s}", id)}
	}
	i := slices.IndexFunc(launches, func(l InstanceUsage) bool { return sameSecond(l.LaunchedAt, e.Usage.LaunchedAt) })
	if i < 0 {
		var known []string
		for _, l := range launches {
			known = append(known, fmtTime(l.LaunchedAt))
		}
		return &Failure{Field: "launched_at", Expected: strings.Join(known, ", "), Actual: fmtTime(e.Usage.LaunchedAt),
			Reason: fmt.Sprintf("couldn't find InstanceUsage using {instance: %s, launched_at: %s} (known launches: %s)",
				id, fmtTime(e.Usage.LaunchedAt), strings.Join(known, ", "))}
	}
	l := launches[i]
	field, ev, uv := r.flavorOf(e, l)
	checks := []struct{ field, exists, usage string }{
		{field, ev, uv},
		// Beyond StackTach: the flavor name too. Nova flavors cannot be
		// renamed, so a different name is a different flavor even when the
		// compared id field agrees.
		{"instance_type", e.Usage.FlavorName, l.FlavorName},
		{"tenant", e.Usage.Tenant, l.Tenant},
	}
	// Versioned payloads carry no image metadata: compare it on legacy ones.
	if !e.Versioned {
		checks = append(checks, []struct{ field, exists, usage string }{
			{"rax_options", e.Usage.RaxOptions, l.RaxOptions},
			{"os_architecture", e.Usage.OSArchitecture, l.OSArchitecture},
			{"os_version", e.Usage.OSVersion, l.OSVersion},
			{"os_distro", e.Usage.OSDistro, l.OSDistro},
		}...)
	}
	for _, c := range checks {
		if c.field == "instance_type" && (c.exists == "" && c.usage == "" || c.usage == "") {
			continue // a launch tracked from events without the name
		}
		if c.exists != c.usage {
			return mismatch(id, c.field, "launches", c.usage, c.exists)
		}
	}
	return r.verifyDelete(e, deletes)
}

func (r rules) verifyDelete(e InstanceExists, deletes []InstanceDelete) *Failure {
	id := e.Usage.Instance
	var d *InstanceDelete
	for i := range deletes {
		if sameSecond(deletes[i].LaunchedAt, e.Usage.LaunchedAt) {
			d = &deletes[i]
		}
	}
	switch {
	case !e.DeletedAt.IsZero() && d == nil:
		return &Failure{Field: "deleted_at", Actual: fmtTime(e.DeletedAt),
			Reason: fmt.Sprintf("couldn't find InstanceDeletes using {instance: %s, launched_at: %s}", id, fmtTime(e.Usage.LaunchedAt))}
	case !e.DeletedAt.IsZero():
		if !sameSecond(d.DeletedAt, e.DeletedAt) {
			return mismatch(id, "deleted_at", "deletes", fmtTime(d.DeletedAt), fmtTime(e.DeletedAt))
		}
	case d != nil && (e.AuditEnd.IsZero() || !d.DeletedAt.After(e.AuditEnd)):
		return &Failure{Field: "deleted_at", Expected: fmtTime(d.DeletedAt), Actual: "null",
			Reason: id + ": found InstanceDeletes for non-delete exist"}
	}
	return nil
}

// validity is StackTach's _verify_validity for validation_level.
func (r rules) validity(e InstanceExists) *Failure {
	if r.level == LevelNone {
		return nil
	}
	id := e.Usage.Instance
	field, flavor, _ := r.flavorOf(e, InstanceUsage{})
	switch {
	case e.Usage.Tenant == "":
		return nullField(id, "tenant", e.MessageID)
	case flavor == "":
		return nullField(id, field, e.MessageID)
	case !hexRe.MatchString(e.Usage.Tenant):
		return &Failure{Field: "tenant", Actual: e.Usage.Tenant,
			Reason: fmt.Sprintf("%s: {tenant: %s} was of incorrect type for exists %s", id, e.Usage.Tenant, e.MessageID)}
	}
	if r.level != LevelAll || e.Versioned {
		return nil
	}
	meta := map[string]string{"rax_options": e.Usage.RaxOptions, "os_architecture": e.Usage.OSArchitecture,
		"os_distro": e.Usage.OSDistro, "os_version": e.Usage.OSVersion}
	for _, f := range r.requiredMeta {
		imported := e.Usage.ImageType == "import" && (f == "os_distro" || f == "os_version")
		if meta[f] == "" && !imported {
			return nullField(id, f, e.MessageID)
		}
	}
	if v := meta["rax_options"]; v != "" {
		if _, err := strconv.Atoi(v); err != nil {
			return &Failure{Field: "rax_options", Actual: v, Reason: fmt.Sprintf("%s: {rax_options: %s} was of incorrect type for exists %s", id, v, e.MessageID)}
		}
	}
	for _, f := range []string{"os_architecture", "os_distro", "os_version"} {
		if v := meta[f]; v != "" && !metaRe.MatchString(v) {
			return &Failure{Field: f, Actual: v, Reason: fmt.Sprintf("%s: {%s: %s} was of incorrect type for exists %s", id, f, v, e.MessageID)}
		}
	}
	return nil
}

// verifyImage returns nil when e verifies against the image's usage and
// deletes. StackTach's validity checks were always on for glance; here they
// follow validation_level like nova's.
func (r rules) verifyImage(e ImageExists, u *ImageUsage, deletes []ImageDelete) *Failure {
	id := e.Image.UUID
	if r.level != LevelNone {
		switch {
		case !uuidRe.MatchString(id):
			return &Failure{Field: "uuid", Actual: id, Reason: fmt.Sprintf("{uuid: %s} was of incorrect type for image exists %s", id, e.MessageID)}
		case !e.Image.HasSize:
			return nullField(id, "size", e.MessageID)
		case e.Image.CreatedAt.IsZero():
			return nullField(id, "created_at", e.MessageID)
		case e.Image.Owner == "":
			return nullField(id, "owner", e.MessageID)
		case !hexRe.MatchString(e.Image.Owner):
			return &Failure{Field: "owner", Actual: e.Image.Owner,
				Reason: fmt.Sprintf("%s: {owner: %s} was of incorrect type for image exists %s", id, e.Image.Owner, e.MessageID)}
		}
	}
	if u == nil {
		return &Failure{Field: "uuid", Actual: id, Reason: fmt.Sprintf("couldn't find ImageUsage using {uuid: %s}", id)}
	}
	if !sameSecond(u.CreatedAt, e.Image.CreatedAt) {
		return mismatch(id, "created_at", "launches", fmtTime(u.CreatedAt), fmtTime(e.Image.CreatedAt))
	}
	if u.Owner != e.Image.Owner {
		return mismatch(id, "owner", "launches", u.Owner, e.Image.Owner)
	}
	if u.HasSize != e.Image.HasSize || u.Size != e.Image.Size {
		return mismatch(id, "size", "launches", sizeString(u.Size, u.HasSize), sizeString(e.Image.Size, e.Image.HasSize))
	}
	var d *ImageDelete
	if len(deletes) > 0 {
		d = &deletes[0]
	}
	switch {
	case !e.DeletedAt.IsZero() && d == nil:
		// StackTach's glance verifier raised AttributeError here.
		return &Failure{Field: "deleted_at", Actual: fmtTime(e.DeletedAt), Reason: fmt.Sprintf("couldn't find ImageDeletes using {uuid: %s}", id)}
	case !e.DeletedAt.IsZero():
		if !sameSecond(d.DeletedAt, e.DeletedAt) {
			return mismatch(id, "deleted_at", "deletes", fmtTime(d.DeletedAt), fmtTime(e.DeletedAt))
		}
	case d != nil && (e.AuditEnd.IsZero() || !d.DeletedAt.After(e.AuditEnd)):
		return &Failure{Field: "deleted_at", Expected: fmtTime(d.DeletedAt), Actual: "null", Reason: id + ": found ImageDeletes for non-delete exist"}
	}
	return nil
}

func sizeString(n int64, ok bool) string {
	if !ok {
		return "null"
	}
	return strconv.FormatInt(n, 10)
}
