package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/sailbox-dev/sailbox/vmm/kvm"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// fakeBzImage returns a minimal bzImage: a 2.15 header, one setup sector
// and a protected-mode part of payload bytes.
func fakeBzImage(payload []byte, initSize uint32) []byte {
	const setupSects = 1
	b := make([]byte, (setupSects+1)*512+len(payload))
	le := binary.LittleEndian
	b[0x1f1] = setupSects
	le.PutUint32(b[0x1f4:], uint32(len(payload)+15)/16) // syssize
	le.PutUint16(b[0x1fe:], 0xaa55)
	b[0x200], b[0x201] = 0xeb, 0x66 // jmp; header length 0x202+0x66
	copy(b[0x202:], "HdrS")
	le.PutUint16(b[0x206:], 0x020f)
	b[0x211] = 1 // LOADED_HIGH
	le.PutUint32(b[0x214:], 0x100000)
	le.PutUint32(b[0x22c:], 0x7fffffff) // initrd_addr_max
	le.PutUint32(b[0x230:], 0x200000)   // kernel_alignment
	b[0x234] = 1                        // relocatable
	le.PutUint16(b[0x236:], 1|2)        // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
	le.PutUint32(b[0x238:], 2047)       // cmdline_size
	le.PutUint32(b[0x260:], initSize)
	copy(b[(setupSects+1)*512:], payload)
	return b
}

func newMem(t *testing.T, size uint64) *memory.Memory {
	t.Helper()
	m, err := memory.New(size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func read(t *testing.T, m *memory.Memory, addr uint64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := m.ReadAt(b, int64(addr)); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadLinux(t *testing.T) {
	payload := bytes.Repeat([]byte("KERNEL"), 1000)
	img := fakeBzImage(payload, 4<<20)
	initrd := bytes.Repeat([]byte("INITRD"), 5000)
	mem := newMem(t, 64<<20)
	entry, err := LoadLinux(mem, Linux{
		Kernel: bytes.NewReader(img), KernelSize: int64(len(img)),
		Initrd: bytes.NewReader(initrd), InitrdSize: int64(len(initrd)),
		Cmdline: "console=ttyS0 quiet", CPUs: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if got := read(t, mem, KernelLoadAddr, len(payload)); !bytes.Equal(got, payload) {
		t.Error("protected-mode kernel not at 1 MiB")
	}
	if got := read(t, mem, CmdlineAddr, 20); string(got) != "console=ttyS0 quiet\x00" {
		t.Errorf("cmdline = %q", got)
	}
	zp := read(t, mem, ZeroPageAddr, zeroPageSize)
	if string(zp[0x202:0x206]) != "HdrS" || zp[bpTypeOfLoader] != 0xff || le.Uint32(zp[bpCmdLinePtr:]) != CmdlineAddr {
		t.Errorf("zero page header: magic %q loader %#x cmdline %#x", zp[0x202:0x206], zp[bpTypeOfLoader], le.Uint32(zp[bpCmdLinePtr:]))
	}
	rd, rdSize := le.Uint32(zp[bpRamdiskImage:]), le.Uint32(zp[bpRamdiskSize:])
	if rdSize != uint32(len(initrd)) || rd%4096 != 0 || uint64(rd)+uint64(rdSize) > 64<<20 || rd < KernelLoadAddr+4<<20 {
		t.Errorf("initrd at %#x size %d", rd, rdSize)
	}
	if got := read(t, mem, uint64(rd), len(initrd)); !bytes.Equal(got, initrd) {
		t.Error("initrd contents differ")
	}
	if n := zp[bpE820Entries]; n != 3 {
		t.Fatalf("e820 entries = %d, want 3", n)
	}
	last := zp[bpE820Table+40:]
	if le.Uint64(last) != HighMemoryStart || le.Uint64(last[8:]) != 64<<20-HighMemoryStart || le.Uint32(last[16:]) != e820RAM {
		t.Errorf("high RAM e820 entry = % x", last[:20])
	}
	if entry.Regs.RIP != KernelLoadAddr+0x200 || entry.Regs.RSI != ZeroPageAddr {
		t.Errorf("entry RIP %#x RSI %#x", entry.Regs.RIP, entry.Regs.RSI)
	}
	s := entry.Sregs(kvm.Sregs{})
	if s.CR3 != PML4Addr || s.EFER&(eferLME|eferLMA) != eferLME|eferLMA || s.CS.L != 1 || s.CS.Selector != selCode {
		t.Errorf("long mode sregs: cr3 %#x efer %#x cs %+v", s.CR3, s.EFER, s.CS)
	}
	// The identity map covers the kernel.
	if pde := le.Uint64(read(t, mem, PDEAddr+8, 8)); pde != 1<<21|0x83 {
		t.Errorf("PDE[1] = %#x", pde)
	}
}

func TestLoadLinuxErrors(t *testing.T) {
	img := fakeBzImage(make([]byte, 4096), 32<<20)
	for _, c := range []struct {
		name    string
		memSize uint64
		l       Linux
		is      error
	}{
		{"memory below init_size", 16 << 20, Linux{CPUs: 1}, ErrMemoryTooSmall},
		{"initrd does not fit", 40 << 20, Linux{CPUs: 1, Initrd: bytes.NewReader(make([]byte, 8<<20)), InitrdSize: 8 << 20}, ErrMemoryTooSmall},
		{"no CPUs", 64 << 20, Linux{}, nil},
		{"command line too long", 64 << 20, Linux{CPUs: 1, Cmdline: string(bytes.Repeat([]byte("x"), 3000))}, nil},
	} {
		mem := newMem(t, c.memSize)
		c.l.Kernel, c.l.KernelSize = bytes.NewReader(img), int64(len(img))
		_, err := LoadLinux(mem, c.l)
		if err == nil || (c.is != nil && !errors.Is(err, c.is)) {
			t.Errorf("%s: err = %v, want an error (is %v)", c.name, err, c.is)
		}
	}
	mem := newMem(t, 64<<20)
	if _, err := LoadLinux(mem, Linux{Kernel: bytes.NewReader(img[:1000]), KernelSize: 1000, CPUs: 1}); err == nil {
		t.Error("truncated kernel accepted")
	}
}

func TestMPTable(t *testing.T) {
	for _, cpus := range []int{1, 2, MaxCPUs} {
		mem := newMem(t, 1<<20)
		if err := WriteMPTable(mem, cpus); err != nil {
			t.Fatal(err)
		}
		b := read(t, mem, EBDAStart, MPTableSize(cpus))
		if string(b[:4]) != "_MP_" || checksum(b[:16]) != 0 {
			t.Fatalf("floating pointer % x", b[:16])
		}
		tbl := b[16:]
		if string(tbl[:4]) != "PCMP" || int(binary.LittleEndian.Uint16(tbl[4:])) != len(tbl) || checksum(tbl) != 0 {
			t.Fatalf("config table header % x", tbl[:44])
		}
		// Processor entries: APIC IDs in order, CPU 0 the BSP.
		for i := 0; i < cpus; i++ {
			e := tbl[44+20*i:]
			if e[0] != mpProcessor || e[1] != byte(i) || (e[3]&cpuBSP != 0) != (i == 0) {
				t.Errorf("cpus=%d: processor entry %d = % x", cpus, i, e[:20])
			}
		}
		if n := binary.LittleEndian.Uint16(tbl[34:]); int(n) != cpus+2+ioapicPins+2 {
			t.Errorf("cpus=%d: entry count %d", cpus, n)
		}
	}
	if err := WriteMPTable(newMem(t, 1<<20), MaxCPUs+1); err == nil {
		t.Error("too many CPUs accepted")
	}
}

func TestGDTEntryRoundTrip(t *testing.T) {
	s := segment(gdt[1], selCode)
	if s.Base != 0 || s.Limit != 0xffffffff || s.Type != 0xb || s.L != 1 || s.G != 1 || s.Present != 1 || s.S != 1 || s.DB != 0 {
		t.Errorf("code segment = %+v", s)
	}
	d := segment(gdt[2], selData)
	if d.Type != 3 || d.DB != 1 || d.L != 0 {
		t.Errorf("data segment = %+v", d)
	}
}
