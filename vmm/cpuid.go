package vmm

import (
	"math/bits"
	"slices"

	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// CPUID leaves and bits the VMM adjusts (Intel SDM vol. 2, CPUID).
const (
	leafFeatures     = 0x1
	leafPerfMon      = 0xa
	leafTopology     = 0xb
	leafTopologyV2   = 0x1f
	ecxHypervisor    = 1 << 31 // leaf 1 ECX: running under a hypervisor
	ecxTSCDeadline   = 1 << 24 // leaf 1 ECX: the LAPIC timer has TSC-deadline mode
	edxHTT           = 1 << 28 // leaf 1 EDX: EBX[23:16] is valid
	topologySMT      = 1
	topologyCore     = 2
	topologyTypeShft = 8

	// KVM's paravirtual features (Documentation/virt/kvm/x86/cpuid.rst).
	leafKVMFeatures   = 0x40000001
	kvmAsyncPF        = 1 << 4  // EAX: async page faults
	kvmAsyncPFVMExit  = 1 << 10 // EAX: async page faults from a nested guest's exits
	kvmAsyncPFInt     = 1 << 14 // EAX: "page ready" by interrupt (what Linux 5.10+ needs for any)
	kvmAsyncPFFeature = kvmAsyncPF | kvmAsyncPFVMExit | kvmAsyncPFInt
)

// hostCPUID is what this host's KVM can give a guest: its
// KVM_GET_SUPPORTED_CPUID, plus the LAPIC timer's TSC-deadline mode, which
// KVM emulates in the kernel (KVM_CAP_TSC_DEADLINE_TIMER) but leaves out
// of that list (the lab's 6.12 does: its guests ran one-shot); QEMU,
// Firecracker and cloud-hypervisor add it the same way. Without it Linux runs its LAPIC timer one-shot, at
// a frequency it first calibrates against the PIT for a tenth of a second
// of its boot, and every timer then fires as early or late as that
// calibration was wrong; with it the timer counts the TSC, whose rate
// kvm-clock gives the guest exactly. A checkpoint keeps the CPUID its
// guest booted with, so guests checkpointed without the bit keep their
// one-shot timer when restored.
func hostCPUID(sys *kvm.System) ([]kvm.CPUIDEntry, error) {
	supported, err := sys.SupportedCPUID()
	if err != nil {
		return nil, err
	}
	if n, err := sys.CheckExtension(kvm.CapTSCDeadlineTimer); err != nil || n == 0 {
		return supported, nil
	}
	return withTSCDeadline(supported), nil
}

// withTSCDeadline is entries with leaf 1's TSC-deadline bit set.
func withTSCDeadline(entries []kvm.CPUIDEntry) []kvm.CPUIDEntry {
	out := slices.Clone(entries)
	for i := range out {
		if out[i].Function == leafFeatures {
			out[i].ECX |= ecxTSCDeadline
		}
	}
	return out
}

// guestCPUID derives vCPU id's CPUID from what KVM supports: the
// hypervisor bit, the vCPU's APIC ID and the topology of n single-threaded
// cores, and no performance monitoring (a guest PMU would leak host state
// and does not survive a restore on another host). KVM's own paravirtual
// leaves (0x40000000...) pass through: they give the guest kvm-clock, so it
// never calibrates its TSC against the PIT. All but async page faults: a
// guest task that touches a page the host must read in sleeps until KVM
// says the page is ready, and a checkpoint taken meanwhile restores that
// task still waiting for a notice no VMM will ever send (a Firecracker
// user's restored guests hung so, in kvm_async_pf_task_wait_schedule:
// firecracker#3020; cloud-hypervisor and libkrun turn the feature off, for
// vCPUs it left spinning). Restored memory is mapped from checkpoint
// files, so a restored guest's first touches are exactly such faults.
func guestCPUID(supported []kvm.CPUIDEntry, id, n int) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, 0, len(supported))
	shift := uint32(bits.Len(uint(n - 1))) // APIC ID bits for n cores
	for _, e := range supported {
		switch e.Function {
		case leafFeatures:
			e.ECX |= ecxHypervisor
			e.EBX = e.EBX&0xffff | uint32(id)<<24 | uint32(min(n, 255))<<16
			e.EDX |= edxHTT
		case leafPerfMon:
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
		case leafKVMFeatures:
			e.EAX &^= kvmAsyncPFFeature
		case leafTopology, leafTopologyV2:
			e.EDX = uint32(id) // x2APIC ID
			switch e.Index {
			case 0:
				e.EAX, e.EBX, e.ECX = 0, 1, topologySMT<<topologyTypeShft
			case 1:
				e.EAX, e.EBX, e.ECX = shift, uint32(n), topologyCore<<topologyTypeShft|1
			default:
				e.EAX, e.EBX, e.ECX = 0, 0, e.Index
			}
		}
		out = append(out, e)
	}
	return out
}
