package deploy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	tally "github.com/tally-accounting/tally/services/tally/cli"
)

const configMount = "/etc/tally"

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{"../docker-compose.yml"},
		cli.WithWorkingDirectory(".."), cli.WithName("tally"), cli.WithEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	p, err := cli.ProjectFromOptions(context.Background(), opts)
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	return p
}

// exposed lists the container ports a service publishes or exposes.
func exposed(s types.ServiceConfig) []string {
	var out []string
	for _, p := range s.Ports {
		out = append(out, fmt.Sprint(p.Target))
	}
	for _, e := range s.Expose {
		out = append(out, e)
	}
	return out
}

func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return p
}

func hostOf(addr string) string {
	h, _, _ := net.SplitHostPort(addr)
	return h
}

// TestComposeAgreesWithTheBinary loads docker-compose.yml like docker
// compose does and checks every tally service: its command parses with the
// binary's own flags, its config file exists in the mounted directory and
// loads and validates, its ports are exposed, its NATS URL and messenger
// addresses name services that exist and listen there, and it depends on
// what it talks to.
func TestComposeAgreesWithTheBinary(t *testing.T) {
	p := loadCompose(t)
	if _, err := os.Stat(filepath.Join("..", "deploy", "Dockerfile")); err != nil {
		t.Fatalf("the Dockerfile is missing: %v", err)
	}
	natsSvc, ok := p.Services["nats"]
	if !ok {
		t.Fatal("no nats service")
	}
	if !slices.Contains(natsSvc.Command, "-js") || !slices.Contains(exposed(natsSvc), "4222") {
		t.Errorf("nats must run with -js and expose 4222: command %q, ports %q", natsSvc.Command, exposed(natsSvc))
	}

	type listener struct{ service, port string }
	var messengerListeners []listener
	seenTargets := map[string]bool{}
	simServices := map[string][]string{}
	configs := map[string]tally.Config{}
	for name, s := range p.Services {
		if s.Build == nil {
			continue
		}
		if s.Build.Dockerfile != "deploy/Dockerfile" {
			t.Errorf("%s: builds from %q, want deploy/Dockerfile", name, s.Build.Dockerfile)
		}
		args := []string(s.Command)
		if len(args) > 0 && args[0] == "sim" {
			simServices[name] = args
			continue
		}
		if len(args) == 0 || args[0] != "serve" {
			t.Errorf("%s: command %q does not start with serve", name, args)
			continue
		}
		// Map the config path in the container to the repository.
		mounted := ""
		for _, v := range s.Volumes {
			if v.Target == configMount {
				mounted = v.Source
			}
		}
		if mounted == "" {
			t.Errorf("%s: %s is not mounted", name, configMount)
			continue
		}
		hostArgs := slices.Clone(args[1:])
		for i, a := range hostArgs {
			if strings.HasPrefix(a, configMount+"/") {
				hostArgs[i] = filepath.Join(mounted, strings.TrimPrefix(a, configMount+"/"))
				if _, err := os.Stat(hostArgs[i]); err != nil {
					t.Errorf("%s: config file %s: %v", name, a, err)
				}
			}
		}
		var env []string
		for k, v := range s.Environment {
			if v != nil && (strings.HasPrefix(k, "TALLY_") || strings.HasPrefix(k, "OS_")) {
				env = append(env, k+"="+*v)
			}
		}
		var stderr strings.Builder
		cfg, targets, code, ok := tally.LoadServeConfig(hostArgs, tally.Env{Stdout: io.Discard, Stderr: &stderr, Environ: env})
		if !ok {
			t.Errorf("%s: tally %q is refused (exit %d): %s", name, args, code, stderr.String())
			continue
		}
		if !slices.Contains(targets, name) {
			t.Errorf("%s: runs targets %q; a container is named after its service", name, targets)
		}
		for _, tg := range targets {
			seenTargets[tg] = true
		}
		configs[name] = cfg
		ports := exposed(s)
		if cfg.MetricsListen != "" && !slices.Contains(ports, port(t, cfg.MetricsListen)) {
			t.Errorf("%s: metrics port %s not exposed (%q)", name, port(t, cfg.MetricsListen), ports)
		}
		if slices.Contains(targets, tally.TargetAPI) {
			if !slices.Contains(ports, port(t, cfg.Listen)) || hostOf(cfg.Listen) != "0.0.0.0" {
				t.Errorf("%s: the API listen %s must be on 0.0.0.0 and exposed (%q)", name, cfg.Listen, ports)
			}
		}
		switch name {
		case tally.TargetQuery:
			l := cfg.Query.Listen
			if !slices.Contains(ports, port(t, l)) || hostOf(l) != "0.0.0.0" {
				t.Errorf("%s: listen %s must be on 0.0.0.0 and exposed (%q)", name, l, ports)
			}
			messengerListeners = append(messengerListeners, listener{name, port(t, l)})
		case tally.TargetMessengerNoop, tally.TargetMessengerSSM, tally.TargetMessengerLogstash:
			l := cfg.Messengers.Noop.Listen
			if name == tally.TargetMessengerLogstash {
				l = cfg.Messengers.Logstash.Listen
				ls, ok := p.Services[cfg.Messengers.Logstash.Host]
				if !ok || !slices.Contains(exposed(ls), fmt.Sprint(cfg.Messengers.Logstash.Port)) {
					t.Errorf("%s: sends to %s:%d, which no compose service exposes", name, cfg.Messengers.Logstash.Host, cfg.Messengers.Logstash.Port)
				}
			}
			if name == tally.TargetMessengerSSM {
				l = cfg.Messengers.SSM.Listen
				mounted := false
				for _, v := range s.Volumes {
					mounted = mounted || v.Target == cfg.Messengers.SSM.Spool
				}
				if !mounted {
					t.Errorf("%s: the spool %s is not a volume", name, cfg.Messengers.SSM.Spool)
				}
			}
			if !slices.Contains(ports, port(t, l)) || hostOf(l) != "0.0.0.0" {
				t.Errorf("%s: listen %s must be on 0.0.0.0 and exposed (%q)", name, l, ports)
			}
			messengerListeners = append(messengerListeners, listener{name, port(t, l)})
		case tally.TargetExtractorNova, tally.TargetExtractorCinder, tally.TargetExtractorNeutron, tally.TargetExtractorEnergy:
			auth := cfg.Auth(func(k string) string {
				if v := s.Environment[k]; v != nil {
					return *v
				}
				return ""
			})
			if _, _, _, err := auth.Options(); err != nil {
				t.Errorf("%s: OpenStack credentials: %v", name, err)
			}
			u, err := url.Parse(auth.AuthURL)
			if err != nil {
				t.Errorf("%s: auth url %q: %v", name, auth.AuthURL, err)
			} else if _, inCompose := p.Services[u.Hostname()]; inCompose {
				if _, dep := s.DependsOn[u.Hostname()]; !dep {
					t.Errorf("%s: talks to %s but does not depend on it", name, u.Hostname())
				}
			}
		}
		if cfg.NATS.URL != "" {
			if !strings.HasPrefix(cfg.NATS.URL, "nats://nats:4222") {
				t.Errorf("%s: NATS URL %s is not the nats service", name, cfg.NATS.URL)
			}
			if _, ok := s.DependsOn["nats"]; !ok {
				t.Errorf("%s: uses NATS but does not depend on nats", name)
			}
		}
		if s.Environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == nil {
			t.Errorf("%s: no OTEL_EXPORTER_OTLP_ENDPOINT", name)
		}
		for dep := range s.DependsOn {
			if _, ok := p.Services[dep]; !ok {
				t.Errorf("%s: depends on unknown service %s", name, dep)
			}
		}
	}
	for _, target := range tally.Targets() {
		if !seenTargets[target] {
			t.Errorf("no compose service runs target %s", target)
		}
	}
	// Every messenger the enricher pushes to is a service listening there.
	enr := configs[tally.TargetEnricher]
	if len(enr.Enricher.Messengers) == 0 {
		t.Error("the enricher has no messengers")
	}
	for _, m := range enr.Enricher.Messengers {
		host, prt := hostOf(m.Address), port(t, m.Address)
		if !slices.Contains(messengerListeners, listener{host, prt}) {
			t.Errorf("enricher pushes to %s, which no messenger service listens on (%v)", m.Address, messengerListeners)
		}
		if _, ok := p.Services[tally.TargetEnricher].DependsOn[host]; !ok {
			t.Errorf("enricher does not depend on %s", host)
		}
	}
	for name, args := range simServices {
		if !slices.Contains(args, "0.0.0.0:8786") || !slices.Contains(exposed(p.Services[name]), "8786") {
			t.Errorf("%s: the simulator must listen on 0.0.0.0:8786 and expose it (%q)", name, args)
		}
	}
	if _, ok := p.Services["jaeger"]; !ok {
		t.Error("no trace UI (jaeger) service")
	}
	if c, ok := p.Services["otel-collector"]; !ok || len(c.Volumes) == 0 {
		t.Error("no otel-collector with its config")
	} else if _, err := os.Stat(filepath.Join("..", c.Volumes[0].Source)); err != nil && !filepath.IsAbs(c.Volumes[0].Source) {
		t.Errorf("collector config: %v", err)
	}
}
