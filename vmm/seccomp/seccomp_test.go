package seccomp

import (
	"slices"
	"strings"
	"testing"

	seccompbpf "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
)

// The tables build into filters the kernel would take, for both modes
// that have one, and name no call twice and no call the library (so the
// kernel) does not know.
func TestFiltersAssemble(t *testing.T) {
	for _, m := range []Mode{"", Kill, Trap} {
		fs, err := filters(m, 4242)
		if err != nil {
			t.Fatalf("%q: %v", m, err)
		}
		if len(fs) != len(argRules)+1 {
			t.Errorf("%q: %d filters, want one per argument rule and the allow-list", m, len(fs))
		}
		for i, f := range fs {
			if f.NoNewPrivs != (i == 0) || f.Flag != seccompbpf.FilterFlagTSync {
				t.Errorf("%q: filter %d: no_new_privs %v (want it set by the first only), flag %v (want TSYNC)", m, i, f.NoNewPrivs, f.Flag)
			}
		}
	}
	if _, err := filters(Off, 1); err == nil {
		t.Error("filters(Off) built a filter")
	}
	if _, err := filters("bogus", 1); err == nil {
		t.Error(`filters("bogus") built a filter`)
	}
	t.Logf("%d calls allowed, %d narrowed by their arguments, %d answered ENOSYS", len(allowedCalls()), len(argRules), len(unsupported))
}

// Nothing a guest that escaped would want is on the list, and every
// narrowed call is on it (a rule for a call the list refuses anyway is a
// rule nobody checks).
func TestListHoldsToForbidden(t *testing.T) {
	info, err := arch.GetInfo("")
	if err != nil {
		t.Fatal(err)
	}
	allowed := allowedCalls()
	for _, c := range forbidden {
		if _, ok := info.SyscallNames[c]; !ok {
			t.Errorf("forbidden call %q unknown on %s", c, info.Name)
		}
		if slices.Contains(allowed, c) {
			t.Errorf("forbidden call %q is allowed", c)
		}
	}
	for _, r := range argRules {
		if !slices.Contains(allowed, r.call) {
			t.Errorf("argument rule for %q, which is not allowed at all", r.call)
		}
	}
	for _, c := range unsupported {
		if slices.Contains(allowed, c) {
			t.Errorf("%q both allowed and answered ENOSYS", c)
		}
	}
}

// A mode the flag does not know is refused by name, before anything is
// installed.
func TestModeRefusesUnknown(t *testing.T) {
	for _, ok := range []string{"", "kill", "trap", "off"} {
		var m Mode
		if err := m.Set(ok); err != nil || m != Mode(ok) {
			t.Errorf("Set(%q) = %v, mode %q", ok, err, m)
		}
	}
	before, err := readStatus("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"bogus", "KILL", "allow", "log", " kill"} {
		var m Mode
		if err := m.Set(bad); err == nil || !strings.Contains(err.Error(), "want kill, trap or off") {
			t.Errorf("Set(%q) = %v", bad, err)
		}
		if err := Install(Mode(bad)); err == nil || !strings.Contains(err.Error(), "unknown seccomp mode") {
			t.Errorf("Install(%q) = %v", bad, err)
		}
	}
	if after, err := readStatus("/proc/self/status"); err != nil || after != before {
		t.Errorf("refused Installs changed the test process: %+v, then %+v (%v)", before, after, err)
	}
	if Mode("").String() != "kill" {
		t.Errorf("the zero mode reads %q, want kill", Mode("").String())
	}
}

func allowedCalls() []string {
	var names []string
	for _, g := range allowed {
		names = append(names, g.calls...)
	}
	return names
}
