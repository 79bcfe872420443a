package kvmlab

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sailbox-dev/sailbox/internal/kvmtest"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// Where a plan runs.
const (
	WhereAuto = "auto" // on the host if its /dev/kvm is usable, else in the lab
	WhereHost = "host"
	WhereLab  = "lab"
)

// Runner runs plans on real KVM, on the host or in the lab.
type Runner struct {
	Where     string // WhereAuto, WhereHost or WhereLab
	LabKernel string // unpacked lab kernel (build/lab-kernel.sh); found by running it when empty
	LabQEMU   string // unpacked lab QEMU (build/lab-qemu.sh); found by running it when empty
	WorkDir   string
	MemoryMiB int
	CPUs      int
	Timeout   time.Duration
	Out       io.Writer // streamed output of the steps (and the lab console)
	Log       io.Writer // the runner's own progress
}

// Run decides where plan runs and runs it.
func (r *Runner) Run(ctx context.Context, plan *Plan) (*Result, error) {
	where := r.Where
	if where == WhereAuto || where == "" {
		sys, err := kvm.OpenUsable()
		if err == nil {
			sys.Close()
			where = WhereHost
		} else {
			fmt.Fprintf(r.Log, "kvmlab: %v\nkvmlab: running on real /dev/kvm inside the KVM lab (Linux under QEMU TCG with emulated AMD SVM)\n", err)
			where = WhereLab
		}
	}
	switch where {
	case WhereHost:
		fmt.Fprintf(r.Log, "kvmlab: running directly on this host's /dev/kvm (%s)\n", kvm.HostBackend())
		ctx, cancel := context.WithTimeout(ctx, r.Timeout)
		defer cancel()
		return RunDirect(ctx, plan, r.Out)
	case WhereLab:
		return r.runLab(ctx, plan)
	default:
		return nil, fmt.Errorf("kvmlab: where %q: want auto, host or lab", where)
	}
}

func (r *Runner) runLab(ctx context.Context, plan *Plan) (*Result, error) {
	for i := range plan.Steps {
		plan.Steps[i].Env = append(plan.Steps[i].Env, kvmtest.LabEnv+"=1")
	}
	lab, err := r.newLab(ctx)
	if err != nil {
		return nil, err
	}
	old, _ := filepath.Glob(filepath.Join(r.WorkDir, "console-*.log")) // an earlier run's
	for _, f := range old {
		os.Remove(f)
	}
	res, err := lab.Run(ctx, plan)
	if err != nil {
		return nil, err
	}
	if res, err = r.rerunCrashed(ctx, lab, plan, res); err != nil {
		return nil, err
	}
	return r.retestLabFaults(ctx, lab, plan, res)
}

// newLab readies a lab: QEMU found, the lab kernel fetched, the lab's
// init built.
func (r *Runner) newLab(ctx context.Context) (*Lab, error) {
	kernelDir, err := r.fetched(ctx, r.LabKernel, "build/lab-kernel.sh", "lab kernel")
	if err != nil {
		return nil, err
	}
	qemuDir, err := r.fetched(ctx, r.LabQEMU, "build/lab-qemu.sh", "lab QEMU")
	if err != nil {
		return nil, err
	}
	init := filepath.Join(r.WorkDir, "kvmlab-init")
	build := exec.CommandContext(ctx, "go", "build", "-o", init, "github.com/sailbox-dev/sailbox/cmd/kvmlab-init")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = r.Log, r.Log
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("kvmlab: build the lab's init: %w", err)
	}
	lab := &Lab{
		QEMU:       filepath.Join(qemuDir, "usr/bin/qemu-system-x86_64"),
		Firmware:   []string{filepath.Join(qemuDir, "usr/share/qemu"), filepath.Join(qemuDir, "usr/share/seabios")},
		KernelDir:  kernelDir,
		InitBinary: init,
		WorkDir:    r.WorkDir,
		MemoryMiB:  r.MemoryMiB,
		CPUs:       r.CPUs,
		Timeout:    r.Timeout,
		Out:        r.Out,
	}
	fmt.Fprintf(r.Log, "kvmlab: booting the lab (kernel %s, %s, %d MiB, %d CPUs, timeout %v; console log %s)\n",
		filepath.Base(kernelDir), filepath.Base(qemuDir), r.MemoryMiB, r.CPUs, r.Timeout, lab.ConsoleLog())
	return lab, nil
}

// fetched returns dir, or if it is empty the directory that script (run
// from the repository's root) fetches and prints: the lab's kernel or
// QEMU, unpacked from Debian's archive into the cache.
func (r *Runner) fetched(ctx context.Context, dir, script, what string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	cmd := exec.CommandContext(ctx, script)
	cmd.Stderr = r.Log
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("kvmlab: %s (%s): %w", what, script, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// retestLabFaults runs once more, in a fresh lab, the tests that failed
// after the lab's emulator broke one of their guests (a triple fault, a
// vCPU stuck at a lab-kernel address), and reports them as retried. A
// test that fails again fails the run.
func (r *Runner) retestLabFaults(ctx context.Context, lab *Lab, plan *Plan, res *Result) (*Result, error) {
	retest := res.labFaulted()
	if len(retest) == 0 || res.Crashed {
		return res, nil
	}
	rerun := &Plan{}
	var names []string
	for _, i := range slices.Sorted(maps.Keys(retest)) {
		s := plan.Steps[i]
		s.Args = withTestRun(s.Args, "^("+strings.Join(retest[i], "|")+")$")
		rerun.Steps = append(rerun.Steps, s)
		names = append(names, retest[i]...)
	}
	crashLog := keepConsole(lab, r.WorkDir, "labfault")
	fmt.Fprintf(r.Log, "kvmlab: %s failed after the lab broke a guest (console log %s); running them again in a fresh lab, once\n",
		strings.Join(names, ", "), crashLog)
	again, err := lab.Run(ctx, rerun)
	if err != nil {
		return nil, err
	}
	// The fresh lab can crash too (its kernel has panicked while booting):
	// that says nothing about the tests either, so it gets the same reruns.
	if again, err = r.rerunCrashed(ctx, lab, rerun, again); err != nil {
		return nil, err
	}
	return res.mergeRetest(retest, again), nil
}

// withTestRun returns args with the value of -test.run replaced by run.
func withTestRun(args []string, run string) []string { return withFlag(args, "-test.run", run) }

// withTestSkip returns args with -test.skip skip (Go 1.20): the tests it
// matches do not run.
func withTestSkip(args []string, skip string) []string { return withFlag(args, "-test.skip", skip) }

// withFlag returns a copy of args with flag's value set to value, added
// if args lack it.
func withFlag(args []string, flag, value string) []string {
	out := slices.Clone(args)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == flag {
			out[i+1] = value
			return out
		}
	}
	return append(out, flag, value)
}

// maxCrashReruns bounds how many fresh labs run what crashed labs left.
// On a busy CI machine the lab's emulated SVM has crashed three labs in
// one 22-minute kvm tier (at 15m39s, 4m57s and 6s of their uptime), and
// on a faster one five in one 35-minute kvm tier (each lab finishing
// tests before it crashed: the fifth rerun completed it), so the bound
// leaves room for that; maxIdleCrashes stops sooner a run whose labs
// get nowhere.
const maxCrashReruns = 8

// maxIdleCrashes: this many labs in a row that crashed before any test
// in them passed or failed end a run of tests (idleCrashes). Each lab that does settle a test
// brings the run closer to its end, so reruns for those are bounded by
// the tests left; labs that settle none are not.
const maxIdleCrashes = 3

// idleCrashes counts the crashed labs in a row that settled no test, once
// the run has shown that it runs tests: the one step of `kvmlab run` (the
// bench, the demo) settles none, and only maxCrashReruns bounds its reruns.
type idleCrashes struct {
	n     int
	tests bool // some lab of the run started or settled a test
}

// add counts the crashed lab whose result is lab and returns the count.
func (c *idleCrashes) add(lab *Result) int {
	c.tests = c.tests || lab.settled() > 0 || lab.running != ""
	switch {
	case lab.settled() > 0:
		c.n = 0
	case c.tests:
		c.n++
	}
	return c.n
}

// A test that lab crashes cut short this many times in a row is given up
// on (see afterCrash): maxCutShortKnown times when every one of those
// crashes showed a known fault of the lab kernel (labCrashSigns), else
// maxCutShort. The tests that load the lab most (twenty guests at once)
// are the ones most often running when it crashes: one CI run saw its
// kernel's "corrupted stack end" panic cut the same such test short at
// 14m32s and, in the next lab, at 1m48s of uptime.
const (
	maxCutShort      = 2
	maxCutShortKnown = 3
)

// crashAction is what follows a crashed lab.
type crashAction int

const (
	crashStop   crashAction = iota // nothing more runs
	crashRerun                     // the unfinished steps run again
	crashGiveUp                    // they run again without the test cut short, which fails
)

// afterCrash decides what follows the crashed run res, given how many
// crashes in a row (this one included) cut short the test this one did
// (streak; 0 if it cut none short), whether each of them showed a known
// lab fault (known), the reruns made so far, and how many labs in a row
// (this one included) crashed without settling a test (idle). A crash says nothing
// about the test it cut short, unless it keeps happening in that test:
// then that test may be what breaks the lab (a guest driving the emulated
// SVM somewhere it always fails), and running it again would only hide
// that, so it fails, naming the crashes, and the rest runs without it.
func afterCrash(res *Result, streak int, known bool, reruns, idle int) (crashAction, string) {
	limit := maxCutShort
	if known {
		limit = maxCutShortKnown
	}
	switch cut := res.cutShort(); {
	case !res.Crashed || len(res.unfinished()) == 0:
		return crashStop, ""
	case reruns >= maxCrashReruns:
		return crashStop, fmt.Sprintf("%d lab crashes in one run; no more reruns", reruns+1)
	case idle >= maxIdleCrashes:
		return crashStop, fmt.Sprintf("%d labs in a row crashed before settling a test; no more reruns", idle)
	case cut != "" && streak >= limit:
		return crashGiveUp, fmt.Sprintf("%s was running at %d lab crashes in a row; it fails and is not run again", cut, streak)
	}
	return crashRerun, ""
}

// rerunCrashed runs in a fresh lab, while afterCrash allows, the steps a
// crashed lab did not finish, without the tests settled in them (settledIn).
func (r *Runner) rerunCrashed(ctx context.Context, lab *Lab, plan *Plan, res *Result) (*Result, error) {
	prev, streak, known := "", 0, true
	var idle idleCrashes
	var crashLogs []string // the crashed labs' consoles, oldest first
	idleRun := idle.add(res)
	for reruns := 0; ; reruns++ {
		if cut := res.cutShort(); cut == "" || cut != prev {
			prev, streak, known = cut, 0, true
		}
		if prev != "" {
			streak++
			known = known && res.knownCrash()
		}
		action, why := afterCrash(res, streak, known, reruns, idleRun)
		if why != "" {
			res.LabError += "; " + why
		}
		if action == crashStop {
			return res, nil
		}
		if action == crashGiveUp {
			res.giveUpCutShort()
			prev, streak = "", 0
		}
		// The lab's emulated SVM breaks now and then (its kernel panics,
		// triple-faults or wedges): that is not a test's failure, so what
		// did not finish runs again in a fresh lab, and the crash is
		// reported.
		steps := res.unfinished()
		crashLog := keepConsole(lab, r.WorkDir, "crash")
		crashLogs = append(crashLogs, crashLog)
		rerun, names := rerunPlan(plan, res, steps, crashLogs)
		cut := ""
		if c := res.cutShort(); c != "" {
			cut = ", cutting short " + c
		}
		fmt.Fprintf(r.Log, "kvmlab: the lab crashed (%s%s; console log %s); running the %d unfinished steps again in a fresh lab, without the tests settled there: %s\n",
			res.LabError, cut, crashLog, len(steps), strings.Join(names, ", "))
		again, err := lab.Run(ctx, rerun)
		if err != nil {
			return nil, err
		}
		idleRun = idle.add(again)
		res = res.mergeRerun(steps, again)
	}
}

// rerunPlan is the plan that runs plan's steps steps again after the
// crashed run res: without the tests settled in them, and told in
// kvmtest.CrashedConsolesEnv where the crashed labs' consoles are
// (crashLogs), so that a step which hands back its results as it goes
// can resume from them. It returns the steps' names too.
func rerunPlan(plan *Plan, res *Result, steps []int, crashLogs []string) (*Plan, []string) {
	rerun := &Plan{}
	var names []string
	for _, i := range steps {
		s := plan.Steps[i]
		if settled := res.settledIn(i); len(settled) > 0 {
			s.Args = withTestSkip(s.Args, "^("+strings.Join(settled, "|")+")$")
		}
		s.Env = withEnv(s.Env, kvmtest.CrashedConsolesEnv, strings.Join(crashLogs, string(os.PathListSeparator)))
		rerun.Steps = append(rerun.Steps, s)
		names = append(names, s.Name)
	}
	return rerun, names
}

// withEnv returns a copy of env with key set to value, replacing an
// earlier value.
func withEnv(env []string, key, value string) []string {
	out := slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return strings.HasPrefix(kv, key+"=") })
	return append(out, key+"="+value)
}

// keepConsole moves the console log of the lab that just ended to the
// first free console-<kind>N.log in dir, before the next lab writes its
// own, and returns where it is now.
func keepConsole(lab *Lab, dir, kind string) string {
	for n := 1; ; n++ {
		path := filepath.Join(dir, fmt.Sprintf("console-%s%d.log", kind, n))
		if _, err := os.Lstat(path); err == nil {
			continue
		}
		if err := os.Rename(lab.ConsoleLog(), path); err != nil {
			return lab.ConsoleLog()
		}
		return path
	}
}

// ForwardedEnv returns the SAILBOX_* variables of this process, which steps
// inherit (artifact paths, options), plus SAILBOX_REQUIRE_KVM=1.
func ForwardedEnv() []string {
	env := []string{"SAILBOX_REQUIRE_KVM=1"}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "SAILBOX_") && !strings.HasPrefix(kv, "SAILBOX_REQUIRE_KVM=") {
			env = append(env, kv)
		}
	}
	return env
}
