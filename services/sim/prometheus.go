package sim

import (
	"fmt"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// A Prometheus-compatible query_range with one per-VM power metric, enough for
// energy records: a bare selector, optionally with equality matchers, e.g.
// vm_power_watts{project_id="..."}.
const powerMetric = "vm_power_watts"

var selectorRE = regexp.MustCompile(`^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s*$`)
var matcherRE = regexp.MustCompile(`^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"\s*$`)

func (s *Server) prometheusRoutes(mux *http.ServeMux) {
	s.route(mux, "GET", "/prometheus/api/v1/query_range", s.queryRange)
	s.route(mux, "POST", "/prometheus/api/v1/query_range", s.queryRange)
}

func promError(w http.ResponseWriter, typ, msg string) {
	writeJSON(w, 400, obj{{"status", "error"}, {"errorType", typ}, {"error", msg}})
}

func parsePromTime(s string) (time.Time, bool) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(frac*1e9)).UTC(), true
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	return t.UTC(), err == nil
}

// vmPower is the simulated draw of a server in a state: a share of a host's
// power proportional to its vCPUs while running, idle otherwise.
func vmPower(st ServerState) float64 {
	switch st.VMState {
	case "active", "resized":
		return 20 + 8*float64(st.Flavor.VCPUs)
	case "stopped", "error", "building":
		return 2
	}
	return 0
}

func (s *Server) queryRange(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		promError(w, "bad_data", err.Error())
		return
	}
	query := r.Form.Get("query")
	start, ok1 := parsePromTime(r.Form.Get("start"))
	end, ok2 := parsePromTime(r.Form.Get("end"))
	if !ok1 || !ok2 {
		promError(w, "bad_data", "invalid parameter \"start\" or \"end\": cannot parse to a valid timestamp")
		return
	}
	step, err := time.ParseDuration(r.Form.Get("step"))
	if err != nil {
		f, ferr := strconv.ParseFloat(r.Form.Get("step"), 64)
		if ferr != nil || f <= 0 {
			promError(w, "bad_data", "invalid parameter \"step\": cannot parse to a valid duration")
			return
		}
		step = time.Duration(f * float64(time.Second))
	}
	if step <= 0 {
		promError(w, "bad_data", "zero or negative query resolution step widths are not accepted. Try a positive integer")
		return
	}
	if end.Before(start) {
		promError(w, "bad_data", "end timestamp must not be before start time")
		return
	}
	if end.Sub(start)/step > 11000 {
		promError(w, "bad_data", "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)")
		return
	}
	m := selectorRE.FindStringSubmatch(query)
	if m == nil {
		promError(w, "bad_data", fmt.Sprintf("1:1: parse error: unsupported query %q (the simulator serves bare selectors)", query))
		return
	}
	want := map[string]string{}
	if m[2] != "" {
		for _, part := range strings.Split(m[2], ",") {
			mm := matcherRE.FindStringSubmatch(part)
			if mm == nil {
				promError(w, "bad_data", fmt.Sprintf("unsupported matcher %q (only label=\"value\")", part))
				return
			}
			want[mm[1]] = mm[2]
		}
	}
	result := []obj{}
	world := s.currentWorld()
	if m[1] == powerMetric {
		for _, srv := range world.Servers {
			labels := map[string]string{"__name__": powerMetric, "uuid": srv.ID, "project_id": srv.ProjectID,
				"instance": srv.InstanceName, "host": srv.Host}
			match := true
			for k, v := range want {
				match = match && labels[k] == v
			}
			if !match {
				continue
			}
			var values [][2]any
			for t := start; !t.After(end); t = t.Add(step) {
				st := world.stateAt(srv, t)
				if !st.Exists || st.Deleted() || st.LaunchedAt.IsZero() {
					continue
				}
				values = append(values, [2]any{float64(t.UnixMilli()) / 1000, strconv.FormatFloat(vmPower(st), 'f', -1, 64)})
			}
			if len(values) == 0 {
				continue
			}
			result = append(result, obj{{"metric", labels}, {"values", values}})
		}
	}
	writeJSON(w, 200, obj{{"status", "success"}, {"data", obj{{"resultType", "matrix"}, {"result", result}}}})
}
