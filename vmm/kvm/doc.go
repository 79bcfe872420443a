// Package kvm is Sailbox's one door to the Linux KVM API: every ioctl on
// /dev/kvm, a VM or a vCPU file descriptor is issued here and nowhere else,
// and every use of package unsafe lives in this package's *_unsafe.go files.
//
// The types mirror KVM's object hierarchy:
//
//	System (/dev/kvm) → VM (KVM_CREATE_VM) → VCPU (KVM_CREATE_VCPU)
//
// Structs that mirror the kernel ABI (include/uapi/linux/kvm.h and
// arch/x86/include/uapi/asm/kvm.h) name the C struct they mirror and have a
// size test. Errors name the ioctl that failed and wrap the errno, so callers
// can test for unix.EINTR, unix.EAGAIN and friends with errors.Is.
//
// Devices never import this package: they see guest memory, an interrupt
// line and a bus (see package devices).
//
// # Saving and restoring a VM
//
// Take a snapshot with every vCPU out of Run and its last exit completed:
// after KVM_EXIT_IO or KVM_EXIT_MMIO the instruction is unfinished (RIP
// still points at an OUT) until KVM_RUN is entered again, so run once more
// with SetImmediateExit(true), which returns EINTR without running guest
// code. Then save each vCPU, MPState first (it delivers a latched INIT or
// SIPI, which rewrites CS:IP), then VCPUEvents, Regs, Sregs, XSave, XCRs,
// GetMSRs (MSRIndexList less what the vCPU refuses), LAPIC, DebugRegs,
// CPUID and TSCKHz; then the VM: IRQChip for each chip, PIT2, Clock.
//
// Restore into a new VM with its irqchip and PIT created and its memory
// mapped, into vCPUs that have never run, in this order:
//
//  1. SetCPUID, first: KVM checks CR4, XCR0, the APIC base and MSRs
//     against it, and refuses to change it once the vCPU has run.
//  2. SetTSCKHz, before MSR_IA32_TSC, whose offset KVM computes at it.
//  3. SetSregs, before SetLAPIC: setting the APIC base (enable, x2APIC)
//     resets parts of the LAPIC, and CR8 writes its TPR.
//  4. SetRegs, then SetXSave and SetXCRs (XCR0 is checked against CPUID).
//  5. SetLAPIC, before SetMSRs: KVM drops MSR_IA32_TSC_DEADLINE unless the
//     LAPIC timer is already in TSC-deadline mode.
//  6. SetMSRs, after the memory is mapped: KVM refuses the async-PF and
//     PV-EOI MSRs unless the guest memory they point at is in a slot
//     (kvmclock and steal time point into it too).
//  7. SetVCPUEvents, after SetRegs (which drops a pending exception) and
//     SetSregs (which queues its interrupt bitmap's interrupt).
//  8. SetMPState, after SetVCPUEvents: KVM refuses INIT_RECEIVED and
//     SIPI_RECEIVED in SMM or with an SMI pending, which the events set.
//  9. SetDebugRegs.
//  10. The VM: SetIRQChip for each chip, SetPIT2, and, last, just before
//     the vCPUs run, SetClock and NotifyGuestPaused on each vCPU.
package kvm
