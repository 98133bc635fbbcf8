// Package energy is the energy extractor (cASO 5.2's): per-VM energy from a
// Prometheus query_range over the window, with the VMs from Nova.
//
// cASO asks Prometheus once per VM and chunk; this asks once per chunk for
// every VM (the uuid label tells them apart), or once per project when the
// metric carries a project label, and it also reports VMs deleted inside
// the window, which cASO's live-only listing misses.
package energy

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"github.com/gophercloud/gophercloud/v2/pagination"
	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tally-accounting/tally/pkg/config"
	"github.com/tally-accounting/tally/pkg/extract"
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/openstack"
)

// Name is the extractor's service name.
const Name = "extractor-energy"

// maxPoints bounds the samples of one series per query (Prometheus refuses
// more than 11,000).
const maxPoints = 11000

// Config configures the energy extractor; the Prometheus keys are cASO's.
type Config struct {
	extract.Config `yaml:",inline"`
	// Endpoint of the Prometheus HTTP API.
	Endpoint string `yaml:"prometheus_endpoint"`
	// MetricName is the per-VM power metric.
	MetricName string `yaml:"prometheus_metric_name"`
	// UUIDLabel is the label holding the VM UUID.
	UUIDLabel string `yaml:"vm_uuid_label_name"`
	// ProjectLabel, when the metric has one, lets per-project mode ask once
	// per project instead of once per VM.
	ProjectLabel string `yaml:"project_label_name"`
	// Labels are extra key:value matchers.
	Labels []string `yaml:"labels"`
	// Step between samples.
	Step time.Duration `yaml:"prometheus_step"`
	// VerifySSL checks the server's certificate.
	VerifySSL bool `yaml:"prometheus_verify_ssl"`
	// Unit of the metric: microwatts (cASO's, from Scaphandre) or watts.
	Unit string `yaml:"unit"`
	// CPUNormalizationFactor multiplies the energy.
	CPUNormalizationFactor float64 `yaml:"cpu_normalization_factor"`
	// Microversion of the compute API (2.47+ embeds the flavor).
	Microversion string `yaml:"microversion"`
}

// DefaultConfig returns cASO's defaults.
func DefaultConfig() Config {
	return Config{
		Config:                 extract.DefaultConfig(),
		Endpoint:               "http://localhost:9090",
		MetricName:             "prometheus_value",
		UUIDLabel:              "uuid",
		Labels:                 []string{"type_instance:scaph_process_power_microwatts"},
		Step:                   30 * time.Second,
		VerifySSL:              true,
		Unit:                   "microwatts",
		CPUNormalizationFactor: 1,
		Microversion:           "2.79",
	}
}

// Validate implements config.Validator.
func (c Config) Validate() error {
	if err := c.Config.Validate(); err != nil {
		return err
	}
	switch {
	case !strings.HasPrefix(c.Endpoint, "http://") && !strings.HasPrefix(c.Endpoint, "https://"):
		return config.Errorf("prometheus_endpoint", "%q is not an http(s) URL", c.Endpoint)
	case c.MetricName == "":
		return config.Errorf("prometheus_metric_name", "is empty")
	case c.UUIDLabel == "":
		return config.Errorf("vm_uuid_label_name", "is empty")
	case c.Step < time.Second:
		return config.Errorf("prometheus_step", "must be at least 1s")
	case c.Unit != "microwatts" && c.Unit != "watts":
		return config.Errorf("unit", "%q is not microwatts or watts", c.Unit)
	case c.CPUNormalizationFactor <= 0:
		return config.Errorf("cpu_normalization_factor", "must be positive")
	}
	for _, l := range c.Labels {
		if k, _, ok := strings.Cut(l, ":"); !ok || strings.TrimSpace(k) == "" {
			return config.Errorf("labels", "%q is not key:value", l)
		}
	}
	return nil
}

// Source lists servers from Nova and their energy from Prometheus.
type Source struct {
	cfg     Config
	logger  *slog.Logger
	compute *gophercloud.ServiceClient
	prom    promv1.API
}

// NewSource returns the energy source.
func NewSource(cfg Config, logger *slog.Logger) *Source { return &Source{cfg: cfg, logger: logger} }

// Name implements extract.Source.
func (s *Source) Name() string { return Name }

// Open implements extract.Source.
func (s *Source) Open(_ context.Context, cloud *openstack.Cloud) error {
	c, err := s.computeFor(cloud)
	if err != nil {
		return err
	}
	s.compute = c
	rt := http.DefaultTransport.(*http.Transport).Clone()
	if !s.cfg.VerifySSL {
		if rt.TLSClientConfig == nil {
			rt.TLSClientConfig = &tls.Config{}
		}
		rt.TLSClientConfig.InsecureSkipVerify = true //nolint:gosec // the operator asked for it
	}
	client, err := api.NewClient(api.Config{Address: s.cfg.Endpoint, RoundTripper: rt})
	if err != nil {
		return fmt.Errorf("prometheus %s: %w", s.cfg.Endpoint, err)
	}
	s.prom = promv1.NewAPI(client)
	return nil
}

func (s *Source) computeFor(cloud *openstack.Cloud) (*gophercloud.ServiceClient, error) {
	c, err := gopenstack.NewComputeV2(cloud.Provider, cloud.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("nova endpoint (region %q): %w", cloud.Endpoint.Region, err)
	}
	c.Microversion = s.cfg.Microversion
	return c, nil
}

// CanListAll implements extract.Source.
func (s *Source) CanListAll(ctx context.Context) (bool, error) {
	return openstack.CanListAllServers(ctx, s.compute)
}

type vm struct {
	server  *servers.Server
	project string
}

// All implements extract.Source.
func (s *Source) All(ctx context.Context, windows map[string]extract.Window, since time.Time, emit extract.Emit) error {
	vms, err := s.list(ctx, s.compute, true, since, func(p string) bool { _, ok := windows[p]; return ok })
	if err != nil {
		return err
	}
	// Windows differ per project only by their start: ask once from the
	// earliest, and sum each VM from its own window's start.
	to := time.Time{}
	for _, w := range windows {
		to = w.To
	}
	samples, err := s.energy(ctx, s.selector(nil), gridStart(since, vms, s.cfg.Step), to)
	if err != nil {
		return err
	}
	return s.emitAll(ctx, vms, windows, samples, emit)
}

// gridStart skips the part of the window before the oldest VM was created
// (a first run starts in 1970), keeping the samples on the window's grid.
func gridStart(from time.Time, vms []vm, step time.Duration) time.Time {
	if len(vms) == 0 {
		return from
	}
	oldest := vms[0].server.Created
	for _, v := range vms[1:] {
		if v.server.Created.Before(oldest) {
			oldest = v.server.Created
		}
	}
	if !oldest.After(from) {
		return from
	}
	return from.Add(oldest.Sub(from) / step * step)
}

// Project implements extract.Source.
func (s *Source) Project(ctx context.Context, cloud *openstack.Cloud, project string, w extract.Window, emit extract.Emit) error {
	c, err := s.computeFor(cloud)
	if err != nil {
		return err
	}
	vms, err := s.list(ctx, c, false, w.From, func(p string) bool { return p == project })
	if err != nil {
		return err
	}
	windows := map[string]extract.Window{project: w}
	samples := map[string][]sample{}
	if s.cfg.ProjectLabel != "" {
		if samples, err = s.energy(ctx, s.selector(map[string]string{s.cfg.ProjectLabel: project}), gridStart(w.From, vms, s.cfg.Step), w.To); err != nil {
			return err
		}
	} else {
		for _, v := range vms {
			got, err := s.energy(ctx, s.selector(map[string]string{s.cfg.UUIDLabel: v.server.ID}), gridStart(w.From, []vm{v}, s.cfg.Step), w.To)
			if err != nil {
				return err
			}
			samples[v.server.ID] = got[v.server.ID]
		}
	}
	return s.emitAll(ctx, vms, windows, samples, emit)
}

// list returns the servers changed since since and the live ones, once each.
func (s *Source) list(ctx context.Context, c *gophercloud.ServiceClient, all bool, since time.Time, want func(string) bool) ([]vm, error) {
	seen := map[string]bool{}
	var out []vm
	for _, opts := range []servers.ListOpts{
		{AllTenants: all, ChangesSince: since.UTC().Format(time.RFC3339), Limit: s.cfg.PageSize},
		{AllTenants: all, Limit: s.cfg.PageSize},
	} {
		err := servers.List(c, opts).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
			ss, err := servers.ExtractServers(page)
			if err != nil {
				return false, err
			}
			for i := range ss {
				if seen[ss[i].ID] || !want(ss[i].TenantID) {
					continue
				}
				seen[ss[i].ID] = true
				out = append(out, vm{server: &ss[i], project: ss[i].TenantID})
			}
			return true, nil
		})
		if err != nil {
			return nil, fmt.Errorf("list servers: %w", openstack.Explain(err))
		}
	}
	return out, nil
}

func (s *Source) selector(extra map[string]string) string {
	var ms []string
	for _, l := range s.cfg.Labels {
		k, v, _ := strings.Cut(l, ":")
		ms = append(ms, fmt.Sprintf("%s=%q", strings.TrimSpace(k), strings.TrimSpace(v)))
	}
	for _, k := range slices.Sorted(maps.Keys(extra)) {
		ms = append(ms, fmt.Sprintf("%s=%q", k, extra[k]))
	}
	if len(ms) == 0 {
		return s.cfg.MetricName
	}
	return s.cfg.MetricName + "{" + strings.Join(ms, ",") + "}"
}

type sample struct {
	at    time.Time
	value float64
}

// energy returns each VM's samples in [from, to], asking in chunks of at
// most maxPoints steps.
func (s *Source) energy(ctx context.Context, query string, from, to time.Time) (map[string][]sample, error) {
	out := map[string][]sample{}
	for start := from; start.Before(to); {
		end := start.Add(time.Duration(maxPoints-1) * s.cfg.Step)
		if end.After(to) {
			end = to
		}
		val, warnings, _, err := s.prom.QueryRange(ctx, query, promv1.Range{Start: start, End: end, Step: s.cfg.Step})
		if err != nil {
			return nil, fmt.Errorf("prometheus query_range %s [%s, %s]: %w", query, start.Format(time.RFC3339), end.Format(time.RFC3339), err)
		}
		for _, w := range warnings {
			s.logger.Warn("prometheus warning", "query", query, "warning", w)
		}
		matrix, ok := val.(model.Matrix)
		if !ok {
			return nil, fmt.Errorf("prometheus query_range %s: a %s, not a matrix", query, val.Type())
		}
		for _, series := range matrix {
			id := string(series.Metric[model.LabelName(s.cfg.UUIDLabel)])
			for _, p := range series.Values {
				out[id] = append(out[id], sample{at: p.Timestamp.Time(), value: float64(p.Value)})
			}
		}
		// The next chunk starts one step on: the boundary sample is not
		// counted twice.
		start = end.Add(s.cfg.Step)
	}
	return out, nil
}

func (s *Source) emitAll(ctx context.Context, vms []vm, windows map[string]extract.Window, samples map[string][]sample, emit extract.Emit) error {
	for _, v := range vms {
		w := windows[v.project]
		r := s.Record(v.server, w, samples[v.server.ID])
		if r == nil {
			continue
		}
		rec := &tallyv1.Record{Key: Key(v.server.ID, w.To), Payload: &tallyv1.Record_Energy{Energy: r}}
		if err := emit(ctx, v.project, rec); err != nil {
			return err
		}
	}
	return nil
}

// Key is an energy record's identity: one per VM and window end.
func Key(vm string, to time.Time) string { return fmt.Sprintf("energy/%s/%d", vm, to.Unix()) }

// Record is a VM's energy record for window w from its power samples, or
// nil when the VM drew nothing in the window (cASO skips those too) or was
// created after it.
func (s *Source) Record(sv *servers.Server, w extract.Window, samples []sample) *tallyv1.EnergyRecord {
	if !sv.Created.Before(w.To) {
		return nil
	}
	start := sv.Created
	if w.From.After(start) {
		start = w.From
	}
	perWh := s.cfg.Step.Seconds() / 3600 // power × step seconds → Wh
	if s.cfg.Unit == "microwatts" {
		perWh /= 1e6
	}
	var wh float64
	for _, p := range samples {
		if !p.at.Before(start) && !p.at.After(w.To) {
			wh += p.value * perWh
		}
	}
	if wh <= 0 {
		return nil
	}
	wh *= s.cfg.CPUNormalizationFactor
	wall := int64(w.To.Sub(start) / time.Second)
	vcpus := int64(1)
	if n, ok := sv.Flavor["vcpus"].(float64); ok && n > 0 {
		vcpus = int64(n)
	}
	cpu := wall * vcpus
	r := &tallyv1.EnergyRecord{
		ExecUnitId:             sv.ID,
		StartExecTime:          timestamppb.New(start),
		EndExecTime:            timestamppb.New(w.To),
		EnergyWh:               wh,
		CpuNormalizationFactor: s.cfg.CPUNormalizationFactor,
		WallClockTimeS:         wall,
		CpuDurationS:           cpu,
		ExecUnitFinished:       strings.EqualFold(sv.Status, "deleted"),
		Status:                 strings.ToLower(sv.Status),
	}
	if wh > 0 {
		r.Work = float64(cpu) / wh
	}
	if wall > 0 {
		r.Efficiency = float64(cpu) / float64(wall*vcpus)
	}
	return r
}
