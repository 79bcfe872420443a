package kvmlab

import (
	"fmt"
	"regexp"
	"strings"
)

// Result is what a run of a plan produced.
type Result struct {
	Where    string // "lab" or "host"
	Exit     []int  // per step; -1 when a step did not report
	Done     bool   // every step ran to the end
	LabError string // the lab's own failure, if any

	Passed, Failed, Skipped []string // top-level tests, from `-test.v` output
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
	return fmt.Sprintf("kvm: %d passed, %d failed, %d skipped", len(r.Passed), len(r.Failed), len(r.Skipped))
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

// observe accounts one line of test output.
func (r *Result) observe(line string) {
	m := testLine.FindStringSubmatch(line)
	if m == nil {
		return
	}
	switch m[1] {
	case "PASS":
		r.Passed = append(r.Passed, m[2])
	case "FAIL":
		r.Failed = append(r.Failed, m[2])
	case "SKIP":
		r.Skipped = append(r.Skipped, m[2])
	}
}

func newResult(where string, steps int) *Result {
	r := &Result{Where: where, Exit: make([]int, steps)}
	for i := range r.Exit {
		r.Exit[i] = -1
	}
	return r
}
