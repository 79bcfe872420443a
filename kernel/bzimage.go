package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
)

// Sentinel errors returned (wrapped) by ParseBzImage; test with errors.Is.
var (
	// ErrNotBzImage reports a file that is not a loadable bzImage: a magic
	// number is missing, a header field is out of range, or the file ends
	// before a part the header declares.
	ErrNotBzImage = errors.New("not a bzImage")

	// ErrUnsupportedBootProtocol reports a kernel whose boot protocol
	// version is older than MinBootProtocol.
	ErrUnsupportedBootProtocol = errors.New("unsupported boot protocol")
)

// MinBootProtocol is the oldest boot protocol version ParseBzImage accepts,
// in the header's (major << 8) | minor encoding: 2.06, the first with
// cmdline_size.
const MinBootProtocol = 0x0206

// Boot protocol versions that introduced header fields read by ParseBzImage
// (boot.rst, "The Real-Mode Kernel Header", column "Proto"). Versions are
// (major << 8) | minor, so 2.10 is 0x020a.
const (
	protoPayload    = 0x0208 // 2.08: payload_offset, payload_length
	protoPrefAddr   = 0x020a // 2.10: min_alignment, pref_address, init_size
	protoHandover   = 0x020b // 2.11: handover_offset
	protoXLoadFlags = 0x020c // 2.12: xloadflags
	protoKernelInfo = 0x020f // 2.15: kernel_info_offset
)

// File offsets of the setup header fields. The header sits in the boot
// sector and the first setup sector at the same offsets it has in struct
// boot_params, so these are also zero-page offsets. See boot.rst, "The
// Real-Mode Kernel Header" and "Details of Header Fields".
const (
	offSetupSects        = 0x1f1 // u8  setup_sects, ALL
	offRootFlags         = 0x1f2 // u16 root_flags, ALL
	offSysSize           = 0x1f4 // u32 syssize, 2.04+
	offVidMode           = 0x1fa // u16 vid_mode, ALL
	offBootFlag          = 0x1fe // u16 boot_flag, ALL
	offJump              = 0x200 // u16 jump, 2.00+
	offHeader            = 0x202 // u32 header, 2.00+
	offVersion           = 0x206 // u16 version, 2.00+
	offKernelVersion     = 0x20e // u16 kernel_version, 2.00+
	offLoadFlags         = 0x211 // u8  loadflags, 2.00+
	offCode32Start       = 0x214 // u32 code32_start, 2.00+
	offRamdiskImage      = 0x218 // u32 ramdisk_image, 2.00+
	offRamdiskSize       = 0x21c // u32 ramdisk_size, 2.00+
	offHeapEndPtr        = 0x224 // u16 heap_end_ptr, 2.01+
	offCmdLinePtr        = 0x228 // u32 cmd_line_ptr, 2.02+
	offInitrdAddrMax     = 0x22c // u32 initrd_addr_max, 2.03+
	offKernelAlignment   = 0x230 // u32 kernel_alignment, 2.05+
	offRelocatableKernel = 0x234 // u8  relocatable_kernel, 2.05+
	offMinAlignment      = 0x235 // u8  min_alignment, 2.10+
	offXLoadFlags        = 0x236 // u16 xloadflags, 2.12+
	offCmdlineSize       = 0x238 // u32 cmdline_size, 2.06+
	offPayloadOffset     = 0x248 // u32 payload_offset, 2.08+
	offPayloadLength     = 0x24c // u32 payload_length, 2.08+
	offPrefAddress       = 0x258 // u64 pref_address, 2.10+
	offInitSize          = 0x260 // u32 init_size, 2.10+
	offHandoverOffset    = 0x264 // u32 handover_offset, 2.11+
	offKernelInfoOffset  = 0x268 // u32 kernel_info_offset, 2.15+

	// headerEnd is the end of the last field defined as of protocol 2.15.
	// ParseBzImage reads the first headerEnd bytes of the file, whatever
	// the version; every valid bzImage is larger, since the header lies in
	// its first two sectors.
	headerEnd = offKernelInfoOffset + 4
)

// Magic values and limits from boot.rst.
const (
	bootFlagMagic = 0xaa55     // boot_flag
	headerMagic   = 0x53726448 // header: "HdrS" read as a little-endian u32

	sectorSize = 512 // "a sector" in the boot protocol, whatever the medium

	// defaultSetupSects is the number of setup sectors a setup_sects of 0
	// stands for.
	defaultSetupSects = 4
	// maxRealModeSize bounds the real-mode code (boot sector plus setup):
	// "The real-mode code can total up to 32K". With the boot sector that
	// allows setup_sects up to 63.
	maxRealModeSize = 32 << 10

	// entry64Offset is the offset of the legacy 64-bit entry point in the
	// protected-mode kernel when XLF_KERNEL_64 is set.
	entry64Offset = 0x200

	// maxKernelRelease bounds the kernel version string ParseBzImage reads.
	maxKernelRelease = 256
)

// Bits of loadflags (0x211) and xloadflags (0x236), from boot.rst and
// arch/x86/include/uapi/asm/bootparam.h.
const (
	loadFlagLoadedHigh = 1 << 0 // LOADED_HIGH: protected-mode code loads at 0x100000

	xlfKernel64 = 1 << 0 // XLF_KERNEL_64: 64-bit entry point at offset 0x200
)

// SetupHeader holds the fields of the real-mode kernel header, as stored in
// the image. Names follow boot.rst; each comment gives the field's file
// offset and the protocol version that introduced it. ParseBzImage reads a
// field only if the image's protocol version has it; fields newer than
// Version are zero.
type SetupHeader struct {
	SetupSects        uint8  // 0x1f1 setup_sects: setup size in sectors, as stored (0 means 4)
	RootFlags         uint16 // 0x1f2 root_flags: nonzero mounts root read-only (deprecated)
	SysSize           uint32 // 0x1f4 syssize: protected-mode code size in 16-byte paragraphs
	VidMode           uint16 // 0x1fa vid_mode: video mode control
	BootFlag          uint16 // 0x1fe boot_flag: 0xaa55
	Jump              uint16 // 0x200 jump: short jump (0xeb, disp8) over the header
	Header            uint32 // 0x202 header: "HdrS"
	Version           uint16 // 0x206 version: boot protocol, (major << 8) | minor
	KernelVersion     uint16 // 0x20e kernel_version: offset of the version string, less 0x200
	LoadFlags         uint8  // 0x211 loadflags
	Code32Start       uint32 // 0x214 code32_start: protected-mode entry address
	RamdiskImage      uint32 // 0x218 ramdisk_image: set by the loader
	RamdiskSize       uint32 // 0x21c ramdisk_size: set by the loader
	HeapEndPtr        uint16 // 0x224 heap_end_ptr (2.01+): set by the loader
	CmdLinePtr        uint32 // 0x228 cmd_line_ptr (2.02+): set by the loader
	InitrdAddrMax     uint32 // 0x22c initrd_addr_max (2.03+): highest address of the initrd's last byte
	KernelAlignment   uint32 // 0x230 kernel_alignment (2.05+): alignment of the load address
	RelocatableKernel uint8  // 0x234 relocatable_kernel (2.05+)
	MinAlignment      uint8  // 0x235 min_alignment (2.10+): minimum alignment, as a power of two
	XLoadFlags        uint16 // 0x236 xloadflags (2.12+)
	CmdlineSize       uint32 // 0x238 cmdline_size (2.06+): command line length limit, without the NUL
	PayloadOffset     uint32 // 0x248 payload_offset (2.08+): from the start of the protected-mode kernel
	PayloadLength     uint32 // 0x24c payload_length (2.08+)
	PrefAddress       uint64 // 0x258 pref_address (2.10+): preferred load address
	InitSize          uint32 // 0x260 init_size (2.10+): memory needed from the load address during boot
	HandoverOffset    uint32 // 0x264 handover_offset (2.11+): EFI handover entry point
	KernelInfoOffset  uint32 // 0x268 kernel_info_offset (2.15+): kernel_info, from the protected-mode kernel
}

// VersionString returns the boot protocol version as "major.minor" with a
// two-digit minor, as boot.rst writes it: "2.15" for 0x020f.
func (h SetupHeader) VersionString() string {
	return fmt.Sprintf("%d.%02d", h.Version>>8, h.Version&0xff)
}

// LoadedHigh reports whether loadflags has LOADED_HIGH (bit 0): the
// protected-mode kernel is loaded at 0x100000, which is what makes a
// bzImage rather than a zImage.
func (h SetupHeader) LoadedHigh() bool { return h.LoadFlags&loadFlagLoadedHigh != 0 }

// Supports64BitEntry reports whether xloadflags has XLF_KERNEL_64 (bit 0):
// the protected-mode kernel has the legacy 64-bit entry point at offset
// 0x200. It is false for protocols before 2.12, which lack xloadflags.
func (h SetupHeader) Supports64BitEntry() bool { return h.XLoadFlags&xlfKernel64 != 0 }

// Relocatable reports whether relocatable_kernel is set: the protected-mode
// kernel may be loaded at any address aligned to KernelAlignment, rather
// than only at PrefAddress.
func (h SetupHeader) Relocatable() bool { return h.RelocatableKernel != 0 }

// Image describes a parsed bzImage: its setup header and the layout of the
// file, which is the real-mode code (boot sector and setup) followed by the
// protected-mode kernel.
type Image struct {
	Header SetupHeader

	// SetupSize is the size in bytes of the real-mode code, boot sector
	// included: (setup_sects, or 4 if 0, plus 1) * 512.
	SetupSize int64
	// ProtectedOffset is the file offset of the protected-mode kernel; it
	// equals SetupSize.
	ProtectedOffset int64
	// ProtectedSize is the size in bytes of the protected-mode kernel: the
	// rest of the file after the setup.
	ProtectedSize int64

	// KernelRelease is the human-readable version string that
	// kernel_version points to, such as "6.1.0 (user@host) #1 SMP ...", or
	// "" if the header has none or it is not a printable, NUL-terminated
	// string inside the setup.
	KernelRelease string
}

// ParseBzImage reads and validates the setup header of a bzImage of the
// given size in bytes, and returns the header and the file's layout.
//
// It reads a fixed-size prefix of the file and, if the header points to
// one, a bounded kernel version string; it never allocates or reads in
// proportion to size or to any size the header declares.
//
// A returned Image satisfies: protocol version >= MinBootProtocol;
// LOADED_HIGH set; SetupSize a multiple of 512 between 1024 and 32768;
// ProtectedOffset == SetupSize; ProtectedSize > 0 and SetupSize +
// ProtectedSize == size; syssize*16 <= ProtectedSize; the payload (2.08+)
// inside the protected-mode kernel; the 64-bit entry point, if advertised,
// inside it too; and, for a relocatable kernel, KernelAlignment a power of
// two.
//
// Errors describing the file wrap ErrNotBzImage or
// ErrUnsupportedBootProtocol; errors from r are returned wrapped, and a
// reader shorter than size gives io.ErrUnexpectedEOF.
func ParseBzImage(r io.ReaderAt, size int64) (*Image, error) {
	if size < 0 {
		return nil, fmt.Errorf("bzimage: invalid file size %d", size)
	}
	if size < headerEnd {
		return nil, fmt.Errorf("bzimage: file is %d bytes, too small for the setup header ending at %#x: %w",
			size, headerEnd, ErrNotBzImage)
	}
	var buf [headerEnd]byte
	if err := readFull(r, buf[:], 0); err != nil {
		return nil, fmt.Errorf("bzimage: reading setup header: %w", err)
	}
	le := binary.LittleEndian
	var h SetupHeader

	h.BootFlag = le.Uint16(buf[offBootFlag:])
	if h.BootFlag != bootFlagMagic {
		return nil, fmt.Errorf("bzimage: boot flag at %#x is %#x, want %#x: %w",
			offBootFlag, h.BootFlag, bootFlagMagic, ErrNotBzImage)
	}
	h.Header = le.Uint32(buf[offHeader:])
	if h.Header != headerMagic {
		return nil, fmt.Errorf("bzimage: header magic at %#x is %q, want \"HdrS\" (a pre-2.00 zImage or not a kernel): %w",
			offHeader, buf[offHeader:offHeader+4], ErrNotBzImage)
	}
	h.Version = le.Uint16(buf[offVersion:])
	if h.Version < MinBootProtocol {
		return nil, fmt.Errorf("bzimage: boot protocol version at %#x is %s, want at least 2.06: %w",
			offVersion, h.VersionString(), ErrUnsupportedBootProtocol)
	}

	// Fields every protocol >= 2.06 has.
	h.SetupSects = buf[offSetupSects]
	h.RootFlags = le.Uint16(buf[offRootFlags:])
	h.SysSize = le.Uint32(buf[offSysSize:])
	h.VidMode = le.Uint16(buf[offVidMode:])
	h.Jump = le.Uint16(buf[offJump:])
	h.KernelVersion = le.Uint16(buf[offKernelVersion:])
	h.LoadFlags = buf[offLoadFlags]
	h.Code32Start = le.Uint32(buf[offCode32Start:])
	h.RamdiskImage = le.Uint32(buf[offRamdiskImage:])
	h.RamdiskSize = le.Uint32(buf[offRamdiskSize:])
	h.HeapEndPtr = le.Uint16(buf[offHeapEndPtr:])
	h.CmdLinePtr = le.Uint32(buf[offCmdLinePtr:])
	h.InitrdAddrMax = le.Uint32(buf[offInitrdAddrMax:])
	h.KernelAlignment = le.Uint32(buf[offKernelAlignment:])
	h.RelocatableKernel = buf[offRelocatableKernel]
	h.CmdlineSize = le.Uint32(buf[offCmdlineSize:])

	// Fields added later; before their version these bytes are padding or
	// setup code, not header.
	if h.Version >= protoPayload {
		h.PayloadOffset = le.Uint32(buf[offPayloadOffset:])
		h.PayloadLength = le.Uint32(buf[offPayloadLength:])
	}
	if h.Version >= protoPrefAddr {
		h.MinAlignment = buf[offMinAlignment]
		h.PrefAddress = le.Uint64(buf[offPrefAddress:])
		h.InitSize = le.Uint32(buf[offInitSize:])
	}
	if h.Version >= protoHandover {
		h.HandoverOffset = le.Uint32(buf[offHandoverOffset:])
	}
	if h.Version >= protoXLoadFlags {
		h.XLoadFlags = le.Uint16(buf[offXLoadFlags:])
	}
	if h.Version >= protoKernelInfo {
		h.KernelInfoOffset = le.Uint32(buf[offKernelInfoOffset:])
	}

	if !h.LoadedHigh() {
		return nil, fmt.Errorf("bzimage: loadflags at %#x is %#x, LOADED_HIGH (bit 0) clear (a zImage, not a bzImage): %w",
			offLoadFlags, h.LoadFlags, ErrNotBzImage)
	}

	setupSects := int64(h.SetupSects)
	if setupSects == 0 {
		setupSects = defaultSetupSects
	}
	setupSize := (setupSects + 1) * sectorSize
	if setupSize > maxRealModeSize {
		return nil, fmt.Errorf("bzimage: setup_sects at %#x is %d, want at most %d (real-mode code is limited to %d bytes): %w",
			offSetupSects, h.SetupSects, maxRealModeSize/sectorSize-1, maxRealModeSize, ErrNotBzImage)
	}
	if setupSize > size {
		return nil, fmt.Errorf("bzimage: setup_sects at %#x is %d, so the real-mode setup is %d bytes, past the end of the %d-byte file: %w",
			offSetupSects, h.SetupSects, setupSize, size, ErrNotBzImage)
	}
	protSize := size - setupSize
	if protSize == 0 {
		return nil, fmt.Errorf("bzimage: file ends at the end of the %d-byte real-mode setup, with no protected-mode kernel: %w",
			setupSize, ErrNotBzImage)
	}
	// syssize is ZO__edata/16 (arch/x86/boot/header.S): the file may hold
	// more (a signature, padding), never less.
	if sys := uint64(h.SysSize) * 16; sys > uint64(protSize) {
		return nil, fmt.Errorf("bzimage: syssize at %#x is %#x paragraphs (%d bytes), but only %d bytes of protected-mode kernel follow the setup (truncated file?): %w",
			offSysSize, h.SysSize, sys, protSize, ErrNotBzImage)
	}
	if end := uint64(h.PayloadOffset) + uint64(h.PayloadLength); end > uint64(protSize) {
		return nil, fmt.Errorf("bzimage: payload at %#x/%#x (offset %#x, length %#x) ends at %#x, past the %d-byte protected-mode kernel: %w",
			offPayloadOffset, offPayloadLength, h.PayloadOffset, h.PayloadLength, end, protSize, ErrNotBzImage)
	}
	if h.Supports64BitEntry() && protSize <= entry64Offset {
		return nil, fmt.Errorf("bzimage: xloadflags at %#x is %#x, advertising a 64-bit entry point at %#x, but the protected-mode kernel is only %d bytes: %w",
			offXLoadFlags, h.XLoadFlags, entry64Offset, protSize, ErrNotBzImage)
	}
	if h.Relocatable() && bits.OnesCount32(h.KernelAlignment) != 1 {
		return nil, fmt.Errorf("bzimage: kernel_alignment at %#x is %#x, want a power of two for a relocatable kernel: %w",
			offKernelAlignment, h.KernelAlignment, ErrNotBzImage)
	}

	release, err := readKernelRelease(r, h.KernelVersion, setupSize)
	if err != nil {
		return nil, err
	}
	return &Image{
		Header:          h,
		SetupSize:       setupSize,
		ProtectedOffset: setupSize,
		ProtectedSize:   protSize,
		KernelRelease:   release,
	}, nil
}

// readKernelRelease returns the string that the kernel_version field ptr
// points to, read from at most maxKernelRelease bytes inside the setup. A
// missing or malformed string gives "", since it is informational only;
// only a failing reader gives an error.
func readKernelRelease(r io.ReaderAt, ptr uint16, setupSize int64) (string, error) {
	// "a pointer to a NUL-terminated human-readable kernel version number
	// string, less 0x200 ... should be less than (0x200*setup_sects)".
	off := int64(ptr) + 0x200
	if ptr == 0 || off >= setupSize {
		return "", nil
	}
	var buf [maxKernelRelease]byte
	b := buf[:min(int64(len(buf)), setupSize-off)]
	if err := readFull(r, b, off); err != nil {
		return "", fmt.Errorf("bzimage: reading kernel version string at %#x: %w", off, err)
	}
	for i, c := range b {
		switch {
		case c == 0:
			return string(b[:i]), nil
		case c < 0x20 || c > 0x7e:
			return "", nil
		}
	}
	return "", nil
}

// readFull fills b from r at off, turning a short read into
// io.ErrUnexpectedEOF. Per the io.ReaderAt contract, a full read may come
// with io.EOF, which is not an error here.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}
