package memlayer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
)

// ErrIncompatibleVersion and ErrCorrupt are the snapshot packages' shared
// sentinels (see package snapshot): a file of an unsupported format
// version, and a damaged or truncated file.
var (
	ErrIncompatibleVersion = format.ErrIncompatibleVersion
	ErrCorrupt             = format.ErrCorrupt
)

// Layer is an open, validated layer file. Its methods may be called from
// any goroutine; the index is immutable after Open.
type Layer struct {
	path  string
	f     *os.File
	h     header
	index []Extent
	// before[i] is the number of pages held by index[:i], so page
	// index[i].Start+k is stored at dataOffset+(before[i]+k)*PageSize.
	before []uint64
}

// Open opens a layer file and validates its header and index against
// their checksums and the file's size. It reads no page data (see Verify).
func Open(path string) (*Layer, error) {
	f, h, index, err := format.OpenLayer(what, path, decode)
	if err != nil {
		return nil, err
	}
	l := &Layer{path: path, f: f, h: h, index: index, before: make([]uint64, len(index))}
	var n uint64
	for i, e := range index {
		l.before[i] = n
		n += e.Count
	}
	return l, nil
}

// decode reads and validates the header and index of a layer file of the
// given size. Its allocations are bounded by size.
func decode(r io.ReaderAt, size int64) (header, []Extent, error) {
	return format.ReadLayer(layerFormat, r, size, func(b []byte) (header, format.IndexAt, error) {
		h, err := decodeHeader(b)
		return h, format.IndexAt{Offset: h.IndexOffset, Len: h.IndexLen, CRC: h.IndexCRC, Total: h.pages, Limit: MaxPages}, err
	})
}

// Path returns the file's path as given to Open.
func (l *Layer) Path() string { return l.path }

// File returns the open layer file, for mmap. It stays owned by the Layer.
func (l *Layer) File() *os.File { return l.f }

// Pages returns the number of pages the layer holds.
func (l *Layer) Pages() uint64 { return l.h.pages }

// Extents returns the layer's index. The caller must not modify it.
func (l *Layer) Extents() []Extent { return l.index }

// Size returns the layer file's size in bytes.
func (l *Layer) Size() int64 { return l.h.fileSize() }

// Checksum returns the header's CRC-32C, which covers the index and the
// page data checksums: what a manifest records to name this exact layer.
func (l *Layer) Checksum() uint32 { return l.h.HeaderCRC }

// Lookup returns the file offset of page pfn and the number of
// consecutive pages from pfn on stored contiguously from there, or ok
// false when the layer does not hold pfn.
func (l *Layer) Lookup(pfn uint64) (off int64, run uint64, ok bool) {
	i := sort.Search(len(l.index), func(i int) bool { return l.index[i].End() > pfn })
	if i == len(l.index) || l.index[i].Start > pfn {
		return 0, 0, false
	}
	e := l.index[i]
	return l.fileOffset(i, pfn), e.End() - pfn, true
}

// fileOffset is where page pfn of extent i is stored.
func (l *Layer) fileOffset(i int, pfn uint64) int64 {
	return int64(dataOffset + (l.before[i]+pfn-l.index[i].Start)*PageSize)
}

// verifyChunk bounds Verify's read buffer.
const verifyChunk = 1 << 20

// Verify reads all page data and checks it against the header's data
// checksum. Restores need not call it (they read pages lazily); it is for
// scrubbing and for tests.
func (l *Layer) Verify() error {
	buf := make([]byte, verifyChunk)
	var crc uint32
	end := int64(l.h.IndexOffset)
	for off := int64(dataOffset); off < end; {
		n := int(min(int64(len(buf)), end-off))
		if _, err := l.f.ReadAt(buf[:n], off); err != nil {
			return fmt.Errorf("verify memory layer %s: %w", l.path, err)
		}
		crc = format.UpdateChecksum(crc, buf[:n])
		off += int64(n)
	}
	if crc != l.h.DataCRC {
		return fmt.Errorf("verify %s: %w", l.path, format.Corrupt(what, "page data", "checksum %08x, stored %08x", crc, l.h.DataCRC))
	}
	return nil
}

// Close closes the layer file. Mappings made from it stay valid.
func (l *Layer) Close() error {
	if err := l.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("close memory layer %s: %w", l.path, err)
	}
	return nil
}
