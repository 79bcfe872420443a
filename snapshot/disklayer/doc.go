// Package disklayer implements layered virtual disks at block granularity:
// a read-only base image, a chain of sealed layers, and one writable top
// per running box.
//
// # Layer files
//
// A layer file is sparse and written in place. Version 1:
//
//	[0, 4096)                          header (see header.go), CRC-32C protected
//	[4096, 4096+roundup(size, 4096))   block b of the virtual disk at 4096+b*4096
//	[indexOffset, +extents*16)         index of the blocks present, sealed layers only
//
// While a layer is a box's top, the blocks it holds are tracked in memory
// only: after a host failure a box restores from its last completed
// checkpoint, so an unsealed top is never read again. Sealing fsyncs the
// data, appends the index (explicit presence: never inferred from holes or
// zeros), writes the header with the index and data checksums, fsyncs and
// makes the file read-only. Nothing is copied: the top becomes the layer.
//
// # Disks
//
//	d, err := disklayer.Open(disklayer.Layout{Base: "rootfs.img", Layers: sealed}, "box1.top")
//	// d is the virtio-blk back end: ReadAt, WriteAt, Sync, Size.
//	info, err := d.Seal("box1.top2") // checkpoint: the top becomes a sealed layer, a new top opens
//
// A fork seals the parent's top and opens the child over the same chain:
//
//	info, _ := parent.Seal(parentNewTop)
//	child, _ := disklayer.Open(disklayer.Layout{Base: base, Layers: append(sealed, info.Path)}, childTop)
//
// Parent and child then write to their own tops and never see each other's
// writes.
//
// A disk may be larger than its base (Layout.Size): the blocks past the
// base's end read as zeros, and a whole block of zeros written where
// nothing holds it is not stored, so that a guest file system grown into
// that space (whose new inode tables it zeroes) costs the host only what
// the guest writes of data. Compact merges a chain of sealed layers into one new layer file
// without modifying the old ones.
package disklayer
