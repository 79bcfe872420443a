package memory

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// FileRange says that guest bytes [GuestOffset, GuestOffset+Length) start
// out as the bytes of File at FileOffset. All three are page-aligned.
type FileRange struct {
	GuestOffset uint64
	Length      uint64
	File        *os.File
	FileOffset  int64
}

// NewFromFiles maps size bytes of guest memory as New does, then maps
// each range of files over it copy-on-write (MAP_PRIVATE | MAP_FIXED):
// pages are read from the page cache only when the guest or the VMM
// touches them, are shared by every VM that maps the same file until one
// writes, and writes never reach the files. Guest pages in no range read
// as zeros. Ranges must not overlap; the files may be closed afterwards.
func NewFromFiles(size uint64, ranges []FileRange) (*Memory, error) {
	m, err := New(size)
	if err != nil {
		return nil, err
	}
	for i, r := range ranges {
		if r.GuestOffset%PageSize != 0 || r.Length%PageSize != 0 || r.FileOffset%PageSize != 0 || r.FileOffset < 0 {
			m.Close()
			return nil, fmt.Errorf("guest memory: range %d (guest %#x, +%#x, file offset %#x): not page-aligned", i, r.GuestOffset, r.Length, r.FileOffset)
		}
		if r.Length == 0 {
			continue
		}
		if r.GuestOffset > size || r.Length > size-r.GuestOffset {
			m.Close()
			return nil, fmt.Errorf("guest memory: range %d [%#x, +%#x) beyond %#x: %w", i, r.GuestOffset, r.Length, size, ErrOutOfRange)
		}
		if err := mapFixed(m.data[r.GuestOffset:r.GuestOffset+r.Length], int(r.File.Fd()), r.FileOffset,
			unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_FIXED|unix.MAP_NORESERVE); err != nil {
			m.Close()
			return nil, fmt.Errorf("guest memory: map %s at guest %#x (+%#x): %w", r.File.Name(), r.GuestOffset, r.Length, err)
		}
	}
	return m, nil
}
