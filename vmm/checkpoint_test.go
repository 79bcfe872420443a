package vmm

import (
	"bytes"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sailbox-dev/sailbox/snapshot/memlayer"
)

// pageCopy keeps the latest copy of every page taken, in a spill file,
// and writes exactly those pages, in page order, as a memory layer: pages
// taken in several takes, in runs longer than one write, re-taken after a
// change, and taken for the first time after pages above them.
func TestPageCopy(t *testing.T) {
	const pages = 1024
	host := make([]byte, pages*memlayer.PageSize)
	fill := func(pfn uint64, v byte) {
		clear(host[pfn*memlayer.PageSize : (pfn+1)*memlayer.PageSize])
		host[pfn*memlayer.PageSize] = v
		host[(pfn+1)*memlayer.PageSize-1] = v
	}
	for pfn := range uint64(pages) {
		fill(pfn, byte(pfn))
	}
	dir := t.TempDir()
	c, err := newPageCopy(host, pages/64, filepath.Join(dir, "spill"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if m, _ := filepath.Glob(filepath.Join(dir, "*")); len(m) != 0 {
		t.Errorf("the spill file is not unlinked: %v", m)
	}
	bitmap := func(pfns ...uint64) []uint64 {
		bm := make([]uint64, pages/64)
		for _, p := range pfns {
			bm[p/64] |= 1 << (p % 64)
		}
		return bm
	}
	var run []uint64 // 300 pages: longer than one spill write
	for p := uint64(100); p < 400; p++ {
		run = append(run, p)
	}
	want := map[uint64]byte{}
	take := func(pfns ...uint64) {
		t.Helper()
		if err := c.take(bitmap(pfns...)); err != nil {
			t.Fatal(err)
		}
		if c.last != uint64(len(pfns)) {
			t.Errorf("take of %d pages copied %d", len(pfns), c.last)
		}
		for _, p := range pfns {
			want[p] = host[p*memlayer.PageSize]
		}
	}
	take(append([]uint64{3, 4, 5, 900}, run...)...)
	fill(4, 0xaa) // changed after its copy: the next take has the new bytes
	fill(250, 0xbb)
	fill(7, 0xcc) // not taken: not in the layer
	take(1, 4, 250, 1000)

	info, err := c.write(filepath.Join(dir, "layer"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Pages != uint64(len(want)) {
		t.Errorf("layer holds %d pages, want %d", info.Pages, len(want))
	}
	l, err := memlayer.Open(info.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Verify(); err != nil {
		t.Fatal(err)
	}
	page := make([]byte, memlayer.PageSize)
	for pfn := range uint64(pages) {
		off, _, ok := l.Lookup(pfn)
		v, taken := want[pfn]
		if ok != taken {
			t.Fatalf("page %d in the layer: %v, taken: %v", pfn, ok, taken)
		}
		if !ok {
			continue
		}
		if _, err := l.File().ReadAt(page, off); err != nil {
			t.Fatal(err)
		}
		wantPage := make([]byte, memlayer.PageSize)
		wantPage[0], wantPage[memlayer.PageSize-1] = v, v
		if !bytes.Equal(page, wantPage) {
			t.Fatalf("page %d: first byte %#x, want %#x", pfn, page[0], v)
		}
	}
}

// A take whose copy fails still counts every page it was given as taken,
// so the failed checkpoint hands them all back to the dirty log.
func TestPageCopyFailedTakeKeepsPages(t *testing.T) {
	const pages = 256
	host := make([]byte, pages*memlayer.PageSize)
	c, err := newPageCopy(host, pages/64, filepath.Join(t.TempDir(), "spill"))
	if err != nil {
		t.Fatal(err)
	}
	c.close() // every write to the spill file now fails
	bm := make([]uint64, pages/64)
	bm[0], bm[3] = 1<<5, 1<<63
	if err := c.take(bm); err == nil {
		t.Fatal("take into a closed spill file succeeded")
	}
	if got := c.taken(nil); !slices.Equal(got, bm) {
		t.Errorf("taken after a failed take = %x, want %x", got, bm)
	}
}
