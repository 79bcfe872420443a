package guestagent

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// mkfsExt4 makes an ext4 file system of size bytes at path with mke2fs
// and the extra options, skipping the test without mke2fs.
func mkfsExt4(t *testing.T, path string, size int64, opts ...string) {
	t.Helper()
	mke2fs, err := exec.LookPath("mke2fs")
	if err != nil {
		t.Skip("mke2fs not found (e2fsprogs; build/deps.sh installs it)")
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-q", "-F", "-t", "ext4"}, opts...)
	if out, err := exec.Command(mke2fs, append(args, path)...).CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v\n%s", err, out)
	}
}

// The superblock's size is the file system's, whatever the file holding
// it: the image's, not its disk's.
func TestReadExt4Super(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		opts          []string
		size          int64
		blockSize     uint64
		is64          bool
		truncateAfter int64
	}{
		{[]string{"-b", "4096"}, 64 << 20, 4096, true, 256 << 20},
		{[]string{"-b", "1024", "-O", "^64bit"}, 16 << 20, 1024, false, 0},
	} {
		img := filepath.Join(dir, "fs.ext4")
		os.Remove(img)
		mkfsExt4(t, img, c.size, c.opts...)
		if c.truncateAfter != 0 {
			os.Truncate(img, c.truncateAfter) // a disk larger than its file system
		}
		f, err := os.Open(img)
		if err != nil {
			t.Fatal(err)
		}
		sb, err := readExt4Super(f)
		f.Close()
		if err != nil {
			t.Fatalf("mke2fs %v: %v", c.opts, err)
		}
		if sb.BlockSize != c.blockSize || sb.Bytes() != uint64(c.size) || sb.Is64Bit != c.is64 {
			t.Errorf("mke2fs %v of %d bytes: %+v (%d bytes)", c.opts, c.size, sb, sb.Bytes())
		}
	}
}

func TestParseExt4Super(t *testing.T) {
	le := binary.LittleEndian
	sb := func(logBS, lo, hi, incompat uint32, magic uint16) []byte {
		b := make([]byte, ext4SuperSize)
		le.PutUint32(b[ext4BlocksCountLo:], lo)
		le.PutUint32(b[ext4BlocksCountHi:], hi)
		le.PutUint32(b[ext4LogBlockSize:], logBS)
		le.PutUint32(b[ext4FeatureIncompat:], incompat)
		le.PutUint16(b[ext4Magic:], magic)
		return b
	}
	got, err := parseExt4Super(sb(2, 7, 1, ext4Incompat64Bit, ext4SuperMagic))
	if want := (ext4Super{BlockSize: 4096, Blocks: 1<<32 + 7, Is64Bit: true}); err != nil || got != want {
		t.Errorf("64-bit superblock: %+v, %v; want %+v", got, err, want)
	}
	// Without INCOMPAT_64BIT the high half is not a block count.
	if got, err := parseExt4Super(sb(0, 7, 1, 0, ext4SuperMagic)); err != nil || got.Blocks != 7 || got.BlockSize != 1024 {
		t.Errorf("32-bit superblock: %+v, %v", got, err)
	}
	if _, err := parseExt4Super(sb(2, 7, 0, 0, 0x1234)); !errors.Is(err, errNotExt4) {
		t.Errorf("bad magic: %v", err)
	}
	for name, b := range map[string][]byte{
		"block size":  sb(7, 7, 0, 0, ext4SuperMagic),
		"zero blocks": sb(2, 0, 0, 0, ext4SuperMagic),
		"short":       sb(2, 7, 0, 0, ext4SuperMagic)[:100],
	} {
		if _, err := parseExt4Super(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestGrowTarget(t *testing.T) {
	for _, c := range []struct {
		sb       ext4Super
		dev      uint64
		blocks   uint64
		wantGrow bool
	}{
		{ext4Super{BlockSize: 4096, Blocks: 1000, Is64Bit: true}, 2 << 30, 2 << 30 / 4096, true},
		{ext4Super{BlockSize: 4096, Blocks: 1000, Is64Bit: true}, 1000*4096 + 4095, 1000, false}, // a part block is no room
		{ext4Super{BlockSize: 4096, Blocks: 1000, Is64Bit: true}, 999 * 4096, 999, false},        // never shrink
		{ext4Super{BlockSize: 1024, Blocks: 1000}, 8 << 40, ext4MaxBlocks32, true},               // what 32 bits address
	} {
		blocks, grow := growTarget(c.sb, c.dev)
		if blocks != c.blocks || grow != c.wantGrow {
			t.Errorf("growTarget(%+v, %d) = %d, %v; want %d, %v", c.sb, c.dev, blocks, grow, c.blocks, c.wantGrow)
		}
	}
}
