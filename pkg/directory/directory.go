// Package directory shares what Keystone says about projects and users
// through a JetStream key-value bucket: extractors, which hold credentials,
// write it; the enricher, which holds none, reads it to map projects to VOs
// and user ids to names.
package directory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is the key-value bucket's name.
const Bucket = "tally_directory"

// Project is a Keystone project as the enricher needs it.
type Project struct {
	ID       string   `json:"id"`
	Name     string   `json:"name"`
	DomainID string   `json:"domain_id,omitempty"`
	Tags     []string `json:"tags,omitempty"`
	// Properties are the project's extra properties (VO, egi.VO, ...).
	Properties map[string]string `json:"properties,omitempty"`
}

// User is a Keystone user's name.
type User struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	DomainID string `json:"domain_id,omitempty"`
}

// Directory reads and writes the bucket, caching reads.
type Directory struct {
	kv jetstream.KeyValue

	mu       sync.RWMutex
	projects map[string]Project
	users    map[string]User
}

// Open creates the bucket if needed.
func Open(ctx context.Context, js jetstream.JetStream) (*Directory, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Keystone projects and users seen by the extractors",
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("directory bucket: %w", err)
	}
	return &Directory{kv: kv, projects: map[string]Project{}, users: map[string]User{}}, nil
}

// PutProject stores p if it changed.
func (d *Directory) PutProject(ctx context.Context, p Project) error {
	d.mu.RLock()
	old, ok := d.projects[p.ID]
	d.mu.RUnlock()
	if ok && equalProject(old, p) {
		return nil
	}
	if err := d.put(ctx, "project."+p.ID, p); err != nil {
		return err
	}
	// Keep a copy: the caller may change its maps afterwards.
	p.Tags, p.Properties = slices.Clone(p.Tags), maps.Clone(p.Properties)
	d.mu.Lock()
	d.projects[p.ID] = p
	d.mu.Unlock()
	return nil
}

// PutUser stores u if it changed.
func (d *Directory) PutUser(ctx context.Context, u User) error {
	d.mu.RLock()
	old, ok := d.users[u.ID]
	d.mu.RUnlock()
	if ok && old == u {
		return nil
	}
	if err := d.put(ctx, "user."+u.ID, u); err != nil {
		return err
	}
	d.mu.Lock()
	d.users[u.ID] = u
	d.mu.Unlock()
	return nil
}

func (d *Directory) put(ctx context.Context, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := d.kv.Put(ctx, key, data); err != nil {
		return fmt.Errorf("directory put %s: %w", key, err)
	}
	return nil
}

// Project returns the project with id; ok is false when no extractor has
// stored it.
func (d *Directory) Project(ctx context.Context, id string) (Project, bool, error) {
	d.mu.RLock()
	p, ok := d.projects[id]
	d.mu.RUnlock()
	if ok {
		return p, true, nil
	}
	ok, err := d.get(ctx, "project."+id, &p)
	if ok {
		d.mu.Lock()
		d.projects[id] = p
		d.mu.Unlock()
	}
	return p, ok, err
}

// Refresh drops the cached entry of a project so the next read sees what
// an extractor stored since (a VO property added after a failed run).
func (d *Directory) Refresh(id string) {
	d.mu.Lock()
	delete(d.projects, id)
	d.mu.Unlock()
}

// User returns the user with id.
func (d *Directory) User(ctx context.Context, id string) (User, bool, error) {
	d.mu.RLock()
	u, ok := d.users[id]
	d.mu.RUnlock()
	if ok {
		return u, true, nil
	}
	ok, err := d.get(ctx, "user."+id, &u)
	if ok {
		d.mu.Lock()
		d.users[id] = u
		d.mu.Unlock()
	}
	return u, ok, err
}

func (d *Directory) get(ctx context.Context, key string, v any) (bool, error) {
	e, err := d.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("directory get %s: %w", key, err)
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return false, fmt.Errorf("directory entry %s: %w", key, err)
	}
	return true, nil
}

func equalProject(a, b Project) bool {
	return a.ID == b.ID && a.Name == b.Name && a.DomainID == b.DomainID &&
		slices.Equal(a.Tags, b.Tags) && maps.Equal(a.Properties, b.Properties)
}
