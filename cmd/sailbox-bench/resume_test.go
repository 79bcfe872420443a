package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// earlierAttempt is what a lab that crashed in the density rows handed
// back: the boot and snapshots rows, as an interim result.
func earlierAttempt() *Results {
	return &Results{
		Format: resultsFormat, Started: time.Date(2026, 12, 7, 23, 0, 0, 0, time.UTC), Commit: "abc123",
		Flags:   map[string]string{"runs": "20", "rows": "boot,snapshots,density", "resume": ""},
		Rows:    []Row{{ID: "boot.sailbox", Group: "boot", Unit: "ms", Samples: []float64{100, 110}}},
		Ratios:  []Ratio{{ID: "boot.sailbox/boot.qemu", Num: "boot.sailbox", Den: []string{"boot.qemu"}, Value: 0.8}},
		Retries: []Retry{{What: "sailbox run 3", Attempt: 1, Error: "boot broke"}},
		Groups:  []string{"boot", "snapshots"}, Notes: []string{"gokvm rows skipped"},
		Error: "interim results, handed back after the snapshots rows: the run was stopped before it finished",
	}
}

// thisAttempt is the same run started again in a fresh lab.
func thisAttempt(commit string) *Results {
	return &Results{
		Format: resultsFormat, Started: time.Date(2026, 12, 7, 23, 40, 0, 0, time.UTC), Commit: commit,
		Flags: map[string]string{"runs": "20", "rows": "boot,snapshots,density", "resume": "/c/console-crash1.log"},
		Rows:  []Row{}, Ratios: []Ratio{}, Retries: []Retry{}, Groups: []string{}, Notes: []string{},
	}
}

// crashedConsoles writes two crashed labs' consoles: the first handed
// back the earlier attempt (a lab kernel message cutting into a line of
// an older, damaged handback before it), the second crashed before it
// handed back anything.
func crashedConsoles(t *testing.T) string {
	dir := t.TempDir()
	var first bytes.Buffer
	first.WriteString("sailbox run 0: agent ready in 3s\n" + handbackMarker + "1/2 deadbeef AAAA\n[ 12.3] kvm: something\n")
	if err := handBack(&first, earlierAttempt()); err != nil {
		t.Fatal(err)
	}
	first.WriteString("density: fork 3\n[  999.1] Kernel panic - not syncing: corrupted stack end detected inside scheduler")
	one, two := filepath.Join(dir, "console-crash1.log"), filepath.Join(dir, "console-crash2.log")
	if err := os.WriteFile(one, first.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(two, []byte("kvmlab: booting\nsailbox run 0: agent ready in 3s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return one + string(os.PathListSeparator) + two
}

// A run started again after lab crashes carries on what the last of them
// handed back, and measures only the groups not finished there.
func TestResume(t *testing.T) {
	res := thisAttempt("abc123")
	var out bytes.Buffer
	if err := res.resume(crashedConsoles(t), &out); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Groups, []string{"boot", "snapshots"}) || !slices.Equal(res.Resumed, res.Groups) {
		t.Fatalf("groups %v, resumed %v", res.Groups, res.Resumed)
	}
	if len(res.Rows) != 1 || len(res.Ratios) != 1 || len(res.Retries) != 1 || !res.Started.Equal(earlierAttempt().Started) {
		t.Errorf("carried on: %+v", res)
	}
	if res.Error != "" {
		t.Errorf("the interim result's error carried on: %q", res.Error)
	}
	if len(res.Notes) != 2 || !strings.Contains(res.Notes[1], "the boot, snapshots rows were measured in an earlier lab") {
		t.Errorf("notes %q", res.Notes)
	}
	if !strings.Contains(out.String(), "handed back the boot, snapshots rows") {
		t.Errorf("said %q", out.String())
	}

	var measured []string
	group := func(name string) rowGroup {
		return rowGroup{name, func() error {
			measured = append(measured, name)
			res.values(name+".x", name, name, "ms", 1)
			return nil
		}}
	}
	groups := []rowGroup{group("boot"), group("snapshots"), group("density"), group("image"), group("net")}
	out.Reset()
	rows := map[string]bool{"boot": true, "snapshots": true, "density": true, "net": true}
	if err := res.measureGroups(groups, rows, &out); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(measured, []string{"density", "net"}) {
		t.Errorf("measured %v, want density and net only", measured)
	}
	// One interim handback, after density: net is the last.
	interim, err := readHandback(&out)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(interim.Groups, []string{"boot", "snapshots", "density"}) || !strings.Contains(interim.Error, "after the density rows") {
		t.Errorf("interim: groups %v, error %q", interim.Groups, interim.Error)
	}
	if !slices.Equal(res.Groups, []string{"boot", "snapshots", "density", "net"}) {
		t.Errorf("groups at the end %v", res.Groups)
	}
}

// Another run's results (another commit, other flags), or none, are not
// carried on: every group is measured, and the notes say why.
func TestResumeNotThisRun(t *testing.T) {
	consoles := crashedConsoles(t)
	other := thisAttempt("def456")
	otherFlags := thisAttempt("abc123")
	otherFlags.Flags["runs"] = "2"
	for _, res := range []*Results{other, otherFlags} {
		if err := res.resume(consoles, &bytes.Buffer{}); err != nil {
			t.Fatal(err)
		}
		if len(res.Groups) != 0 || len(res.Rows) != 0 || len(res.Notes) != 1 || !strings.Contains(res.Notes[0], "not resumed") {
			t.Errorf("commit %s, flags %v: groups %v, notes %q", res.Commit, res.Flags, res.Groups, res.Notes)
		}
	}

	none := thisAttempt("abc123")
	empty := filepath.Join(t.TempDir(), "console-crash1.log")
	os.WriteFile(empty, []byte("kvmlab: booting\n"), 0o644)
	if err := none.resume(empty, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if len(none.Groups) != 0 || len(none.Notes) != 1 || !strings.Contains(none.Notes[0], "handed back no results") {
		t.Errorf("groups %v, notes %q", none.Groups, none.Notes)
	}
	if err := thisAttempt("abc123").resume(filepath.Join(t.TempDir(), "missing.log"), &bytes.Buffer{}); err == nil {
		t.Error("a console that is not there: no error")
	}
	if err := thisAttempt("abc123").resume("", &bytes.Buffer{}); err != nil {
		t.Errorf("no earlier attempt: %v", err)
	}
}
