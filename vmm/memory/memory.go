// Package memory provides guest-physical memory: host memory mapped once
// with mmap, registered with KVM by package vmm, and read and written by
// devices through bounds-checked accessors. A guest controls the addresses
// devices are asked to touch, so every access is checked against the
// mapping; an out-of-range address is an error, never a host fault.
//
// It also tells what the guest used of it (WorkingSet, from the kernel's
// pagemap): the pages touched, and those written since TrackWrites, in
// the way the host kernel offers (WriteTracking).
package memory

import (
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrOutOfRange reports a guest-physical range that is not backed by memory.
var ErrOutOfRange = errors.New("guest address out of range")

// Memory is guest-physical RAM starting at guest address 0. The mapping is
// fixed for its lifetime, so slices returned by Slice stay valid until
// Close. Concurrent access to distinct ranges is safe; ordering of
// concurrent access to the same range is the guest's business, as on
// hardware. Starting and stopping write tracking, WorkingSet and Close
// are for one goroutine at a time.
type Memory struct {
	data []byte
	// written has one bit per page the VMM wrote through WriteAt or may
	// have written through Slice since the last TakeWritten: KVM's dirty
	// log sees only the guest's own writes.
	written []atomic.Uint64

	tracking WriteTracking // how written pages are tracked (track.go)
	uffd     int           // WriteProtect: the userfaultfd holding the protection; -1 otherwise
}

// PageSize is the granularity of dirty tracking and of file mappings.
const PageSize = 4096

// New maps size bytes of anonymous, private, zero-filled memory. Pages are
// allocated by the host only when touched.
func New(size uint64) (*Memory, error) {
	page := uint64(unix.Getpagesize())
	if size == 0 || size%page != 0 {
		return nil, fmt.Errorf("guest memory: size %d is not a positive multiple of the page size %d", size, page)
	}
	data, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("guest memory: mmap %d bytes: %w", size, err)
	}
	return newMemory(data), nil
}

func newMemory(data []byte) *Memory {
	pages := uint64(len(data)) / PageSize
	return &Memory{data: data, written: make([]atomic.Uint64, (pages+63)/64), uffd: -1}
}

// words is the length of a bitmap with a bit per guest page.
func (m *Memory) words() int { return int((m.Size()/PageSize + 63) / 64) }

// Size is the number of bytes of guest RAM.
func (m *Memory) Size() uint64 { return uint64(len(m.data)) }

// Host returns the whole mapping, for registering it with KVM. Devices use
// Slice, ReadAt and WriteAt instead.
func (m *Memory) Host() []byte { return m.data }

// Slice returns the n bytes at guest address gpa, aliasing guest memory.
// The range counts as written by the VMM.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	s, err := m.slice(gpa, n)
	if err == nil {
		m.markWritten(gpa, n)
	}
	return s, err
}

func (m *Memory) slice(gpa, n uint64) ([]byte, error) {
	if gpa > m.Size() || n > m.Size()-gpa {
		return nil, fmt.Errorf("guest range [%#x, +%#x) beyond %#x: %w", gpa, n, m.Size(), ErrOutOfRange)
	}
	return m.data[gpa : gpa+n : gpa+n], nil
}

// markWritten sets the written bit of every page in [gpa, gpa+n).
func (m *Memory) markWritten(gpa, n uint64) {
	if n == 0 {
		return
	}
	for p := gpa / PageSize; p <= (gpa+n-1)/PageSize; p++ {
		w := &m.written[p/64]
		if bit := uint64(1) << (p % 64); w.Load()&bit == 0 {
			w.Or(bit)
		}
	}
}

// TakeWritten ORs into bitmap (one bit per page, as KVM's dirty log) the
// pages the VMM wrote since the last call, and forgets them. A write that
// races with it is reported by this call or the next one, never lost.
func (m *Memory) TakeWritten(bitmap []uint64) {
	for i := range min(len(bitmap), len(m.written)) {
		if m.written[i].Load() != 0 {
			bitmap[i] |= m.written[i].Swap(0)
		}
	}
}

// ReadAt copies len(p) bytes from guest address off into p.
func (m *Memory) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("guest read at %d: %w", off, ErrOutOfRange)
	}
	s, err := m.slice(uint64(off), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(p, s), nil
}

// WriteAt copies p into guest memory at guest address off.
func (m *Memory) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("guest write at %d: %w", off, ErrOutOfRange)
	}
	s, err := m.slice(uint64(off), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	n := copy(s, p)
	// Marked after the copy: a TakeWritten in between leaves the bit set
	// for the next one, which then copies the page's final bytes.
	m.markWritten(uint64(off), uint64(n))
	return n, nil
}

// Close unmaps the memory. No VM may still use it.
func (m *Memory) Close() error {
	if m.data == nil {
		return nil
	}
	err := errors.Join(m.StopTracking(), unix.Munmap(m.data))
	m.data = nil
	return err
}
