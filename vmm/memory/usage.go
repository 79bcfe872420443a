package memory

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
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
}

// Usage reads the host memory the mapping takes now.
func (m *Memory) Usage() (Usage, error) {
	start, end := m.span()
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return Usage{}, fmt.Errorf("guest memory usage: %w", err)
	}
	var u Usage
	in := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if lo, hi, ok := parseRange(fields[0]); ok {
			in = lo >= start && hi <= end
			continue
		}
		if !in || len(fields) < 2 {
			continue
		}
		kb, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			continue
		}
		switch fields[0] {
		case "Rss:":
			u.Resident += kb << 10
		case "Private_Clean:", "Private_Dirty:":
			u.Private += kb << 10
		}
	}
	return u, sc.Err()
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
	// Touched are the pages read or written, plus neighbours of the file
	// pages read (the kernel maps those ahead: fault-around).
	Touched []uint64
	// Written are the pages of Touched this VM holds a copy of its own:
	// written by the guest or the VMM (copied on write from a layer, or
	// anonymous memory filled in).
	Written []uint64
}

// WorkingSet reports the guest pages mapped in this process now: every
// page the guest or the VMM has touched since the memory was mapped that
// the host has not reclaimed, and which of them were written. Of a
// restored machine, these are the pages its guest needed since the
// restore. From /proc/self/pagemap.
func (m *Memory) WorkingSet() (WorkingSet, error) {
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return WorkingSet{}, fmt.Errorf("guest working set: %w", err)
	}
	defer f.Close()
	const (
		present   = 1 << 63
		swapped   = 1 << 62
		fileOrShm = 1 << 61 // a page-cache page: a layer's, not copied yet
		exclusive = 1 << 56 // mapped by this process alone
	)
	start, _ := m.span()
	pages := m.Size() / PageSize
	ws := WorkingSet{Touched: make([]uint64, (pages+63)/64), Written: make([]uint64, (pages+63)/64)}
	buf := make([]byte, 8*4096)
	for first := uint64(0); first < pages; {
		n := min(pages-first, uint64(len(buf)/8))
		off := int64(uint64(start)/PageSize+first) * 8
		if _, err := f.ReadAt(buf[:n*8], off); err != nil {
			return WorkingSet{}, fmt.Errorf("guest working set: read pagemap: %w", err)
		}
		for i := range n {
			e := binary.LittleEndian.Uint64(buf[i*8:])
			p := first + i
			if e&(present|swapped) != 0 {
				ws.Touched[p/64] |= 1 << (p % 64)
			}
			// The shared zero page (an anonymous page only read) is
			// neither a file page nor exclusive.
			if e&(present|swapped) != 0 && e&fileOrShm == 0 && e&(exclusive|swapped) != 0 {
				ws.Written[p/64] |= 1 << (p % 64)
			}
		}
		first += n
	}
	return ws, nil
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
