package memory

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Usage is how much host memory guest RAM takes, from the kernel's
// accounting of the mapping (/proc/self/smaps), in bytes.
type Usage struct {
	// Resident is every page of the mapping in host RAM, shared or not:
	// page-cache pages of a restored checkpoint's layers count here.
	Resident uint64
	// Private is what only this VM holds: pages it wrote (anonymous or
	// copied on write from a layer) and pages of its own not shared.
	// After a fork or restore, it grows with what the guest writes.
	Private uint64
	// Proportional is Resident with each shared page divided among the
	// processes that map it (smaps' Pss): summed over processes, it
	// counts every page once.
	Proportional uint64
}

// Usage reads the host memory the mapping takes now.
func (m *Memory) Usage() (Usage, error) {
	u, err := m.ProcessUsage()
	return u.Guest, err
}

// ProcessUsage is this process's resident memory split at guest RAM.
type ProcessUsage struct {
	Guest Usage
	// Other is every other mapping's: the VMM's own memory (its binary,
	// heap, stacks, buffers), its shared pages (the binary's text) counted
	// whole in Resident, as an RSS counts them.
	Other Usage
	// OtherFiles is the part of Other mapped from files: the binary's
	// text and data (a static Go binary maps no library). The rest of
	// Other is anonymous: the Go heap, stacks, the runtime's.
	OtherFiles Usage
}

// ProcessUsage reads, in one pass over /proc/self/smaps, the host memory
// the mapping takes now and the rest of the process's.
func (m *Memory) ProcessUsage() (ProcessUsage, error) {
	start, end := m.span()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return ProcessUsage{}, fmt.Errorf("guest memory usage: %w", err)
	}
	defer f.Close()
	u, err := parseSmaps(f, start, end)
	if err != nil {
		return ProcessUsage{}, fmt.Errorf("guest memory usage: %w", err)
	}
	return u, nil
}

// parseSmaps adds up smaps' Rss, Pss and Private_* fields of the
// mappings inside [start, end) into Guest, and of every other mapping
// into Other. Restored guest RAM is many mappings (layer files mapped
// over an anonymous one), all inside the span.
func parseSmaps(r io.Reader, start, end uintptr) (ProcessUsage, error) {
	var pu ProcessUsage
	u := &pu.Other
	file := false // the mapping outside guest RAM is of a file
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if lo, hi, ok := parseRange(fields[0]); ok {
			// "start-end perms offset dev inode [path]": a path that
			// is not a pseudo-name such as [heap] or [stack] is a file.
			u = &pu.Other
			file = len(fields) >= 6 && strings.HasPrefix(fields[5], "/")
			if lo >= start && hi <= end {
				u, file = &pu.Guest, false
			}
			continue
		}
		if len(fields) < 2 {
			continue
		}
		kb, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			continue
		}
		add(u, fields[0], kb<<10)
		if file {
			add(&pu.OtherFiles, fields[0], kb<<10)
		}
	}
	return pu, sc.Err()
}

// add adds the bytes of smaps field key (Rss, Pss, Private_*) to u.
func add(u *Usage, key string, bytes uint64) {
	switch key {
	case "Rss:":
		u.Resident += bytes
	case "Pss:":
		u.Proportional += bytes
	case "Private_Clean:", "Private_Dirty:":
		u.Private += bytes
	}
}

// parseRange parses the "start-end" of a smaps mapping header line.
func parseRange(s string) (lo, hi uintptr, ok bool) {
	a, b, found := strings.Cut(s, "-")
	if !found {
		return 0, 0, false
	}
	l, err1 := strconv.ParseUint(a, 16, 64)
	h, err2 := strconv.ParseUint(b, 16, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return uintptr(l), uintptr(h), true
}

// WorkingSet is what a guest used of its memory, as two bitmaps over its
// pages (bit i of word i/64 is guest page i).
type WorkingSet struct {
	// Touched are the pages read or written, plus whatever the kernel
	// mapped with them (the neighbours of a file page read: fault-around).
	Touched []uint64
	// Written are the pages of Touched written since the tracking began
	// (Memory.TrackWrites), by the guest or the VMM, populating for
	// writing included; empty without tracking.
	Written []uint64
}

// Pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const (
	pmPresent   = 1 << 63
	pmSwapped   = 1 << 62
	pmFile      = 1 << 61 // a page-cache page: a layer's, not copied
	pmUffdWP    = 1 << 57 // write-protected by a userfaultfd (Linux 5.13)
	pmExclusive = 1 << 56 // mapped by this process alone
	pmSoftDirty = 1 << 55
)

// Private reports, as a bitmap over guest pages, those this process holds
// a copy of its own of, in RAM or swapped: anonymous pages mapped only
// here. Those written, or populated for writing, are among them; so may
// be pages only read, on kernels that give a read fault a page of its
// own, and the neighbours of a written page that the kernel backed with
// a large folio. Which pages were written is WorkingSet's to say.
func (m *Memory) Private() ([]uint64, error) {
	own := make([]uint64, m.words())
	err := m.scanPagemap(func(p, e uint64) {
		if e&(pmPresent|pmSwapped) != 0 && e&pmFile == 0 && e&(pmExclusive|pmSwapped) != 0 {
			own[p/64] |= 1 << (p % 64)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("guest pages held privately: %w", err)
	}
	return own, nil
}

// WorkingSet reports the guest pages mapped in this process now: every
// page the guest or the VMM has touched since the memory was mapped that
// the host has not reclaimed, and which of them were written since
// tracking began, as Tracking() tells. Of a restored machine, these are
// the pages its guest needed since the restore. From /proc/self/pagemap.
func (m *Memory) WorkingSet() (WorkingSet, error) {
	ws := WorkingSet{Touched: make([]uint64, m.words()), Written: make([]uint64, m.words())}
	set := func(bitmap []uint64, p uint64) { bitmap[p/64] |= 1 << (p % 64) }
	mapped := func(e uint64) bool { return e&(pmPresent|pmSwapped) != 0 }
	var err error
	switch m.tracking {
	case WriteProtect:
		err = m.scanPagemap(func(p, e uint64) {
			written := mapped(e) && e&pmUffdWP == 0
			// A page never touched carries a protection marker, which
			// pagemap shows as swapped and protected.
			if e&pmPresent != 0 || written {
				set(ws.Touched, p)
			}
			if written {
				set(ws.Written, p)
			}
		})
	case SoftDirty:
		var saved []uint64
		saved, err = softDirty.read(m, func() error {
			return m.scanPagemap(func(p, e uint64) {
				if mapped(e) {
					set(ws.Touched, p)
					if e&pmSoftDirty != 0 {
						set(ws.Written, p)
					}
				}
			})
		})
		for i := range saved {
			ws.Written[i] |= saved[i]
			ws.Touched[i] |= saved[i]
		}
	default:
		err = m.scanPagemap(func(p, e uint64) {
			if mapped(e) {
				set(ws.Touched, p)
			}
		})
	}
	if err != nil {
		return WorkingSet{}, fmt.Errorf("guest working set: %w", err)
	}
	return ws, nil
}

// scanPagemap calls fn with each guest page's pagemap entry, in order.
func (m *Memory) scanPagemap(fn func(page, entry uint64)) error {
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return err
	}
	defer f.Close()
	start, _ := m.span()
	pages := m.Size() / PageSize
	buf := make([]byte, 8*4096)
	for first := uint64(0); first < pages; {
		n := min(pages-first, uint64(len(buf)/8))
		off := int64(uint64(start)/PageSize+first) * 8
		if _, err := f.ReadAt(buf[:n*8], off); err != nil {
			return fmt.Errorf("read pagemap: %w", err)
		}
		for i := range n {
			fn(first+i, binary.LittleEndian.Uint64(buf[i*8:]))
		}
		first += n
	}
	return nil
}

// PopulateWrite gives this VM its own copy of guest pages [first,
// first+n) now, as a write would (MADV_POPULATE_WRITE, Linux 5.14),
// without changing their contents: one call instead of a fault per page.
func (m *Memory) PopulateWrite(first, n uint64) error {
	b, err := m.slice(first*PageSize, n*PageSize)
	if err != nil {
		return fmt.Errorf("populate guest pages [%d, +%d): %w", first, n, err)
	}
	if err := unix.Madvise(b, unix.MADV_POPULATE_WRITE); err != nil {
		return fmt.Errorf("populate guest pages [%d, +%d): %w", first, n, err)
	}
	return nil
}
