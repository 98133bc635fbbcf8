package verifier

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tally-accounting/tally/services/verifier/verifiertest"
)

func openStore(t testing.TB) *SQLiteStore {
	t.Helper()
	s, err := OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "verifier.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func testConfig() Config {
	c := DefaultConfig()
	c.PoolSize, c.BatchSize = 3, 7 // several batches, several workers
	return c
}

// TestRecordedNotificationsVerify feeds every recorded notification of the
// Zed cloud (Nova legacy and versioned, Keystone) to the verifier, in
// arrival order and then in reverse, and checks that all 30 exists verify
// against the usage tracked from the same files.
func TestRecordedNotificationsVerify(t *testing.T) {
	recorded := verifiertest.RecordedNotifications(t, "*.json", 300)
	for i := range 2 * len(storeBackends) {
		order, b := []string{"recorded", "reversed"}[i%2], storeBackends[i/2]
		t.Run(b.name+"/"+order, func(t *testing.T) {
			files := slices.Clone(recorded)
			if order == "reversed" {
				slices.Reverse(files)
			}
			store := openConfigured(t, b.config(t))
			v := New(testConfig(), nil, nil, nil, WithStore(store), WithClock(func() time.Time {
				return time.Date(2026, 11, 23, 13, 0, 0, 0, time.UTC)
			}))
			ctx := context.Background()
			for _, f := range files {
				key := "notifications.info"
				if strings.Contains(f.Name, "versioned_notifications") {
					key = "versioned_notifications.info"
				}
				if err := v.Ingest(ctx, f.Body, key); err != nil {
					t.Fatalf("%s: %v", f.Name, err)
				}
			}
			res, err := v.VerifyPending(ctx)
			if err != nil {
				t.Fatal(err)
			}
			all, err := store.InstanceExistsList(ctx, ExistsFilter{})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range all {
				if e.Status != StatusVerified {
					t.Errorf("%s %s (%s): %s %+v", e.EventType, e.MessageID, e.Usage.Instance, e.Status, e.Failure)
				}
			}
			if diff := cmp.Diff(PassResult{Verified: 30}, res); diff != "" || len(all) != 30 {
				t.Errorf("%d exists stored; pass (-want +got):\n%s", len(all), diff)
			}
			// vm-cms-1 was resized: two launches, old and new flavor.
			launches, err := store.Launches(ctx, "1fbc870c-048d-4f34-abcf-2623ac9dd41d")
			if err != nil {
				t.Fatal(err)
			}
			var flavors []string
			for _, l := range launches {
				flavors = append(flavors, l.FlavorName+"/"+l.InstanceTypeID)
			}
			if diff := cmp.Diff([]string{"m1.plain/1", "m1.large/2"}, flavors); diff != "" {
				t.Errorf("vm-cms-1 launches (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRecordedNotificationsDetectTampering changes one field of recorded
// exists and expects the failure to name it.
func TestRecordedNotificationsDetectTampering(t *testing.T) {
	tests := []struct {
		file      string
		old, new  string
		wantField string
	}{
		{"0327_nova_notifications.info_compute.instance.exists.json", `\"instance_flavor_id\": \"1ccc9366`, `\"instance_flavor_id\": \"2a06402c`, "instance_flavor_id"},
		{"0327_nova_notifications.info_compute.instance.exists.json", `\"instance_type\": \"m1.plain\"`, `\"instance_type\": \"m1.large\"`, "instance_type"},
		{"0327_nova_notifications.info_compute.instance.exists.json", `\"launched_at\": \"2026-11-23T11:56:52.000000\"`, `\"launched_at\": \"2026-11-23T11:50:52.000000\"`, "launched_at"},
		{"0327_nova_notifications.info_compute.instance.exists.json", `\"launched_at\": \"2026-11-23T11:56:52.000000\"`, `\"launched_at\": null`, "launched_at"},
		{"0327_nova_notifications.info_compute.instance.exists.json", `\"tenant_id\": \"c9a9ee822ef148159e0fc394466a970e\"`, `\"tenant_id\": \"bbedcafd4e8f41f0bc3dd280dbb88f8f\"`, "tenant"},
		{"0328_nova_versioned_notifications.info_instance.exists.json", `\"flavorid\": \"1ccc9366`, `\"flavorid\": \"2a06402c`, "instance_flavor_id"},
		{"0323_nova_notifications.info_compute.instance.exists.json", `\"terminated_at\": \"2026-11-23T12:00:41.000000\"`, `\"terminated_at\": \"2026-11-23T12:00:45.000000\"`, "deleted_at"},
		{"0327_nova_notifications.info_compute.instance.exists.json", `\"launched_at\": \"2026-11-23T11:56:52.000000\"`, `\"launched_at\": \"yesterday\"`, "launched_at"},
	}
	files := verifiertest.RecordedNotifications(t, "*_nova_*.json", 100)
	for i := range len(tests) * len(storeBackends) {
		tt, b := tests[i/len(storeBackends)], storeBackends[i%len(storeBackends)]
		t.Run(b.name+"/"+tt.wantField+"/"+tt.file[:4], func(t *testing.T) {
			store := openConfigured(t, b.config(t))
			v := New(testConfig(), nil, nil, nil, WithStore(store), WithClock(func() time.Time {
				return time.Date(2026, 11, 23, 13, 0, 0, 0, time.UTC)
			}))
			ctx := context.Background()
			var target string
			for _, f := range files {
				body := f.Body
				if f.Name == tt.file {
					s := string(body)
					if !strings.Contains(s, tt.old) {
						t.Fatalf("%s does not contain %s", tt.file, tt.old)
					}
					body = []byte(strings.Replace(s, tt.old, tt.new, 1))
					target = f.Name
				}
				if err := v.Ingest(ctx, body, ""); err != nil {
					t.Fatal(err)
				}
			}
			if target == "" {
				t.Fatalf("no %s", tt.file)
			}
			if _, err := v.VerifyPending(ctx); err != nil {
				t.Fatal(err)
			}
			failed, err := store.InstanceExistsList(ctx, ExistsFilter{Status: StatusFailed})
			if err != nil {
				t.Fatal(err)
			}
			if len(failed) != 1 || failed[0].Failure == nil || failed[0].Failure.Field != tt.wantField {
				for _, f := range failed {
					t.Logf("failed: %s %+v", f.EventType, f.Failure)
				}
				t.Fatalf("%d failed, want exactly the tampered one failing on %s", len(failed), tt.wantField)
			}
			t.Logf("%s: reason: %s (expected %q, actual %q)", tt.new, failed[0].Failure.Reason, failed[0].Failure.Expected, failed[0].Failure.Actual)
		})
	}
}
