// Package memlayer reads and writes memory layers: the guest pages a
// checkpoint captured, stored so that a restore can mmap them in place.
//
// A layer holds the pages dirtied since the previous layer. A chain of
// layers, ordered base→top, describes all of guest memory: each page comes
// from the topmost layer that holds it, and a page in no layer is zero.
// Presence is explicit: every layer carries an index of the page numbers
// it holds, and is never inferred from zero pages or file holes.
//
// A page number is a byte offset into the guest's RAM backing divided by
// PageSize (equal to the guest frame number for RAM that starts at guest
// physical address 0 without holes; the VMM owns that translation).
//
// # File layout (version 1)
//
//	[0, 4096)                   header (see header.go), CRC-32C protected
//	[4096, 4096+pages*4096)     page data, in ascending page order
//	[indexOffset, +extents*16)  index: (le64 first page, le64 count) extents
//
// The header records the index's and the page data's CRC-32C. Open checks
// the header and the index but reads no page data, so a lazy restore costs
// two small reads; Verify reads and checks the page data.
//
// # Writing
//
//	w, err := memlayer.Create(path)
//	// either page by page, in ascending order...
//	err = w.WritePages(pfn, page)
//	// ...or straight from a dirty bitmap (bit i = page first+i):
//	err = w.WriteDirty(0, bitmap, func(pfn uint64, dst []byte) error {
//		copy(dst, guestRAM[pfn*memlayer.PageSize:])
//		return nil
//	})
//	info, err := w.Finish() // index, header, fsync; info.DataBytes for accounting
//
// # Restoring
//
//	chain := []*memlayer.Layer{} // memlayer.Open of each file, base first
//	maps, err := memlayer.Plan(chain, memSize)
//	for _, m := range maps {
//		// mmap(ram+m.GuestOffset, m.Length, PROT_READ|PROT_WRITE,
//		//      MAP_PRIVATE|MAP_FIXED, chain[m.Layer].File().Fd(), m.FileOffset)
//	}
//
// Pages load lazily from the page cache and are copied only when the guest
// writes them, so many boxes restored from one chain share its memory.
// Layer files are immutable once finished; Compact merges a chain into a
// new file and never modifies the old ones, so boxes mapping them are
// undisturbed.
package memlayer
