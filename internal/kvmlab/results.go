package kvmlab

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
)

// Result is what a run of a plan produced.
type Result struct {
	Where    string // "lab" or "host"
	Exit     []int  // per step; -1 when a step did not report
	Done     bool   // every step ran to the end
	LabError string // the lab's own failure, if any
	// Crashed: the lab itself broke before its plan finished (its kernel
	// panicked, it went silent, QEMU died), as opposed to running out of
	// time or failing to set up; a fresh lab may run the rest.
	Crashed bool
	// Reruns lists the lab crashes after which unfinished steps ran
	// again in a fresh lab.
	Reruns []string
	// KernelFaults are the lab kernel's own reports of a fault (an Oops,
	// a BUG, a panic, a soft lockup), which a lab may survive for a while.
	KernelFaults []string

	Passed, Failed, Skipped []string // top-level tests, from `-test.v` output

	// Retried lists the tests that failed after the lab broke one of
	// their guests and ran again in a fresh lab (see labFaultSigns).
	Retried []string
	// GivenUp lists the tests that lab crashes cut short too many times
	// in a row (see afterCrash): they count as failed, and the rest of
	// their steps ran without them.
	GivenUp []string

	step     int             // the step whose output is being read
	obs      []observation   // every test result, with its step
	running  string          // the top-level test running now, "" between tests
	labFault map[string]bool // tests during which a guest showed a lab fault
}

// labFaultSigns are what the VMM and the kvm-tier tests print when a
// guest's CPU state broke under it: a triple fault, or a vCPU stuck at a
// lab-kernel address. In the lab both come from QEMU's emulated SVM
// (README, make stress); on real KVM they would be bugs, and a test that
// failed with one is not run again there (Where "host").
var labFaultSigns = []string{
	"guest shut down (triple fault)", // vmm's report, in sailbox-vmm's log
	"sailbox-vmm: guest shutdown",    // sailbox-vmm's exit line
	"the VM stopped (shutdown",       // vmm tests
	"rip is the host's ",             // vmm tests' stuck-vCPU diagnostics
}

// labCrashSigns are lab kernel reports of a fault of the lab's own: its
// memory corrupted under a kernel that was only running the tests' VMMs
// (QEMU's emulated SVM, see README). A test cut short by crashes that
// show one gets one more fresh lab than a test cut short by crashes that
// show nothing known (see afterCrash).
var labCrashSigns = []string{
	"corrupted stack end detected inside scheduler",
}

// knownCrash reports whether the lab r ran in crashed with a known sign
// of its own fault in its kernel's messages.
func (r *Result) knownCrash() bool {
	for _, line := range r.KernelFaults {
		for _, sign := range labCrashSigns {
			if strings.Contains(line, sign) {
				return true
			}
		}
	}
	return false
}

// observation is one top-level test's result in step step: PASS, FAIL,
// SKIP as `go test -v` prints them, or giveUp.
type observation struct {
	step         int
	status, name string
}

// OK reports whether the run counts as a pass for the kvm tier: every step
// exited 0, at least one test passed, none failed and none skipped (a
// skipped kvm-tier test is a test that did not run).
func (r *Result) OK() bool {
	if !r.Done || r.LabError != "" || len(r.Passed) == 0 || len(r.Failed) > 0 || len(r.Skipped) > 0 {
		return false
	}
	for _, c := range r.Exit {
		if c != 0 {
			return false
		}
	}
	return true
}

// Summary is the closing line: "kvm: N passed, N failed, N skipped".
func (r *Result) Summary() string {
	s := fmt.Sprintf("kvm: %d passed, %d failed, %d skipped", len(r.Passed), len(r.Failed), len(r.Skipped))
	if len(r.Retried) > 0 {
		s += fmt.Sprintf(" (ran again after the lab broke a guest: %s)", strings.Join(r.Retried, ", "))
	}
	if n := len(r.Reruns); n > 0 {
		s += fmt.Sprintf(" (after %d lab crash(es), unfinished steps ran again: %s)", n, strings.Join(r.Reruns, "; "))
	}
	return s
}

// Problems lists why the run is not OK, one reason per entry.
func (r *Result) Problems(plan *Plan) []string {
	var p []string
	if r.LabError != "" {
		p = append(p, "the lab failed: "+r.LabError)
	}
	for i, c := range r.Exit {
		if c != 0 {
			name := fmt.Sprint(i)
			if i < len(plan.Steps) {
				name = plan.Steps[i].Name
			}
			if c < 0 {
				p = append(p, fmt.Sprintf("step %s did not finish", name))
			} else {
				p = append(p, fmt.Sprintf("step %s exited %d", name, c))
			}
		}
	}
	if !r.Done && r.LabError == "" {
		p = append(p, "the run ended before all steps finished")
	}
	if len(r.Failed) > 0 {
		p = append(p, "failed: "+strings.Join(r.Failed, ", "))
	}
	if len(r.Skipped) > 0 {
		p = append(p, "skipped (a kvm-tier test must run): "+strings.Join(r.Skipped, ", "))
	}
	if len(r.Passed) == 0 {
		p = append(p, "no kvm-tier test passed")
	}
	return p
}

var testLine = regexp.MustCompile(`^--- (PASS|FAIL|SKIP): (\S+)`)

var runLine = regexp.MustCompile(`^=== RUN\s+([^/\s]+)$`)

// observe accounts one line of test output.
func (r *Result) observe(line string) {
	if m := runLine.FindStringSubmatch(line); m != nil {
		r.running = m[1]
	}
	if r.running != "" {
		for _, sign := range labFaultSigns {
			if strings.Contains(line, sign) {
				if r.labFault == nil {
					r.labFault = map[string]bool{}
				}
				r.labFault[r.running] = true
			}
		}
	}
	m := testLine.FindStringSubmatch(line)
	if m == nil {
		return
	}
	if m[2] == r.running {
		r.running = ""
	}
	r.obs = append(r.obs, observation{step: r.step, status: m[1], name: m[2]})
	r.tally(m[1], m[2])
}

// giveUp is the status of a test given up on after lab crashes.
const giveUp = "CRASH"

func (r *Result) tally(status, name string) {
	switch status {
	case "PASS":
		r.Passed = append(r.Passed, name)
	case "FAIL":
		r.Failed = append(r.Failed, name)
	case "SKIP":
		r.Skipped = append(r.Skipped, name)
	case giveUp:
		r.Failed = append(r.Failed, name)
		r.GivenUp = append(r.GivenUp, name)
	}
}

// settled is how many tests ran to an end in r, whatever the end.
func (r *Result) settled() int { return len(r.Passed) + len(r.Failed) + len(r.Skipped) }

// giveUpCutShort records the test the crash cut short as failed, so that
// the rerun of its step leaves it out (see settledIn).
func (r *Result) giveUpCutShort() {
	if r.running == "" {
		return
	}
	r.obs = append(r.obs, observation{step: r.step, status: giveUp, name: r.running})
	r.tally(giveUp, r.running)
}

// cutShort names the top-level test that was running when the lab
// crashed ("step N TestName"), or "" if the crash came between tests.
func (r *Result) cutShort() string {
	if !r.Crashed || r.running == "" {
		return ""
	}
	return fmt.Sprintf("step %d %s", r.step, r.running)
}

// unfinished lists the steps that did not report an exit.
func (r *Result) unfinished() []int {
	var out []int
	for i, c := range r.Exit {
		if c < 0 {
			out = append(out, i)
		}
	}
	return out
}

// settledIn returns the tests of step i that are not to run again: those
// r saw pass, fail (unless a guest of theirs showed a lab fault) or given
// up on.
func (r *Result) settledIn(i int) []string {
	var out []string
	for _, o := range r.obs {
		if o.step == i && r.settles(o) {
			out = append(out, o.name)
		}
	}
	return out
}

// settles reports whether o, seen in a lab that then crashed, is its
// test's verdict. A failure is, unless a guest of the test showed the
// lab's fault: a crash says nothing about a test that had already failed
// on its own, and running it again could only hide that failure behind
// a later pass.
func (r *Result) settles(o observation) bool {
	switch o.status {
	case "PASS", giveUp:
		return true
	case "FAIL":
		return !r.labFault[o.name]
	}
	return false
}

// mergeRerun returns the result of a run whose steps steps (indexes into
// r's plan) ran again as rerun after r crashed, without the tests
// settled in them: r's finished steps with their tests, the tests r
// settled in an unfinished step (settles), and rerun's results for the
// rest. A test that skipped in a step cut short ran again, as did one
// that failed after the lab broke its guest (reported as retried).
func (r *Result) mergeRerun(steps []int, rerun *Result) *Result {
	again := map[int]int{} // r's step → rerun's step
	for j, i := range steps {
		again[i] = j
	}
	m := &Result{Where: r.Where, Exit: slices.Clone(r.Exit), Done: rerun.Done, LabError: rerun.LabError,
		Crashed: rerun.Crashed, Reruns: append(slices.Clone(r.Reruns), r.LabError), KernelFaults: rerun.KernelFaults,
		Retried: slices.Clone(r.Retried)}
	if rerun.running != "" && rerun.step < len(steps) {
		m.running, m.step = rerun.running, steps[rerun.step]
	}
	for _, o := range r.obs {
		switch _, ran := again[o.step]; {
		case !ran || r.settles(o):
			m.obs = append(m.obs, o)
			m.tally(o.status, o.name)
		case o.status == "FAIL" && !slices.Contains(m.Retried, o.name):
			m.Retried = append(m.Retried, o.name)
		}
	}
	for _, o := range rerun.obs {
		if o.step >= len(steps) {
			continue // printed after the rerun's last step: no step's
		}
		o.step = steps[o.step]
		m.obs = append(m.obs, o)
		m.tally(o.status, o.name)
	}
	for j, i := range steps {
		m.Exit[i] = rerun.Exit[j]
	}
	for _, f := range []map[string]bool{r.labFault, rerun.labFault} {
		for name := range f {
			if m.labFault == nil {
				m.labFault = map[string]bool{}
			}
			m.labFault[name] = true
		}
	}
	return m
}

func newResult(where string, steps int) *Result {
	r := &Result{Where: where, Exit: make([]int, steps)}
	for i := range r.Exit {
		r.Exit[i] = -1
	}
	return r
}

// labFaulted returns, by step, the tests that failed after a guest of
// theirs showed a lab fault.
func (r *Result) labFaulted() map[int][]string {
	out := map[int][]string{}
	for _, o := range r.obs {
		if o.status == "FAIL" && r.labFault[o.name] {
			out[o.step] = append(out[o.step], o.name)
		}
	}
	return out
}

// mergeRetest returns r with the tests of retest (step index → test
// names, as labFaulted gives) replaced by their results in rerun, whose
// steps are retest's steps in ascending order. A step whose every failure
// was retried takes the rerun's exit status.
func (r *Result) mergeRetest(retest map[int][]string, rerun *Result) *Result {
	steps := slices.Sorted(maps.Keys(retest))
	again := map[string]bool{}
	for _, names := range retest {
		for _, n := range names {
			again[n] = true
		}
	}
	m := &Result{Where: r.Where, Exit: slices.Clone(r.Exit), Done: r.Done, LabError: r.LabError, Crashed: r.Crashed,
		Reruns: append(slices.Clone(r.Reruns), rerun.Reruns...), Retried: slices.Clone(r.Retried)}
	failedOther := map[int]bool{}
	for _, o := range r.obs {
		if again[o.name] {
			continue
		}
		if o.status == "FAIL" {
			failedOther[o.step] = true
		}
		m.obs = append(m.obs, o)
		m.tally(o.status, o.name)
	}
	for _, o := range rerun.obs {
		if o.step >= len(steps) {
			continue
		}
		o.step = steps[o.step]
		m.obs = append(m.obs, o)
		m.tally(o.status, o.name)
	}
	for j, i := range steps {
		if !failedOther[i] && j < len(rerun.Exit) {
			m.Exit[i] = rerun.Exit[j]
		}
	}
	for _, i := range steps {
		m.Retried = append(m.Retried, retest[i]...)
	}
	if rerun.LabError != "" {
		m.LabError = rerun.LabError
	}
	return m
}
