package disklayer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
)

// ErrIncompatibleVersion and ErrCorrupt are the snapshot packages' shared
// sentinels (see package snapshot).
var (
	ErrIncompatibleVersion = format.ErrIncompatibleVersion
	ErrCorrupt             = format.ErrCorrupt
)

// Extent is a run of consecutive block numbers, [Start, Start+Count).
type Extent = format.Extent

// Info describes a sealed layer file.
type Info struct {
	Path      string
	Size      int64  // the virtual disk's size in bytes
	Blocks    uint64 // blocks present
	DataBytes int64  // Blocks*BlockSize: what the layer's writes cost
	FileBytes int64  // apparent size of the (sparse) file
	Checksum  uint32 // the header's CRC-32C; it covers the index and data checksums
}

// Layer is an open sealed layer. Its index is immutable; its methods may be
// called from any goroutine.
type Layer struct {
	path  string
	f     *os.File
	h     header
	index []Extent
}

// OpenLayer opens a sealed layer file and validates its header and index.
// It reads no block data (see Verify).
func OpenLayer(path string) (*Layer, error) {
	f, h, index, err := format.OpenLayer(what, path, decode)
	if err != nil {
		return nil, err
	}
	return &Layer{path: path, f: f, h: h, index: index}, nil
}

// decode reads and validates the header and index of a layer file of the
// given size. Its allocations are bounded by size.
func decode(r io.ReaderAt, size int64) (header, []Extent, error) {
	return format.ReadLayer(layerFormat, r, size, func(b []byte) (header, format.IndexAt, error) {
		h, err := decodeHeader(b)
		return h, format.IndexAt{Offset: h.IndexOffset, Len: h.IndexLen, CRC: h.IndexCRC, Total: h.blocks, Limit: blockCount(h.size)}, err
	})
}

// Path returns the file's path as given to OpenLayer (or the top's path
// for a layer sealed by a Disk).
func (l *Layer) Path() string { return l.path }

// Size returns the virtual disk size the layer was made for.
func (l *Layer) Size() int64 { return l.h.size }

// Extents returns the index of the blocks present. The caller must not
// modify it.
func (l *Layer) Extents() []Extent { return l.index }

// Checksum returns the header's CRC-32C, which covers the index and data
// checksums: what a manifest records to name this exact layer.
func (l *Layer) Checksum() uint32 { return l.h.HeaderCRC }

// Info describes the layer.
func (l *Layer) Info() Info {
	return Info{
		Path:      l.path,
		Size:      l.h.size,
		Blocks:    l.h.blocks,
		DataBytes: int64(l.h.blocks) * BlockSize,
		FileBytes: l.h.fileSize(),
		Checksum:  l.h.HeaderCRC,
	}
}

// has reports whether the layer holds block b, and for how many blocks
// from b on it keeps holding them.
func (l *Layer) has(b uint64) (run uint64, ok bool) {
	i := sort.Search(len(l.index), func(i int) bool { return l.index[i].End() > b })
	if i == len(l.index) || l.index[i].Start > b {
		return 0, false
	}
	return l.index[i].End() - b, true
}

// next returns the first block at or after b that the layer holds.
func (l *Layer) next(b uint64) (uint64, bool) {
	i := sort.Search(len(l.index), func(i int) bool { return l.index[i].End() > b })
	if i == len(l.index) {
		return 0, false
	}
	return max(b, l.index[i].Start), true
}

// dataChecksum computes the CRC-32C of the blocks in index, ascending.
func dataChecksum(f *os.File, index []Extent) (uint32, error) {
	buf := make([]byte, copyChunk)
	var crc uint32
	for _, e := range index {
		off, end := blockOffset(e.Start), blockOffset(e.End())
		for off < end {
			n := min(int64(len(buf)), end-off)
			if _, err := f.ReadAt(buf[:n], off); err != nil {
				return 0, err
			}
			crc = format.UpdateChecksum(crc, buf[:n])
			off += n
		}
	}
	return crc, nil
}

// Verify reads every block the layer holds and checks the data checksum.
func (l *Layer) Verify() error {
	crc, err := dataChecksum(l.f, l.index)
	if err != nil {
		return fmt.Errorf("verify disk layer %s: %w", l.path, err)
	}
	if crc != l.h.DataCRC {
		return fmt.Errorf("verify %s: %w", l.path, format.Corrupt(what, "block data", "checksum %08x, stored %08x", crc, l.h.DataCRC))
	}
	return nil
}

// Close closes the layer file.
func (l *Layer) Close() error {
	if err := l.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("close disk layer %s: %w", l.path, err)
	}
	return nil
}

// blockOffset is where block b is stored in a layer file.
func blockOffset(b uint64) int64 { return int64(dataOffset + b*BlockSize) }

// copyChunk bounds the buffers that copy or checksum block data.
const copyChunk = 1 << 20
