package memory

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// WriteTracking is how the host kernel tells which guest pages were
// written since tracking began (WorkingSet's Written). Which one a host
// has depends on its kernel's version and configuration, never on how its
// memory manager happens to back a page that was only read:
//
//	kernel                                   WriteProtect  SoftDirty
//	Debian 12's 6.1                          no            yes
//	Debian's 6.12 (bookworm-backports)       yes           yes
//	6.7 or later, CONFIG_MEM_SOFT_DIRTY off  yes           no
//	  (the 6.18 hosts that found the problem)
//
// Reading pagemap's "exclusive" bit instead, as the VMM once did, counted
// pages the guest only read as written wherever the kernel gave a read
// fault a private page, and the neighbours of a written page wherever it
// backed a write with a large folio (multi-size THP, Linux 6.8).
type WriteTracking int

const (
	// NoWriteTracking: the kernel has neither facility (or tracking was
	// not started); WorkingSet's Written stays empty.
	NoWriteTracking WriteTracking = iota
	// SoftDirty: /proc/self/clear_refs clears the soft-dirty bit of every
	// page of the process, and the kernel sets it again on a page's next
	// write (pagemap bit 55; CONFIG_MEM_SOFT_DIRTY, x86 since 3.11).
	// Where the host backs a write to untouched anonymous memory with a
	// transparent huge page (THP "always"), the kernel marks the whole
	// huge page written: its 512 pages are one allocation.
	SoftDirty
	// WriteProtect: the mapping is write-protected with a userfaultfd in
	// asynchronous mode, unpopulated pages included; the kernel lifts
	// the protection of a page at its first write, without involving the
	// VMM, and pagemap bit 57 shows the pages still protected (Linux 6.7,
	// CONFIG_USERFAULTFD and CONFIG_PTE_MARKER_UFFD_WP). Exact to the
	// page: the kernel allocates single pages, never a large folio, in a
	// range registered with a userfaultfd. The first write to a page
	// costs one extra minor fault.
	WriteProtect
)

func (t WriteTracking) String() string {
	switch t {
	case NoWriteTracking:
		return "none"
	case SoftDirty:
		return "soft-dirty"
	case WriteProtect:
		return "userfaultfd write-protect"
	}
	return fmt.Sprintf("WriteTracking(%d)", int(t))
}

// ErrNoWriteTracking is returned when the host kernel can track writes in
// none of the ways this package knows.
var ErrNoWriteTracking = errors.New("the host kernel cannot tell written pages")

// TrackWrites starts tracking the pages written from now on, the best way
// the host kernel offers (WriteProtect, else SoftDirty), and says which.
// Without either it returns NoWriteTracking and an error wrapping
// ErrNoWriteTracking that says why each failed; the memory works as
// before, and WorkingSet's Written stays empty.
func (m *Memory) TrackWrites() (WriteTracking, error) {
	var errs []error
	for _, t := range []WriteTracking{WriteProtect, SoftDirty} {
		err := m.StartTracking(t)
		if err == nil {
			return t, nil
		}
		errs = append(errs, err)
	}
	return NoWriteTracking, fmt.Errorf("%w: %w", ErrNoWriteTracking, errors.Join(errs...))
}

// StartTracking starts tracking written pages with t. An error wrapping
// errors.ErrUnsupported says the host kernel lacks it, and why.
func (m *Memory) StartTracking(t WriteTracking) error {
	if m.tracking != NoWriteTracking {
		return fmt.Errorf("track writes (%v): already tracking (%v)", t, m.tracking)
	}
	switch t {
	case WriteProtect:
		fd, err := m.writeProtect()
		if err != nil {
			return fmt.Errorf("track writes (%v): %w: %w", t, errors.ErrUnsupported, err)
		}
		m.uffd = fd
	case SoftDirty:
		if err := softDirty.start(m); err != nil {
			return fmt.Errorf("track writes (%v): %w", t, err)
		}
	default:
		return fmt.Errorf("track writes: unknown way %v", t)
	}
	m.tracking = t
	return nil
}

// Tracking says how this memory's written pages are being tracked.
func (m *Memory) Tracking() WriteTracking { return m.tracking }

// StopTracking ends the tracking: writes cost nothing extra from here on,
// and WorkingSet's Written is empty.
func (m *Memory) StopTracking() error {
	var err error
	switch m.tracking {
	case WriteProtect:
		// Closing the userfaultfd unregisters the range; the kernel drops
		// the protection markers left as it meets them.
		err = unix.Close(m.uffd)
		m.uffd = -1
	case SoftDirty:
		softDirty.stop(m)
	}
	m.tracking = NoWriteTracking
	return err
}

// softDirty is the process's soft-dirty tracking. A clear of
// /proc/self/clear_refs resets the soft-dirty bits of every mapping, so
// before each clear every memory already tracking saves which of its
// pages were soft-dirty; the bits it reads later add to those.
var softDirty = &softDirtyTrackers{saved: map[*Memory][]uint64{}}

type softDirtyTrackers struct {
	mu    sync.Mutex
	saved map[*Memory][]uint64 // guarded by mu: per tracking memory, pages soft-dirty before a later clear
}

// start clears the soft-dirty bits and tracks m from now on. It checks
// that the kernel sets them: without CONFIG_MEM_SOFT_DIRTY it accepts the
// clear and never sets a bit.
func (s *softDirtyTrackers) start(m *Memory) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	probe, err := New(PageSize)
	if err != nil {
		return err
	}
	defer probe.Close()
	for other, saved := range s.saved {
		if err := other.scanPagemap(func(p uint64, e uint64) {
			if e&pmSoftDirty != 0 && e&(pmPresent|pmSwapped) != 0 {
				saved[p/64] |= 1 << (p % 64)
			}
		}); err != nil {
			return fmt.Errorf("save the soft-dirty pages of another memory: %w", err)
		}
	}
	if err := os.WriteFile("/proc/self/clear_refs", []byte("4"), 0); err != nil {
		return fmt.Errorf("%w: clear soft-dirty bits: %w", errors.ErrUnsupported, err)
	}
	probe.data[0] = 1
	dirty := false
	if err := probe.scanPagemap(func(_ uint64, e uint64) { dirty = e&pmSoftDirty != 0 }); err != nil {
		return err
	}
	if !dirty {
		return fmt.Errorf("%w: a page written after clearing soft-dirty bits is not soft-dirty (no CONFIG_MEM_SOFT_DIRTY)", errors.ErrUnsupported)
	}
	s.saved[m] = make([]uint64, m.words())
	return nil
}

func (s *softDirtyTrackers) stop(m *Memory) {
	s.mu.Lock()
	delete(s.saved, m)
	s.mu.Unlock()
}

// read runs fn, which reads m's soft-dirty bits, while no other memory
// clears them, and returns the pages of m saved from before such clears.
func (s *softDirtyTrackers) read(m *Memory, fn func() error) (saved []uint64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saved[m], fn()
}
