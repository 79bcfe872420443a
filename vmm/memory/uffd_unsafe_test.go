package memory

import (
	"testing"
	"unsafe"
)

// The mirrored userfaultfd structs have their C sizes, and the ioctl
// numbers are the kernel's (linux/userfaultfd.h, as strace prints them).
func TestUffdABI(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"struct uffdio_api", unsafe.Sizeof(uffdioAPI{}), sizeofUffdioAPI},
		{"struct uffdio_register", unsafe.Sizeof(uffdioRegister{}), sizeofUffdioRegister},
		{"struct uffdio_writeprotect", unsafe.Sizeof(uffdioWriteProtect{}), sizeofUffdioWriteProtect},
		{"UFFDIO_API", ioctlUffdAPI, 0xc018aa3f},
		{"UFFDIO_REGISTER", ioctlUffdRegister, 0xc020aa00},
		{"UFFDIO_WRITEPROTECT", ioctlUffdWriteProtect, 0xc018aa06},
	} {
		if c.got != c.want {
			t.Errorf("%s: %#x, want %#x", c.name, c.got, c.want)
		}
	}
}
