package kvm

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// CapIOEventFD is KVM_CAP_IOEVENTFD: KVM_IOEVENTFD binds an eventfd to a
// guest write of an MMIO or port address.
const CapIOEventFD Capability = 36

// ioeventfd mirrors struct kvm_ioeventfd (include/uapi/linux/kvm.h).
type ioeventfd struct {
	Datamatch uint64
	Addr      uint64
	Len       uint32 // 1, 2, 4 or 8 bytes
	FD        int32
	Flags     uint32
	Pad       [36]uint8
}

const (
	sizeofIOEventFD        = 64
	ioeventfdFlagDatamatch = 1 << 0 // KVM_IOEVENTFD_FLAG_DATAMATCH
	ioeventfdFlagDeassign  = 1 << 2 // KVM_IOEVENTFD_FLAG_DEASSIGN
)

var ioctlIOEventFD = iocW(0x79, sizeofIOEventFD)

// IOEventFD is an eventfd the kernel signals when the guest writes a given
// value to a given MMIO address (KVM_IOEVENTFD with a data match): the
// write completes inside KVM_RUN, without an exit to the VMM, and
// whoever waits on the eventfd learns of it. A device's notify register
// bound to one costs the guest no trip through the vCPU's exit handler.
// Writes of other values or widths still exit as usual.
//
// Wait is for one goroutine at a time; Close is safe from any goroutine
// and ends a Wait in progress.
type IOEventFD struct {
	vm   *VM
	fd   int      // the eventfd's number, for the deassign
	file *os.File // the same descriptor, non-blocking: Wait parks on the runtime's poller
	reg  ioeventfd
}

// NewMMIOEventFD creates an eventfd and has KVM signal it on every
// guest write of size bytes (1, 2, 4 or 8) of value to the MMIO address
// addr.
func (vm *VM) NewMMIOEventFD(addr uint64, size uint32, value uint64) (*IOEventFD, error) {
	if size == 0 || size > 8 || size&(size-1) != 0 {
		return nil, fmt.Errorf("ioeventfd mmio %#x: write size %d is not 1, 2, 4 or 8", addr, size)
	}
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("ioeventfd mmio %#x value %d: eventfd: %w", addr, value, err)
	}
	reg := ioeventfd{Datamatch: value, Addr: addr, Len: size, FD: int32(fd), Flags: ioeventfdFlagDatamatch}
	if err := vm.ioeventfdIoctl(&reg); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("KVM_IOEVENTFD mmio %#x value %d: %w", addr, value, err)
	}
	// A non-blocking descriptor given to os.NewFile is read through the
	// runtime's poller, so a waiting goroutine holds no thread.
	file := os.NewFile(uintptr(fd), fmt.Sprintf("ioeventfd-mmio-%#x-%d", addr, value))
	return &IOEventFD{vm: vm, fd: fd, file: file, reg: reg}, nil
}

// ErrIOEventFDClosed is what Wait returns once the IOEventFD is closed.
var ErrIOEventFDClosed = errors.New("ioeventfd closed")

// Wait blocks until the guest has written the value at least once since
// the last Wait returned; several writes in between count as one. It
// returns ErrIOEventFDClosed once Close has been called.
func (f *IOEventFD) Wait() error {
	// A read takes the counter (a uint64, the number of writes since the
	// last read) and resets it; it never returns 0.
	var b [8]byte
	_, err := f.file.Read(b[:])
	switch {
	case errors.Is(err, os.ErrClosed):
		return ErrIOEventFDClosed
	case err != nil:
		return fmt.Errorf("ioeventfd mmio %#x value %d: read: %w", f.reg.Addr, f.reg.Datamatch, err)
	}
	return nil
}

// Close unbinds the eventfd from the address and closes it.
func (f *IOEventFD) Close() error {
	d := f.reg
	d.Flags |= ioeventfdFlagDeassign
	err := f.vm.ioeventfdIoctl(&d)
	if err != nil {
		err = fmt.Errorf("KVM_IOEVENTFD deassign mmio %#x value %d: %w", f.reg.Addr, f.reg.Datamatch, err)
	}
	return errors.Join(err, f.file.Close())
}
