package kernel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

var le = binary.LittleEndian

// The synthetic image: 8 sectors of real-mode code (as Linux 6.1 lays it
// out) followed by a small protected-mode kernel. Offsets below are written
// as literals, independently of the constants in bzimage.go, so that a
// wrong constant there fails a test here.
const (
	testSetupSects  = 7
	testSetupSize   = (testSetupSects + 1) * 512
	testProtSize    = 0x1000
	testRelease     = "6.1.0-test (sailbox@sailbox) #1 SMP"
	testVersionPtr  = 0x0400 // kernel_version: string at file offset 0x600
	testPayloadOff  = 0x100
	testPayloadSize = 0xe00
)

// testImage returns a minimal valid bzImage with protocol 2.15 and every
// header field set to a distinct value. Tests mutate one thing at a time.
func testImage() []byte {
	b := make([]byte, testSetupSize+testProtSize)
	b[0x1f1] = testSetupSects
	le.PutUint16(b[0x1f2:], 1)               // root_flags
	le.PutUint32(b[0x1f4:], testProtSize/16) // syssize
	le.PutUint16(b[0x1fa:], 0xffff)          // vid_mode: NORMAL_VGA
	le.PutUint16(b[0x1fe:], 0xaa55)          // boot_flag
	b[0x200], b[0x201] = 0xeb, 0x6a          // jump to 0x26c
	copy(b[0x202:], "HdrS")                  // header
	le.PutUint16(b[0x206:], 0x020f)          // version 2.15
	le.PutUint16(b[0x20e:], testVersionPtr)  // kernel_version
	b[0x211] = 0x01                          // loadflags: LOADED_HIGH
	le.PutUint32(b[0x214:], 0x100000)        // code32_start
	le.PutUint32(b[0x218:], 0x11)            // ramdisk_image
	le.PutUint32(b[0x21c:], 0x22)            // ramdisk_size
	le.PutUint16(b[0x224:], 0x5be0)          // heap_end_ptr
	le.PutUint32(b[0x228:], 0x33)            // cmd_line_ptr
	le.PutUint32(b[0x22c:], 0x7fffffff)      // initrd_addr_max
	le.PutUint32(b[0x230:], 0x200000)        // kernel_alignment
	b[0x234] = 1                             // relocatable_kernel
	b[0x235] = 21                            // min_alignment
	le.PutUint16(b[0x236:], 0x0003)          // xloadflags: KERNEL_64 | CAN_BE_LOADED_ABOVE_4G
	le.PutUint32(b[0x238:], 2047)            // cmdline_size
	le.PutUint32(b[0x248:], testPayloadOff)  // payload_offset
	le.PutUint32(b[0x24c:], testPayloadSize) // payload_length
	le.PutUint64(b[0x258:], 0x1000000)       // pref_address
	le.PutUint32(b[0x260:], 0x2000000)       // init_size
	le.PutUint32(b[0x264:], 0x190)           // handover_offset
	le.PutUint32(b[0x268:], 0x44)            // kernel_info_offset
	copy(b[testVersionPtr+0x200:], testRelease+"\x00")
	return b
}

// wantHeader is the header testImage describes.
var wantHeader = SetupHeader{
	SetupSects:        testSetupSects,
	RootFlags:         1,
	SysSize:           testProtSize / 16,
	VidMode:           0xffff,
	BootFlag:          0xaa55,
	Jump:              0x6aeb,
	Header:            0x53726448,
	Version:           0x020f,
	KernelVersion:     testVersionPtr,
	LoadFlags:         0x01,
	Code32Start:       0x100000,
	RamdiskImage:      0x11,
	RamdiskSize:       0x22,
	HeapEndPtr:        0x5be0,
	CmdLinePtr:        0x33,
	InitrdAddrMax:     0x7fffffff,
	KernelAlignment:   0x200000,
	RelocatableKernel: 1,
	MinAlignment:      21,
	XLoadFlags:        0x0003,
	CmdlineSize:       2047,
	PayloadOffset:     testPayloadOff,
	PayloadLength:     testPayloadSize,
	PrefAddress:       0x1000000,
	InitSize:          0x2000000,
	HandoverOffset:    0x190,
	KernelInfoOffset:  0x44,
}

func parseBytes(b []byte) (*Image, error) {
	return ParseBzImage(bytes.NewReader(b), int64(len(b)))
}

func TestParseBzImage(t *testing.T) {
	img, err := parseBytes(testImage())
	if err != nil {
		t.Fatalf("ParseBzImage: %v", err)
	}
	want := Image{
		Header:          wantHeader,
		SetupSize:       testSetupSize,
		ProtectedOffset: testSetupSize,
		ProtectedSize:   testProtSize,
		KernelRelease:   testRelease,
	}
	if *img != want {
		t.Errorf("ParseBzImage =\n%+v\nwant\n%+v", *img, want)
	}
	h := img.Header
	if got := h.VersionString(); got != "2.15" {
		t.Errorf("VersionString() = %q, want 2.15", got)
	}
	if !h.LoadedHigh() || !h.Supports64BitEntry() || !h.Relocatable() {
		t.Errorf("LoadedHigh, Supports64BitEntry, Relocatable = %v, %v, %v; want all true",
			h.LoadedHigh(), h.Supports64BitEntry(), h.Relocatable())
	}
}

// TestParseBzImageAccepts covers valid variations of testImage.
func TestParseBzImageAccepts(t *testing.T) {
	// laterFields are the fields that protocols before 2.15 lack, set to
	// garbage that would fail validation if ParseBzImage read it.
	laterFields := func(b []byte) {
		le.PutUint32(b[0x248:], 0xffffffff) // payload_offset
		le.PutUint32(b[0x24c:], 0xffffffff) // payload_length
		b[0x235] = 0xee                     // min_alignment
		le.PutUint16(b[0x236:], 0xffff)     // xloadflags
		le.PutUint64(b[0x258:], 0xeeee)     // pref_address
		le.PutUint32(b[0x260:], 0xeeee)     // init_size
		le.PutUint32(b[0x264:], 0xeeee)     // handover_offset
		le.PutUint32(b[0x268:], 0xeeee)     // kernel_info_offset
	}
	tests := []struct {
		name   string
		mutate func([]byte) []byte
		want   func(*Image) // edits the expected Image, starting from testImage's
	}{{
		name:   "setup_sects 0 means 4",
		mutate: func(b []byte) []byte { b[0x1f1] = 0; return b },
		want: func(w *Image) {
			w.Header.SetupSects = 0
			w.SetupSize, w.ProtectedOffset = 2560, 2560
			w.ProtectedSize = testSetupSize + testProtSize - 2560
		},
	}, {
		name: "setup_sects 63, the 32 KiB maximum",
		mutate: func(b []byte) []byte {
			b[0x1f1] = 63
			return append(b, make([]byte, 32768-testSetupSize)...)
		},
		want: func(w *Image) {
			w.Header.SetupSects = 63
			w.SetupSize, w.ProtectedOffset = 32768, 32768
		},
	}, {
		name:   "trailing bytes beyond syssize (signature)",
		mutate: func(b []byte) []byte { return append(b, make([]byte, 1472)...) },
		want:   func(w *Image) { w.ProtectedSize += 1472 },
	}, {
		name: "payload ends at the end of the protected-mode kernel",
		mutate: func(b []byte) []byte {
			le.PutUint32(b[0x24c:], testProtSize-testPayloadOff)
			return b
		},
		want: func(w *Image) { w.Header.PayloadLength = testProtSize - testPayloadOff },
	}, {
		name: "not relocatable, no alignment",
		mutate: func(b []byte) []byte {
			b[0x234] = 0
			le.PutUint32(b[0x230:], 0)
			return b
		},
		want: func(w *Image) { w.Header.RelocatableKernel, w.Header.KernelAlignment = 0, 0 },
	}, {
		name:   "no 64-bit entry point",
		mutate: func(b []byte) []byte { le.PutUint16(b[0x236:], 0); return b },
		want:   func(w *Image) { w.Header.XLoadFlags = 0 },
	}, {
		name:   "future protocol 3.00 reads every field",
		mutate: func(b []byte) []byte { le.PutUint16(b[0x206:], 0x0300); return b },
		want:   func(w *Image) { w.Header.Version = 0x0300 },
	}, {
		name: "protocol 2.06 ignores fields from 2.07 on",
		mutate: func(b []byte) []byte {
			laterFields(b)
			le.PutUint16(b[0x206:], 0x0206)
			return b
		},
		want: func(w *Image) {
			h := &w.Header
			h.Version = 0x0206
			h.PayloadOffset, h.PayloadLength, h.MinAlignment, h.XLoadFlags = 0, 0, 0, 0
			h.PrefAddress, h.InitSize, h.HandoverOffset, h.KernelInfoOffset = 0, 0, 0, 0
		},
	}, {
		name: "protocol 2.08 adds the payload",
		mutate: func(b []byte) []byte {
			laterFields(b)
			le.PutUint32(b[0x248:], 7)
			le.PutUint32(b[0x24c:], 9)
			le.PutUint16(b[0x206:], 0x0208)
			return b
		},
		want: func(w *Image) {
			h := &w.Header
			h.Version = 0x0208
			h.PayloadOffset, h.PayloadLength, h.MinAlignment, h.XLoadFlags = 7, 9, 0, 0
			h.PrefAddress, h.InitSize, h.HandoverOffset, h.KernelInfoOffset = 0, 0, 0, 0
		},
	}, {
		name: "protocol 2.10 adds min_alignment, pref_address, init_size",
		mutate: func(b []byte) []byte {
			laterFields(b)
			le.PutUint32(b[0x248:], 7)
			le.PutUint32(b[0x24c:], 9)
			le.PutUint16(b[0x206:], 0x020a)
			return b
		},
		want: func(w *Image) {
			h := &w.Header
			h.Version = 0x020a
			h.PayloadOffset, h.PayloadLength, h.MinAlignment, h.XLoadFlags = 7, 9, 0xee, 0
			h.PrefAddress, h.InitSize, h.HandoverOffset, h.KernelInfoOffset = 0xeeee, 0xeeee, 0, 0
		},
	}, {
		name: "protocol 2.12 adds handover_offset (2.11) and xloadflags",
		mutate: func(b []byte) []byte {
			laterFields(b)
			le.PutUint32(b[0x248:], 7)
			le.PutUint32(b[0x24c:], 9)
			le.PutUint16(b[0x236:], 0x0001)
			le.PutUint16(b[0x206:], 0x020c)
			return b
		},
		want: func(w *Image) {
			h := &w.Header
			h.Version = 0x020c
			h.PayloadOffset, h.PayloadLength, h.MinAlignment, h.XLoadFlags = 7, 9, 0xee, 0x0001
			h.PrefAddress, h.InitSize, h.HandoverOffset, h.KernelInfoOffset = 0xeeee, 0xeeee, 0xeeee, 0
		},
	}, {
		name:   "no kernel version string",
		mutate: func(b []byte) []byte { le.PutUint16(b[0x20e:], 0); return b },
		want:   func(w *Image) { w.Header.KernelVersion, w.KernelRelease = 0, "" },
	}, {
		name:   "kernel version string outside the setup is ignored",
		mutate: func(b []byte) []byte { le.PutUint16(b[0x20e:], testSetupSize-0x200); return b },
		want:   func(w *Image) { w.Header.KernelVersion, w.KernelRelease = testSetupSize-0x200, "" },
	}, {
		name: "unterminated kernel version string at the end of the setup is ignored",
		mutate: func(b []byte) []byte {
			copy(b[testSetupSize-2:], "ab")
			le.PutUint16(b[0x20e:], testSetupSize-2-0x200)
			return b
		},
		want: func(w *Image) { w.Header.KernelVersion, w.KernelRelease = testSetupSize-2-0x200, "" },
	}, {
		name: "kernel version string longer than 256 bytes is ignored",
		mutate: func(b []byte) []byte {
			copy(b[0x600:], strings.Repeat("x", 300)+"\x00")
			return b
		},
		want: func(w *Image) { w.KernelRelease = "" },
	}, {
		name: "non-printable kernel version string is ignored",
		mutate: func(b []byte) []byte {
			b[0x601] = '\n'
			return b
		},
		want: func(w *Image) { w.KernelRelease = "" },
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.mutate(testImage())
			img, err := parseBytes(b)
			if err != nil {
				t.Fatalf("ParseBzImage: %v", err)
			}
			want := Image{
				Header:          wantHeader,
				SetupSize:       testSetupSize,
				ProtectedOffset: testSetupSize,
				ProtectedSize:   testProtSize,
				KernelRelease:   testRelease,
			}
			tt.want(&want)
			if *img != want {
				t.Errorf("ParseBzImage =\n%+v\nwant\n%+v", *img, want)
			}
			checkInvariants(t, img, int64(len(b)))
		})
	}
}

// TestParseBzImageRejects covers each validation: one mutation of
// testImage per case, the sentinel it must wrap and the words that must
// name the problem.
func TestParseBzImageRejects(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func([]byte) []byte
		wantErr error
		wantMsg []string
	}{{
		name:    "boot flag",
		mutate:  func(b []byte) []byte { le.PutUint16(b[0x1fe:], 0x55aa); return b },
		wantErr: ErrNotBzImage,
		wantMsg: []string{"boot flag at 0x1fe is 0x55aa, want 0xaa55"},
	}, {
		name:    "header magic",
		mutate:  func(b []byte) []byte { copy(b[0x202:], "HdrZ"); return b },
		wantErr: ErrNotBzImage,
		wantMsg: []string{`header magic at 0x202 is "HdrZ", want "HdrS"`},
	}, {
		name:    "protocol 2.05",
		mutate:  func(b []byte) []byte { le.PutUint16(b[0x206:], 0x0205); return b },
		wantErr: ErrUnsupportedBootProtocol,
		wantMsg: []string{"boot protocol version at 0x206 is 2.05, want at least 2.06"},
	}, {
		name:    "protocol 2.00",
		mutate:  func(b []byte) []byte { le.PutUint16(b[0x206:], 0x0200); return b },
		wantErr: ErrUnsupportedBootProtocol,
		wantMsg: []string{"version at 0x206 is 2.00"},
	}, {
		name:    "protocol 1.255",
		mutate:  func(b []byte) []byte { le.PutUint16(b[0x206:], 0x01ff); return b },
		wantErr: ErrUnsupportedBootProtocol,
		wantMsg: []string{"version at 0x206 is 1.255"},
	}, {
		name:    "LOADED_HIGH clear",
		mutate:  func(b []byte) []byte { b[0x211] = 0x80; return b },
		wantErr: ErrNotBzImage,
		wantMsg: []string{"loadflags at 0x211 is 0x80", "LOADED_HIGH"},
	}, {
		name:    "setup_sects 64",
		mutate:  func(b []byte) []byte { b[0x1f1] = 64; return append(b, make([]byte, 65*512)...) },
		wantErr: ErrNotBzImage,
		wantMsg: []string{"setup_sects at 0x1f1 is 64, want at most 63"},
	}, {
		name:    "setup_sects 255",
		mutate:  func(b []byte) []byte { b[0x1f1] = 255; return b },
		wantErr: ErrNotBzImage,
		wantMsg: []string{"setup_sects at 0x1f1 is 255, want at most 63"},
	}, {
		name:    "setup past end of file",
		mutate:  func(b []byte) []byte { b[0x1f1] = 63; return b },
		wantErr: ErrNotBzImage,
		wantMsg: []string{"setup_sects at 0x1f1 is 63", "32768 bytes, past the end of the 8192-byte file"},
	}, {
		name:    "no protected-mode kernel",
		mutate:  func(b []byte) []byte { return b[:testSetupSize] },
		wantErr: ErrNotBzImage,
		wantMsg: []string{"no protected-mode kernel"},
	}, {
		name: "syssize past end of file",
		mutate: func(b []byte) []byte {
			le.PutUint32(b[0x1f4:], testProtSize/16+1)
			return b
		},
		wantErr: ErrNotBzImage,
		wantMsg: []string{"syssize at 0x1f4 is 0x101 paragraphs (4112 bytes)", "only 4096 bytes"},
	}, {
		name:    "payload offset past protected-mode kernel",
		mutate:  func(b []byte) []byte { le.PutUint32(b[0x248:], testProtSize); return b },
		wantErr: ErrNotBzImage,
		wantMsg: []string{"payload at 0x248/0x24c (offset 0x1000, length 0xe00)", "4096-byte protected-mode kernel"},
	}, {
		name:    "payload length past protected-mode kernel",
		mutate:  func(b []byte) []byte { le.PutUint32(b[0x24c:], testProtSize-testPayloadOff+1); return b },
		wantErr: ErrNotBzImage,
		wantMsg: []string{"payload at 0x248/0x24c", "ends at 0x1001"},
	}, {
		name: "payload offset+length overflows 32 bits",
		mutate: func(b []byte) []byte {
			le.PutUint32(b[0x248:], 0xffffffff)
			le.PutUint32(b[0x24c:], 0x2)
			return b
		},
		wantErr: ErrNotBzImage,
		wantMsg: []string{"payload at 0x248/0x24c", "ends at 0x100000001"},
	}, {
		name: "64-bit entry point past protected-mode kernel",
		mutate: func(b []byte) []byte {
			le.PutUint32(b[0x1f4:], 0)
			le.PutUint32(b[0x248:], 0)
			le.PutUint32(b[0x24c:], 0)
			return b[:testSetupSize+0x200]
		},
		wantErr: ErrNotBzImage,
		wantMsg: []string{"xloadflags at 0x236 is 0x3", "64-bit entry point at 0x200", "only 512 bytes"},
	}, {
		name:    "relocatable with kernel_alignment not a power of two",
		mutate:  func(b []byte) []byte { le.PutUint32(b[0x230:], 0x300000); return b },
		wantErr: ErrNotBzImage,
		wantMsg: []string{"kernel_alignment at 0x230 is 0x300000, want a power of two"},
	}, {
		name:    "relocatable with kernel_alignment 0",
		mutate:  func(b []byte) []byte { le.PutUint32(b[0x230:], 0); return b },
		wantErr: ErrNotBzImage,
		wantMsg: []string{"kernel_alignment at 0x230 is 0x0"},
	}, {
		name:    "file smaller than the header",
		mutate:  func(b []byte) []byte { return b[:0x26b] },
		wantErr: ErrNotBzImage,
		wantMsg: []string{"file is 619 bytes, too small for the setup header ending at 0x26c"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := parseBytes(tt.mutate(testImage()))
			if err == nil {
				t.Fatalf("ParseBzImage = %+v, want error", img)
			}
			if img != nil {
				t.Errorf("ParseBzImage returned an Image with error %v", err)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("ParseBzImage error %q does not wrap %q", err, tt.wantErr)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "bzimage: ") {
				t.Errorf("error %q lacks the bzimage: prefix", msg)
			}
			for _, w := range tt.wantMsg {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

// TestParseBzImageTruncated cuts testImage at every length short of the
// whole file: each prefix must be rejected, since syssize covers the whole
// protected-mode kernel.
func TestParseBzImageTruncated(t *testing.T) {
	b := testImage()
	for n := 0; n < len(b); n++ {
		img, err := parseBytes(b[:n])
		if err == nil {
			t.Fatalf("ParseBzImage(first %d bytes) = %+v, want error", n, img)
		}
		if !errors.Is(err, ErrNotBzImage) {
			t.Fatalf("ParseBzImage(first %d bytes) = %v, want ErrNotBzImage", n, err)
		}
	}
}

// TestParseBzImageShortReader declares more bytes than the reader holds.
func TestParseBzImageShortReader(t *testing.T) {
	b := testImage()
	// Cut in the header, and cut after the header but before the kernel
	// version string at 0x600.
	for _, n := range []int{0, 0x1f0, 0x26b, 0x26c, 0x5ff, 0x601} {
		_, err := ParseBzImage(bytes.NewReader(b[:n]), int64(len(b)))
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("reader of %d bytes, size %d: err = %v, want io.ErrUnexpectedEOF", n, len(b), err)
		}
	}
}

type errReaderAt struct{ err error }

func (r errReaderAt) ReadAt([]byte, int64) (int, error) { return 0, r.err }

func TestParseBzImageReaderError(t *testing.T) {
	boom := errors.New("boom")
	_, err := ParseBzImage(errReaderAt{boom}, 1<<20)
	if !errors.Is(err, boom) {
		t.Errorf("err = %v, want it to wrap %v", err, boom)
	}
	if errors.Is(err, ErrNotBzImage) {
		t.Errorf("err = %v: an I/O error must not claim ErrNotBzImage", err)
	}
}

func TestParseBzImageNegativeSize(t *testing.T) {
	if img, err := ParseBzImage(bytes.NewReader(testImage()), -1); err == nil {
		t.Errorf("ParseBzImage(size -1) = %+v, want error", img)
	}
}

// paddedReaderAt reads as data followed by zeros up to size.
type paddedReaderAt struct {
	data    []byte
	size    int64
	maxRead int // largest len(p) asked for
}

func (r *paddedReaderAt) ReadAt(p []byte, off int64) (int, error) {
	r.maxRead = max(r.maxRead, len(p))
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= r.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), r.size-off))
	clear(p[:n])
	if off < int64(len(r.data)) {
		copy(p[:n], r.data[off:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// TestParseBzImageBoundedReads parses an image that declares a huge size:
// ParseBzImage must read only small fixed-size pieces and allocate a
// fixed, small number of objects.
func TestParseBzImageBoundedReads(t *testing.T) {
	b := testImage()[:testSetupSize]
	le.PutUint32(b[0x1f4:], 0xffffffff) // syssize: 64 GiB
	r := &paddedReaderAt{data: b, size: 1 << 50}
	img, err := ParseBzImage(r, r.size)
	if err != nil {
		t.Fatalf("ParseBzImage: %v", err)
	}
	if img.ProtectedSize != r.size-testSetupSize {
		t.Errorf("ProtectedSize = %d, want %d", img.ProtectedSize, r.size-testSetupSize)
	}
	if r.maxRead > 0x26c {
		t.Errorf("ParseBzImage read %d bytes at once, want at most the 0x26c-byte header", r.maxRead)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := ParseBzImage(r, r.size); err != nil {
			t.Fatal(err)
		}
	})
	// The Image, the release string and the two read buffers, which escape
	// through the io.ReaderAt interface.
	if allocs > 4 {
		t.Errorf("ParseBzImage made %v allocations, want at most 4", allocs)
	}
}

func TestVersionString(t *testing.T) {
	for _, tt := range []struct {
		v    uint16
		want string
	}{{0x0206, "2.06"}, {0x020a, "2.10"}, {0x020f, "2.15"}, {0x0a11, "10.17"}} {
		if got := (SetupHeader{Version: tt.v}).VersionString(); got != tt.want {
			t.Errorf("VersionString(%#04x) = %q, want %q", tt.v, got, tt.want)
		}
	}
}

func TestFlagHelpers(t *testing.T) {
	var h SetupHeader
	if h.LoadedHigh() || h.Supports64BitEntry() || h.Relocatable() {
		t.Errorf("zero header: LoadedHigh, Supports64BitEntry, Relocatable = %v, %v, %v; want all false",
			h.LoadedHigh(), h.Supports64BitEntry(), h.Relocatable())
	}
	// Other bits must not count: CAN_USE_HEAP, XLF_CAN_BE_LOADED_ABOVE_4G.
	h = SetupHeader{LoadFlags: 0x80, XLoadFlags: 0x02}
	if h.LoadedHigh() || h.Supports64BitEntry() {
		t.Errorf("other bits: LoadedHigh, Supports64BitEntry = %v, %v; want false", h.LoadedHigh(), h.Supports64BitEntry())
	}
	h = SetupHeader{LoadFlags: 0x01, XLoadFlags: 0x01, RelocatableKernel: 1}
	if !h.LoadedHigh() || !h.Supports64BitEntry() || !h.Relocatable() {
		t.Errorf("bits set: LoadedHigh, Supports64BitEntry, Relocatable = %v, %v, %v; want all true",
			h.LoadedHigh(), h.Supports64BitEntry(), h.Relocatable())
	}
}

// checkInvariants checks what ParseBzImage promises about a returned Image
// of a size-byte file.
func checkInvariants(t *testing.T, img *Image, size int64) {
	t.Helper()
	h := img.Header
	if img.SetupSize+img.ProtectedSize != size {
		t.Errorf("SetupSize %d + ProtectedSize %d != size %d", img.SetupSize, img.ProtectedSize, size)
	}
	if img.ProtectedOffset != img.SetupSize {
		t.Errorf("ProtectedOffset %d != SetupSize %d", img.ProtectedOffset, img.SetupSize)
	}
	if img.SetupSize%512 != 0 || img.SetupSize < 1024 || img.SetupSize > 32768 {
		t.Errorf("SetupSize %d: want a multiple of 512 in [1024, 32768]", img.SetupSize)
	}
	sects := int64(h.SetupSects)
	if sects == 0 {
		sects = 4
	}
	if img.SetupSize != (sects+1)*512 {
		t.Errorf("SetupSize %d does not match setup_sects %d", img.SetupSize, h.SetupSects)
	}
	if img.ProtectedSize <= 0 {
		t.Errorf("ProtectedSize %d, want > 0", img.ProtectedSize)
	}
	if h.BootFlag != 0xaa55 || h.Header != 0x53726448 || h.Version < 0x0206 || !h.LoadedHigh() {
		t.Errorf("header passed validation but is invalid: %+v", h)
	}
	if int64(h.SysSize)*16 > img.ProtectedSize {
		t.Errorf("syssize %#x exceeds ProtectedSize %d", h.SysSize, img.ProtectedSize)
	}
	if int64(h.PayloadOffset)+int64(h.PayloadLength) > img.ProtectedSize {
		t.Errorf("payload %#x+%#x exceeds ProtectedSize %d", h.PayloadOffset, h.PayloadLength, img.ProtectedSize)
	}
	if h.Supports64BitEntry() && img.ProtectedSize <= 0x200 {
		t.Errorf("64-bit entry at 0x200 outside ProtectedSize %d", img.ProtectedSize)
	}
	if h.Relocatable() && (h.KernelAlignment == 0 || h.KernelAlignment&(h.KernelAlignment-1) != 0) {
		t.Errorf("relocatable with kernel_alignment %#x", h.KernelAlignment)
	}
	if len(img.KernelRelease) > 255 {
		t.Errorf("KernelRelease is %d bytes, want < 256", len(img.KernelRelease))
	}
}

// FuzzParseBzImage parses data followed by tail zero bytes. ParseBzImage
// must not panic, must explain every rejection with a sentinel, and every
// Image it returns must satisfy the documented invariants and agree with
// the bytes it came from.
func FuzzParseBzImage(f *testing.F) {
	b := testImage()
	f.Add(b[:0x26c], uint32(len(b)-0x26c))
	f.Fuzz(func(t *testing.T, data []byte, tail uint32) {
		r := &paddedReaderAt{data: data, size: int64(len(data)) + int64(tail)}
		img, err := ParseBzImage(r, r.size)
		if r.maxRead > 0x26c {
			t.Errorf("ParseBzImage read %d bytes at once", r.maxRead)
		}
		if err != nil {
			if img != nil {
				t.Errorf("ParseBzImage returned an Image with error %v", err)
			}
			if !errors.Is(err, ErrNotBzImage) && !errors.Is(err, ErrUnsupportedBootProtocol) {
				t.Errorf("error %q wraps no sentinel", err)
			}
			return
		}
		checkInvariants(t, img, r.size)
		// Spot-check the decoding against the input.
		var hdr [0x26c]byte
		r.ReadAt(hdr[:], 0)
		if h := img.Header; h.SetupSects != hdr[0x1f1] || h.SysSize != le.Uint32(hdr[0x1f4:]) ||
			h.Version != le.Uint16(hdr[0x206:]) || h.CmdlineSize != le.Uint32(hdr[0x238:]) {
			t.Errorf("header %+v does not match its bytes", h)
		}
	})
}

// TestGuestKernelImage checks the bzImage that kernel/build.sh produced,
// named by SAILBOX_GUEST_KERNEL, against what the VMM relies on.
func TestGuestKernelImage(t *testing.T) {
	path := kvmtest.Artifact(t, "SAILBOX_GUEST_KERNEL")
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	img, err := ParseBzImage(f, fi.Size())
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	h := img.Header
	t.Logf("%s: boot protocol %s, setup %d bytes, protected-mode kernel %d bytes, init_size %#x, pref_address %#x, cmdline_size %d, release %q",
		path, h.VersionString(), img.SetupSize, img.ProtectedSize, h.InitSize, h.PrefAddress, h.CmdlineSize, img.KernelRelease)

	if h.Version < 0x020c {
		t.Errorf("boot protocol %s, want at least 2.12 (xloadflags)", h.VersionString())
	}
	if !h.Supports64BitEntry() {
		t.Errorf("xloadflags %#x lacks XLF_KERNEL_64: no 64-bit entry point (is CONFIG_64BIT set?)", h.XLoadFlags)
	}
	// The guest kernel is deliberately not relocatable (no KASLR: a restored
	// or forked guest must find its kernel where it was). Loaded at 1 MiB, its
	// decompressor places the kernel at pref_address, so memory must cover that.
	if !h.Relocatable() && h.PrefAddress == 0 {
		t.Errorf("not relocatable and no pref_address: nowhere to run")
	}
	if !h.LoadedHigh() {
		t.Errorf("loadflags %#x lacks LOADED_HIGH", h.LoadFlags)
	}
	if img.ProtectedSize <= 0 {
		t.Errorf("ProtectedSize = %d, want > 0", img.ProtectedSize)
	}
	if h.CmdlineSize < 256 {
		t.Errorf("cmdline_size = %d, want at least 256", h.CmdlineSize)
	}
}
