package guestagent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Growing the box's root file system to its disk: a box created with a
// disk size of its own boots on a disk larger than its image's file
// system, and the agent grows the file system (ext4, online, while it is
// mounted) to fill the disk before it serves (see growRootFS). The size
// of the file system is read from its superblock; statfs's block count
// leaves out ext4's overhead and so cannot say whether it fills its disk.

// The ext4 superblock (struct ext4_super_block, fs/ext4/ext4.h): 1024
// bytes at byte 1024 of the device, little-endian. Only the fields below
// are read.
const (
	ext4SuperOffset     = 1024
	ext4SuperSize       = 1024
	ext4BlocksCountLo   = 0x04  // __le32 s_blocks_count_lo
	ext4LogBlockSize    = 0x18  // __le32 s_log_block_size: block size is 1024 << it
	ext4Magic           = 0x38  // __le16 s_magic
	ext4FeatureIncompat = 0x60  // __le32 s_feature_incompat
	ext4BlocksCountHi   = 0x150 // __le32 s_blocks_count_hi, with INCOMPAT_64BIT
	ext4SuperMagic      = 0xEF53
	ext4Incompat64Bit   = 0x80      // EXT4_FEATURE_INCOMPAT_64BIT
	ext4MaxLogBlockSize = 6         // 64 KiB blocks, the largest ext4 mounts
	ext4MaxBlocks32     = 1<<32 - 1 // blocks addressable without INCOMPAT_64BIT
)

// errNotExt4 is a superblock without ext4's magic number.
var errNotExt4 = errors.New("no ext4 superblock")

// ext4Super is what growRootFS reads of an ext4 superblock.
type ext4Super struct {
	BlockSize uint64 // bytes
	Blocks    uint64 // the file system's size in blocks
	Is64Bit   bool   // block numbers above 2^32 are possible
}

// Bytes is the file system's size.
func (s ext4Super) Bytes() uint64 { return s.Blocks * s.BlockSize }

// readExt4Super reads the superblock of the ext4 file system on dev.
func readExt4Super(dev io.ReaderAt) (ext4Super, error) {
	b := make([]byte, ext4SuperSize)
	if _, err := dev.ReadAt(b, ext4SuperOffset); err != nil {
		return ext4Super{}, fmt.Errorf("read ext4 superblock: %w", err)
	}
	return parseExt4Super(b)
}

// parseExt4Super decodes the fields of ext4Super from b, a superblock.
func parseExt4Super(b []byte) (ext4Super, error) {
	if len(b) < ext4SuperSize {
		return ext4Super{}, fmt.Errorf("ext4 superblock of %d bytes, want %d", len(b), ext4SuperSize)
	}
	le := binary.LittleEndian
	if m := le.Uint16(b[ext4Magic:]); m != ext4SuperMagic {
		return ext4Super{}, fmt.Errorf("%w (magic %#04x)", errNotExt4, m)
	}
	logBS := le.Uint32(b[ext4LogBlockSize:])
	if logBS > ext4MaxLogBlockSize {
		return ext4Super{}, fmt.Errorf("ext4 superblock: block size 1024 << %d out of range", logBS)
	}
	s := ext4Super{BlockSize: 1024 << logBS, Blocks: uint64(le.Uint32(b[ext4BlocksCountLo:]))}
	if le.Uint32(b[ext4FeatureIncompat:])&ext4Incompat64Bit != 0 {
		s.Is64Bit = true
		s.Blocks |= uint64(le.Uint32(b[ext4BlocksCountHi:])) << 32
	}
	if s.Blocks == 0 {
		return ext4Super{}, errors.New("ext4 superblock: no blocks")
	}
	return s, nil
}

// growTarget is the block count that an ext4 file system s grows to on a
// device of devBytes: the whole blocks of the device, as many as s can
// address. grow is false when s already fills the device (or exceeds it,
// which a shrink would not fix: ext4 cannot shrink online).
func growTarget(s ext4Super, devBytes uint64) (blocks uint64, grow bool) {
	blocks = devBytes / s.BlockSize
	if !s.Is64Bit {
		blocks = min(blocks, ext4MaxBlocks32)
	}
	return blocks, blocks > s.Blocks
}
