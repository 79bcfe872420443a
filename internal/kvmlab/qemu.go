package kvmlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"time"
)

// Lab boots the KVM lab: Debian's kernel under QEMU's TCG with an EPYC CPU
// model, whose SVM the lab kernel's kvm-amd turns into a real /dev/kvm.
type Lab struct {
	QEMU       string        // qemu-system-x86_64
	Firmware   []string      // directories of QEMU's firmware (-L): its option ROMs, SeaBIOS
	KernelDir  string        // unpacked linux-image .deb: boot/vmlinuz-*, lib/modules/*
	InitBinary string        // static build of cmd/kvmlab-init
	WorkDir    string        // initramfs and console log go here
	MemoryMiB  int           // lab RAM (guests run inside it)
	CPUs       int           // lab vCPUs
	Timeout    time.Duration // one Run, boot included
	// Quiet is how long the console may stay silent (no step output and
	// no heartbeat from the lab's init) before the lab counts as wedged
	// and is killed; zero means five minutes.
	Quiet time.Duration
	Out   io.Writer // the console, streamed
}

func (l *Lab) quiet() time.Duration {
	if l.Quiet > 0 {
		return l.Quiet
	}
	return 5 * time.Minute
}

// ConsoleLog is the path of the last run's full console output.
func (l *Lab) ConsoleLog() string { return filepath.Join(l.WorkDir, "console.log") }

// Run boots the lab, runs plan inside it and powers it off.
func (l *Lab) Run(ctx context.Context, plan *Plan) (*Result, error) {
	kernel, modDir, err := l.kernelFiles()
	if err != nil {
		return nil, err
	}
	modules, err := resolveModules(modDir, labModules)
	if err != nil {
		return nil, err
	}
	initrd := filepath.Join(l.WorkDir, "lab-initramfs.cpio")
	if err := writeInitramfs(initrd, l.InitBinary, modules, plan); err != nil {
		return nil, err
	}
	log, err := os.Create(l.ConsoleLog())
	if err != nil {
		return nil, fmt.Errorf("lab console log: %w", err)
	}
	defer log.Close()

	ctx, cancel := context.WithTimeout(ctx, l.Timeout)
	defer cancel()
	args := []string{}
	for _, dir := range l.Firmware {
		args = append(args, "-L", dir)
	}
	cmd := exec.CommandContext(ctx, l.QEMU, append(args,
		"-machine", "q35", "-cpu", "EPYC", "-accel", "tcg,thread=multi",
		"-m", fmt.Sprint(l.MemoryMiB), "-smp", fmt.Sprint(l.CPUs),
		"-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
		// maxcpus=1: the lab kernel boots on one CPU, and the lab's init
		// brings the others online once KVM is set up (see alone). The
		// kernel live-patches its text while it boots (static keys such
		// as sched_clock's), and under multi-threaded TCG a CPU running
		// beside the patch now and then still executes the breakpoint it
		// removed: a lab died of "Oops: int3" in sched_clock_cpu at 1.6 s
		// of uptime, before its init ran.
		"-append", "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init maxcpus=1"+amdParams(),
		// multidevs=remap: the host root spans file systems (/, /proc,
		// /sys, ...) whose inode numbers collide; without remapping, the
		// lab's 9p client takes /proc and /sys for one directory.
		"-virtfs", "local,path=/,mount_tag="+shareTag+",security_model=none,readonly=on,multidevs=remap",
	)...)
	// QEMU's own warnings (TCG lacks a few EPYC features) go to the log only.
	cmd.Stderr = log
	cmd.WaitDelay = 5 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("lab: start %s: %w", l.QEMU, err)
	}

	res := newResult("lab", len(plan.Steps))
	wedged := l.readConsole(stdout, res, log, func() { cmd.Process.Kill() })
	waitErr := cmd.Wait()
	elapsed := time.Since(start).Round(time.Second)
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		res.LabError = fmt.Sprintf("timed out after %v and was killed", l.Timeout)
		l.printConsoleTail(200)
	case ctx.Err() != nil:
		res.LabError = fmt.Sprintf("stopped after %v: %v", elapsed, ctx.Err())
	case res.Done:
	case wedged:
		res.LabError = fmt.Sprintf("the lab printed nothing for %v and was killed after %v (wedged)", l.quiet(), elapsed)
		res.Crashed = true
		l.printConsoleTail(60)
	case waitErr != nil:
		res.LabError = fmt.Sprintf("QEMU ended after %v: %v (console log: %s)", elapsed, waitErr, l.ConsoleLog())
		res.Crashed = true
		l.printConsoleTail(60)
	case res.LabError == "":
		res.LabError = fmt.Sprintf("the lab powered off after %v without finishing its plan (a kernel panic; a triple fault of the lab kernel if its console shows none)", elapsed)
		res.Crashed = true
		l.printConsoleTail(60)
	}
	return res, nil
}

// kernelFiles finds vmlinuz and the module tree in an unpacked kernel .deb.
func (l *Lab) kernelFiles() (kernel, modDir string, err error) {
	ks, _ := filepath.Glob(filepath.Join(l.KernelDir, "boot", "vmlinuz-*"))
	ms, _ := filepath.Glob(filepath.Join(l.KernelDir, "lib", "modules", "*"))
	if len(ks) != 1 || len(ms) != 1 {
		return "", "", fmt.Errorf("lab kernel: want one boot/vmlinuz-* and one lib/modules/* in %s, found %d and %d (run build/lab-kernel.sh)", l.KernelDir, len(ks), len(ms))
	}
	return ks[0], ms[0], nil
}

// printConsoleTail prints the last n lines of the console log, which holds
// QEMU's own messages too, to show why a lab failed.
func (l *Lab) printConsoleTail(n int) {
	b, err := os.ReadFile(l.ConsoleLog())
	if err != nil {
		fmt.Fprintf(l.Out, "kvmlab: cannot read console log: %v\n", err)
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	fmt.Fprintf(l.Out, "kvmlab: ---- last %d lines of the lab console log (%s) ----\n", len(lines), l.ConsoleLog())
	for _, s := range lines {
		fmt.Fprintln(l.Out, s)
	}
	fmt.Fprintf(l.Out, "kvmlab: ---- end of console log ----\n")
}

// defaultAMDParams are the lab kvm-amd's module parameters unless
// $KVMLAB_AMD_PARAMS says otherwise: none. With nested paging, QEMU 7.2's
// emulated SVM now and then leaves the lab kernel's own RIP (the
// instruction after VMRUN in __svm_vcpu_run) in a nested guest's state,
// which then faults forever or triple-faults: under the 6.1 lab kernel 1
// to 2 boots in 8 streaming ten MiB of exec output (make stress), under
// 6.12 one in 16. npt=0 (shadow page tables) streamed 16 of 16 under 6.1,
// but wedged the whole lab (both lab CPUs busy, no output for over
// fifteen minutes) in both full kvm-tier runs made with it. The runner
// retries a test whose guest the lab broke (Runner.retestLabFaults) and
// reruns what a wedged or crashed lab did not finish
// (Runner.rerunCrashed).
const defaultAMDParams = ""

// kernelMessage is a line the lab kernel printed ("[  477.04] ..."): the
// steps' output never starts with a bracket and a timestamp, as guest
// consoles in test logs are indented.
var kernelMessage = regexp.MustCompile(`^\[\s*\d+\.\d+\] `)

// kernelFault is a lab kernel message reporting a fault of its own.
var kernelFault = regexp.MustCompile(`Oops|BUG:|Kernel panic|general protection fault|soft lockup|int3`)

// readConsole reads the lab's console until it closes: each line goes to
// log and (but the init's heartbeats) to l.Out, and is accounted in res
// (step markers, test results). A console silent for l.quiet(), without
// even the init's heartbeat, means the lab kernel has wedged (both its
// CPUs busy, no progress): readConsole calls kill and reports wedged,
// rather than wait out the run's timeout. A test that hangs does not
// silence the heartbeat; its own -test.timeout ends it.
func (l *Lab) readConsole(console io.Reader, res *Result, log io.Writer, kill func()) (wedged bool) {
	var silent atomic.Bool
	quiet := time.AfterFunc(l.quiet(), func() {
		silent.Store(true)
		kill()
	})
	defer quiet.Stop()
	scanner := bufio.NewScanner(console)
	scanner.Buffer(make([]byte, 64<<10), 1<<20)
	for scanner.Scan() {
		line := strings.TrimRight(scanner.Text(), "\r")
		fmt.Fprintln(log, line)
		// The lab kernel's own messages are no sign of life: a wedged
		// lab goes on reporting soft lockups.
		if !kernelMessage.MatchString(line) {
			quiet.Reset(l.quiet())
		} else if kernelFault.MatchString(line) {
			res.KernelFaults = append(res.KernelFaults, line)
		}
		if line == markerAlive {
			continue // the init's heartbeat: the console log keeps it
		}
		switch i, code, ok := parseStepMarker(line); {
		case ok && i >= 0 && i < len(res.Exit):
			res.Exit[i] = code
			res.step = i + 1 // steps run in order
		case line == markerDone:
			res.Done = true
		case strings.HasPrefix(line, markerError):
			res.LabError = strings.TrimPrefix(line, markerError)
		}
		res.observe(line)
		fmt.Fprintln(l.Out, line)
	}
	quiet.Stop()
	return silent.Load()
}

// amdParams passes the kvm-amd module parameters (comma-separated) to the
// lab's init through the kernel command line: $KVMLAB_AMD_PARAMS if set,
// even empty, or defaultAMDParams.
func amdParams() string {
	p, ok := os.LookupEnv("KVMLAB_AMD_PARAMS")
	if !ok {
		p = defaultAMDParams
	}
	if p == "" {
		return ""
	}
	return " KVMLAB_AMD_PARAMS=" + p
}
