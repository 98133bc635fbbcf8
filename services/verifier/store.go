package verifier

import (
	"context"
	"errors"
	"time"
)

// Status of an exists, StackTach's values minus the sent_* ones (tally
// verifies before anything is shipped).
type Status string

const (
	StatusPending   Status = "pending"
	StatusVerifying Status = "verifying"
	StatusVerified  Status = "verified"
	StatusFailed    Status = "failed"
)

// InstanceUsage is one launch of an instance: StackTach's InstanceUsage,
// keyed by (instance, launched_at to the second) rather than by request id,
// so the legacy and versioned copies of an event, and retried requests,
// land on the same row.
type InstanceUsage struct {
	Instance         string
	LaunchedAt       time.Time
	Tenant           string
	InstanceTypeID   string
	InstanceFlavorID string
	FlavorName       string
	OSArchitecture   string
	OSDistro         string
	OSVersion        string
	RaxOptions       string
	ImageType        string
	// Updated is the time of the latest event that overwrote the fields, so
	// that events applied out of order end in the same state.
	Updated time.Time
}

// InstanceDelete is StackTach's InstanceDeletes.
type InstanceDelete struct {
	Instance   string
	LaunchedAt time.Time
	DeletedAt  time.Time
}

// Failure says why an exists failed: the field, what the tracked usage
// says (Expected) and what the exists says (Actual).
type Failure struct {
	Field    string
	Expected string
	Actual   string
	Reason   string
}

// InstanceExists is one compute.instance.exists / instance.exists.
type InstanceExists struct {
	ID int64
	// Key deduplicates (oslo.Key: message_id and body digest).
	Key        string
	MessageID  string
	EventType  string
	Versioned  bool
	Usage      InstanceUsage // what the exists claims; zero LaunchedAt is null
	DeletedAt  time.Time
	AuditBegin time.Time
	AuditEnd   time.Time
	Bandwidth  int64
	// Invalid names a time field that did not parse ("launched_at=...").
	Invalid    string
	Received   time.Time
	Status     Status
	Failure    *Failure
	RoutingKey string
	Raw        []byte
}

// ImageUsage is StackTach's ImageUsage, one row per image.
type ImageUsage struct {
	UUID      string
	Owner     string
	Size      int64
	HasSize   bool
	CreatedAt time.Time
	Updated   time.Time
}

// ImageDelete is StackTach's ImageDeletes.
type ImageDelete struct {
	UUID      string
	DeletedAt time.Time
}

// ImageExists is one image of an image.exists.
type ImageExists struct {
	ID         int64
	Key        string
	MessageID  string
	Image      ImageUsage // what the exists claims
	DeletedAt  time.Time
	AuditBegin time.Time
	AuditEnd   time.Time
	Received   time.Time
	Status     Status
	Failure    *Failure
	RoutingKey string
	Raw        []byte
}

// InstanceReconcile is a launch (and its delete, if any) the reconciler
// confirmed with Nova's API: StackTach's InstanceReconcile. The fields are
// the exists' that Nova agreed with; Source says where the confirmation
// came from (SourceNovaAPI).
type InstanceReconcile struct {
	Usage     InstanceUsage
	DeletedAt time.Time
	Source    string
	// NovaStatus is the server's status in Nova's answer (ACTIVE, DELETED).
	NovaStatus string
	// Reconciled is when Nova was asked.
	Reconciled time.Time
}

// ExistsFilter selects exists for listings; zero fields match everything.
type ExistsFilter struct {
	Status Status
	// Instance or image uuid.
	UUID string
}

// Claim is what one claim of a verification pass takes.
type Claim struct {
	// EndingMax: only exists whose audit period ended by then (now minus
	// settle_time).
	EndingMax time.Time
	// After is where the pass's previous claim ended; the zero Cursor
	// starts at the oldest period. A pass moves forward through the
	// pending exists, so one it leaves pending (Nova could not be asked)
	// waits for the next pass rather than being claimed again at once.
	After Cursor
	Limit int
	// Raw says whether to read each exists' notification body: only
	// verified notifications need it, and at a kilobyte or more it is
	// most of what a claim would read.
	Raw bool
}

// Cursor is a position in claim order.
type Cursor struct {
	AuditEnd time.Time
	ID       int64
}

// next is where a pass goes on after claiming n exists at positions
// at(i): the furthest of them and after.
func next(after Cursor, n int, at func(i int) Cursor) Cursor {
	for i := range n {
		c := at(i)
		if c.AuditEnd.After(after.AuditEnd) || c.AuditEnd.Equal(after.AuditEnd) && c.ID > after.ID {
			after = c
		}
	}
	return after
}

// UsageEvent is one launch event in a Batch, merged per mergeUsage.
type UsageEvent struct {
	Usage     InstanceUsage
	Overwrite bool
}

// Batch is what a run of notifications changes, for ApplyBatch. Each kind
// lives in its own table and no write reads another kind, so the order
// that matters is the order within each slice.
type Batch struct {
	Usage        []UsageEvent
	Deletes      []InstanceDelete
	Exists       []InstanceExists
	ImageUsage   []ImageUsage
	ImageDeletes []ImageDelete
	ImageExists  []ImageExists
}

// Len is the number of writes in b.
func (b *Batch) Len() int {
	return len(b.Usage) + len(b.Deletes) + len(b.Exists) + len(b.ImageUsage) + len(b.ImageDeletes) + len(b.ImageExists)
}

// check refuses, before anything is written, a launch event without
// launched_at: it has no row to merge into.
func (b *Batch) check() error {
	for _, ev := range b.Usage {
		if ev.Usage.LaunchedAt.IsZero() {
			return errors.New("apply usage: no launched_at")
		}
	}
	return nil
}

// Finished is the outcome of one verified exists, for the Finish*Batch
// methods.
type Finished struct {
	ID      int64
	Status  Status
	Failure *Failure
}

// Store keeps the tracked usage and the exists. Every write is idempotent:
// a notification applied twice changes nothing the second time.
type Store interface {
	// ApplyBatch makes every write of b in one transaction, all or none.
	// It leaves what b's writes leave applied one at a time in b's order
	// (launches merged per mergeUsage, images per mergeImage, the first
	// delete kept as StackTach's get_or_create did, an exists whose Key is
	// known ignored), so a batch applied again, whole or in part, changes
	// nothing.
	ApplyBatch(ctx context.Context, b *Batch) error
	Launches(ctx context.Context, instance string) ([]InstanceUsage, error)
	Deletes(ctx context.Context, instance string) ([]InstanceDelete, error)
	// LaunchesOf and DeletesOf are Launches and Deletes of several
	// instances in one query, by instance.
	LaunchesOf(ctx context.Context, instances []string) (map[string][]InstanceUsage, error)
	DeletesOf(ctx context.Context, instances []string) (map[string][]InstanceDelete, error)
	// ClaimInstanceExists returns up to c.Limit pending exists whose
	// audit period ended by c.EndingMax, after c.After in claim order
	// (audit_end, id), in id order. A store several verifiers share marks
	// them verifying, so that no other verifier claims them; one that a
	// single verifier owns need not write anything (see SQLiteStore's).
	ClaimInstanceExists(ctx context.Context, c Claim) ([]InstanceExists, error)
	// FinishInstanceExistsBatch records the outcome of each exists of fs,
	// in one transaction.
	FinishInstanceExistsBatch(ctx context.Context, fs []Finished) error
	InstanceExistsList(ctx context.Context, f ExistsFilter) ([]InstanceExists, error)

	ImageUsage(ctx context.Context, uuid string) (*ImageUsage, error)
	ImageDeletes(ctx context.Context, uuid string) ([]ImageDelete, error)
	ClaimImageExists(ctx context.Context, c Claim) ([]ImageExists, error)
	FinishImageExistsBatch(ctx context.Context, fs []Finished) error
	ImageExistsList(ctx context.Context, f ExistsFilter) ([]ImageExists, error)

	// CountExists counts instance and image exists by status.
	CountExists(ctx context.Context) (instances, images map[Status]int, err error)
	// AllLaunches and AllDeletes list every launch and delete, for audits.
	AllLaunches(ctx context.Context) ([]InstanceUsage, error)
	AllDeletes(ctx context.Context) ([]InstanceDelete, error)
	AllImages(ctx context.Context) ([]ImageUsage, error)

	// AddReconcile records a launch confirmed by the reconciler, replacing
	// an earlier one of the same launch (instance, launched_at second).
	AddReconcile(ctx context.Context, r InstanceReconcile) error
	Reconciles(ctx context.Context, instance string) ([]InstanceReconcile, error)

	// ResetVerifying puts exists left verifying by a crash back to pending
	// (StackTach's run_startup, for nova only; here for both).
	ResetVerifying(ctx context.Context) (int, error)
	Close() error
}

// mergeUsage folds an event into a launch. Empty fields never erase.
// overwrite events (the .end of an action) replace the fields, unless a
// later event already did; fill events (.start) only fill empty ones.
// StackTach applied events in arrival order; comparing event times makes
// the result independent of the order notifications arrive in.
func mergeUsage(old, ev InstanceUsage, overwrite bool) InstanceUsage {
	out := old
	replace := overwrite && !ev.Updated.Before(old.Updated)
	set := func(dst *string, v string) {
		if v != "" && (*dst == "" || replace) {
			*dst = v
		}
	}
	set(&out.Tenant, ev.Tenant)
	set(&out.InstanceTypeID, ev.InstanceTypeID)
	set(&out.InstanceFlavorID, ev.InstanceFlavorID)
	set(&out.FlavorName, ev.FlavorName)
	set(&out.OSArchitecture, ev.OSArchitecture)
	set(&out.OSDistro, ev.OSDistro)
	set(&out.OSVersion, ev.OSVersion)
	set(&out.RaxOptions, ev.RaxOptions)
	set(&out.ImageType, ev.ImageType)
	if replace {
		out.Updated = ev.Updated
	}
	// Same second, maybe more precise: keep the finest launched_at seen.
	if out.LaunchedAt.IsZero() || out.LaunchedAt.Nanosecond() == 0 && ev.LaunchedAt.Nanosecond() != 0 {
		out.LaunchedAt = ev.LaunchedAt
	}
	out.Instance = ev.Instance
	return out
}

// mergeImage folds a Glance event into an image's usage, the latest event
// winning for owner and size.
func mergeImage(old, ev ImageUsage) ImageUsage {
	out := old
	replace := !ev.Updated.Before(old.Updated)
	if ev.Owner != "" && (out.Owner == "" || replace) {
		out.Owner = ev.Owner
	}
	if ev.HasSize && (!out.HasSize || replace) {
		out.Size, out.HasSize = ev.Size, true
	}
	if out.CreatedAt.IsZero() {
		out.CreatedAt = ev.CreatedAt
	}
	if replace {
		out.Updated = ev.Updated
	}
	out.UUID = ev.UUID
	return out
}

// launchKey is a launch's row key: instance and launched_at's second.
type launchKey struct {
	instance string
	sec      int64
}

// launchKeys lists the launches events touch, each once, in first-seen
// order.
func launchKeys(events []UsageEvent) []launchKey {
	seen := make(map[launchKey]bool, len(events))
	var keys []launchKey
	for _, ev := range events {
		k := launchKey{ev.Usage.Instance, sec(ev.Usage.LaunchedAt)}
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	return keys
}

// foldUsage merges events, in order, into the stored launches (old, by
// key; absent is a new launch) and returns the launches to write, in the
// order of keys: exactly what merging one event at a time would leave.
func foldUsage(events []UsageEvent, keys []launchKey, old map[launchKey]InstanceUsage) []InstanceUsage {
	state := make(map[launchKey]InstanceUsage, len(keys))
	for _, ev := range events {
		k := launchKey{ev.Usage.Instance, sec(ev.Usage.LaunchedAt)}
		cur, ok := state[k]
		if !ok {
			cur = old[k]
		}
		state[k] = mergeUsage(cur, ev.Usage, ev.Overwrite)
	}
	out := make([]InstanceUsage, len(keys))
	for i, k := range keys {
		out[i] = state[k]
	}
	return out
}

// imageKeys lists the images events touch, each once, in first-seen order.
func imageKeys(events []ImageUsage) []string {
	seen := make(map[string]bool, len(events))
	var keys []string
	for _, ev := range events {
		if !seen[ev.UUID] {
			seen[ev.UUID] = true
			keys = append(keys, ev.UUID)
		}
	}
	return keys
}

// foldImages is foldUsage for images (mergeImage).
func foldImages(events []ImageUsage, keys []string, old map[string]ImageUsage) []ImageUsage {
	state := make(map[string]ImageUsage, len(keys))
	for _, ev := range events {
		cur, ok := state[ev.UUID]
		if !ok {
			cur = old[ev.UUID]
		}
		state[ev.UUID] = mergeImage(cur, ev)
	}
	out := make([]ImageUsage, len(keys))
	for i, k := range keys {
		out[i] = state[k]
	}
	return out
}
