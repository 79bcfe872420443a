package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// Control register and EFER bits used to enter long mode.
const (
	cr0PE   = 1 << 0
	cr0ET   = 1 << 4
	cr0PG   = 1 << 31
	cr4PAE  = 1 << 5
	eferLME = 1 << 8
	eferLMA = 1 << 10
)

// GDT selectors: null, code, data, TSS.
const (
	selCode = 1 << 3
	selData = 2 << 3
	selTSS  = 3 << 3
)

// gdtEntry encodes a segment descriptor from flags (access byte in bits 0-7,
// flags nibble in bits 12-15), base and limit, as the SDM lays it out.
func gdtEntry(flags uint16, base, limit uint32) uint64 {
	return uint64(base&0xff000000)<<32 | uint64(flags&0xf0ff)<<40 | uint64(limit&0xf0000)<<32 |
		uint64(base&0x00ffffff)<<16 | uint64(limit&0xffff)
}

var gdt = [...]uint64{
	0,
	gdtEntry(0xa09b, 0, 0xfffff), // code: present, exec/read, long mode, 4 KiB granular
	gdtEntry(0xc093, 0, 0xfffff), // data: present, read/write, 32-bit, 4 KiB granular
	gdtEntry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS
}

// segment decodes a GDT entry into KVM's segment form.
func segment(entry uint64, sel uint16) kvm.Segment {
	s := kvm.Segment{
		Base:     (entry>>16)&0xffffff | (entry>>56&0xff)<<24,
		Limit:    uint32(entry&0xffff | (entry>>48&0xf)<<16),
		Selector: sel,
		Type:     uint8(entry >> 40 & 0xf),
		Present:  uint8(entry >> 47 & 1),
		DPL:      uint8(entry >> 45 & 3),
		DB:       uint8(entry >> 54 & 1),
		S:        uint8(entry >> 44 & 1),
		L:        uint8(entry >> 53 & 1),
		G:        uint8(entry >> 55 & 1),
		AVL:      uint8(entry >> 52 & 1),
	}
	if s.G == 1 {
		s.Limit = s.Limit<<12 | 0xfff
	}
	s.Unusable = 1 - s.Present
	return s
}

func writeGDT(mem Memory) error {
	b := make([]byte, 8*len(gdt))
	for i, e := range gdt {
		binary.LittleEndian.PutUint64(b[8*i:], e)
	}
	if _, err := mem.WriteAt(b, GDTAddr); err != nil {
		return fmt.Errorf("boot: write GDT: %w", err)
	}
	if _, err := mem.WriteAt(make([]byte, 8), IDTAddr); err != nil {
		return fmt.Errorf("boot: write IDT: %w", err)
	}
	return nil
}

// writePageTables identity-maps the first GiB with 2 MiB pages: enough for
// the kernel, the zero page and the command line until the kernel builds its
// own page tables.
func writePageTables(mem Memory) error {
	le := binary.LittleEndian
	page := make([]byte, 4096)
	le.PutUint64(page, PDPTEAddr|0x3) // present, writable
	if _, err := mem.WriteAt(page, PML4Addr); err != nil {
		return fmt.Errorf("boot: write PML4: %w", err)
	}
	le.PutUint64(page, PDEAddr|0x3)
	if _, err := mem.WriteAt(page, PDPTEAddr); err != nil {
		return fmt.Errorf("boot: write PDPTE: %w", err)
	}
	for i := uint64(0); i < 512; i++ {
		le.PutUint64(page[8*i:], i<<21|0x83) // present, writable, 2 MiB page
	}
	if _, err := mem.WriteAt(page, PDEAddr); err != nil {
		return fmt.Errorf("boot: write PDE: %w", err)
	}
	return nil
}

// longModeSregs puts a vCPU in 64-bit mode with the GDT and page tables
// written by LoadLinux.
func longModeSregs(s kvm.Sregs) kvm.Sregs {
	code, data, tss := segment(gdt[1], selCode), segment(gdt[2], selData), segment(gdt[3], selTSS)
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = tss
	s.GDT = kvm.DTable{Base: GDTAddr, Limit: uint16(8*len(gdt) - 1)}
	s.IDT = kvm.DTable{Base: IDTAddr, Limit: 7}
	s.CR0 |= cr0PE | cr0ET | cr0PG
	s.CR3 = PML4Addr
	s.CR4 |= cr4PAE
	s.EFER |= eferLME | eferLMA
	return s
}
