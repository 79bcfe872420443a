package vmm

import (
	"errors"
	"fmt"

	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// VCPUState is the saved state of one vCPU: everything KVM holds for it.
// The fields are listed in the order restoreVCPU applies them.
type VCPUState struct {
	ID      int
	CPUID   []kvm.CPUIDEntry
	TSCKHz  uint32 // 0: unknown, the host's frequency is kept
	MPState kvm.MPState
	Regs    kvm.Regs
	Sregs   kvm.Sregs
	// XSave is struct kvm_xsave (or the larger KVM_GET_XSAVE2 buffer): FPU,
	// SSE, AVX and every other component the guest enabled in XCR0.
	XSave     []byte
	XCRs      kvm.XCRs
	DebugRegs kvm.DebugRegs
	LAPIC     kvm.LAPICState
	MSRs      []kvm.MSREntry
	Events    kvm.VCPUEvents
}

// VMState is the saved state of the VM's in-kernel devices and clock.
type VMState struct {
	PICMaster kvm.IRQChip
	PICSlave  kvm.IRQChip
	IOAPIC    kvm.IRQChip
	PIT       kvm.PITState
	Clock     kvm.ClockData
}

// saveVCPU reads the state of a stopped vCPU, on its own thread. msrs are
// the MSR indices this vCPU accepts (savableMSRs).
func saveVCPU(cpu *kvm.VCPU, msrs []uint32) (VCPUState, error) {
	st := VCPUState{ID: cpu.ID()}
	var err error
	// MP state first: reading it makes KVM apply pending INIT/SIPI events
	// to the LAPIC and registers, which the reads below must then see.
	if st.MPState, err = cpu.MPState(); err != nil {
		return st, err
	}
	if st.CPUID, err = cpu.CPUID(); err != nil {
		return st, err
	}
	if st.TSCKHz, err = cpu.TSCKHz(); err != nil {
		st.TSCKHz = 0 // KVM without TSC control: the restored vCPU keeps the host's rate
	}
	if st.Regs, err = cpu.Regs(); err != nil {
		return st, err
	}
	if st.Sregs, err = cpu.Sregs(); err != nil {
		return st, err
	}
	if st.XSave, err = cpu.XSave(); err != nil {
		return st, err
	}
	if st.XCRs, err = cpu.XCRs(); err != nil {
		return st, err
	}
	if st.DebugRegs, err = cpu.DebugRegs(); err != nil {
		return st, err
	}
	if st.LAPIC, err = cpu.LAPIC(); err != nil {
		return st, err
	}
	if st.MSRs, err = cpu.GetMSRs(msrs); err != nil {
		return st, err
	}
	if st.Events, err = cpu.VCPUEvents(); err != nil {
		return st, err
	}
	return st, nil
}

// restoreVCPU loads st into a new vCPU, before it first runs, in the
// order KVM needs (checked in the lab, see package kvm's documentation):
// CPUID first, since everything else is validated against it; the TSC
// rate before the TSC MSR; special registers before the LAPIC (the APIC
// base and CR8 live in both); the LAPIC before the MSRs (the TSC deadline
// MSR is lost without its timer mode); pending events after the registers
// they refer to (SetRegs drops a pending exception); the MP state after
// the events (KVM refuses INIT/SIPI states with an SMI pending).
func restoreVCPU(cpu *kvm.VCPU, st *VCPUState) error {
	if err := cpu.SetCPUID(st.CPUID); err != nil {
		return err
	}
	if st.TSCKHz != 0 {
		if err := cpu.SetTSCKHz(st.TSCKHz); err != nil {
			return err
		}
	}
	if err := cpu.SetSregs(st.Sregs); err != nil {
		return err
	}
	if err := cpu.SetRegs(st.Regs); err != nil {
		return err
	}
	if err := cpu.SetXSave(st.XSave); err != nil {
		return err
	}
	if err := cpu.SetXCRs(st.XCRs); err != nil {
		return err
	}
	if err := cpu.SetLAPIC(st.LAPIC); err != nil {
		return err
	}
	if err := cpu.SetMSRs(st.MSRs); err != nil {
		return err
	}
	if err := cpu.SetVCPUEvents(st.Events); err != nil {
		return err
	}
	if err := cpu.SetMPState(st.MPState); err != nil {
		return err
	}
	return cpu.SetDebugRegs(st.DebugRegs)
}

// savableMSRs returns the MSRs of KVM's save/restore list (candidates)
// that cpu lets user space read: KVM_GET_MSRS stops at the first it
// refuses, which is dropped before asking again.
func savableMSRs(cpu *kvm.VCPU, candidates []uint32) ([]uint32, error) {
	var ok []uint32
	rest := candidates
	for len(rest) > 0 {
		got, err := cpu.GetMSRs(rest)
		for _, e := range got {
			ok = append(ok, e.Index)
		}
		var me *kvm.MSRError
		switch {
		case err == nil:
			return ok, nil
		case errors.As(err, &me):
			rest = rest[len(got)+1:] // skip the refused one
		default:
			return nil, fmt.Errorf("probe MSRs: %w", err)
		}
	}
	return ok, nil
}

// saveVM reads the in-kernel irqchip, PIT and clock. Every vCPU must be
// stopped, so that the clock read is the instant the guest stopped.
func (m *Machine) saveVM() (VMState, error) {
	var st VMState
	var err error
	if st.PICMaster, err = m.vm.IRQChip(kvm.IRQChipPICMaster); err != nil {
		return st, err
	}
	if st.PICSlave, err = m.vm.IRQChip(kvm.IRQChipPICSlave); err != nil {
		return st, err
	}
	if st.IOAPIC, err = m.vm.IRQChip(kvm.IRQChipIOAPIC); err != nil {
		return st, err
	}
	if st.PIT, err = m.vm.PIT2(); err != nil {
		return st, err
	}
	if st.Clock, err = m.vm.Clock(); err != nil {
		return st, err
	}
	return st, nil
}

// restoreVM loads the in-kernel devices into a new VM whose irqchip and
// PIT exist, before any vCPU is created. The clock is set without
// ClockRealtime: the guest's monotonic time resumes where it stopped (a
// jump would fire every timer and watchdog at once), and the guest agent
// steps its wall clock afterwards.
func (m *Machine) restoreVM(st *VMState) error {
	for _, c := range []kvm.IRQChip{st.PICMaster, st.PICSlave, st.IOAPIC} {
		if err := m.vm.SetIRQChip(c); err != nil {
			return err
		}
	}
	if err := m.vm.SetPIT2(st.PIT); err != nil {
		return err
	}
	clock := st.Clock
	clock.Flags &^= kvm.ClockRealtime
	return m.vm.SetClock(clock)
}
