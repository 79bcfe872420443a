package memory

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapFixed maps fd at offset over dst, which must lie inside a mapping
// this package owns (MAP_FIXED replaces whatever was there). The
// package's *_unsafe.go files and the KVM package are the VMM's only uses
// of unsafe: a fixed-address mapping needs the address of dst.
func mapFixed(dst []byte, fd int, offset int64, prot, flags int) error {
	_, err := unix.MmapPtr(fd, offset, unsafe.Pointer(unsafe.SliceData(dst)), uintptr(len(dst)), prot, flags)
	return err
}

// span returns the host address range of the mapping.
func (m *Memory) span() (start, end uintptr) {
	start = uintptr(unsafe.Pointer(unsafe.SliceData(m.data)))
	return start, start + uintptr(len(m.data))
}
