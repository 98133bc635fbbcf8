package enricher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/tally-accounting/tally/pkg/bus"
	"github.com/tally-accounting/tally/pkg/directory"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// LoadMappingFile reads cASO's deprecated voms.json: {"<vo>": {"projects":
// [...]}}, with the older "tenants" (list) and "tenant" (string) keys.
// It returns project id or name → VO.
func LoadMappingFile(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mapping file: %w", err)
	}
	var raw map[string]struct {
		Projects []string `json:"projects"`
		Tenants  []string `json:"tenants"`
		Tenant   string   `json:"tenant"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("mapping file %s: %w", path, err)
	}
	out := map[string]string{}
	for vo, m := range raw {
		projects := append(append([]string{}, m.Projects...), m.Tenants...)
		if m.Tenant != "" {
			projects = append(projects, m.Tenant)
		}
		for _, p := range projects {
			if prev, ok := out[p]; ok && prev != vo {
				return nil, fmt.Errorf("mapping file %s: project %q is mapped to both %q and %q", path, p, prev, vo)
			}
			out[p] = vo
		}
	}
	return out, nil
}

// mapper completes records with the site, the VO and the user's name.
type mapper struct {
	cfg     Config
	dir     *directory.Directory
	mapping map[string]string
	logger  *slog.Logger

	mu       sync.Mutex
	unmapped map[string]bool // projects already warned about
}

// lookups memoizes, for one batch, what the directory said. A batch holds
// hundreds of records of a handful of projects and users, and a lookup
// that misses the directory's cache (a user Keystone does not name, a
// project without the VO property, which is re-read on purpose) is a
// JetStream round trip: per record, they dominated the enricher's time.
// It lives no longer than the batch, so a VO set meanwhile is seen by the
// next one, as before.
type lookups struct {
	m     *mapper
	vos   map[string]voResult
	users map[string]*string
}

type voResult struct {
	vo  string
	err error
}

// batch returns the lookups for one batch.
func (m *mapper) batch() *lookups {
	return &lookups{m: m, vos: map[string]voResult{}, users: map[string]*string{}}
}

func (l *lookups) vo(ctx context.Context, projectID string) (string, error) {
	if r, ok := l.vos[projectID]; ok {
		return r.vo, r.err
	}
	vo, err := l.m.vo(ctx, projectID)
	if err != nil && !isPermanent(err) {
		return "", err // the directory is unreachable: the batch is retried
	}
	l.vos[projectID] = voResult{vo, err}
	return vo, err
}

func (l *lookups) userName(ctx context.Context, userID string) *string {
	name, ok := l.users[userID]
	if !ok {
		name = l.m.userName(ctx, userID)
		l.users[userID] = name
	}
	if name == nil {
		return nil
	}
	// Each record gets its own copy: they are independent messages.
	n := *name
	return &n
}

func isPermanent(err error) bool {
	var perm *bus.PermanentError
	return errors.As(err, &perm)
}

func (m *mapper) vo(ctx context.Context, projectID string) (string, error) {
	var (
		p   directory.Project
		ok  bool
		err error
	)
	if projectID != "" {
		if p, ok, err = m.dir.Project(ctx, projectID); err != nil {
			return "", err
		}
	}
	vo := ""
	if ok {
		vo = p.Properties[m.cfg.VOProperty]
	}
	if vo == "" && ok {
		// An operator may have set the property since we cached the
		// project: read the bucket again before giving up.
		m.dir.Refresh(projectID)
		if p2, ok2, err := m.dir.Project(ctx, projectID); err == nil && ok2 {
			p, vo = p2, p2.Properties[m.cfg.VOProperty]
		}
	}
	if vo == "" && m.mapping != nil {
		vo = m.mapping[projectID]
		if vo == "" && p.Name != "" {
			vo = m.mapping[p.Name]
		}
	}
	if vo == "" {
		vo = m.cfg.DefaultVO
	}
	if vo == "" {
		m.mu.Lock()
		first := !m.unmapped[projectID]
		m.unmapped[projectID] = true
		m.mu.Unlock()
		if first {
			m.logger.Warn("project has no VO: its records are held in the dead-letter subject and its window does not move",
				"project_id", projectID, "project_name", p.Name, "vo_property", m.cfg.VOProperty)
		}
		return "", bus.Permanent(fmt.Errorf("project %s (%s) has no VO: set the Keystone property %q, a mapping_file entry or default_vo",
			projectID, p.Name, m.cfg.VOProperty))
	}
	return vo, nil
}

func (m *mapper) userName(ctx context.Context, userID string) *string {
	if userID == "" {
		return nil
	}
	u, ok, err := m.dir.User(ctx, userID)
	if err != nil || !ok || u.Name == "" {
		return nil
	}
	return &u.Name
}

// enrich completes r in place.
func (m *mapper) enrich(ctx context.Context, r *tallyv1.Record) error {
	return m.batch().enrich(ctx, r)
}

// enrich completes r in place, looking up what the batch did not yet.
func (l *lookups) enrich(ctx context.Context, r *tallyv1.Record) error {
	m := l.m
	prov := r.GetProvenance()
	if prov == nil {
		prov = &tallyv1.Provenance{}
		r.Provenance = prov
	}
	site, service := m.cfg.SiteName, m.cfg.ServiceName
	prov.Site, prov.Service = site, service
	vo, err := l.vo(ctx, prov.GetProjectId())
	if err != nil {
		return err
	}
	switch p := r.GetPayload().(type) {
	case *tallyv1.Record_Cloud:
		c := p.Cloud
		c.SiteName, c.CloudComputeService, c.Fqan = site, service, vo
		c.CloudType = orDefault(c.CloudType, m.cfg.CloudType)
		if c.GlobalUserName == nil {
			c.GlobalUserName = l.userName(ctx, c.GetLocalUserId())
		}
	case *tallyv1.Record_Accelerator:
		a := p.Accelerator
		a.SiteName, a.CloudComputeService, a.Fqan = site, service, vo
		a.CloudType = orDefault(a.CloudType, m.cfg.CloudType)
		if a.GlobalUserName == nil {
			a.GlobalUserName = l.userName(ctx, prov.GetOwnerUserId())
		}
	case *tallyv1.Record_Ip:
		ip := p.Ip
		ip.SiteName, ip.CloudComputeService, ip.Fqan = site, &service, vo
		ip.CloudType = orDefault(ip.CloudType, m.cfg.CloudType)
		if ip.GlobalUserName == nil && ip.LocalUser != nil {
			ip.GlobalUserName = l.userName(ctx, ip.GetLocalUser())
		}
	case *tallyv1.Record_Storage:
		s := p.Storage
		s.Site, s.StorageSystem, s.Group = &site, service, &vo
		if s.UserIdentity == nil && s.LocalUser != nil {
			s.UserIdentity = l.userName(ctx, s.GetLocalUser())
		}
	case *tallyv1.Record_Energy:
		e := p.Energy
		e.SiteName, e.CloudComputeService, e.Owner = site, service, vo
		e.CloudType = orDefault(e.CloudType, m.cfg.CloudType)
	}
	return nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
