package main

import (
	"context"
	"debug/buildinfo"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/sailbox-dev/sailbox/vmm"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// gokvm (github.com/bobuhiro11/gokvm, built by build/gokvm.sh) is the
// second peer: another KVM VMM in Go. It boots a bzImage with an initrd
// through the 32-bit boot protocol and gives the guest a COM1 UART (its
// output on gokvm's stdout), the in-kernel PIC and PIT, CMOS, an MP table
// listing the CPUs alone, and legacy virtio-net and -blk over PCI on
// request: no ACPI, no IO-APIC, no vsock, and KVM's CPUID without the
// hypervisor bit (so no kvm-clock). So the guest agent cannot answer
// under it, and what both VMMs reach and the bench can see is a line on
// the serial console: the same kernel, initramfs and memory, from the
// VMM's start (gokvm: its process's exec; Sailbox: vmm.New, in this
// process) to the line on the console (gokvm: read from its stdout;
// Sailbox: its serial device's writer). consoleBoots are the lines.

// consoleBoot is one way the bench boots the guest under Sailbox and
// under gokvm, to one console line.
type consoleBoot struct {
	rows   string // row IDs: <rows>.sailbox, <rows>.gokvm
	label  string
	marker string
	// sailbox is Sailbox's Config.Cmdline (after vmm.BaseCmdline and its
	// devices); "" for the bench's usual boot (benchSailbox's, "quiet"),
	// whose marker time that boot records.
	sailbox string
	gokvm   string // gokvm's whole kernel command line
}

// gokvmNoAPIC tells the kernel to use the PIC, not an IO-APIC, which
// gokvm's machine has none of (gokvm's own default command line has
// it). Without it, Linux 6.1 takes gokvm's MP table (CPUs, no interrupt
// sources) for symmetric I/O mode, keeps the local APIC's LINT0 masked, and
// never sees a timer interrupt (so its source reads): in the lab, no boot
// with Sailbox's command line alone got to init (two quiet ones in 2
// minutes each, gokvmProbe's with the full log stopped right after the
// TSC calibration failed, where the delay loop's calibration waits for
// timer ticks).
const gokvmNoAPIC = " noapic"

// kernelRunsInit is what the kernel prints (at KERN_INFO: the full kernel
// log must go to the console) just before it executes the initramfs's init.
const kernelRunsInit = "Run /init as init process"

var consoleBoots = []consoleBoot{
	// init's first line goes through the tty layer's interrupt-driven
	// transmitter, which gokvm's UART drives only by chance (its IIR reads
	// return the last byte of port I/O); the kernel's own lines are
	// written by polling, which it serves.
	{rows: "init", label: "boot to init's first console line (quiet)", marker: initMarker,
		gokvm: vmm.BaseCmdline + " quiet" + gokvmNoAPIC},
	{rows: "kinit", label: "boot to the kernel's " + fmt.Sprintf("%q", kernelRunsInit) + ", full kernel log on the console", marker: kernelRunsInit,
		sailbox: "loglevel=7", gokvm: vmm.BaseCmdline + " loglevel=7" + gokvmNoAPIC},
}

// gokvmProbe is booted once a run under gokvm: kinit's boot with
// Sailbox's command line alone, without noapic, to show whether gokvm
// still needs it (and where the kernel stops if it does). It costs up to
// -gokvm-timeout.
var gokvmProbe = consoleBoot{rows: "probe", marker: kernelRunsInit, sailbox: "loglevel=7", gokvm: vmm.BaseCmdline + " loglevel=7"}

// gokvmVCPUExited is what gokvm prints when a vCPU's loop ended (an
// unexpected exit, a port it does not know, a triple fault): the guest
// will print nothing more.
const gokvmVCPUExited = "CPU 0 exits"

// gokvmArgs boot o's kernel and initramfs under gokvm, one vCPU, with
// the given kernel command line.
func gokvmArgs(o options, cmdline string) []string {
	return []string{"boot", "-k", o.kernel, "-i", o.initrd, "-m", fmt.Sprintf("%dM", o.memMiB), "-c", "1", "-p", cmdline}
}

// gokvmVersion is the module version gokvm was built from (go install
// records it in the binary).
func gokvmVersion(path string) string {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return "unknown: " + err.Error()
	}
	return fmt.Sprintf("%s %s (%s)", bi.Main.Path, bi.Main.Version, bi.GoVersion)
}

// benchGokvm boots the guest under gokvm as b says and returns the time
// to b's marker on the console.
func benchGokvm(ctx context.Context, o options, b consoleBoot) (time.Duration, error) {
	console := newConsoleWatch(b.marker)
	cmd := exec.CommandContext(ctx, o.gokvm, gokvmArgs(o, b.gokvm)...)
	// Stdin stays /dev/null: gokvm then reads no terminal and leaves it be.
	cmd.Stdout, cmd.Stderr = console, console
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() { cmd.Process.Kill(); <-exited }()

	timeout := time.NewTimer(o.gokvmTimeout)
	defer timeout.Stop()
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for {
		select {
		case <-console.seen:
			at, _ := console.seenAt()
			return at.Sub(start), nil
		case <-exited:
			if at, ok := console.seenAt(); ok { // its last words
				return at.Sub(start), nil
			}
			return 0, fmt.Errorf("gokvm exited before %q (%v); console: %q", b.marker, cmd.ProcessState, console.lastBytes())
		case <-timeout.C:
			return 0, fmt.Errorf("no %q on gokvm's console after %v; console: %q", b.marker, o.gokvmTimeout, console.lastBytes())
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-poll.C:
			if _, ok := console.seenAt(); !ok && console.contains(gokvmVCPUExited) {
				return 0, fmt.Errorf("gokvm's vCPU stopped before %q; console: %q", b.marker, console.lastBytes())
			}
		}
	}
}

// benchSailboxConsole boots the guest under Sailbox as b says, with the
// usual boot's devices, and returns the time to b's marker on the
// console; it stops the machine there.
func benchSailboxConsole(ctx context.Context, sys *kvm.System, o options, b consoleBoot) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "sailbox-bench")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	console := newConsoleWatch(b.marker)
	start := time.Now()
	m, err := vmm.New(sys, vmm.Config{
		KernelPath: o.kernel, InitrdPath: o.initrd, MemoryMiB: o.memMiB, VCPUs: 1,
		Cmdline: b.sailbox, Vsock: &vmm.Vsock{CID: 3, UDSPath: filepath.Join(dir, "vsock")}, Serial: console,
	})
	if err != nil {
		return 0, err
	}
	defer m.Close()
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { m.Stop(); <-done }()
	timeout := time.NewTimer(o.timeout)
	defer timeout.Stop()
	select {
	case <-console.seen:
		at, _ := console.seenAt()
		return at.Sub(start), nil
	case <-done:
		return 0, brokenBoot{fmt.Errorf("the guest stopped before %q; console: %q", b.marker, console.lastBytes())}
	case <-timeout.C:
		return 0, brokenBoot{fmt.Errorf("no %q on the console after %v; console: %q", b.marker, o.timeout, console.lastBytes())}
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// gokvmRuns measures consoleBoots round by round against gokvm (and
// gokvmProbe once), each kind until it has failed twice without a boot:
// the rest would each wait -gokvm-timeout for nothing.
type gokvmRuns struct {
	booted, failed map[string]int
}

func newGokvmRuns() *gokvmRuns {
	return &gokvmRuns{booted: map[string]int{}, failed: map[string]int{}}
}

// round measures round i: for each of consoleBoots, Sailbox's boot (unless
// the usual boot, init, recorded it already) and gokvm's.
func (g *gokvmRuns) round(ctx context.Context, sys *kvm.System, o options, res *Results, log io.Writer, i int, sb sailboxBoot) error {
	if i == 0 {
		if took, err := benchGokvm(ctx, o, gokvmProbe); err != nil {
			fmt.Fprintf(log, "gokvm   probe with Sailbox's command line alone: %v\n", err)
			res.note("gokvm probe (Sailbox's command line alone, no noapic, full kernel log): %v", err)
		} else {
			fmt.Fprintf(log, "gokvm   probe with Sailbox's command line alone: %q after %v\n", gokvmProbe.marker, took.Round(time.Millisecond))
			res.note("gokvm probe (Sailbox's command line alone, no noapic): %q after %v", gokvmProbe.marker, took.Round(time.Millisecond))
		}
	}
	for _, b := range consoleBoots {
		if b.sailbox == "" {
			if sb.init > 0 {
				res.durations(b.rows+".sailbox", "boot", b.label+", sailbox", sb.init)
			} else {
				res.note("sailbox run %d: no %q on the console, its %s row left out", i, b.marker, b.rows)
			}
		} else {
			var took time.Duration
			err := res.retryBoot(log, fmt.Sprintf("sailbox %s run %d", b.rows, i), func() (err error) {
				took, err = benchSailboxConsole(ctx, sys, o, b)
				return err
			})
			if err != nil {
				return fmt.Errorf("sailbox %s run %d: %w", b.rows, i, err)
			}
			fmt.Fprintf(log, "sailbox %s run %d: %q after %v\n", b.rows, i, b.marker, took.Round(time.Millisecond))
			res.durations(b.rows+".sailbox", "boot", b.label+", sailbox", took)
		}
		if g.booted[b.rows] == 0 && g.failed[b.rows] >= 2 {
			continue
		}
		took, err := benchGokvm(ctx, o, b)
		if err != nil {
			g.failed[b.rows]++
			fmt.Fprintf(log, "gokvm   %s run %d: failed, left out: %v\n", b.rows, i, err)
			res.note("gokvm %s run %d failed, left out: %v", b.rows, i, err)
			if g.booted[b.rows] == 0 && g.failed[b.rows] == 2 {
				res.note("gokvm %s failed twice without a boot: its later runs skipped", b.rows)
			}
			continue
		}
		g.booted[b.rows]++
		fmt.Fprintf(log, "gokvm   %s run %d: %q after %v\n", b.rows, i, b.marker, took.Round(time.Millisecond))
		res.durations(b.rows+".gokvm", "boot", b.label+", gokvm", took)
	}
	return nil
}
