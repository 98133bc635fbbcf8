package sim

import (
	"fmt"
	"io"
	"net"
	"strings"
)

// SysReaderUser is the generated user with the reader role on the system
// and on every caso-tagged project but the last; "sim env" scopes its
// token to the system.
const SysReaderUser = "accounting-sys"

// credentials of the simulator's well-known users, computed from the
// config alone so that another process prints what the server accepts.
type creds struct {
	user, project, authURL, region string
	system                         bool
}

func credsFor(cfg Config, user string) (creds, error) {
	host, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return creds{}, fmt.Errorf("--listen %q: %w", cfg.Listen, err)
	}
	if port == "0" {
		return creds{}, fmt.Errorf("--listen %q: give the port the simulator really listens on, not 0", cfg.Listen)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	c := creds{authURL: "http://" + net.JoinHostPort(host, port) + "/v3", region: "RegionOne"}
	if len(cfg.Regions) > 0 {
		c.region = cfg.Regions[0]
	}
	var w *World
	if cfg.Scenario != "" {
		if w, err = LoadScenario(cfg.Scenario); err != nil {
			return creds{}, err
		}
		c.region = w.Regions[0]
	}
	switch user {
	case "admin":
		c.user, c.project = "admin", "admin"
		if w != nil {
			c.user, c.project = w.userByID[w.AdminUserID].Name, w.projByID[w.AdminProjectID].Name
		}
	case "accounting":
		if w == nil {
			// Generated project 0 is always tagged caso; its name depends
			// only on its index.
			g := &gen{cfg: cfg}
			c.user, c.project = "accounting", g.projectName(0)
			break
		}
		for _, a := range w.Assignments {
			if r := w.roleByID[a.RoleID]; r != nil && r.Name == "accounting" && !a.System {
				c.user, c.project = w.userByID[a.UserID].Name, w.projByID[a.ProjectID].Name
				break
			}
		}
		if c.user == "" {
			return creds{}, fmt.Errorf("scenario %s: no user has the accounting role", cfg.Scenario)
		}
	case SysReaderUser:
		c.user, c.system = SysReaderUser, true
		if w != nil && w.userByName[SysReaderUser] == nil {
			return creds{}, fmt.Errorf("scenario %s: no user %s", cfg.Scenario, SysReaderUser)
		}
	default:
		return creds{}, fmt.Errorf("unknown user %q: want admin, accounting or %s", user, SysReaderUser)
	}
	return c, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// WriteEnv prints `export OS_...=` lines for user "admin" or "accounting", so
// that eval "$(tally sim env)" configures any OpenStack client.
func WriteEnv(w io.Writer, cfg Config, user string) error {
	c, err := credsFor(cfg, user)
	if err != nil {
		return err
	}
	scope := [][2]string{{"OS_PROJECT_NAME", c.project}, {"OS_PROJECT_DOMAIN_NAME", "Default"}}
	if c.system {
		scope = [][2]string{{"OS_SYSTEM_SCOPE", "all"}}
	}
	lines := [][2]string{
		{"OS_AUTH_TYPE", "password"}, {"OS_AUTH_URL", c.authURL}, {"OS_IDENTITY_API_VERSION", "3"},
		{"OS_USERNAME", c.user}, {"OS_PASSWORD", DefaultPassword}, {"OS_USER_DOMAIN_NAME", "Default"},
	}
	lines = append(append(lines, scope...), [][2]string{{"OS_REGION_NAME", c.region}, {"OS_INTERFACE", "public"}}...)
	for _, l := range lines {
		if _, err := fmt.Fprintf(w, "export %s=%s\n", l[0], shellQuote(l[1])); err != nil {
			return err
		}
	}
	return nil
}

// WriteCloudsYAML prints a clouds.yaml with the clouds sim-admin and
// sim-accounting.
func WriteCloudsYAML(w io.Writer, cfg Config) error {
	var b strings.Builder
	b.WriteString("clouds:\n")
	for _, user := range []string{"admin", "accounting"} {
		c, err := credsFor(cfg, user)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "  sim-%s:\n    auth_type: password\n    auth:\n      auth_url: %q\n      username: %q\n      password: %q\n"+
			"      project_name: %q\n      user_domain_name: Default\n      project_domain_name: Default\n"+
			"    region_name: %q\n    interface: public\n    identity_api_version: 3\n",
			user, c.authURL, c.user, DefaultPassword, c.project, c.region)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
