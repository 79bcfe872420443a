package kvm

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// CapIRQFD is KVM_CAP_IRQFD: KVM_IRQFD binds an eventfd to a GSI.
const CapIRQFD Capability = 32

// irqfd mirrors struct kvm_irqfd (include/uapi/linux/kvm.h).
type irqfd struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	Pad        [16]uint8
}

const (
	sizeofIRQFD       = 32
	irqfdFlagDeassign = 1 << 0 // KVM_IRQFD_FLAG_DEASSIGN
)

var ioctlIRQFD = iocW(0x76, sizeofIRQFD)

// IRQFD is an eventfd bound to an interrupt line of the in-kernel irqchip
// (KVM_IRQFD): every write to it makes KVM pulse the line. The pulse is
// delivered by the kernel, asynchronously to the writer, the way a device
// raises an interrupt on real hardware: a vCPU that writes it while
// handling an exit (a serial register write, a virtio notify) gets the
// interrupt on a later guest entry, not in the middle of its own exit.
// One write is one system call, against two KVM_IRQ_LINE ioctls for a
// pulse. Trigger is safe from any goroutine.
type IRQFD struct {
	vm  *VM
	fd  int
	gsi uint32
}

// NewIRQFD creates an eventfd and binds it to gsi. Requires CreateIRQChip
// first.
func (vm *VM) NewIRQFD(gsi uint32) (*IRQFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("irqfd gsi %d: eventfd: %w", gsi, err)
	}
	if err := vm.irqfdIoctl(&irqfd{FD: uint32(fd), GSI: gsi}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("KVM_IRQFD gsi %d: %w", gsi, err)
	}
	return &IRQFD{vm: vm, fd: fd, gsi: gsi}, nil
}

// Trigger pulses the line. A write that finds the counter saturated
// (EAGAIN) still leaves an interrupt pending, so it is not an error.
func (f *IRQFD) Trigger() error {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], 1)
	for {
		_, err := unix.Write(f.fd, b[:])
		switch err {
		case nil, unix.EAGAIN:
			return nil
		case unix.EINTR:
			continue
		}
		return fmt.Errorf("irqfd gsi %d: %w", f.gsi, err)
	}
}

// Close unbinds the eventfd and closes it.
func (f *IRQFD) Close() error {
	err := f.vm.irqfdIoctl(&irqfd{FD: uint32(f.fd), GSI: f.gsi, Flags: irqfdFlagDeassign})
	if cerr := unix.Close(f.fd); err == nil {
		err = cerr
	} else {
		err = fmt.Errorf("KVM_IRQFD deassign gsi %d: %w", f.gsi, err)
	}
	return err
}
