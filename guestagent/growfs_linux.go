//go:build linux

package guestagent

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ioctl numbers of the root's growth.
const (
	// ext4IocResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64)
	// (<linux/ext4.h>): grow the mounted ext4 file system that the fd
	// is on to the block count its argument points at. Part of ext4
	// itself (fs/ext4/resize.c): no kernel option of its own.
	ext4IocResizeFS = 0x40086610
	// blkGetSize64 is BLKGETSIZE64, _IOR(0x12, 114, size_t)
	// (<linux/fs.h>): a block device's size in bytes.
	blkGetSize64 = unix.BLKGETSIZE64
)

// growRootFS grows the ext4 file system of spec, mounted read-write at
// dir, to fill its device, when the device is larger: a box made with a
// disk larger than its image. It logs what it did. A failure is logged
// and otherwise ignored: the box runs on its file system as it was.
func growRootFS(log *slog.Logger, spec rootSpec, dir string) {
	if spec.FSType != "ext4" || spec.Flags&msRdonly != 0 {
		return
	}
	start := time.Now()
	from, to, err := growExt4(spec.Device, dir)
	switch {
	case err != nil:
		log.Error("agent: box root: grow the file system to its disk: "+err.Error()+" (the box runs on the file system as it was)", "device", spec.Device)
	case to > from:
		log.Info("agent: box root: file system grown to fill its disk", "device", spec.Device,
			"from_bytes", from, "to_bytes", to, "took", time.Since(start).Round(time.Millisecond))
	}
}

// growExt4 grows the ext4 file system on dev, mounted at dir, to the
// whole blocks of dev if it has fewer, online (EXT4_IOC_RESIZE_FS), and
// returns its size before and after in bytes.
func growExt4(dev, dir string) (from, to uint64, err error) {
	d, err := os.Open(dev)
	if err != nil {
		return 0, 0, err
	}
	defer d.Close()
	buf := make([]byte, 8)
	if err := ioctlBytes(int(d.Fd()), blkGetSize64, buf); err != nil {
		return 0, 0, fmt.Errorf("size of %s (BLKGETSIZE64): %w", dev, err)
	}
	devBytes := binary.NativeEndian.Uint64(buf)
	// The block device's page cache holds the mounted file system's
	// superblock as ext4 last changed it, so this read is current.
	sb, err := readExt4Super(d)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", dev, err)
	}
	blocks, grow := growTarget(sb, devBytes)
	if !grow {
		return sb.Bytes(), sb.Bytes(), nil
	}
	mnt, err := os.Open(dir)
	if err != nil {
		return sb.Bytes(), sb.Bytes(), err
	}
	defer mnt.Close()
	binary.NativeEndian.PutUint64(buf, blocks)
	if err := ioctlBytes(int(mnt.Fd()), ext4IocResizeFS, buf); err != nil {
		return sb.Bytes(), sb.Bytes(), fmt.Errorf("EXT4_IOC_RESIZE_FS from %d to %d blocks of %d bytes (a %d-byte %s): %w",
			sb.Blocks, blocks, sb.BlockSize, devBytes, dev, err)
	}
	return sb.Bytes(), blocks * sb.BlockSize, nil
}
