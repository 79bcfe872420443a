package devices

import (
	"fmt"
	"sort"
	"sync"
)

// Bus dispatches accesses in an address space (port I/O or MMIO) to the
// devices mapped in it. Devices are inserted while the machine is built;
// lookups may then run concurrently from every vCPU.
type Bus struct {
	mu     sync.RWMutex // guards ranges
	ranges []busRange   // sorted by base, non-overlapping
}

type busRange struct {
	base, size uint64
	dev        BusDevice
}

// Insert maps dev at [base, base+size).
func (b *Bus) Insert(dev BusDevice, base, size uint64) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("bus insert at %#x: bad size %#x", base, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range b.ranges {
		if base < r.base+r.size && r.base < base+size {
			return fmt.Errorf("bus insert [%#x, %#x): overlaps [%#x, %#x)", base, base+size, r.base, r.base+r.size)
		}
	}
	b.ranges = append(b.ranges, busRange{base, size, dev})
	sort.Slice(b.ranges, func(i, j int) bool { return b.ranges[i].base < b.ranges[j].base })
	return nil
}

// find returns the device covering [addr, addr+n) and addr's offset in it.
func (b *Bus) find(addr uint64, n int) (BusDevice, uint64, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	i := sort.Search(len(b.ranges), func(i int) bool { return b.ranges[i].base+b.ranges[i].size > addr })
	if i == len(b.ranges) {
		return nil, 0, false
	}
	r := b.ranges[i]
	if addr < r.base || addr+uint64(n) > r.base+r.size || addr+uint64(n) < addr {
		return nil, 0, false
	}
	return r.dev, addr - r.base, true
}

// Read dispatches a read; it reports false when no device covers the whole
// access, in which case data is left for the caller to fill (all ones, as
// an unclaimed bus reads on a PC).
func (b *Bus) Read(addr uint64, data []byte) bool {
	dev, off, ok := b.find(addr, len(data))
	if ok {
		dev.Read(off, data)
	}
	return ok
}

// Write dispatches a write; it reports false when no device covers it.
func (b *Bus) Write(addr uint64, data []byte) bool {
	dev, off, ok := b.find(addr, len(data))
	if ok {
		dev.Write(off, data)
	}
	return ok
}
