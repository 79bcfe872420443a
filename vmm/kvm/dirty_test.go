package kvm

import (
	"slices"
	"strings"
	"testing"
)

func TestDirtyBitmapWords(t *testing.T) {
	for _, c := range []struct {
		bytes uint64
		words int
	}{
		{0, 0},
		{1, 1},
		{4096, 1},
		{64 * 4096, 1},
		{64*4096 + 1, 2},
		{65 * 4096, 2},
		{1 << 30, (1 << 30) / 4096 / 64},
		{1<<30 + 4096, (1<<30)/4096/64 + 1},
	} {
		if got := DirtyBitmapWords(c.bytes); got != c.words {
			t.Errorf("DirtyBitmapWords(%d) = %d, want %d", c.bytes, got, c.words)
		}
	}
}

func TestDirtyPages(t *testing.T) {
	bm := []uint64{1<<0 | 1<<3 | 1<<63, 0, 1 << 6}
	want := []uint64{0, 3, 63, 134}
	if got := DirtyPages(bm); !slices.Equal(got, want) {
		t.Errorf("DirtyPages = %v, want %v", got, want)
	}
	if got := DirtyPages(make([]uint64, 4)); len(got) != 0 {
		t.Errorf("DirtyPages(clean) = %v, want none", got)
	}
}

func TestCheckClearRange(t *testing.T) {
	const slot = 200 // pages: three whole words and 8 pages over
	for _, c := range []struct {
		first, num uint64
		words      int
		bad        string // substring of the error; "" for valid
	}{
		{0, 200, 4, ""},
		{0, 64, 1, ""},
		{64, 128, 2, ""},
		{192, 8, 1, ""},  // the last run may be short
		{128, 72, 2, ""}, // ... and need not be a multiple of 64
		{0, 0, 0, ""},
		{192, 0, 0, ""},
		{200, 0, 0, "multiple of 64"},
		{1, 63, 1, "multiple of 64"},
		{0, 65, 2, "not a multiple of 64"},
		{64, 100, 2, "not a multiple of 64"},
		{192, 9, 1, "outside"},
		{256, 0, 0, "outside"},
		{0, 200, 3, "short"},
		{0, 64, 0, "short"},
	} {
		err := checkClearRange(slot, c.first, c.num, c.words)
		switch {
		case c.bad == "" && err != nil:
			t.Errorf("checkClearRange(%d, %d, %d words): %v, want ok", c.first, c.num, c.words, err)
		case c.bad != "" && (err == nil || !strings.Contains(err.Error(), c.bad)):
			t.Errorf("checkClearRange(%d, %d, %d words) = %v, want error about %q", c.first, c.num, c.words, err, c.bad)
		}
	}
}

// The dirty-log calls check the caller's bitmap against the slot before
// KVM sees it: KVM_GET_DIRTY_LOG writes the slot's whole bitmap.
func TestDirtyLogBitmapChecks(t *testing.T) {
	vm := &VM{fd: -1}
	if err := vm.GetDirtyLog(0, make([]uint64, 1)); err == nil || !strings.Contains(err.Error(), "not mapped") {
		t.Errorf("GetDirtyLog on an unknown slot = %v, want a not-mapped error", err)
	}
	vm.recordSlot(3, 65*4096)
	if err := vm.GetDirtyLog(3, make([]uint64, 1)); err == nil || !strings.Contains(err.Error(), "need 2") {
		t.Errorf("GetDirtyLog with a short bitmap = %v, want an error", err)
	}
	if err := vm.ClearDirtyLog(3, 0, 65, make([]uint64, 1)); err == nil || !strings.Contains(err.Error(), "short") {
		t.Errorf("ClearDirtyLog with a short bitmap = %v, want an error", err)
	}
	if err := vm.ClearDirtyLog(3, 0, 0, nil); err != nil {
		t.Errorf("ClearDirtyLog of no pages = %v, want nil", err)
	}
}

func TestIRQChipUnion(t *testing.T) {
	var c IRQChip
	c.SetPIC(PICState{IRR: 0x11, IMR: 0xfb, ELCRMask: 0xf8})
	if c.Chip[1] != 0x11 || c.Chip[2] != 0xfb || c.Chip[15] != 0xf8 {
		t.Errorf("PIC encoding: % x", c.Chip[:16])
	}
	if p := c.PIC(); p.IMR != 0xfb || p.IRR != 0x11 || p.ELCRMask != 0xf8 {
		t.Errorf("PIC() = %+v", p)
	}

	c.SetIOAPIC(IOAPICState{BaseAddress: 0xfec00000, ID: 2, RedirTbl: [24]uint64{4: 0x1_0000_0031}})
	if got := c.Chip[8*3+8*4]; got != 0x31 {
		t.Errorf("IOAPIC redirtbl[4] low byte at offset 56 = %#x, want 0x31", got)
	}
	if s := c.IOAPIC(); s.BaseAddress != 0xfec00000 || s.ID != 2 || s.RedirTbl[4] != 0x1_0000_0031 {
		t.Errorf("IOAPIC() = %+v", s)
	}
}

func TestMSRError(t *testing.T) {
	e := &MSRError{Op: "KVM_SET_MSRS", VCPU: 1, Index: 0xc0000080, Done: 3, Total: 9}
	if got, want := e.Error(), "KVM_SET_MSRS vcpu 1: MSR 0xc0000080 refused (3 of 9 processed)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	e.VCPU = -1
	if got := e.Error(); !strings.Contains(got, "/dev/kvm") {
		t.Errorf("feature MSR error %q does not name /dev/kvm", got)
	}
}

func TestSetXSaveSizeChecks(t *testing.T) {
	v := &VCPU{id: 0, fd: -1, xsaveSize: 8192}
	for _, n := range []int{0, 4095, 8193} {
		if err := v.SetXSave(make([]byte, n)); err == nil || !strings.Contains(err.Error(), "want 4096 to 8192") {
			t.Errorf("SetXSave(%d bytes) = %v, want a size error", n, err)
		}
	}
}
