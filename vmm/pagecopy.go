package vmm

import (
	"fmt"
	"maps"
	"math/bits"
	"os"
	"slices"

	"github.com/sailbox-dev/sailbox/snapshot/memlayer"
)

// pageCopy collects copies of guest pages for one memory layer. Each take
// adds the pages changed since the previous one; a page taken twice keeps
// its latest copy. The copies go to a spill file (unlinked, in the
// checkpoint's staging directory), not to the VMM's heap, whose growth
// the Go runtime is slow to give back: a checkpoint costs page cache and
// some write-back of the file instead. Each page has a slot in the file,
// given in the order pages are first taken; a take is in ascending page
// order, so runs of pages mostly land in runs of slots and go in one
// write.
type pageCopy struct {
	host   []byte // guest memory
	spill  *os.File
	bitmap []uint64          // every page taken
	slot   map[uint64]uint64 // page → its copy's slot in spill
	slots  uint64            // slots in use
	last   uint64            // pages copied by the latest take
}

// spillRun is how many pages a copy moves at most in one write or read.
const spillRun = 256

// newPageCopy returns a pageCopy of guest memory host, whose dirty
// bitmaps have words words, spilling to a file created at spillPath.
func newPageCopy(host []byte, words int, spillPath string) (*pageCopy, error) {
	f, err := os.OpenFile(spillPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("page copy: %w", err)
	}
	if err := os.Remove(spillPath); err != nil {
		f.Close()
		return nil, fmt.Errorf("page copy: %w", err)
	}
	return &pageCopy{host: host, spill: f, bitmap: make([]uint64, words), slot: map[uint64]uint64{}}, nil
}

// close releases the spill file.
func (c *pageCopy) close() { c.spill.Close() }

// take copies the pages set in bitmap (KVM's dirty-log layout). Every
// page in bitmap counts as taken even if the copy fails, so that taken
// hands it back to the dirty log for the next checkpoint.
func (c *pageCopy) take(bitmap []uint64) error {
	for w, word := range bitmap {
		c.bitmap[w] |= word
	}
	host := c.host
	c.last = 0
	// run: pages [runPFN, runPFN+runLen) go to slots [runSlot, +runLen).
	var runPFN, runSlot, runLen uint64
	flush := func() error {
		if runLen == 0 {
			return nil
		}
		off := runPFN * memlayer.PageSize
		_, err := c.spill.WriteAt(host[off:off+runLen*memlayer.PageSize], int64(runSlot*memlayer.PageSize))
		runLen = 0
		if err != nil {
			return fmt.Errorf("page copy: %w", err)
		}
		return nil
	}
	for w, word := range bitmap {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			word &^= 1 << b
			pfn := uint64(w)*64 + uint64(b)
			s, ok := c.slot[pfn]
			if !ok {
				s = c.slots
				c.slots++
				c.slot[pfn] = s
			}
			if runLen > 0 && runLen < spillRun && pfn == runPFN+runLen && s == runSlot+runLen {
				runLen++
			} else {
				if err := flush(); err != nil {
					return err
				}
				runPFN, runSlot, runLen = pfn, s, 1
			}
			c.last++
		}
	}
	return flush()
}

// taken returns carry with every page taken so far added.
func (c *pageCopy) taken(carry []uint64) []uint64 {
	if carry == nil {
		carry = make([]uint64, len(c.bitmap))
	}
	for i, w := range c.bitmap {
		carry[i] |= w
	}
	return carry
}

// write writes the copies as a memory layer at path, in page order.
func (c *pageCopy) write(path string) (memlayer.Info, error) {
	w, err := memlayer.Create(path)
	if err != nil {
		return memlayer.Info{}, err
	}
	buf := make([]byte, spillRun*memlayer.PageSize)
	pfns := slices.Sorted(maps.Keys(c.slot))
	for i := 0; i < len(pfns); {
		// The longest run of pages whose slots are a run too.
		n := 1
		for n < spillRun && i+n < len(pfns) && pfns[i+n] == pfns[i]+uint64(n) && c.slot[pfns[i+n]] == c.slot[pfns[i]]+uint64(n) {
			n++
		}
		data := buf[:n*memlayer.PageSize]
		if _, err := c.spill.ReadAt(data, int64(c.slot[pfns[i]]*memlayer.PageSize)); err != nil {
			w.Abort()
			return memlayer.Info{}, fmt.Errorf("page copy: %w", err)
		}
		if err := w.WritePages(pfns[i], data); err != nil {
			w.Abort()
			return memlayer.Info{}, err
		}
		i += n
	}
	return w.Finish()
}
