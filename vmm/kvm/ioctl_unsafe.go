package kvm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl issues an ioctl whose argument is an integer (or absent).
func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// ioctlPtr issues an ioctl whose argument points at a Go value that the
// kernel reads or fills in. p must stay reachable for the call, which the
// conversion inside the argument list guarantees.
func ioctlPtr(fd int, req uintptr, p unsafe.Pointer) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p))
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// addressOf returns the host virtual address of b's first byte, as KVM
// wants it in kvm_userspace_memory_region.userspace_addr. b must be memory
// that Go's garbage collector never moves: an mmap'ed region.
func addressOf(b []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}

// header views the mmap'ed kvm_run page of a vCPU as its fixed header.
func (v *VCPU) header() *runHeader {
	return (*runHeader)(unsafe.Pointer(&v.run[0]))
}

func (v *VCPU) ioExit() *runIO {
	return (*runIO)(unsafe.Pointer(&v.run[runExitUnion]))
}

func (v *VCPU) mmioExit() *runMMIO {
	return (*runMMIO)(unsafe.Pointer(&v.run[runExitUnion]))
}

func (v *VCPU) internalExit() *runInternal {
	return (*runInternal)(unsafe.Pointer(&v.run[runExitUnion]))
}

func (v *VCPU) getRegs(r *Regs) error {
	_, err := ioctlPtr(v.fd, ioctlGetRegs, unsafe.Pointer(r))
	return err
}

func (v *VCPU) setRegs(r *Regs) error {
	_, err := ioctlPtr(v.fd, ioctlSetRegs, unsafe.Pointer(r))
	return err
}

func (v *VCPU) getSregs(s *Sregs) error {
	_, err := ioctlPtr(v.fd, ioctlGetSregs, unsafe.Pointer(s))
	return err
}

func (v *VCPU) setSregs(s *Sregs) error {
	_, err := ioctlPtr(v.fd, ioctlSetSregs, unsafe.Pointer(s))
	return err
}

func (vm *VM) setUserMemoryRegion(r *UserspaceMemoryRegion) error {
	_, err := ioctlPtr(vm.fd, ioctlSetUserMemoryRegion, unsafe.Pointer(r))
	return err
}
