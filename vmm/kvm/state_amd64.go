package kvm

import (
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// The state a vCPU saves and restores beyond Regs, Sregs, FPU and LAPIC
// (vcpu.go). Like those, these methods must be called from the vCPU's own
// thread, while it is not in Run. The order a restore must follow is in the
// package documentation.

// XSaveSize is the size in bytes of this vCPU's XSAVE state, as XSave
// returns and SetXSave takes it. It is fixed when the vCPU is created: the
// VM's KVM_CAP_XSAVE2 answer, or 4096 (the fixed struct kvm_xsave).
func (v *VCPU) XSaveSize() int { return v.xsaveSize }

// XSave reads the FPU/SSE/AVX/... state in XSAVE layout: KVM_GET_XSAVE2
// when the state is larger than struct kvm_xsave, else KVM_GET_XSAVE.
// Prefer it to FPU, which misses everything beyond SSE.
func (v *VCPU) XSave() ([]byte, error) {
	buf := make([]byte, v.xsaveSize)
	req, name := ioctlGetXSave, "KVM_GET_XSAVE"
	if v.xsaveSize > sizeofXSave {
		req, name = ioctlGetXSave2, "KVM_GET_XSAVE2"
	}
	if err := xsaveIoctl(v.fd, req, buf); err != nil {
		return nil, fmt.Errorf("%s vcpu %d (%d bytes): %w", name, v.id, len(buf), err)
	}
	return buf, nil
}

// SetXSave writes state saved by XSave (KVM_SET_XSAVE). State shorter than
// XSaveSize (saved where KVM_CAP_XSAVE2 was smaller) is zero-extended;
// longer state is refused, since KVM would silently drop its tail. KVM
// refuses (EINVAL) state whose header names features this host lacks.
func (v *VCPU) SetXSave(state []byte) error {
	if len(state) < sizeofXSave || len(state) > v.xsaveSize {
		return fmt.Errorf("KVM_SET_XSAVE vcpu %d: %d bytes of state, want %d to %d", v.id, len(state), sizeofXSave, v.xsaveSize)
	}
	buf := state
	if len(buf) < v.xsaveSize {
		buf = make([]byte, v.xsaveSize)
		copy(buf, state)
	}
	if err := xsaveIoctl(v.fd, ioctlSetXSave, buf); err != nil {
		return fmt.Errorf("KVM_SET_XSAVE vcpu %d (%d bytes): %w", v.id, len(buf), err)
	}
	return nil
}

// XCRs reads the extended control registers (KVM_GET_XCRS): XCR0 only, on
// today's CPUs. NrXCRs is 0 when the host has no XSAVE.
func (v *VCPU) XCRs() (XCRs, error) {
	return vcpuGet[XCRs](v, ioctlGetXCRs, "KVM_GET_XCRS")
}

// SetXCRs writes the extended control registers (KVM_SET_XCRS). KVM checks
// XCR0 against the vCPU's CPUID leaf 0xD, so SetCPUID must come first.
func (v *VCPU) SetXCRs(x XCRs) error {
	return vcpuSet(v, ioctlSetXCRs, "KVM_SET_XCRS", x)
}

// DebugRegs reads DR0-DR3, DR6 and DR7 (KVM_GET_DEBUGREGS).
func (v *VCPU) DebugRegs() (DebugRegs, error) {
	return vcpuGet[DebugRegs](v, ioctlGetDebugRegs, "KVM_GET_DEBUGREGS")
}

// SetDebugRegs writes DR0-DR3, DR6 and DR7 (KVM_SET_DEBUGREGS). KVM refuses
// (EINVAL) non-zero Flags and DR6/DR7 with bits set above bit 31.
func (v *VCPU) SetDebugRegs(d DebugRegs) error {
	return vcpuSet(v, ioctlSetDebugRegs, "KVM_SET_DEBUGREGS", d)
}

// VCPUEvents reads the vCPU's pending and in-flight exception, interrupt,
// NMI and SMI (KVM_GET_VCPU_EVENTS). The returned Flags are valid input for
// SetVCPUEvents.
func (v *VCPU) VCPUEvents() (VCPUEvents, error) {
	return vcpuGet[VCPUEvents](v, ioctlGetVCPUEvents, "KVM_GET_VCPU_EVENTS")
}

// SetVCPUEvents restores what VCPUEvents saved (KVM_SET_VCPU_EVENTS).
// SetRegs drops a pending exception and SetSregs re-queues the interrupt
// of its interrupt bitmap, so this comes after both.
func (v *VCPU) SetVCPUEvents(e VCPUEvents) error {
	return vcpuSet(v, ioctlSetVCPUEvents, "KVM_SET_VCPU_EVENTS", e)
}

// MPState reads the vCPU's multiprocessing state (KVM_GET_MP_STATE).
// KVM first delivers any INIT or SIPI the local APIC has latched.
func (v *VCPU) MPState() (MPState, error) {
	var m mpState
	if _, err := ioctlValue(v.fd, ioctlGetMPState, &m); err != nil {
		return 0, fmt.Errorf("KVM_GET_MP_STATE vcpu %d: %w", v.id, err)
	}
	return m.State, nil
}

// SetMPState sets the vCPU's multiprocessing state (KVM_SET_MP_STATE).
// Without an in-kernel irqchip only MPStateRunnable is accepted; KVM also
// refuses INIT/SIPI_RECEIVED in SMM or with an SMI pending, which
// SetVCPUEvents sets, so this follows it.
func (v *VCPU) SetMPState(s MPState) error {
	m := mpState{State: s}
	if _, err := ioctlValue(v.fd, ioctlSetMPState, &m); err != nil {
		return fmt.Errorf("KVM_SET_MP_STATE vcpu %d state %d: %w", v.id, s, err)
	}
	return nil
}

// CPUID returns the CPUID the vCPU presents to its guest (KVM_GET_CPUID2):
// what SetCPUID set, with the bits KVM keeps current at run time (OSXSAVE,
// the APIC bit, the XSAVE area size) as they are now.
func (v *VCPU) CPUID() ([]CPUIDEntry, error) {
	e, err := v.getCPUID2()
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_CPUID2 vcpu %d: %w", v.id, err)
	}
	return e, nil
}

// getCPUID2 runs KVM_GET_CPUID2. Linux 6.1 never tells how many entries it
// copied: it writes nent back neither on success nor with E2BIG (later
// kernels do, on success). So ask for room for KVM_MAX_CPUID_ENTRIES, mark
// every entry's flags with a value no KVM entry has, and count the entries
// KVM overwrote.
func (v *VCPU) getCPUID2() ([]CPUIDEntry, error) {
	const unfilled = ^uint32(0) // KVM_CPUID_FLAG_* uses bits 0-2
	c := &cpuid2{NEnt: maxCPUIDEntries}
	for i := range c.Entries {
		c.Entries[i].Flags = unfilled
	}
	if _, err := ioctlValue(v.fd, ioctlGetCPUID2, c); err != nil {
		return nil, err
	}
	n := int(min(c.NEnt, maxCPUIDEntries))
	if i := slices.IndexFunc(c.Entries[:n], func(e CPUIDEntry) bool { return e.Flags == unfilled }); i >= 0 {
		n = i
	}
	return append([]CPUIDEntry(nil), c.Entries[:n]...), nil
}

// TSCKHz returns the frequency of the guest's TSC in kHz (KVM_GET_TSC_KHZ).
func (v *VCPU) TSCKHz() (uint32, error) {
	r, err := ioctl(v.fd, ioctlGetTSCKHz, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_TSC_KHZ vcpu %d: %w", v.id, err)
	}
	return uint32(r), nil
}

// SetTSCKHz sets the frequency of the guest's TSC in kHz (KVM_SET_TSC_KHZ);
// 0 means the host's. A rate within 250 ppm of the host's needs nothing
// special. Any other needs TSC scaling (KVM_CAP_TSC_CONTROL), except that
// without it KVM still accepts a faster rate, which it fakes by pushing the
// guest's TSC forward at each entry; a slower one fails with EINVAL.
// Set it before MSR_IA32_TSC, whose offset KVM computes at this rate.
func (v *VCPU) SetTSCKHz(khz uint32) error {
	if _, err := ioctl(v.fd, ioctlSetTSCKHz, uintptr(khz)); err != nil {
		return fmt.Errorf("KVM_SET_TSC_KHZ vcpu %d %d kHz: %w", v.id, khz, err)
	}
	return nil
}

// NotifyGuestPaused tells the guest's kvmclock that the VM was stopped
// (KVM_KVMCLOCK_CTRL), so that the guest's soft-lockup watchdog does not
// blame the time the VM spent paused or saved on a stuck CPU. Call it for
// every vCPU before resuming a paused or restored VM. KVM answers EINVAL
// when the guest has not enabled kvmclock (a firmware, a real-mode test
// guest, a kernel booted with no-kvmclock): it then has nothing to tell,
// so that is not an error.
func (v *VCPU) NotifyGuestPaused() error {
	_, err := ioctl(v.fd, ioctlKVMClockCtrl, 0)
	if err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("KVM_KVMCLOCK_CTRL vcpu %d: %w", v.id, err)
	}
	return nil
}

// GetMSRs reads the model-specific registers indices (KVM_GET_MSRS), in
// order, in batches KVM accepts. KVM stops at the first MSR it cannot
// read: GetMSRs then returns the entries read before it and a *MSRError
// naming it, so a caller probing which MSRs a vCPU has can drop that index
// and ask again for the rest.
func (v *VCPU) GetMSRs(indices []uint32) ([]MSREntry, error) {
	return getMSRs(v.fd, v.id, indices)
}

// MSRError reports an MSR that KVM_GET_MSRS or KVM_SET_MSRS did not
// process. KVM handles the entries in order and stops at the first it
// cannot read or write, so the Done entries before Index were processed
// and none after.
type MSRError struct {
	Op    string // "KVM_GET_MSRS" or "KVM_SET_MSRS"
	VCPU  int    // -1 for feature MSRs read from /dev/kvm
	Index uint32 // the first MSR not processed
	Done  int    // entries processed before it
	Total int    // entries asked for
}

func (e *MSRError) Error() string {
	where := "/dev/kvm"
	if e.VCPU >= 0 {
		where = fmt.Sprintf("vcpu %d", e.VCPU)
	}
	return fmt.Sprintf("%s %s: MSR %#x refused (%d of %d processed)", e.Op, where, e.Index, e.Done, e.Total)
}

func getMSRs(fd, vcpu int, indices []uint32) ([]MSREntry, error) {
	entries := make([]MSREntry, len(indices))
	for i, idx := range indices {
		entries[i].Index = idx
	}
	done, err := msrIO(fd, ioctlGetMSRs, "KVM_GET_MSRS", vcpu, entries)
	return entries[:done], err
}

// msrIO runs KVM_GET_MSRS or KVM_SET_MSRS (op names it) over entries in
// batches of at most maxIOMSRs, stopping at the first entry KVM does not
// process. It returns how many entries were processed.
func msrIO(fd int, req uintptr, op string, vcpu int, entries []MSREntry) (int, error) {
	done := 0
	for done < len(entries) {
		batch := entries[done:min(len(entries), done+maxIOMSRs)]
		n, err := msrsIoctl(fd, req, batch)
		if err != nil {
			where := "/dev/kvm"
			if vcpu >= 0 {
				where = fmt.Sprintf("vcpu %d", vcpu)
			}
			return done, fmt.Errorf("%s %s: %d MSRs from %#x: %w", op, where, len(batch), batch[0].Index, err)
		}
		done += n
		if n < len(batch) {
			return done, &MSRError{Op: op, VCPU: vcpu, Index: entries[done].Index, Done: done, Total: len(entries)}
		}
	}
	return done, nil
}

// MSRIndexList returns the MSRs KVM can save and restore for a vCPU
// (KVM_GET_MSR_INDEX_LIST): those the host supports from KVM's list of
// MSRs to save, and those KVM emulates. A vCPU may still refuse some of
// them (GetMSRs says which), depending on its CPUID.
func (s *System) MSRIndexList() ([]uint32, error) {
	l, err := s.msrIndexList(ioctlGetMSRIndexList)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %w", err)
	}
	return l, nil
}

// MSRFeatureIndexList returns the feature MSRs (KVM_GET_MSR_FEATURE_INDEX_LIST,
// KVM_CAP_GET_MSR_FEATURES): read-only MSRs describing the host's CPU, such
// as IA32_ARCH_CAPABILITIES, whose values FeatureMSRs reads.
func (s *System) MSRFeatureIndexList() ([]uint32, error) {
	l, err := s.msrIndexList(ioctlGetMSRFeatureIndexList)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_MSR_FEATURE_INDEX_LIST: %w", err)
	}
	return l, nil
}

// FeatureMSRs reads feature MSRs from /dev/kvm (KVM_GET_MSRS on the system
// fd, KVM_CAP_GET_MSR_FEATURES): what KVM can offer a guest on this host.
// Partial results come with a *MSRError, as from VCPU.GetMSRs.
func (s *System) FeatureMSRs(indices []uint32) ([]MSREntry, error) {
	return getMSRs(s.fd, -1, indices)
}

// msrIndexList sizes the list with one call (nmsrs 0: KVM answers E2BIG
// and says how many it has) and fetches it with a second.
func (s *System) msrIndexList(req uintptr) ([]uint32, error) {
	buf := []uint32{0}
	for try := 0; ; try++ {
		err := msrListIoctl(s.fd, req, buf)
		n := buf[0]
		if err == nil {
			return append([]uint32(nil), buf[1:1+min(int(n), len(buf)-1)]...), nil
		}
		if !errors.Is(err, unix.E2BIG) || try == 2 {
			return nil, err
		}
		buf = make([]uint32, 1+n)
		buf[0] = n
	}
}
