package memory

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The userfaultfd ABI (include/uapi/linux/userfaultfd.h), just what
// write-protect tracking needs. golang.org/x/sys has none of it.
const (
	uffdAPI          = 0xaa
	uffdUserModeOnly = 1 // UFFD_USER_MODE_ONLY: enough, asynchronous faults never reach user space

	uffdFeatureWPUnpopulated = 1 << 13 // UFFD_FEATURE_WP_UNPOPULATED (Linux 6.4)
	uffdFeatureWPAsync       = 1 << 15 // UFFD_FEATURE_WP_ASYNC (Linux 6.7)

	uffdRegisterModeWP     = 1 << 1 // UFFDIO_REGISTER_MODE_WP
	uffdWriteProtectModeWP = 1 << 0 // UFFDIO_WRITEPROTECT_MODE_WP

	// _IOWR(0xaa, nr, struct ...): direction 3, the struct's size, type, nr.
	ioctlUffdAPI          = 3<<30 | sizeofUffdioAPI<<16 | uffdAPI<<8 | 0x3f
	ioctlUffdRegister     = 3<<30 | sizeofUffdioRegister<<16 | uffdAPI<<8 | 0x00
	ioctlUffdWriteProtect = 3<<30 | sizeofUffdioWriteProtect<<16 | uffdAPI<<8 | 0x06

	sizeofUffdioAPI          = 24
	sizeofUffdioRegister     = 32
	sizeofUffdioWriteProtect = 24
)

// uffdioAPI mirrors struct uffdio_api.
type uffdioAPI struct {
	API      uint64
	Features uint64
	IOCTLs   uint64
}

// uffdioRange mirrors struct uffdio_range.
type uffdioRange struct {
	Start uint64
	Len   uint64
}

// uffdioRegister mirrors struct uffdio_register.
type uffdioRegister struct {
	Range  uffdioRange
	Mode   uint64
	IOCTLs uint64
}

// uffdioWriteProtect mirrors struct uffdio_writeprotect.
type uffdioWriteProtect struct {
	Range uffdioRange
	Mode  uint64
}

func uffdIoctl(fd int, req uintptr, arg unsafe.Pointer) error {
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
		switch e {
		case 0:
			return nil
		case unix.EINTR, unix.EAGAIN: // write-protecting a range may be interrupted; it is idempotent
			continue
		}
		return e
	}
}

// writeProtect opens a userfaultfd in asynchronous write-protect mode and
// write-protects the whole mapping with it, unpopulated pages included:
// from then on the first write to each page clears its protection in the
// kernel (no fault reaches this process), and pagemap's bit 57 tells the
// pages never written since. The descriptor must stay open as long as the
// tracking is wanted; closing it ends the protection.
func (m *Memory) writeProtect() (fd int, err error) {
	r, _, e := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK|uffdUserModeOnly, 0, 0)
	if e != 0 {
		return -1, fmt.Errorf("userfaultfd: %w", e)
	}
	fd = int(r)
	defer func() {
		if err != nil {
			unix.Close(fd)
		}
	}()
	api := uffdioAPI{API: uffdAPI, Features: uffdFeatureWPAsync | uffdFeatureWPUnpopulated}
	if err := uffdIoctl(fd, ioctlUffdAPI, unsafe.Pointer(&api)); err != nil {
		// EINVAL: the kernel knows neither feature (before 6.7).
		return -1, fmt.Errorf("UFFDIO_API with asynchronous write-protect (Linux 6.7): %w", err)
	}
	start, end := m.span()
	rng := uffdioRange{Start: uint64(start), Len: uint64(end - start)}
	reg := uffdioRegister{Range: rng, Mode: uffdRegisterModeWP}
	if err := uffdIoctl(fd, ioctlUffdRegister, unsafe.Pointer(&reg)); err != nil {
		return -1, fmt.Errorf("UFFDIO_REGISTER write-protect: %w", err)
	}
	wp := uffdioWriteProtect{Range: rng, Mode: uffdWriteProtectModeWP}
	if err := uffdIoctl(fd, ioctlUffdWriteProtect, unsafe.Pointer(&wp)); err != nil {
		return -1, fmt.Errorf("UFFDIO_WRITEPROTECT: %w", err)
	}
	return fd, nil
}
