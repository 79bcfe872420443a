package kvm

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// VCPU is one virtual CPU.
//
// KVM requires that KVM_RUN and the register ioctls of a vCPU are issued
// from the thread that runs it, so a VCPU belongs to one goroutine locked to
// its OS thread (runtime.LockOSThread) for its whole life. The kvm_run page
// is shared with the kernel and is read only by that goroutine, between two
// calls to Run.
type VCPU struct {
	id        int
	fd        int
	run       []byte // mmap'ed struct kvm_run
	xsaveSize int    // bytes of KVM_GET/SET_XSAVE(2) state; fixed at creation
}

// ID is the vCPU index given to CreateVCPU.
func (v *VCPU) ID() int { return v.id }

// Close unmaps kvm_run and closes the vCPU.
func (v *VCPU) Close() error {
	err := unix.Munmap(v.run)
	if cerr := unix.Close(v.fd); err == nil {
		err = cerr
	}
	return err
}

// Run enters the guest (KVM_RUN) until the next exit that needs user space.
// The returned error wraps the errno: unix.EINTR means a signal arrived (a
// deliberate kick, or the Go runtime preempting the thread) and the caller
// decides whether to re-enter; it is never retried here.
func (v *VCPU) Run() error {
	if err := runIoctl(v.fd); err != nil {
		return fmt.Errorf("KVM_RUN vcpu %d: %w", v.id, err)
	}
	return nil
}

// ExitReason reports why the last Run returned.
func (v *VCPU) ExitReason() ExitReason { return ExitReason(v.header().ExitReason) }

// SetImmediateExit sets kvm_run.immediate_exit: while set, KVM_RUN returns
// EINTR at once instead of entering the guest. Together with a signal it
// closes the race between deciding to stop a vCPU and it entering KVM_RUN.
func (v *VCPU) SetImmediateExit(on bool) {
	var b uint8
	if on {
		b = 1
	}
	v.header().ImmediateExit = b
}

// IOExit describes a KVM_EXIT_IO: Count transfers of Size bytes on Port.
// Data aliases the kvm_run page: for an OUT it holds what the guest wrote;
// for an IN, the handler fills it before the next Run.
type IOExit struct {
	Out  bool
	Size int
	Port uint16
	Data []byte
}

// IO returns the port I/O exit details; valid only after ExitIO.
func (v *VCPU) IO() (IOExit, error) {
	io := v.ioExit()
	n := uint64(io.Size) * uint64(io.Count)
	off := io.DataOffset
	if off > uint64(len(v.run)) || n > uint64(len(v.run))-off {
		return IOExit{}, fmt.Errorf("vcpu %d io exit: data [%#x, +%d) outside kvm_run (%d bytes)", v.id, off, n, len(v.run))
	}
	return IOExit{
		Out:  io.Direction == IODirectionOut,
		Size: int(io.Size),
		Port: io.Port,
		Data: v.run[off : off+n],
	}, nil
}

// MMIOExit describes a KVM_EXIT_MMIO. Data aliases the kvm_run page: for a
// write it holds the bytes written; for a read the handler fills it.
type MMIOExit struct {
	Addr  uint64
	Write bool
	Data  []byte
}

// MMIO returns the MMIO exit details; valid only after ExitMMIO.
func (v *VCPU) MMIO() (MMIOExit, error) {
	m := v.mmioExit()
	if m.Len > uint32(len(m.Data)) {
		return MMIOExit{}, fmt.Errorf("vcpu %d mmio exit at %#x: length %d > 8", v.id, m.PhysAddr, m.Len)
	}
	return MMIOExit{Addr: m.PhysAddr, Write: m.IsWrite != 0, Data: m.Data[:m.Len]}, nil
}

// InternalError returns the suberror and data words of a
// KVM_EXIT_INTERNAL_ERROR, for diagnostics.
func (v *VCPU) InternalError() (suberror uint32, data []uint64) {
	e := v.internalExit()
	n := min(e.NData, uint32(len(e.Data)))
	return e.Suberror, append([]uint64(nil), e.Data[:n]...)
}

// Regs reads the general-purpose registers (KVM_GET_REGS).
func (v *VCPU) Regs() (Regs, error) {
	return vcpuGet[Regs](v, ioctlGetRegs, "KVM_GET_REGS")
}

// SetRegs writes the general-purpose registers (KVM_SET_REGS).
func (v *VCPU) SetRegs(r Regs) error {
	return vcpuSet(v, ioctlSetRegs, "KVM_SET_REGS", r)
}

// Sregs reads the special registers (KVM_GET_SREGS).
func (v *VCPU) Sregs() (Sregs, error) {
	return vcpuGet[Sregs](v, ioctlGetSregs, "KVM_GET_SREGS")
}

// SetSregs writes the special registers (KVM_SET_SREGS).
func (v *VCPU) SetSregs(s Sregs) error {
	return vcpuSet(v, ioctlSetSregs, "KVM_SET_SREGS", s)
}

// SetCPUID sets the CPUID the guest sees on this vCPU (KVM_SET_CPUID2).
func (v *VCPU) SetCPUID(entries []CPUIDEntry) error {
	if len(entries) > maxCPUIDEntries {
		return fmt.Errorf("KVM_SET_CPUID2 vcpu %d: %d entries, at most %d", v.id, len(entries), maxCPUIDEntries)
	}
	if err := v.setCPUID2(entries); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2 vcpu %d: %w", v.id, err)
	}
	return nil
}

// SetMSRs writes model-specific registers (KVM_SET_MSRS), in order, in
// batches KVM accepts. KVM stops at the first MSR it refuses: the error is
// then a *MSRError naming that MSR and how many entries before it were set
// (they stay set).
func (v *VCPU) SetMSRs(entries []MSREntry) error {
	_, err := msrIO(v.fd, ioctlSetMSRs, "KVM_SET_MSRS", v.id, entries)
	return err
}

// FPU reads the legacy FPU/SSE state (KVM_GET_FPU).
func (v *VCPU) FPU() (FPU, error) {
	return vcpuGet[FPU](v, ioctlGetFPU, "KVM_GET_FPU")
}

// SetFPU writes the legacy FPU/SSE state (KVM_SET_FPU).
func (v *VCPU) SetFPU(f FPU) error {
	return vcpuSet(v, ioctlSetFPU, "KVM_SET_FPU", f)
}

// LAPIC reads the local APIC register page (KVM_GET_LAPIC).
func (v *VCPU) LAPIC() (LAPICState, error) {
	return vcpuGet[LAPICState](v, ioctlGetLAPIC, "KVM_GET_LAPIC")
}

// SetLAPIC writes the local APIC register page (KVM_SET_LAPIC).
func (v *VCPU) SetLAPIC(l LAPICState) error {
	return vcpuSet(v, ioctlSetLAPIC, "KVM_SET_LAPIC", l)
}

// System event types of KVM_EXIT_SYSTEM_EVENT.
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
)

// SystemEventType returns the type of a KVM_EXIT_SYSTEM_EVENT.
func (v *VCPU) SystemEventType() uint32 { return v.systemEvent().Type }

// vcpuGet issues the vCPU ioctl req (KVM's name for it: name) that fills
// in a T.
func vcpuGet[T any](v *VCPU, req uintptr, name string) (T, error) {
	var x T
	if _, err := ioctlValue(v.fd, req, &x); err != nil {
		return x, fmt.Errorf("%s vcpu %d: %w", name, v.id, err)
	}
	return x, nil
}

// vcpuSet issues the vCPU ioctl req (named name) that reads x.
func vcpuSet[T any](v *VCPU, req uintptr, name string, x T) error {
	if _, err := ioctlValue(v.fd, req, &x); err != nil {
		return fmt.Errorf("%s vcpu %d: %w", name, v.id, err)
	}
	return nil
}
