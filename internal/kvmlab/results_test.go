package kvmlab

import (
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// After a lab crash in step 1 of three, steps 1 and 2 run again: the
// merged result keeps step 0's tests and exit, and step 1's tests that
// had passed or failed on their own before the crash; the rest of steps
// 1 and 2 comes from the rerun, with the test that had failed after the
// lab broke its guest run again.
func TestMergeRerun(t *testing.T) {
	first := newResult("lab", 3)
	first.observe("--- PASS: TestKVMA (1.00s)")
	first.Exit[0], first.step = 0, 1
	first.observe("--- PASS: TestKVMB (1.00s)") // step 1, cut short by the crash
	first.observe("=== RUN   TestKVMX")
	first.observe("    harness: sailbox-vmm: guest shutdown")
	first.observe("--- FAIL: TestKVMX (1.00s)") // the lab broke its guest: runs again
	first.observe("--- FAIL: TestKVMY (1.00s)") // failed on its own: its verdict
	first.LabError, first.Crashed = "the lab powered off (kernel panic?)", true
	if got := first.unfinished(); !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("unfinished = %v", got)
	}
	if got := first.settledIn(1); !slices.Equal(got, []string{"TestKVMB", "TestKVMY"}) {
		t.Errorf("settled in the crashed step: %v; the rerun skips these", got)
	}

	// The rerun skips TestKVMB, which passed, and TestKVMY, which failed.
	rerun := newResult("lab", 2)
	rerun.observe("--- PASS: TestKVMX (1.00s)")
	rerun.observe("--- FAIL: TestKVMC (1.00s)")
	rerun.Exit[0], rerun.step = 0, 1
	rerun.observe("--- PASS: TestKVMD (1.00s)")
	rerun.Exit[1], rerun.Done = 0, true

	m := first.mergeRerun([]int{1, 2}, rerun)
	if !slices.Equal(m.Passed, []string{"TestKVMA", "TestKVMB", "TestKVMX", "TestKVMD"}) || !slices.Equal(m.Failed, []string{"TestKVMY", "TestKVMC"}) {
		t.Errorf("merged passed %v, failed %v", m.Passed, m.Failed)
	}
	if !slices.Equal(m.Retried, []string{"TestKVMX"}) {
		t.Errorf("retried %v", m.Retried)
	}
	if !slices.Equal(m.Exit, []int{0, 0, 0}) || !m.Done || m.LabError != "" || m.Crashed {
		t.Errorf("merged %+v", m)
	}
	if m.OK() {
		t.Error("a run with a failed test is OK")
	}
	if s := m.Summary(); !strings.Contains(s, "4 passed, 2 failed") || !strings.Contains(s, "ran again after the lab broke a guest: TestKVMX") ||
		!strings.Contains(s, "after 1 lab crash") || !strings.Contains(s, "kernel panic") {
		t.Errorf("summary %q", s)
	}

	// A rerun that crashes too is not done: its unfinished steps, less
	// what either lab settled, can run in another.
	rerun2 := newResult("lab", 2)
	rerun2.observe("--- PASS: TestKVMX (1.00s)")
	rerun2.LabError, rerun2.Crashed = "wedged", true
	m = first.mergeRerun([]int{1, 2}, rerun2)
	if m.OK() || len(m.Problems(&Plan{Steps: make([]Step, 3)})) == 0 {
		t.Errorf("a twice-crashed run counts as OK: %+v", m)
	}
	if got := m.unfinished(); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("unfinished after two crashes = %v", got)
	}
	if got := m.settledIn(1); !slices.Equal(got, []string{"TestKVMB", "TestKVMY", "TestKVMX"}) {
		t.Errorf("settled in step 1 over both labs: %v", got)
	}
	rerun3 := newResult("lab", 2)
	rerun3.observe("--- PASS: TestKVMC (1.00s)")
	rerun3.Exit[0], rerun3.step = 0, 1
	rerun3.observe("--- PASS: TestKVMD (1.00s)")
	rerun3.Exit[1], rerun3.Done = 0, true
	m = m.mergeRerun([]int{1, 2}, rerun3)
	if m.OK() || !slices.Equal(m.Passed, []string{"TestKVMA", "TestKVMB", "TestKVMX", "TestKVMC", "TestKVMD"}) ||
		!slices.Equal(m.Failed, []string{"TestKVMY"}) || len(m.Reruns) != 2 || !slices.Equal(m.Retried, []string{"TestKVMX"}) {
		t.Errorf("after a second rerun: OK %v, passed %v, failed %v, reruns %v, retried %v", m.OK(), m.Passed, m.Failed, m.Reruns, m.Retried)
	}
	if s := m.Summary(); !strings.Contains(s, "after 2 lab crash") {
		t.Errorf("summary %q", s)
	}
}

func TestWithTestSkip(t *testing.T) {
	if got := withTestSkip([]string{"-test.v", "-test.run", "^TestKVM"}, "^(TestA)$"); !slices.Equal(got, []string{"-test.v", "-test.run", "^TestKVM", "-test.skip", "^(TestA)$"}) {
		t.Errorf("added: %q", got)
	}
	if got := withTestSkip([]string{"-test.skip", "x", "-test.v"}, "y"); !slices.Equal(got, []string{"-test.skip", "y", "-test.v"}) {
		t.Errorf("replaced: %q", got)
	}
}

// The console is read into the result, a test's results counted against
// the step that printed them; a console that goes silent is killed and
// reported wedged.
func TestReadConsole(t *testing.T) {
	pr, pw := io.Pipe()
	l := &Lab{Quiet: time.Second, Out: io.Discard}
	res := newResult("lab", 2)
	killed := make(chan struct{})
	done := make(chan bool)
	go func() {
		done <- l.readConsole(pr, res, io.Discard, func() { close(killed); pw.Close() })
	}()
	io.WriteString(pw, "--- PASS: TestKVMA (1.00s)\n"+stepMarker(0, 0)+"\n--- FAIL: TestKVMB (1.00s)\n")
	// Heartbeats keep the lab alive: 3 of them, each well within Quiet.
	for range 3 {
		time.Sleep(100 * time.Millisecond)
		select {
		case <-killed:
			t.Fatal("a lab sending heartbeats was killed")
		default:
		}
		io.WriteString(pw, markerAlive+"\n")
	}
	// The lab kernel reporting soft lockups is no sign of life.
	go func() {
		for {
			select {
			case <-killed:
				return
			case <-time.After(100 * time.Millisecond):
				io.WriteString(pw, "[  477.040598] watchdog: BUG: soft lockup - CPU#1 stuck for 306s! [sailbox-vmm:394]\n")
			}
		}
	}()
	<-killed // the console then says nothing but kernel messages
	if wedged := <-done; !wedged {
		t.Error("a silent console was not reported wedged")
	}
	if res.Exit[0] != 0 || res.Exit[1] != -1 || res.Done {
		t.Errorf("exits %v, done %v", res.Exit, res.Done)
	}
	if len(res.obs) != 2 || res.obs[0].step != 0 || res.obs[1].step != 1 {
		t.Errorf("observations %+v", res.obs)
	}

	// A console that ends by itself is not wedged.
	res = newResult("lab", 1)
	if l.readConsole(strings.NewReader(stepMarker(0, 0)+"\n"+markerDone+"\n"), res, io.Discard, func() { t.Error("killed") }) || !res.Done {
		t.Errorf("a finished console: done %v", res.Done)
	}
}

// A test that failed after a guest of its showed a lab fault runs again;
// one that failed otherwise does not. The rerun's verdict replaces the
// first one's, and the summary names the retried test.
func TestRetestLabFaults(t *testing.T) {
	r := newResult("lab", 2)
	feed(r,
		"=== RUN   TestKVMA",
		"    harness: sailbox-vmm: guest shutdown",
		"--- FAIL: TestKVMA (1.00s)",
		"=== RUN   TestKVMB",
		"--- FAIL: TestKVMB (1.00s)",
		stepMarker(0, 1),
		"=== RUN   TestKVMC",
		"=== RUN   TestKVMC/sub",
		"    linux_test.go:142:  rip is the host's __svm_vcpu_run [kvm_amd]+0x9c",
		"--- FAIL: TestKVMC (1.00s)",
		stepMarker(1, 1),
		markerDone,
	)
	retest := r.labFaulted()
	if len(retest) != 2 || !slices.Equal(retest[0], []string{"TestKVMA"}) || !slices.Equal(retest[1], []string{"TestKVMC"}) {
		t.Fatalf("labFaulted = %v", retest)
	}
	if got := withTestRun([]string{"-test.v", "-test.run", "^TestKVM", "-test.count", "1"}, "^(TestKVMA)$"); !slices.Equal(got, []string{"-test.v", "-test.run", "^(TestKVMA)$", "-test.count", "1"}) {
		t.Errorf("withTestRun = %v", got)
	}

	rerun := newResult("lab", 2)
	rerun.observe("--- PASS: TestKVMA (1.00s)")
	rerun.Exit[0], rerun.step = 0, 1
	rerun.observe("--- PASS: TestKVMC (1.00s)")
	rerun.Exit[1], rerun.Done = 0, true
	m := r.mergeRetest(retest, rerun)
	if !slices.Equal(m.Passed, []string{"TestKVMA", "TestKVMC"}) || !slices.Equal(m.Failed, []string{"TestKVMB"}) {
		t.Errorf("merged passed %v, failed %v", m.Passed, m.Failed)
	}
	// Step 0 still failed (TestKVMB was not retried); step 1 passed.
	if !slices.Equal(m.Exit, []int{1, 0}) || m.OK() {
		t.Errorf("merged exits %v, OK %v", m.Exit, m.OK())
	}
	if s := m.Summary(); !strings.Contains(s, "ran again after the lab broke a guest: TestKVMA, TestKVMC") {
		t.Errorf("summary %q", s)
	}
}

// A retest whose own lab crashed before it ran anything (the lab kernel
// has panicked while booting) and then passed in a fresh lab counts as
// passed, and the summary says the lab crashed.
func TestRetestAfterItsLabCrashed(t *testing.T) {
	r := newResult("lab", 1)
	feed(r,
		"=== RUN   TestKVMA",
		"    harness: sailbox-vmm: guest shutdown",
		"--- FAIL: TestKVMA (1.00s)",
		stepMarker(0, 1),
		markerDone,
	)
	retest := r.labFaulted()
	crashed := newResult("lab", 1)
	crashed.LabError, crashed.Crashed = "a kernel panic", true
	second := newResult("lab", 1)
	second.observe("--- PASS: TestKVMA (1.00s)")
	second.Exit[0], second.Done = 0, true
	m := r.mergeRetest(retest, crashed.mergeRerun(crashed.unfinished(), second))
	if !m.OK() || !slices.Equal(m.Passed, []string{"TestKVMA"}) {
		t.Errorf("merged: OK %v, passed %v, failed %v, lab error %q", m.OK(), m.Passed, m.Failed, m.LabError)
	}
	if s := m.Summary(); !strings.Contains(s, "after 1 lab crash") || !strings.Contains(s, "ran again after the lab broke a guest: TestKVMA") {
		t.Errorf("summary %q", s)
	}
}

// A soak counts a lab whose kernel reported a fault as crashed, even when
// its tests passed, and sums up in the closing line CI reads.
func TestSoakSummary(t *testing.T) {
	s := &SoakResult{Boots: 40, Crashed: []string{"lab 7: Oops"}}
	if s.OK() {
		t.Error("a soak with a crashed lab is OK")
	}
	if got := strings.SplitN(s.Summary(), "\n", 2)[0]; got != "soak: 39 passed, 1 failed" {
		t.Errorf("summary %q", got)
	}
	for line, fault := range map[string]bool{
		"[   12.345678] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI":           true,
		"[  100.000001] watchdog: BUG: soft lockup - CPU#1 stuck for 22s!": true,
		"[    3.900000] kvm_amd: TSC scaling supported":                    false,
		"--- FAIL: TestKVMChurn (1.00s)":                                   false,
	} {
		if got := kernelMessage.MatchString(line) && kernelFault.MatchString(line); got != fault {
			t.Errorf("%q: a lab kernel fault = %v, want %v", line, got, fault)
		}
	}
}

// feed has r observe lines as a lab's output, step markers and the done
// marker included.
func feed(r *Result, lines ...string) {
	for _, line := range lines {
		if i, code, ok := parseStepMarker(line); ok {
			r.Exit[i], r.step = code, i+1
		}
		if line == markerDone {
			r.Done = true
		}
		r.observe(line)
	}
}

// A crash reruns what is left, up to maxCrashReruns times, and ends the
// run after maxIdleCrashes labs in a row settled no test. A test cut
// short by maxCutShort crashes in a row (maxCutShortKnown if each showed
// a known lab fault) may be what breaks the lab: it fails, and the rest
// runs without it.
func TestAfterCrash(t *testing.T) {
	crashed := func(lines ...string) *Result {
		r := newResult("lab", 2)
		feed(r, lines...)
		r.LabError, r.Crashed = "the lab powered off", true
		return r
	}
	boot := crashed() // died while booting: nothing ran
	if a, why := afterCrash(boot, 0, true, 0, 1); a != crashRerun || why != "" || boot.cutShort() != "" {
		t.Errorf("a crash at boot: %v (%q), cut short %q", a, why, boot.cutShort())
	}
	mid := crashed("=== RUN   TestKVMA", "--- PASS: TestKVMA (1.00s)", "=== RUN   TestKVMB", "=== RUN   TestKVMB/sub")
	if got := mid.cutShort(); got != "step 0 TestKVMB" {
		t.Fatalf("cut short %q", got)
	}
	if a, _ := afterCrash(mid, 1, false, 0, 0); a != crashRerun {
		t.Error("a first crash in a test is not rerun")
	}
	if a, why := afterCrash(mid, maxCutShort, false, 1, 0); a != crashGiveUp || !strings.Contains(why, "TestKVMB") {
		t.Errorf("the same test cut short %d times by unknown crashes: %v (%q)", maxCutShort, a, why)
	}
	if a, _ := afterCrash(mid, maxCutShort, true, 1, 0); a != crashRerun {
		t.Errorf("the same test cut short %d times by known lab faults: %v", maxCutShort, a)
	}
	if a, why := afterCrash(mid, maxCutShortKnown, true, 2, 0); a != crashGiveUp || !strings.Contains(why, "3 lab crashes in a row") {
		t.Errorf("the same test cut short %d times by known lab faults: %v (%q)", maxCutShortKnown, a, why)
	}
	if a, why := afterCrash(mid, 1, true, maxCrashReruns, 0); a != crashStop || !strings.Contains(why, "no more reruns") {
		t.Errorf("after %d reruns: %v (%q)", maxCrashReruns, a, why)
	}
	if a, _ := afterCrash(mid, 1, true, maxCrashReruns-1, 0); a != crashRerun {
		t.Errorf("after %d reruns, each lab settling a test: %v", maxCrashReruns-1, a)
	}
	if a, why := afterCrash(boot, 0, true, 2, maxIdleCrashes); a != crashStop || !strings.Contains(why, "before settling a test") {
		t.Errorf("after %d labs in a row that settled nothing: %v (%q)", maxIdleCrashes, a, why)
	}
	if boot.settled() != 0 || mid.settled() != 1 {
		t.Errorf("settled: %d at boot, %d mid-run; want 0 and 1", boot.settled(), mid.settled())
	}
	var run idleCrashes // kvmlab run: a step with no tests
	for range maxIdleCrashes + 1 {
		if n := run.add(boot); n != 0 {
			t.Fatalf("a run with no tests counted %d idle crashes", n)
		}
	}
	var tests idleCrashes
	cutMid := crashed("=== RUN   TestKVMB")
	if n := tests.add(boot); n != 0 {
		t.Errorf("a crash at boot, no test seen yet: %d idle", n)
	}
	if n := tests.add(cutMid); n != 1 {
		t.Errorf("a crash in a test, none settled: %d idle, want 1", n)
	}
	if n := tests.add(boot); n != 2 {
		t.Errorf("then a crash at boot: %d idle, want 2", n)
	}
	if n := tests.add(mid); n != 0 {
		t.Errorf("a lab that settled a test: %d idle, want 0", n)
	}
	between := crashed("=== RUN   TestKVMA", "--- FAIL: TestKVMA (1.00s)")
	if got := between.cutShort(); got != "" {
		t.Errorf("a crash between tests cut short %q", got)
	}
	ran := crashed(stepMarker(0, 0), stepMarker(1, 0))
	if a, _ := afterCrash(ran, 0, true, 0, 0); a != crashStop {
		t.Error("a lab that crashed after its last step is rerun")
	}

	// The rerun's cut-short test is named by the first run's step.
	first := crashed(stepMarker(0, 0), "=== RUN   TestKVMC")
	second := newResult("lab", 1)
	feed(second, "=== RUN   TestKVMC")
	second.LabError, second.Crashed = "wedged", true
	if m := first.mergeRerun(first.unfinished(), second); m.cutShort() != first.cutShort() || m.cutShort() != "step 1 TestKVMC" {
		t.Errorf("merged cut short %q, first %q", m.cutShort(), first.cutShort())
	}
}

// A test given up on after lab crashes fails the run, is left out of its
// step's rerun, and does not hide the other tests' results: those of its
// step still run, and a test a lab fault failed is still retested.
func TestGiveUpCutShort(t *testing.T) {
	r := newResult("lab", 2)
	feed(r,
		"=== RUN   TestKVMA",
		"    harness: sailbox-vmm: guest shutdown",
		"--- FAIL: TestKVMA (1.00s)",
		stepMarker(0, 1),
		"=== RUN   TestKVMLoad",
		"[  646.828399] Kernel panic - not syncing: corrupted stack end detected inside scheduler",
	)
	r.KernelFaults = []string{"[  646.828399] Kernel panic - not syncing: corrupted stack end detected inside scheduler"}
	r.LabError, r.Crashed = "the lab powered off", true
	if !r.knownCrash() {
		t.Fatal("a corrupted stack end is not a known lab crash")
	}
	r.giveUpCutShort()
	if got := r.settledIn(1); !slices.Equal(got, []string{"TestKVMLoad"}) {
		t.Errorf("settled in step 1: %v; the rerun skips these", got)
	}
	rerun := newResult("lab", 1)
	feed(rerun, "=== RUN   TestKVMB", "--- PASS: TestKVMB (1.00s)", stepMarker(0, 0), markerDone)
	m := r.mergeRerun(r.unfinished(), rerun)
	if m.OK() || !slices.Equal(m.Failed, []string{"TestKVMA", "TestKVMLoad"}) || !slices.Equal(m.GivenUp, []string{"TestKVMLoad"}) || !slices.Equal(m.Passed, []string{"TestKVMB"}) {
		t.Errorf("merged: OK %v, failed %v, given up %v, passed %v", m.OK(), m.Failed, m.GivenUp, m.Passed)
	}
	if got := m.labFaulted(); !slices.Equal(got[0], []string{"TestKVMA"}) || len(got) != 1 {
		t.Errorf("retested after the give-up: %v, want TestKVMA alone", got)
	}
}

// The steps a crashed lab left run again skipping the tests that passed
// there, and are told where every crashed lab's console is, oldest
// first, whatever an earlier rerun told them.
func TestRerunPlan(t *testing.T) {
	plan := &Plan{Steps: []Step{
		{Name: "vmm", Args: []string{"-test.run", "^TestKVM"}, Env: []string{"SAILBOX_KVM_LAB=1"}},
		{Name: "bench", Env: []string{"SAILBOX_KVM_LAB=1", kvmtest.CrashedConsolesEnv + "=/old"}},
	}}
	res := newResult("lab", 2)
	res.observe("--- PASS: TestKVMA (1.00s)")
	res.LabError, res.Crashed = "the lab powered off (kernel panic?)", true
	rerun, names := rerunPlan(plan, res, []int{0, 1}, []string{"/c/console-crash1.log", "/c/console-crash2.log"})
	if !slices.Equal(names, []string{"vmm", "bench"}) || len(rerun.Steps) != 2 {
		t.Fatalf("rerun %+v, names %v", rerun, names)
	}
	if got := rerun.Steps[0].Args; !slices.Equal(got, []string{"-test.run", "^TestKVM", "-test.skip", "^(TestKVMA)$"}) {
		t.Errorf("args %v", got)
	}
	want := kvmtest.CrashedConsolesEnv + "=/c/console-crash1.log:/c/console-crash2.log"
	for _, s := range rerun.Steps {
		if !slices.Equal(s.Env, []string{"SAILBOX_KVM_LAB=1", want}) {
			t.Errorf("%s: env %v", s.Name, s.Env)
		}
	}
	if !slices.Equal(plan.Steps[1].Env, []string{"SAILBOX_KVM_LAB=1", kvmtest.CrashedConsolesEnv + "=/old"}) {
		t.Errorf("the plan's own step changed: %v", plan.Steps[1].Env)
	}
}
