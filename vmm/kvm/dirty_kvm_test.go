package kvm_test

import (
	"runtime"
	"slices"
	"testing"

	"github.com/sailbox-dev/sailbox/internal/kvmtest"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// The dirty-log guests: a slot of dirtySlotPages pages at guest address 0,
// with two code sequences in page 1. Each writes one byte to each of its
// pages, then halts. Page 70 lies past 64 pages, in the bitmap's second
// word, so that ClearDirtyLog can be tried on each 64-page run separately.
const (
	dirtySlot      = 0
	dirtySlotPages = 128
	codePage       = guestEntry / kvm.DirtyPageSize
	secondEntry    = guestEntry + 0x800
)

var (
	firstPages  = []uint64{3, 5, 70}
	secondPages = []uint64{7}
)

// writePagesCode returns real-mode code that writes a byte to each page
// (below 1 MiB) through ES, then halts:
//
//	mov ax, page*0x100 ; mov es, ax ; mov byte es:[0x10], 0x5a   (per page)
//	hlt
func writePagesCode(pages []uint64) []byte {
	var code []byte
	for _, p := range pages {
		seg := uint16(p * kvm.DirtyPageSize >> 4)
		code = append(code,
			0xB8, byte(seg), byte(seg>>8), // mov ax, seg
			0x8E, 0xC0, // mov es, ax
			0x26, 0xC6, 0x06, 0x10, 0x00, 0x5A, // mov byte es:[0x0010], 0x5a
		)
	}
	return append(code, 0xF4) // hlt
}

// dirtyLab is a VM with one dirty-logged slot and a vCPU, no irqchip (so
// that HLT exits to user space).
type dirtyLab struct {
	vm  *kvm.VM
	cpu *kvm.VCPU
}

func newDirtyLab(t *testing.T, manual bool) *dirtyLab {
	t.Helper()
	sys := kvmtest.Require(t)
	vm := newVM(t, sys)
	if manual {
		caps, err := vm.CheckExtension(kvm.CapManualDirtyLogProtect2)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = %#x", caps)
		if caps&kvm.DirtyLogManualProtectEnable == 0 {
			t.Skip("KVM lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (Linux < 5.8)")
		}
		if err := vm.EnableManualDirtyLogProtect(); err != nil {
			t.Fatal(err)
		}
	}
	mem := guestMemory(t, dirtySlotPages*kvm.DirtyPageSize)
	copy(mem[guestEntry:], writePagesCode(firstPages))
	copy(mem[secondEntry:], writePagesCode(secondPages))
	if err := vm.MapMemory(dirtySlot, 0, mem, kvm.MemLogDirtyPages); err != nil {
		t.Fatal(err)
	}
	return &dirtyLab{vm: vm, cpu: newVCPU(t, sys, vm, nil)}
}

// run runs the code at entry to its HLT.
func (l *dirtyLab) run(t *testing.T, entry uint64) {
	t.Helper()
	if err := l.cpu.SetRegs(kvm.Regs{RIP: entry, RFLAGS: 0x2}); err != nil {
		t.Fatal(err)
	}
	if r := runToExit(t, l.cpu); r != kvm.ExitHLT {
		t.Fatalf("guest at %#x: %v, want KVM_EXIT_HLT", entry, r)
	}
}

func (l *dirtyLab) dirtyLog(t *testing.T) []uint64 {
	t.Helper()
	bm := make([]uint64, kvm.DirtyBitmapWords(dirtySlotPages*kvm.DirtyPageSize))
	if err := l.vm.GetDirtyLog(dirtySlot, bm); err != nil {
		t.Fatal(err)
	}
	return bm
}

// expectDirty checks that the bitmap reports every page of want and
// nothing else, but for the code page: the first fetch from it faults it
// in, and KVM maps it writable then and marks it dirty (make_spte).
func expectDirty(t *testing.T, step string, bm []uint64, want ...uint64) {
	t.Helper()
	got := kvm.DirtyPages(bm)
	t.Logf("%s: dirty pages %v", step, got)
	for _, p := range want {
		if !slices.Contains(got, p) {
			t.Errorf("%s: page %d was written but is not dirty (dirty: %v)", step, p, got)
		}
	}
	for _, p := range got {
		if p != codePage && !slices.Contains(want, p) {
			t.Errorf("%s: page %d is dirty but untouched (dirty: %v, want %v)", step, p, got, want)
		}
	}
}

// Without manual protection, each KVM_GET_DIRTY_LOG reports the pages
// written since the previous one.
func TestKVMDirtyLog(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	l := newDirtyLab(t, false)

	expectDirty(t, "before running", l.dirtyLog(t))
	l.run(t, guestEntry)
	expectDirty(t, "after the first guest", l.dirtyLog(t), firstPages...)
	expectDirty(t, "read again", l.dirtyLog(t))
	l.run(t, secondEntry)
	expectDirty(t, "after the second guest", l.dirtyLog(t), secondPages...)
	l.run(t, guestEntry)
	expectDirty(t, "after the first guest again", l.dirtyLog(t), firstPages...)
}

// With manual protection, GetDirtyLog only reads, and ClearDirtyLog clears
// (and re-arms) exactly the pages it is given, 64-page run by run.
func TestKVMDirtyLogManualProtect(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	l := newDirtyLab(t, true)

	expectDirty(t, "before running", l.dirtyLog(t))
	l.run(t, guestEntry)
	bm := l.dirtyLog(t)
	expectDirty(t, "after the first guest", bm, firstPages...)
	expectDirty(t, "read again, not cleared", l.dirtyLog(t), firstPages...)

	// Clear pages 0-63 only: page 70 stays dirty.
	if err := l.vm.ClearDirtyLog(dirtySlot, 0, 64, bm[:1]); err != nil {
		t.Fatal(err)
	}
	expectDirty(t, "after clearing pages 0-63", l.dirtyLog(t), 70)
	// Pages 64-127 run to the end of the slot: a 64-page run either way.
	if err := l.vm.ClearDirtyLog(dirtySlot, 64, dirtySlotPages-64, bm[1:]); err != nil {
		t.Fatal(err)
	}
	after := l.dirtyLog(t)
	if got := kvm.DirtyPages(after); len(got) > 0 && !slices.Equal(got, []uint64{codePage}) {
		t.Errorf("after clearing everything reported: dirty pages %v, want none", got)
	}
	// Cleared pages are write-protected again: the guest's next writes
	// show up, and a page never cleared stays dirty.
	l.run(t, secondEntry)
	expectDirty(t, "after the second guest", l.dirtyLog(t), secondPages...)
	l.run(t, guestEntry)
	expectDirty(t, "after the first guest again", l.dirtyLog(t), append(slices.Clone(firstPages), secondPages...)...)

	// KVM's rules for a clear: the first page must be a multiple of 64.
	err := l.vm.ClearDirtyLog(dirtySlot, 1, 63, bm)
	if err == nil {
		t.Error("ClearDirtyLog from page 1 succeeded; KVM requires a multiple of 64")
	}
	t.Logf("misaligned clear refused: %v", err)
}
