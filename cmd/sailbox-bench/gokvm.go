package main

import (
	"context"
	"debug/buildinfo"
	"fmt"
	"os/exec"
	"time"

	"github.com/sailbox-dev/sailbox/vmm"
)

// gokvm (github.com/bobuhiro11/gokvm, built by build/gokvm.sh) is the
// second peer: another KVM VMM in Go. It boots a bzImage with an initrd
// through the 32-bit boot protocol and gives the guest a COM1 UART (its
// output on gokvm's stdout), a PIC, PIT and CMOS, MP tables and legacy
// virtio-net and -blk over PCI on request; no ACPI and no vsock. So the
// guest agent cannot answer under it, and the point both VMMs reach and
// the bench can see is init's first console line (initMarker): the same
// kernel, initramfs, memory and command line (Sailbox's, less its
// virtio-mmio devices), from the VMM's start (gokvm: its process's exec;
// Sailbox: vmm.New, in this process) to the marker on the console
// (gokvm: read from its stdout; Sailbox: its serial device's writer).

// gokvmCmdline is the kernel command line of both boots to initMarker:
// what Sailbox gives every guest, and benchSailbox's "quiet".
const gokvmCmdline = vmm.BaseCmdline + " quiet"

// gokvmVCPUExited is what gokvm prints when a vCPU's loop ended (an
// unexpected exit, a port it does not know, a triple fault): the guest
// will print nothing more.
const gokvmVCPUExited = "CPU 0 exits"

// gokvmArgs boot o's kernel and initramfs under gokvm, one vCPU.
func gokvmArgs(o options) []string {
	return []string{"boot", "-k", o.kernel, "-i", o.initrd, "-m", fmt.Sprintf("%dM", o.memMiB), "-c", "1", "-p", gokvmCmdline}
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

// benchGokvm boots the guest under gokvm and returns the time to init's
// first console line.
func benchGokvm(ctx context.Context, o options) (time.Duration, error) {
	console := newConsoleWatch(initMarker)
	cmd := exec.CommandContext(ctx, o.gokvm, gokvmArgs(o)...)
	// Stdin stays /dev/null: gokvm then reads no terminal and leaves it be.
	cmd.Stdout, cmd.Stderr = console, console
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() { cmd.Process.Kill(); <-exited }()

	timeout := time.NewTimer(o.timeout)
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
			return 0, fmt.Errorf("gokvm exited before init ran (%v); console: %q", cmd.ProcessState, console.lastBytes())
		case <-timeout.C:
			return 0, fmt.Errorf("no %q on gokvm's console after %v; console: %q", initMarker, o.timeout, console.lastBytes())
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-poll.C:
			if _, ok := console.seenAt(); !ok && console.contains(gokvmVCPUExited) {
				return 0, fmt.Errorf("gokvm's vCPU stopped before init ran; console: %q", console.lastBytes())
			}
		}
	}
}
