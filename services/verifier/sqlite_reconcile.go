package verifier

import (
	"context"
	"fmt"
)

// The reconciler's launches in SQLite (table instance_reconcile, created
// with the others in schema).

const reconcileCols = `instance, launched_at, deleted_at, tenant, instance_type_id, instance_flavor_id, flavor_name,
	os_architecture, os_distro, os_version, rax_options, image_type, source, nova_status, reconciled`

func reconcileArgs(r InstanceReconcile) []any {
	u := r.Usage
	return []any{u.Instance, micro(u.LaunchedAt), micro(r.DeletedAt), u.Tenant, u.InstanceTypeID, u.InstanceFlavorID,
		u.FlavorName, u.OSArchitecture, u.OSDistro, u.OSVersion, u.RaxOptions, u.ImageType, r.Source, r.NovaStatus, micro(r.Reconciled)}
}

func scanReconcile(r scanner) (InstanceReconcile, error) {
	var rc InstanceReconcile
	var launched, deleted, at int64
	u := &rc.Usage
	err := r.Scan(&u.Instance, &launched, &deleted, &u.Tenant, &u.InstanceTypeID, &u.InstanceFlavorID, &u.FlavorName,
		&u.OSArchitecture, &u.OSDistro, &u.OSVersion, &u.RaxOptions, &u.ImageType, &rc.Source, &rc.NovaStatus, &at)
	u.LaunchedAt, rc.DeletedAt, rc.Reconciled = fromMicro(launched), fromMicro(deleted), fromMicro(at)
	return rc, err
}

// AddReconcile implements Store.
func (s *SQLiteStore) AddReconcile(ctx context.Context, r InstanceReconcile) error {
	err := s.exec(ctx, `INSERT OR REPLACE INTO instance_reconcile (launched_sec, `+reconcileCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, append([]any{sec(r.Usage.LaunchedAt)}, reconcileArgs(r)...)...)
	if err != nil {
		return fmt.Errorf("add reconcile %s: %w", r.Usage.Instance, err)
	}
	return nil
}

// Reconciles implements Store.
func (s *SQLiteStore) Reconciles(ctx context.Context, instance string) ([]InstanceReconcile, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+reconcileCols+` FROM instance_reconcile WHERE instance = ? ORDER BY launched_sec`, instance)
	if err != nil {
		return nil, fmt.Errorf("reconciles of %s: %w", instance, err)
	}
	out, err := collectRows(rows, scanReconcile)
	if err != nil {
		return nil, fmt.Errorf("reconciles of %s: %w", instance, err)
	}
	return out, nil
}
