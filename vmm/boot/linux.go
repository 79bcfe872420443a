package boot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/sailbox-dev/sailbox/kernel"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// ErrMemoryTooSmall reports guest RAM that cannot hold the kernel and initrd.
var ErrMemoryTooSmall = errors.New("guest memory too small")

// Memory is the guest RAM the loader writes: [0, Size()).
type Memory interface {
	io.WriterAt
	Size() uint64
}

// Linux describes what to boot.
type Linux struct {
	Kernel     io.ReaderAt // a bzImage
	KernelSize int64
	Initrd     io.ReaderAt // optional
	InitrdSize int64
	Cmdline    string
	CPUs       int // entries in the MP table; vCPU i has APIC ID i
}

// Entry is the boot vCPU's initial state.
type Entry struct {
	Regs  kvm.Regs
	Sregs func(kvm.Sregs) kvm.Sregs // applied to the vCPU's current special registers
}

// Offsets in struct boot_params (arch/x86/include/uapi/asm/bootparam.h).
const (
	bpExtRamdiskImage = 0x0c0
	bpExtRamdiskSize  = 0x0c4
	bpExtCmdLinePtr   = 0x0c8
	bpE820Entries     = 0x1e8
	bpSetupHeader     = 0x1f1
	bpVidMode         = 0x1fa
	bpJump            = 0x200 // the byte after the 2-byte jump gives the header's length
	bpTypeOfLoader    = 0x210
	bpLoadFlags       = 0x211
	bpRamdiskImage    = 0x218
	bpRamdiskSize     = 0x21c
	bpHeapEndPtr      = 0x224
	bpCmdLinePtr      = 0x228
	bpE820Table       = 0x2d0
	bpE820Max         = 128
	zeroPageSize      = 0x1000

	loaderUndefined = 0xff // type_of_loader: a boot loader without an assigned ID
	canUseHeap      = 0x80 // loadflags CAN_USE_HEAP
	vidModeNormal   = 0xffff
	entry64Offset   = 0x200 // startup_64 in the protected-mode kernel
)

// LoadLinux writes the kernel, initrd, command line, zero page, page tables,
// GDT, MP table and ACPI tables into mem and returns the boot vCPU's entry state.
func LoadLinux(mem Memory, l Linux) (*Entry, error) {
	img, err := kernel.ParseBzImage(l.Kernel, l.KernelSize)
	if err != nil {
		return nil, fmt.Errorf("load kernel: %w", err)
	}
	h := img.Header
	if !h.Supports64BitEntry() {
		return nil, fmt.Errorf("load kernel: no 64-bit entry point (xloadflags %#x): %w", h.XLoadFlags, kernel.ErrUnsupportedBootProtocol)
	}
	if l.CPUs < 1 || l.CPUs > MaxCPUs {
		return nil, fmt.Errorf("load kernel: %d CPUs, want 1 to %d", l.CPUs, MaxCPUs)
	}
	if mem.Size() > MaxRAM {
		return nil, fmt.Errorf("load kernel: %d MiB of RAM, at most %d MiB", mem.Size()>>20, uint64(MaxRAM)>>20)
	}

	// The decompressor runs where it was loaded and unpacks the kernel at
	// pref_address (or, relocatable, near the load address); init_size bytes
	// from there must be RAM.
	kernelEnd := uint64(KernelLoadAddr) + uint64(img.ProtectedSize)
	runAt := uint64(KernelLoadAddr)
	if !h.Relocatable() && h.PrefAddress > runAt {
		runAt = h.PrefAddress
	}
	kernelEnd = max(kernelEnd, runAt+uint64(h.InitSize))
	if kernelEnd > mem.Size() {
		return nil, fmt.Errorf("load kernel: it needs %d MiB of RAM, the guest has %d MiB: %w",
			(kernelEnd+1<<20-1)>>20, mem.Size()>>20, ErrMemoryTooSmall)
	}
	if err := copyInto(mem, KernelLoadAddr, io.NewSectionReader(l.Kernel, img.ProtectedOffset, img.ProtectedSize)); err != nil {
		return nil, fmt.Errorf("load kernel: %w", err)
	}

	zp := make([]byte, zeroPageSize)
	hdrEnd := bpJump + 2 + 0x100 // bounded; the real length is below
	if _, err := l.Kernel.ReadAt(zp[bpSetupHeader:hdrEnd], bpSetupHeader); err != nil {
		return nil, fmt.Errorf("load kernel: read setup header: %w", err)
	}
	if n := bpJump + 2 + int(zp[bpJump+1]); n < hdrEnd {
		clear(zp[n:hdrEnd]) // keep only the header, not the setup code after it
	}

	// Command line.
	limit := min(int(h.CmdlineSize), MaxCmdline-1)
	if len(l.Cmdline) > limit {
		return nil, fmt.Errorf("load kernel: command line of %d bytes, the kernel takes at most %d", len(l.Cmdline), limit)
	}
	if _, err := mem.WriteAt(append([]byte(l.Cmdline), 0), CmdlineAddr); err != nil {
		return nil, fmt.Errorf("load kernel: command line: %w", err)
	}

	le := binary.LittleEndian
	zp[bpTypeOfLoader] = loaderUndefined
	zp[bpLoadFlags] |= canUseHeap
	le.PutUint16(zp[bpHeapEndPtr:], 0xfe00-0x200)
	le.PutUint16(zp[bpVidMode:], vidModeNormal)
	le.PutUint32(zp[bpCmdLinePtr:], CmdlineAddr)
	le.PutUint32(zp[bpExtCmdLinePtr:], 0)

	// Initrd: as high as the kernel allows, page aligned, above the kernel.
	if l.Initrd != nil && l.InitrdSize > 0 {
		top := mem.Size()
		if maxAddr := uint64(h.InitrdAddrMax) + 1; h.InitrdAddrMax != 0 && maxAddr < top {
			top = maxAddr
		}
		size := uint64(l.InitrdSize)
		if size > top || (top-size)&^0xfff < kernelEnd {
			return nil, fmt.Errorf("load initrd: %d MiB does not fit between the kernel (ends at %d MiB) and %d MiB: %w",
				size>>20, kernelEnd>>20, top>>20, ErrMemoryTooSmall)
		}
		addr := (top - size) &^ 0xfff
		if err := copyInto(mem, addr, io.NewSectionReader(l.Initrd, 0, l.InitrdSize)); err != nil {
			return nil, fmt.Errorf("load initrd: %w", err)
		}
		le.PutUint32(zp[bpRamdiskImage:], uint32(addr))
		le.PutUint32(zp[bpRamdiskSize:], uint32(size))
		le.PutUint32(zp[bpExtRamdiskImage:], uint32(addr>>32))
		le.PutUint32(zp[bpExtRamdiskSize:], uint32(size>>32))
	}

	e820 := []struct {
		addr, size uint64
		typ        uint32
	}{
		{0, EBDAStart, e820RAM},
		{EBDAStart, HighMemoryStart - EBDAStart, e820Reserved},
		{HighMemoryStart, mem.Size() - HighMemoryStart, e820RAM},
	}
	zp[bpE820Entries] = byte(len(e820))
	for i, e := range e820 {
		off := bpE820Table + 20*i
		le.PutUint64(zp[off:], e.addr)
		le.PutUint64(zp[off+8:], e.size)
		le.PutUint32(zp[off+16:], e.typ)
	}
	if _, err := mem.WriteAt(zp, ZeroPageAddr); err != nil {
		return nil, fmt.Errorf("load kernel: zero page: %w", err)
	}

	if err := writePageTables(mem); err != nil {
		return nil, err
	}
	if err := writeGDT(mem); err != nil {
		return nil, err
	}
	if err := WriteMPTable(mem, l.CPUs); err != nil {
		return nil, err
	}
	if err := WriteACPI(mem, l.CPUs); err != nil {
		return nil, err
	}
	return &Entry{
		Regs: kvm.Regs{
			RIP:    KernelLoadAddr + entry64Offset,
			RSI:    ZeroPageAddr,
			RSP:    BootStackAddr,
			RBP:    BootStackAddr,
			RFLAGS: 0x2,
		},
		Sregs: longModeSregs,
	}, nil
}

// copyInto streams r into guest memory at addr.
func copyInto(mem Memory, addr uint64, r io.Reader) error {
	buf := make([]byte, 1<<20)
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if _, werr := mem.WriteAt(buf[:n], int64(addr)); werr != nil {
				return werr
			}
			addr += uint64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
