package verifier

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// storeState is everything a store holds that ingestion writes.
type storeState struct {
	Launches     []InstanceUsage
	Deletes      []InstanceDelete
	Exists       []InstanceExists
	Images       []ImageUsage
	ImageDeletes map[string][]ImageDelete
	ImageExists  []ImageExists
}

func readState(t *testing.T, s Store, images []string) storeState {
	t.Helper()
	ctx := context.Background()
	var st storeState
	var err error
	st.Launches, err = s.AllLaunches(ctx)
	mustDo(t, err)
	st.Deletes, err = s.AllDeletes(ctx)
	mustDo(t, err)
	st.Exists, err = s.InstanceExistsList(ctx, ExistsFilter{})
	mustDo(t, err)
	st.Images, err = s.AllImages(ctx)
	mustDo(t, err)
	st.ImageDeletes = map[string][]ImageDelete{}
	for _, img := range images {
		st.ImageDeletes[img], err = s.ImageDeletes(ctx, img)
		mustDo(t, err)
	}
	st.ImageExists, err = s.ImageExistsList(ctx, ExistsFilter{})
	mustDo(t, err)
	return st
}

// applyOneByOne makes b's writes in order, each in a batch of its own,
// so that every write reads what the one before committed.
func applyOneByOne(t *testing.T, s Store, b Batch) {
	t.Helper()
	for _, ev := range b.Usage {
		apply(t, s, Batch{Usage: []UsageEvent{ev}})
	}
	for _, d := range b.Deletes {
		apply(t, s, Batch{Deletes: []InstanceDelete{d}})
	}
	for _, e := range b.Exists {
		apply(t, s, Batch{Exists: []InstanceExists{e}})
	}
	for _, u := range b.ImageUsage {
		apply(t, s, Batch{ImageUsage: []ImageUsage{u}})
	}
	for _, d := range b.ImageDeletes {
		apply(t, s, Batch{ImageDeletes: []ImageDelete{d}})
	}
	for _, e := range b.ImageExists {
		apply(t, s, Batch{ImageExists: []ImageExists{e}})
	}
}

// eachStorePair runs fn once per store kind with two fresh stores.
func eachStorePair(t *testing.T, fn func(t *testing.T, a, b Store)) {
	for _, be := range storeBackends {
		t.Run(be.name, func(t *testing.T) { fn(t, openConfigured(t, be.config(t)), openConfigured(t, be.config(t))) })
	}
}

const (
	batchImg  = "9b000001-0000-4000-8000-0000000000b1"
	batchImg2 = "9b000001-0000-4000-8000-0000000000b2"
)

// batchCases are batches whose items interact: the same launch touched by
// fill and overwrite events out of event-time order, duplicates, a launch
// at the same second with and without microseconds, several launches of
// one instance.
func batchCases() map[string]*Batch {
	l := launch()
	at := func(u InstanceUsage, updated time.Time, mut func(*InstanceUsage)) InstanceUsage {
		u.Updated = updated
		if mut != nil {
			mut(&u)
		}
		return u
	}
	fill := at(InstanceUsage{Instance: inst, LaunchedAt: l1.Truncate(time.Second), Tenant: "from-start", OSDistro: "debian"}, apb.Add(-time.Hour), nil)
	end := at(l, apb, nil)
	resized := at(l, apb.Add(time.Hour), func(u *InstanceUsage) { u.InstanceFlavorID, u.FlavorName = "resized", "r.1" })
	stale := at(l, apb.Add(-2*time.Hour), func(u *InstanceUsage) { u.InstanceFlavorID, u.Tenant = "stale", "stale" })
	relaunch := at(l, ape, func(u *InstanceUsage) { u.LaunchedAt = ape.Add(-10 * time.Minute) })
	other := at(InstanceUsage{Instance: "i2", LaunchedAt: l1, Tenant: "t2"}, apb, nil)
	ex := func(k string, mut func(*InstanceExists)) InstanceExists {
		return exists(func(e *InstanceExists) {
			e.Key, e.MessageID, e.Raw, e.RoutingKey = k, "m-"+k, []byte(`{"k":"`+k+`"}`), "notifications.info"
			if mut != nil {
				mut(e)
			}
		})
	}
	imgEx := func(k, uuid string, raw bool) ImageExists {
		e := ImageExists{Key: k, MessageID: "m-" + k, Image: ImageUsage{UUID: uuid, Owner: "o", Size: 3, HasSize: true, CreatedAt: apb},
			AuditBegin: apb, AuditEnd: ape, Received: ape, RoutingKey: "notifications.info"}
		if raw {
			e.Raw = []byte("{}")
		}
		return e
	}
	return map[string]*Batch{
		"in event order": {Usage: []UsageEvent{{fill, false}, {end, true}, {resized, true}}},
		"out of order":   {Usage: []UsageEvent{{resized, true}, {stale, true}, {end, true}, {fill, false}}},
		"duplicates": {
			Usage:   []UsageEvent{{end, true}, {end, true}, {fill, false}, {end, true}, {fill, false}},
			Deletes: []InstanceDelete{{inst, l1, del1}, {inst, l1, del1}, {inst, l1, ape}},
			Exists:  []InstanceExists{ex("a", nil), ex("a", nil), ex("b", nil), ex("a", nil)},
		},
		"several launches and instances": {
			Usage:   []UsageEvent{{relaunch, true}, {other, false}, {stale, true}, {end, true}, {relaunch, false}, {other, true}},
			Deletes: []InstanceDelete{{inst, l1, del1}, {inst, relaunch.LaunchedAt, ape}, {"i2", l1, ape}},
			Exists:  []InstanceExists{ex("c", func(e *InstanceExists) { e.Usage.Instance = "i2" }), ex("d", nil)},
		},
		"images": {
			ImageUsage: []ImageUsage{{UUID: batchImg, Owner: "late", Updated: apb.Add(time.Minute)}, {UUID: batchImg, Owner: "early", Size: 7, HasSize: true,
				CreatedAt: apb, Updated: apb}, {UUID: batchImg2, Owner: "x", Updated: apb}, {UUID: batchImg, Size: 9, HasSize: true, Updated: apb.Add(time.Minute)}},
			ImageDeletes: []ImageDelete{{batchImg, del1}, {batchImg, ape}, {batchImg2, ape}},
			ImageExists:  []ImageExists{imgEx("e", batchImg, true), imgEx("e", batchImg2, false), imgEx("e", batchImg, true)},
		},
	}
}

// TestStoreApplyBatch: a batch leaves the state its items leave applied
// one by one, in order, and applying it again (a crash between the commit
// and the acks: the whole batch is redelivered) changes nothing.
func TestStoreApplyBatch(t *testing.T) {
	for name, b := range batchCases() {
		t.Run(name, func(t *testing.T) {
			eachStorePair(t, func(t *testing.T, one, batched Store) {
				ctx := context.Background()
				imgs := []string{batchImg, batchImg2}
				applyOneByOne(t, one, *b)
				mustDo(t, batched.ApplyBatch(ctx, b))
				want := readState(t, one, imgs)
				if diff := cmp.Diff(want, readState(t, batched, imgs)); diff != "" {
					t.Errorf("batch vs one by one (-one by one +batch):\n%s", diff)
				}
				mustDo(t, batched.ApplyBatch(ctx, b))
				if diff := cmp.Diff(want, readState(t, batched, imgs)); diff != "" {
					t.Errorf("batch redelivered (-first +again):\n%s", diff)
				}
			})
		})
	}
}

// TestStoreApplyBatchRedeliveredLater: a batch redelivered after later
// batches were applied (a lost ack, found out after AckWait) changes
// nothing either, and splitting a run of events into batches anywhere
// gives the same state.
func TestStoreApplyBatchRedeliveredLater(t *testing.T) {
	var all Batch
	for _, name := range []string{"out of order", "duplicates", "several launches and instances", "images"} {
		all.append(batchCases()[name])
	}
	eachStorePair(t, func(t *testing.T, one, batched Store) {
		ctx := context.Background()
		imgs := []string{batchImg, batchImg2}
		applyOneByOne(t, one, all)
		want := readState(t, one, imgs)
		first := &Batch{Usage: all.Usage[:3], Deletes: all.Deletes[:2], Exists: all.Exists[:1], ImageUsage: all.ImageUsage[:1]}
		rest := &Batch{Usage: all.Usage[3:], Deletes: all.Deletes[2:], Exists: all.Exists[1:], ImageUsage: all.ImageUsage[1:],
			ImageDeletes: all.ImageDeletes, ImageExists: all.ImageExists}
		mustDo(t, batched.ApplyBatch(ctx, first), batched.ApplyBatch(ctx, rest), batched.ApplyBatch(ctx, first))
		if diff := cmp.Diff(want, readState(t, batched, imgs)); diff != "" {
			t.Errorf("split and redelivered (-one by one +batches):\n%s", diff)
		}
	})
}

// TestStoreApplyBatchAllOrNothing: a batch the store refuses leaves
// nothing of itself behind.
func TestStoreApplyBatchAllOrNothing(t *testing.T) {
	eachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		b := batchCases()["duplicates"]
		b.Usage = append(b.Usage, UsageEvent{Usage: InstanceUsage{Instance: "no-launch"}})
		if err := s.ApplyBatch(ctx, b); err == nil {
			t.Fatal("a batch with a launch without launched_at was applied")
		}
		if st := readState(t, s, nil); len(st.Launches)+len(st.Deletes)+len(st.Exists) != 0 {
			t.Errorf("a refused batch left %+v", st)
		}
	})
}

// TestStoreFinishBatch finishes exists in one transaction, like one by
// one.
func TestStoreFinishBatch(t *testing.T) {
	eachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		b := Batch{ImageExists: []ImageExists{{Key: "ik", MessageID: "im", Image: ImageUsage{UUID: "img"}, AuditBegin: apb, AuditEnd: ape}}}
		for i := range 4 {
			b.Exists = append(b.Exists, exists(func(e *InstanceExists) { e.Key = fmt.Sprint("k", i) }))
		}
		apply(t, s, b)
		c, err := s.ClaimInstanceExists(ctx, Claim{EndingMax: ape, Limit: 10})
		mustDo(t, err)
		ci, err := s.ClaimImageExists(ctx, Claim{EndingMax: ape, Limit: 10})
		mustDo(t, err)
		f := &Failure{Field: "tenant", Expected: "a", Actual: "b", Reason: "Tenant differs"}
		mustDo(t, s.FinishInstanceExistsBatch(ctx, []Finished{{c[0].ID, StatusVerified, nil}, {c[2].ID, StatusFailed, f}, {c[3].ID, StatusVerified, nil}}),
			s.FinishImageExistsBatch(ctx, []Finished{{ci[0].ID, StatusFailed, f}}), s.FinishInstanceExistsBatch(ctx, nil))
		got, err := s.InstanceExistsList(ctx, ExistsFilter{})
		mustDo(t, err)
		var statuses []Status
		for _, e := range got {
			statuses = append(statuses, e.Status)
		}
		if diff := cmp.Diff([]Status{StatusVerified, claimedStatus(s), StatusFailed, StatusVerified}, statuses); diff != "" || got[2].Failure == nil || *got[2].Failure != *f {
			t.Errorf("statuses (-want +got):\n%s\nfailure %+v", diff, got[2].Failure)
		}
		imgs, err := s.ImageExistsList(ctx, ExistsFilter{})
		mustDo(t, err)
		if len(imgs) != 1 || imgs[0].Status != StatusFailed || imgs[0].Failure == nil {
			t.Errorf("image exists %+v", imgs)
		}
	})
}

// TestStoreLaunchesOf reads launches and deletes of several instances at
// once, like Launches and Deletes of each.
func TestStoreLaunchesOf(t *testing.T) {
	eachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		mustDo(t, s.ApplyBatch(ctx, batchCases()["several launches and instances"]))
		ids := []string{inst, "i2", "unknown", inst}
		launches, err := s.LaunchesOf(ctx, ids)
		mustDo(t, err)
		deletes, err := s.DeletesOf(ctx, ids)
		mustDo(t, err)
		for _, id := range ids {
			l, err := s.Launches(ctx, id)
			mustDo(t, err)
			d, err := s.Deletes(ctx, id)
			mustDo(t, err)
			if diff := cmp.Diff(l, launches[id]); diff != "" {
				t.Errorf("launches of %s (-Launches +LaunchesOf):\n%s", id, diff)
			}
			if diff := cmp.Diff(d, deletes[id]); diff != "" {
				t.Errorf("deletes of %s (-Deletes +DeletesOf):\n%s", id, diff)
			}
		}
		if len(launches[inst]) != 2 || len(launches["unknown"]) != 0 {
			t.Errorf("launches %v", launches)
		}
		none, err := s.LaunchesOf(ctx, nil)
		mustDo(t, err)
		if len(none) != 0 {
			t.Errorf("launches of no instance: %v", none)
		}
	})
}

// TestSQLiteClaimPlan: each part of a claim reads only the rows it takes,
// through the index of the pending exists, without sorting or scanning
// the table; a million exists made a claim that sorted or scanned them
// all the slowest part of the verifier.
func TestSQLiteClaimPlan(t *testing.T) {
	s, err := OpenSQLite(context.Background(), t.TempDir()+"/plan.db", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tc := range []struct {
		query, raw, part, search string
		args                     []any
	}{
		{sqliteClaimExists, existsRaw, claimSamePeriod, "instance_exists_waiting (audit_end=? AND id>?)", []any{0, 0, 0, 10}},
		{sqliteClaimExists, "NULL", claimLaterPeriod, "instance_exists_waiting (audit_end>? AND audit_end<?)", []any{0, 0, 10}},
		{sqliteClaimImageExists, "raw", claimSamePeriod, "image_exists_waiting (audit_end=? AND id>?)", []any{0, 0, 0, 10}},
		{sqliteClaimImageExists, "raw", claimLaterPeriod, "image_exists_waiting (audit_end>? AND audit_end<?)", []any{0, 0, 10}},
	} {
		rows, err := s.db.Query("EXPLAIN QUERY PLAN "+fmt.Sprintf(tc.query, tc.raw, tc.part), tc.args...)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused any
			var detail string
			mustDo(t, rows.Scan(&id, &parent, &unused, &detail))
			plan = append(plan, detail)
		}
		mustDo(t, rows.Err())
		rows.Close()
		all := strings.Join(plan, "; ")
		if strings.Contains(all, "SCAN") || strings.Contains(all, "TEMP B-TREE") || !strings.Contains(all, tc.search) {
			t.Errorf("claim plan %q: want a search of %s only", all, tc.search)
		}
	}
}
