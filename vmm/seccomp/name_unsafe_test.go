package seccomp

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// nameMapping names the mapping of b as the Go runtime names its own:
// prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME). The result does not matter
// (kernels without CONFIG_ANON_VMA_NAME refuse it); that the filter lets
// the call through does.
func nameMapping(b []byte, name string) {
	n := append([]byte(name), 0)
	unix.Syscall6(unix.SYS_PRCTL, unix.PR_SET_VMA, unix.PR_SET_VMA_ANON_NAME,
		uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), uintptr(unsafe.Pointer(unsafe.SliceData(n))), 0)
}
