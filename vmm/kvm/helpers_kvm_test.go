package kvm_test

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// Helpers for the kvm-tier tests of this package. Those tests run a guest
// of a few real-mode instructions, built as vmm/probe.go builds its probe:
// code at guestEntry, CS:IP = 0000:guestEntry, DS = ES = 0.

const guestEntry = 0x1000

func newVM(t *testing.T, sys *kvm.System) *kvm.VM {
	t.Helper()
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	return vm
}

// guestMemory maps size bytes of anonymous memory for a memory slot.
func guestMemory(t *testing.T, size int) []byte {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatalf("mmap %d bytes of guest memory: %v", size, err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return mem
}

// newVCPU creates vCPU 0 with KVM's supported CPUID, ready to run real-mode
// code at guestEntry. The calling goroutine must be locked to its thread.
func newVCPU(t *testing.T, sys *kvm.System, vm *kvm.VM, tweak func([]kvm.CPUIDEntry)) *kvm.VCPU {
	t.Helper()
	cpu, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cpu.Close() })
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(cpuid)
	}
	if err := cpu.SetCPUID(cpuid); err != nil {
		t.Fatal(err)
	}
	sregs, err := cpu.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	sregs.CS.Base, sregs.CS.Selector = 0, 0
	if err := cpu.SetSregs(sregs); err != nil {
		t.Fatal(err)
	}
	if err := cpu.SetRegs(kvm.Regs{RIP: guestEntry, RFLAGS: 0x2}); err != nil {
		t.Fatal(err)
	}
	return cpu
}

// runToExit enters the guest until an exit that needs user space.
func runToExit(t *testing.T, cpu *kvm.VCPU) kvm.ExitReason {
	t.Helper()
	for range 1000 {
		err := cpu.Run()
		if errors.Is(err, unix.EINTR) {
			continue // a Go runtime signal; enter again
		}
		if err != nil {
			t.Fatal(err)
		}
		if r := cpu.ExitReason(); r == kvm.ExitInternalError {
			sub, data := cpu.InternalError()
			t.Fatalf("%v suberror %d data %#x", r, sub, data)
		}
		return cpu.ExitReason()
	}
	t.Fatal("KVM_RUN interrupted 1000 times in a row")
	return 0
}

// completeExit finishes the exit the vCPU last took (an OUT advances RIP
// only then) without running any guest code: KVM_RUN with immediate_exit,
// which returns EINTR. State saved before this would replay the OUT.
func completeExit(t *testing.T, cpu *kvm.VCPU) {
	t.Helper()
	cpu.SetImmediateExit(true)
	defer cpu.SetImmediateExit(false)
	if err := cpu.Run(); !errors.Is(err, unix.EINTR) {
		t.Fatalf("KVM_RUN with immediate_exit = %v, want EINTR", err)
	}
}

// cpuidEntry returns a pointer to the entry for function fn (index 0).
func cpuidEntry(entries []kvm.CPUIDEntry, fn uint32) *kvm.CPUIDEntry {
	for i := range entries {
		if entries[i].Function == fn && entries[i].Index == 0 {
			return &entries[i]
		}
	}
	return nil
}
