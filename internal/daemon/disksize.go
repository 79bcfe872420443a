package daemon

import (
	"fmt"
	"os"

	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Limits on a create request's disk_size_bytes.
const (
	// MaxDiskSizeBytes bounds a box's disk: 1 TiB. The host pays only
	// for what a box writes, but the guest's file system metadata grows
	// with the disk (its group descriptors in guest memory, its inode
	// tables written as the guest initialises them).
	MaxDiskSizeBytes = 1 << 40
	// DiskSizeAlign is what a disk size is rounded up to: the block size
	// of the images' ext4 file systems and of the disk layers, so that
	// the file system can use the whole disk and no layer ends in a part
	// block.
	DiskSizeAlign = 4096
)

// diskSize checks a create request's disk_size_bytes against spec, whose
// image is resolved, and returns the size to record: zero (the image's
// own) or the request's rounded up to DiskSizeAlign. A size is for a
// root image only (the guest grows the root file system, and nothing
// else, to fill its disk), and at least the image's size: a disk never
// cuts its image short.
func diskSize(spec catalog.Spec, size int64) (int64, error) {
	switch {
	case size == 0:
		return 0, nil
	case size < 0:
		return 0, fmt.Errorf("%w: disk_size_bytes %d is negative", ErrInvalidArgument, size)
	case size > MaxDiskSizeBytes:
		return 0, fmt.Errorf("%w: disk_size_bytes %d is above the maximum of %d (1 TiB)", ErrInvalidArgument, size, int64(MaxDiskSizeBytes))
	case spec.Image == "":
		return 0, fmt.Errorf("%w: disk_size_bytes needs an image: the box has no disk", ErrInvalidArgument)
	case spec.Root == nil:
		return 0, fmt.Errorf("%w: disk_size_bytes needs an image that is a root file system (an OCI or Docker image, or a disk with an image record): only a box's root is grown to its disk", ErrInvalidArgument)
	}
	size = (size + DiskSizeAlign - 1) / DiskSizeAlign * DiskSizeAlign
	fi, err := os.Stat(spec.Image)
	if err != nil {
		return 0, fmt.Errorf("disk size: image: %w", err)
	}
	if size < fi.Size() {
		return 0, fmt.Errorf("%w: disk_size_bytes %d is smaller than the image's %d bytes (%d MiB): a disk holds at least its image",
			ErrInvalidArgument, size, fi.Size(), (fi.Size()+1<<20-1)>>20)
	}
	return size, nil
}
