package cli

import (
	"strings"
	"testing"
	"time"
)

func TestParseTime(t *testing.T) {
	tests := []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"2026-11-01", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), true},
		{"2026-11-01T12:30:00", time.Date(2026, 11, 1, 12, 30, 0, 0, time.UTC), true},
		{"2026-11-01T12:30:00+02:00", time.Date(2026, 11, 1, 10, 30, 0, 0, time.UTC), true},
		{"2026-11-01T12:30:00Z", time.Date(2026, 11, 1, 12, 30, 0, 0, time.UTC), true},
		{"yesterday", time.Time{}, false},
		{"2026-13-01", time.Time{}, false},
	}
	for _, tt := range tests {
		got, err := ParseTime(tt.in)
		if (err == nil) != tt.ok || !got.Equal(tt.want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestExtractRefusesBadInput(t *testing.T) {
	creds := []string{"OS_AUTH_URL=http://127.0.0.1:1/v3", "OS_USERNAME=u", "OS_PASSWORD=p"}
	tests := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"from after to", creds, []string{"--from", "2026-11-02", "--to", "2026-11-01"}, "is not before --to"},
		{"bad from", creds, []string{"--from", "last week"}, "--from"},
		{"no credentials", nil, []string{"--to", "2026-11-01", "--site-name", "S"}, "auth_url"},
		{"no site name", creds, []string{"--to", "2026-11-01"}, "enricher.site_name"},
		{"bad config key", append(creds, "TALLY_EXTRACTORS_NOVA_PAGE_SIZE=0"), []string{"--site-name", "S"}, "extractors.nova.page_size"},
		{"old microversion", append(creds, "TALLY_EXTRACTORS_NOVA_MICROVERSION=2.1"), []string{"--site-name", "S"}, "2.47"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"extract", "--data-dir", t.TempDir()}, tt.args...)
			code, _, stderr := run(t, tt.env, args...)
			if code != 2 || !strings.Contains(stderr, tt.want) {
				t.Errorf("code %d, stderr %q; want 2 and %q", code, stderr, tt.want)
			}
		})
	}
}
