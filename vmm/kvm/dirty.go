package kvm

import (
	"fmt"
	"math"
	"math/bits"
)

// Dirty-page tracking. A memory slot mapped with MemLogDirtyPages has a
// bitmap in KVM, one bit per guest page, set when the guest writes the
// page. Two ways to consume it:
//
//   - By default KVM_GET_DIRTY_LOG returns the bitmap and, in the same
//     call, clears it and write-protects the pages again: every call
//     reports the pages written since the previous one.
//   - With EnableManualDirtyLogProtect, GetDirtyLog only reads the bitmap;
//     ClearDirtyLog clears and re-protects the pages the caller has dealt
//     with (copied, say), in chunks as small as 64 pages. A page the guest
//     writes between the two calls is reported again next time, not lost.
//
// Bitmaps are []uint64 with bit i of word i/64 standing for page i of the
// slot, the layout of the kernel's unsigned long bitmaps on x86-64.
//
// The log may report a page the guest only read: the first time the guest
// touches a page, even to fetch code from it, KVM maps it writable to save
// a second fault and marks it dirty then. It never misses a write.

// DirtyPageSize is the granularity of the dirty log: one bit per 4 KiB
// guest page on x86.
const DirtyPageSize = 4096

// DirtyBitmapWords returns how many uint64 words the dirty bitmap of a slot
// of slotBytes bytes takes: one bit per page, rounded up to whole words,
// which is exactly what KVM_GET_DIRTY_LOG writes.
func DirtyBitmapWords(slotBytes uint64) int {
	pages := slotBytes/DirtyPageSize + min(slotBytes%DirtyPageSize, 1)
	return int(pages/64 + min(pages%64, 1))
}

// DirtyPages returns the page numbers whose bits are set in bitmap, in
// increasing order.
func DirtyPages(bitmap []uint64) []uint64 {
	var pages []uint64
	for w, word := range bitmap {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			pages = append(pages, uint64(w)*64+uint64(b))
			word &^= 1 << b
		}
	}
	return pages
}

// EnableManualDirtyLogProtect turns on KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
// with KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE: GetDirtyLog stops clearing the
// bitmap and ClearDirtyLog does it instead. Enable it before mapping any
// slot with MemLogDirtyPages.
//
// KVM_DIRTY_LOG_INITIALLY_SET is deliberately not set. It starts every bit
// at 1 and write-protects nothing until ClearDirtyLog, which suits live
// migration (its first pass copies all memory anyway, and skipping the
// write-protection of a large slot makes enabling the log cheap). Sailbox
// tracks what a guest writes after a snapshot or a restore, and there an
// all-ones first bitmap would claim every page changed.
func (vm *VM) EnableManualDirtyLogProtect() error {
	return vm.EnableCap(CapManualDirtyLogProtect2, DirtyLogManualProtectEnable)
}

// GetDirtyLog copies the dirty bitmap of slot into bitmap
// (KVM_GET_DIRTY_LOG), which must hold DirtyBitmapWords(size of the slot)
// words. Unless EnableManualDirtyLogProtect was called, it also clears the
// bitmap in KVM and write-protects the reported pages again. The slot must
// have been mapped by MapMemory with MemLogDirtyPages (ENOENT otherwise).
func (vm *VM) GetDirtyLog(slot uint32, bitmap []uint64) error {
	pages, ok := vm.slotSize(slot)
	if !ok {
		return fmt.Errorf("KVM_GET_DIRTY_LOG slot %d: slot not mapped by MapMemory", slot)
	}
	need := DirtyBitmapWords(pages * DirtyPageSize)
	if len(bitmap) < need {
		// KVM writes the whole bitmap: a shorter one would let it write
		// past the end of ours.
		return fmt.Errorf("KVM_GET_DIRTY_LOG slot %d: bitmap of %d words, the slot's %d pages need %d", slot, len(bitmap), pages, need)
	}
	if need == 0 {
		return nil
	}
	l := dirtyLog{Slot: slot, Bitmap: &bitmap[0]}
	if _, err := ioctlValue(vm.fd, ioctlGetDirtyLog, &l); err != nil {
		return fmt.Errorf("KVM_GET_DIRTY_LOG slot %d: %w", slot, err)
	}
	return nil
}

// ClearDirtyLog clears, in slot's dirty log, the pages whose bits are set
// in bitmap, and write-protects them so that the next guest write sets
// them again (KVM_CLEAR_DIRTY_LOG, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2).
// Bit i of bitmap stands for page firstPage+i; bits of the numPages pages
// are read. KVM wants firstPage a multiple of 64, and numPages too unless
// the range runs to the end of the slot.
//
// Passing what GetDirtyLog returned, with firstPage 0 and the slot's page
// count, clears exactly the pages it reported, and not those the guest
// dirtied since.
func (vm *VM) ClearDirtyLog(slot uint32, firstPage, numPages uint64, bitmap []uint64) error {
	pages, ok := vm.slotSize(slot)
	if !ok {
		return fmt.Errorf("KVM_CLEAR_DIRTY_LOG slot %d: slot not mapped by MapMemory", slot)
	}
	if err := checkClearRange(pages, firstPage, numPages, len(bitmap)); err != nil {
		return fmt.Errorf("KVM_CLEAR_DIRTY_LOG slot %d pages [%d, +%d): %w", slot, firstPage, numPages, err)
	}
	if numPages == 0 {
		return nil
	}
	l := clearDirtyLog{Slot: slot, NumPages: uint32(numPages), FirstPage: firstPage, Bitmap: &bitmap[0]}
	if _, err := ioctlValue(vm.fd, ioctlClearDirtyLog, &l); err != nil {
		return fmt.Errorf("KVM_CLEAR_DIRTY_LOG slot %d pages [%d, +%d): %w", slot, firstPage, numPages, err)
	}
	return nil
}

// checkClearRange applies KVM_CLEAR_DIRTY_LOG's rules to a range of a slot
// of slotPages pages, and checks that a bitmap of words words covers it
// (KVM reads numPages bits rounded up to whole words).
func checkClearRange(slotPages, firstPage, numPages uint64, words int) error {
	switch {
	case firstPage%64 != 0:
		return fmt.Errorf("first page is not a multiple of 64")
	case firstPage > slotPages || numPages > slotPages-firstPage:
		return fmt.Errorf("range outside the slot's %d pages", slotPages)
	case numPages%64 != 0 && firstPage+numPages != slotPages:
		return fmt.Errorf("page count is not a multiple of 64 and the range stops short of the slot's end (%d pages)", slotPages)
	case numPages > math.MaxUint32:
		return fmt.Errorf("more than 2^32-1 pages in one call")
	case uint64(words) < (numPages+63)/64:
		return fmt.Errorf("bitmap of %d words is short of %d bits", words, numPages)
	}
	return nil
}

// recordSlot notes the size of a slot MapMemory registered, so that the
// dirty-log calls can check bitmaps against it.
func (vm *VM) recordSlot(slot uint32, bytes uint64) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.slotPages == nil {
		vm.slotPages = make(map[uint32]uint64)
	}
	vm.slotPages[slot] = bytes / DirtyPageSize
}

// slotSize returns the number of pages in slot.
func (vm *VM) slotSize(slot uint32) (pages uint64, ok bool) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	pages, ok = vm.slotPages[slot]
	return pages, ok
}
