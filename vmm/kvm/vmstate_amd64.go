package kvm

import (
	"encoding/binary"
	"fmt"
)

// The VM-wide state a snapshot saves: the in-kernel PIC and IOAPIC, the
// PIT and kvmclock. Like the other VM methods these may be called from any
// goroutine, but a consistent snapshot needs every vCPU out of Run.

// XSaveSize returns how many bytes of XSAVE state this VM's vCPUs have:
// KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM, or 4096 (struct kvm_xsave)
// where KVM does not know that capability.
func (vm *VM) XSaveSize() (int, error) {
	n, err := vm.CheckExtension(CapXSave2)
	if err != nil {
		return 0, err
	}
	return max(n, sizeofXSave), nil
}

// IRQChip reads one chip of the in-kernel irqchip (KVM_GET_IRQCHIP):
// IRQChipPICMaster, IRQChipPICSlave or IRQChipIOAPIC. It needs
// CreateIRQChip (ENXIO otherwise).
func (vm *VM) IRQChip(id IRQChipID) (IRQChip, error) {
	c := IRQChip{ChipID: id}
	if _, err := ioctlValue(vm.fd, ioctlGetIRQChip, &c); err != nil {
		return c, fmt.Errorf("KVM_GET_IRQCHIP chip %d: %w", id, err)
	}
	return c, nil
}

// SetIRQChip restores the chip c.ChipID names (KVM_SET_IRQCHIP).
func (vm *VM) SetIRQChip(c IRQChip) error {
	if _, err := ioctlValue(vm.fd, ioctlSetIRQChip, &c); err != nil {
		return fmt.Errorf("KVM_SET_IRQCHIP chip %d: %w", c.ChipID, err)
	}
	return nil
}

// PIC decodes Chip as an 8259A's state; valid when ChipID is one of the PICs.
func (c *IRQChip) PIC() PICState {
	var p PICState
	decodeChip(c.Chip[:], &p)
	return p
}

// SetPIC encodes p into Chip.
func (c *IRQChip) SetPIC(p PICState) {
	clear(c.Chip[:])
	encodeChip(c.Chip[:], &p)
}

// IOAPIC decodes Chip as the IOAPIC's state; valid when ChipID is IRQChipIOAPIC.
func (c *IRQChip) IOAPIC() IOAPICState {
	var s IOAPICState
	decodeChip(c.Chip[:], &s)
	return s
}

// SetIOAPIC encodes s into Chip.
func (c *IRQChip) SetIOAPIC(s IOAPICState) {
	clear(c.Chip[:])
	encodeChip(c.Chip[:], &s)
}

// decodeChip and encodeChip convert between the union's bytes and a
// fixed-size mirror struct; both fit by construction (see TestABISizes).
func decodeChip(b []byte, v any) {
	if _, err := binary.Decode(b, binary.LittleEndian, v); err != nil {
		panic("kvm: decode kvm_irqchip union: " + err.Error())
	}
}

func encodeChip(b []byte, v any) {
	if _, err := binary.Encode(b, binary.LittleEndian, v); err != nil {
		panic("kvm: encode kvm_irqchip union: " + err.Error())
	}
}

// PIT2 reads the in-kernel i8254 (KVM_GET_PIT2). It needs CreatePIT2.
func (vm *VM) PIT2() (PITState, error) {
	var s PITState
	if _, err := ioctlValue(vm.fd, ioctlGetPIT2, &s); err != nil {
		return s, fmt.Errorf("KVM_GET_PIT2: %w", err)
	}
	return s, nil
}

// SetPIT2 restores the in-kernel i8254 (KVM_SET_PIT2). Each channel restarts
// from its initial Count at the time of the call: how far a countdown had
// got when saved is lost (CountLoadTime is ignored), which guests tolerate
// as timer jitter.
func (vm *VM) SetPIT2(s PITState) error {
	if _, err := ioctlValue(vm.fd, ioctlSetPIT2, &s); err != nil {
		return fmt.Errorf("KVM_SET_PIT2: %w", err)
	}
	return nil
}

// Clock reads the VM's kvmclock (KVM_GET_CLOCK). Save it once every vCPU
// has stopped, so that the guest sees no time pass while it is saved.
func (vm *VM) Clock() (ClockData, error) {
	var c ClockData
	if _, err := ioctlValue(vm.fd, ioctlGetClock, &c); err != nil {
		return c, fmt.Errorf("KVM_GET_CLOCK: %w", err)
	}
	return c, nil
}

// SetClock sets the VM's kvmclock (KVM_SET_CLOCK) to c.Clock as of now, or,
// with ClockRealtime in c.Flags, to c.Clock plus the host wall-clock time
// elapsed since c.Realtime (never backwards). The other flags are accepted
// and ignored, so what Clock returned can be passed back as is. Call it
// last, just before the vCPUs run again: the clock runs from this call.
func (vm *VM) SetClock(c ClockData) error {
	if _, err := ioctlValue(vm.fd, ioctlSetClock, &c); err != nil {
		return fmt.Errorf("KVM_SET_CLOCK %d ns flags %#x: %w", c.Clock, c.Flags, err)
	}
	return nil
}

// TSCKHz returns the TSC frequency in kHz that vCPUs created from now on
// start with (KVM_GET_TSC_KHZ on the VM, KVM_CAP_VM_TSC_CONTROL).
func (vm *VM) TSCKHz() (uint32, error) {
	r, err := ioctl(vm.fd, ioctlGetTSCKHz, 0)
	if err != nil {
		return 0, fmt.Errorf("vm KVM_GET_TSC_KHZ: %w", err)
	}
	return uint32(r), nil
}

// SetTSCKHz sets the TSC frequency of vCPUs created after this call
// (KVM_SET_TSC_KHZ on the VM, KVM_CAP_VM_TSC_CONTROL); 0 means the host's.
// The limits of VCPU.SetTSCKHz apply when each vCPU is created.
func (vm *VM) SetTSCKHz(khz uint32) error {
	if _, err := ioctl(vm.fd, ioctlSetTSCKHz, uintptr(khz)); err != nil {
		return fmt.Errorf("vm KVM_SET_TSC_KHZ %d kHz: %w", khz, err)
	}
	return nil
}

// EnableCap enables capability c on the VM with up to four arguments
// (KVM_ENABLE_CAP, flags 0). KVM_CHECK_EXTENSION on the VM says which
// capabilities, and which argument values, it accepts.
func (vm *VM) EnableCap(c Capability, args ...uint64) error {
	if len(args) > 4 {
		return fmt.Errorf("KVM_ENABLE_CAP %d: %d arguments, at most 4", c, len(args))
	}
	e := enableCap{Cap: uint32(c)}
	copy(e.Args[:], args)
	if _, err := ioctlValue(vm.fd, ioctlEnableCap, &e); err != nil {
		return fmt.Errorf("KVM_ENABLE_CAP %d args %#x: %w", c, args, err)
	}
	return nil
}
