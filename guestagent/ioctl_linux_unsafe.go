//go:build linux

package guestagent

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl issues an ioctl whose argument is an integer (or absent), retrying
// it if a signal interrupts it before it takes effect (EINTR): the Go
// runtime signals its threads for preemption.
func ioctl(fd int, req, arg uintptr) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		default:
			return errno
		}
	}
}

// ioctlBytes issues an ioctl whose argument points to arg, a kernel struct
// encoded by the caller, retrying on EINTR as ioctl does. The kernel reads
// arg in place: Go's allocator aligns any slice of 8 or more bytes to 8,
// which suits the int fields of the structs passed this way.
func ioctlBytes(fd int, req uintptr, arg []byte) error {
	if len(arg) == 0 {
		return unix.EINVAL
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&arg[0])))
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		default:
			return errno
		}
	}
}
