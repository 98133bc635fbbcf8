package caso

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// SiteLastRun is the file name cASO used before 2.0 (January 2020) for
// the whole site; cASO up to 4.0 still read it for a project without a
// file of its own.
const SiteLastRun = "lastrun"

// LastRun is one lastrun file: where the project's next window starts.
// cASO reads it back as the next extract_from as it is, so the same
// instant is where tally's next window must start.
type LastRun struct {
	// Project is the file name's suffix: what cASO had in its project list
	// (an id or a name), or the id of a tagged project.
	Project string
	Time    time.Time
	File    string
}

// LastRuns is what a cASO spool directory says about each project.
type LastRuns struct {
	Projects []LastRun // by file name
	// Site is the pre-2.0 per-site file, nil when there is none (or it is
	// unreadable, see Problems).
	Site *LastRun
	// Problems are the empty, corrupt or future files, treated as missing
	// (cASO 5.2 logs them and skips the project).
	Problems []Problem
}

// ReadLastRuns reads the lastrun files of cASO's spooldir. now bounds the
// instants: cASO refuses a lastrun in the future.
func ReadLastRuns(spooldir string, now time.Time) (LastRuns, error) {
	var out LastRuns
	entries, err := os.ReadDir(spooldir)
	if err != nil {
		return out, fmt.Errorf("caso spooldir: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if e.Type().IsRegular() && (e.Name() == SiteLastRun || strings.HasPrefix(e.Name(), SiteLastRun+".")) {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	for _, name := range names {
		path := filepath.Join(spooldir, name)
		project := strings.TrimPrefix(name, SiteLastRun+".")
		if name == SiteLastRun {
			project = ""
		} else if project == "" {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return out, fmt.Errorf("caso lastrun: %w", err)
		}
		t, err := ParseLastRun(string(data))
		if err == nil && t.After(now) {
			err = fmt.Errorf("%s is in the future", t.Format(time.RFC3339Nano))
		}
		if err != nil {
			out.Problems = append(out.Problems, Problem{File: path, Msg: err.Error() + ": treated as missing"})
			continue
		}
		lr := LastRun{Project: project, Time: t, File: path}
		if project == "" {
			out.Site = &lr
			continue
		}
		out.Projects = append(out.Projects, lr)
	}
	return out, nil
}

func truncate(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

// lastRunLayouts are what cASO wrote (Python's str() of an aware datetime:
// "2026-11-01 10:00:01.123456+00:00") and what an operator may have
// written by hand; dateutil reads all of them.
var lastRunLayouts = []string{
	"2006-01-02 15:04:05Z07:00",
	"2006-01-02T15:04:05Z07:00",
	"2006-01-02 15:04:05-0700",
	"2006-01-02T15:04:05-0700",
	"2006-01-02 15:04:05",
	"2006-01-02T15:04:05",
	"2006-01-02",
}

// ParseLastRun reads a lastrun file's content. A time without a zone is
// UTC, as cASO takes it.
func ParseLastRun(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, errors.New("the file is empty")
	}
	for _, layout := range lastRunLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a date and time", truncate(s))
}
