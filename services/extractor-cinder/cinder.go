// Package cinder is the Cinder extractor: one EMI StAR storage record per
// volume and window, by cASO's rules (accounting-rules.md).
//
// What the API allows (FINDINGS.md): changes-since is not a volume filter
// (an admin gets an empty list, a project token the filter dropped), and
// deleted volumes are never listed. So every live volume is listed and
// measured up to the window's end; a volume deleted inside the window is
// not visible any more and was reported up to the end of the last window in
// which it existed. Records carry the window's end as their measurement
// time, not the wall clock, so a backfill of a past window is reproducible.
package cinder

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"
	"github.com/gophercloud/gophercloud/v2/pagination"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tally-accounting/tally/pkg/extract"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/openstack"
)

// Name is the extractor's service name.
const Name = "extractor-cinder"

// StorageType is what cASO calls a Cinder volume.
const StorageType = "Block Storage (cinder)"

// Source lists volumes.
type Source struct {
	pageSize int
	client   *gophercloud.ServiceClient
	admin    bool
}

// NewSource returns the Cinder source.
func NewSource(cfg extract.Config) *Source { return &Source{pageSize: cfg.PageSize} }

// Name implements extract.Source.
func (s *Source) Name() string { return Name }

func (s *Source) clientFor(cloud *openstack.Cloud) (*gophercloud.ServiceClient, error) {
	c, err := gopenstack.NewBlockStorageV3(cloud.Provider, cloud.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("cinder endpoint (region %q): %w", cloud.Endpoint.Region, err)
	}
	return c, nil
}

// Open implements extract.Source.
func (s *Source) Open(_ context.Context, cloud *openstack.Cloud) error {
	c, err := s.clientFor(cloud)
	s.client = c
	s.admin = slices.Contains(cloud.Roles(), "admin")
	return err
}

// CanListAll implements extract.Source. Cinder ignores all_tenants for a
// token without the admin role and answers with the token's own project, so
// probing the listing would silently miss every other project: the token's
// roles decide.
func (s *Source) CanListAll(context.Context) (bool, error) { return s.admin, nil }

// All implements extract.Source.
func (s *Source) All(ctx context.Context, windows map[string]extract.Window, _ time.Time, emit extract.Emit) error {
	return s.each(ctx, s.client, volumes.ListOpts{AllTenants: true}, func(v *volumes.Volume) error {
		w, ok := windows[v.TenantID]
		if !ok {
			return nil
		}
		return s.emit(ctx, v, v.TenantID, w, emit)
	})
}

// Project implements extract.Source.
func (s *Source) Project(ctx context.Context, cloud *openstack.Cloud, project string, w extract.Window, emit extract.Emit) error {
	c, err := s.clientFor(cloud)
	if err != nil {
		return err
	}
	return s.each(ctx, c, volumes.ListOpts{}, func(v *volumes.Volume) error {
		if v.TenantID != "" && v.TenantID != project {
			return nil
		}
		return s.emit(ctx, v, project, w, emit)
	})
}

func (s *Source) each(ctx context.Context, c *gophercloud.ServiceClient, opts volumes.ListOpts, fn func(*volumes.Volume) error) error {
	opts.Limit = s.pageSize
	err := volumes.List(c, opts).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		vs, err := volumes.ExtractVolumes(page)
		if err != nil {
			return false, err
		}
		for i := range vs {
			if err := fn(&vs[i]); err != nil {
				return false, err
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("list volumes: %w", openstack.Explain(err))
	}
	return nil
}

func (s *Source) emit(ctx context.Context, v *volumes.Volume, project string, w extract.Window, emit extract.Emit) error {
	r := Record(v, project, w)
	if r == nil {
		return nil
	}
	return emit(ctx, project, &tallyv1.Record{Key: Key(v.ID, w.To), Payload: &tallyv1.Record_Storage{Storage: r}})
}

// Key is a storage record's identity: one per volume and measurement.
func Key(volume string, measured time.Time) string {
	return fmt.Sprintf("storage/%s/%d", volume, measured.Unix())
}

// Record is the storage record of a volume for window w, or nil for a
// volume created after the window.
func Record(v *volumes.Volume, project string, w extract.Window) *tallyv1.StorageRecord {
	if v.CreatedAt.After(w.To) {
		return nil
	}
	start := v.CreatedAt
	if w.From.After(start) {
		start = w.From
	}
	active := int64(w.To.Sub(start) / time.Second)
	name, status, typ := v.Name, v.Status, StorageType
	r := &tallyv1.StorageRecord{
		RecordId:             v.ID,
		CreateTime:           timestamppb.New(w.To),
		LocalGroup:           &project,
		StartTime:            timestamppb.New(start),
		EndTime:              timestamppb.New(w.To),
		ResourceCapacityUsed: int64(v.Size) << 30,
		RecordName:           &name,
		VolumeStatus:         &status,
		VolumeCreationTime:   timestamppb.New(v.CreatedAt),
		ActiveDuration:       &active,
		StorageType:          &typ,
	}
	if v.UserID != "" {
		u := v.UserID
		r.LocalUser = &u
	}
	if v.Status == "in-use" && len(v.Attachments) > 0 {
		a := v.Attachments[0]
		server := a.ServerID
		r.AttachedTo = &server
		from := a.AttachedAt
		if w.From.After(from) {
			from = w.From
		}
		d := max(int64(w.To.Sub(from)/time.Second), 0)
		r.AttachedDuration = &d
	}
	return r
}
