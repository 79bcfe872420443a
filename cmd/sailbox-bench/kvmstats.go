package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// KVM's own counters of what a VM's guest made it do, read per call
// beside the round trips' times. Times in the lab drift with the
// machine's load; how many times the guest left KVM for one call does
// not, and it is the same counter for both peers: the lab kernel's KVM
// stats in debugfs (what kvm_stat reads), one directory per VM named
// <creating thread>-<vm fd>, each counter there summed over the VM's
// vCPUs.

// kvmDebugfs is where the host kernel's KVM keeps its per-VM counters.
const kvmDebugfs = "/sys/kernel/debug/kvm"

// counterKinds are the counters the bench reports, each with what it
// counts. "exits" holds every kind, those without a counter of their own
// too (MSR writes of the timer, the APIC's EOI, NPT faults); the others
// split it: the VMM's process handles only userspace_exits, and the rest
// are the guest kernel's, the same whichever VMM runs it.
var counterKinds = []struct{ name, label string }{
	{"exits", "exits from the guest to KVM"},
	{"insn_emulation", "instructions KVM emulated (MMIO; in the lab, without next-RIP save, every intercepted one)"},
	{"irq_injections", "interrupts injected"},
	{"userspace_exits", "exits handled by the VMM's own process (mmio_exits + io_exits)"},
	{"halt_exits", "exits of a guest that went idle (HLT) to wait for the host"},
	{"irq_exits", "exits for the host's own interrupts (a vCPU kicked to take one injected)"},
}

// kvmCounters are one VM's KVM counters at one moment.
type kvmCounters map[string]uint64

// openKVMCounters checks that the counters can be read, mounting debugfs
// where it is not (the lab's init does not); the reason if not.
func openKVMCounters() error {
	if _, err := os.Stat(kvmDebugfs); err == nil {
		return nil
	}
	if err := unix.Mount("debugfs", "/sys/kernel/debug", "debugfs", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount debugfs: %w", err)
	}
	if _, err := os.Stat(kvmDebugfs); err != nil {
		return fmt.Errorf("KVM counters: %w", err)
	}
	return nil
}

// readKVMCounters sums the counters, in root (kvmDebugfs), of every VM
// whose directory mine accepts. KVM names a VM's directory after the
// thread that created it (task_pid_nr), not its process: QEMU's main
// thread, but whichever thread Go's runtime ran vmm.New on. The bench
// runs one VM at a time while it counts, so that is the VM measured.
func readKVMCounters(root string, mine func(tid int) bool) (kvmCounters, error) {
	all, err := filepath.Glob(filepath.Join(root, "*-*"))
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, d := range all {
		tid, _, ok := strings.Cut(filepath.Base(d), "-")
		if n, err := strconv.Atoi(tid); ok && err == nil && mine(n) {
			dirs = append(dirs, d)
		}
	}
	if len(dirs) == 0 {
		return nil, fmt.Errorf("KVM counters: no VM of this process in %s", root)
	}
	c := kvmCounters{}
	for _, d := range dirs {
		files, err := os.ReadDir(d)
		if err != nil {
			return nil, fmt.Errorf("KVM counters: %w", err)
		}
		for _, f := range files {
			if f.IsDir() {
				continue // a vCPU's own directory: its counters are in the VM's sums
			}
			b, err := os.ReadFile(filepath.Join(d, f.Name()))
			if err != nil {
				continue // not a counter (debugfs has a few files of other shapes)
			}
			if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
				c[f.Name()] += n
			}
		}
	}
	c["userspace_exits"] = c["mmio_exits"] + c["io_exits"]
	return c, nil
}

// threadOf accepts the threads of process pid.
func threadOf(pid int) func(tid int) bool {
	return func(tid int) bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d", pid, tid))
		return err == nil
	}
}

// perCall is what each of n calls between a and b cost, counter by
// counter, for the reported kinds.
func perCall(a, b kvmCounters, n int) map[string]float64 {
	out := map[string]float64{}
	for _, k := range counterKinds {
		out[k.name] = float64(b[k.name]-a[k.name]) / float64(n)
	}
	return out
}

// counterLine prints per-call counters in counterKinds' order.
func counterLine(c map[string]float64) string {
	var parts []string
	for _, k := range counterKinds {
		parts = append(parts, fmt.Sprintf("%s %.1f", k.name, c[k.name]))
	}
	return strings.Join(parts, ", ")
}

// recordCounters adds one boot's per-call counters (exec and health
// calls) for a peer as samples of the rows kvm.<counter>.<call>.<peer>,
// and prints them.
func (r *Results) recordCounters(log io.Writer, run int, t agentTimes, peer string) {
	for _, s := range []struct {
		call string
		c    map[string]float64
	}{{"exec", t.execCounters}, {"health", t.healthCounters}} {
		if s.c == nil {
			continue
		}
		fmt.Fprintf(log, "%-7s run %d: per %s call: %s\n", peer, run, s.call, counterLine(s.c))
		for _, k := range counterKinds {
			r.values(fmt.Sprintf("kvm.%s.%s.%s", k.name, s.call, peer), "boot", fmt.Sprintf("%s per %s call, %s (KVM's counters)", k.label, s.call, peer), "count", s.c[k.name])
		}
	}
}
