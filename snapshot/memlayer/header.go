package memlayer

import (
	"encoding/binary"

	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
)

// PageSize is the size of a guest page and the alignment of page data in a
// layer file.
const PageSize = 4096

// Version is the memory layer format version this package writes. Readers
// accept MinVersion through Version (see ../FORMAT.md).
const (
	Version    = 1
	MinVersion = 1
)

// MaxPages bounds page numbers: 2^40 pages of 4 KiB is the 52-bit
// physical address space of x86-64.
const MaxPages = 1 << 40

// dataOffset is where page data starts: right after the header page, so
// every page is file-page aligned and mappable.
const dataOffset = PageSize

const what = "memory layer"

var magic = [8]byte{'S', 'B', 'X', 'M', 'E', 'M', 0, '\n'}

// layerFormat is what this kind of layer shares with the others (package
// format reads the header's frame and the index).
var layerFormat = format.LayerFormat{What: what, Magic: magic, HeaderLen: headerLen, MinVersion: MinVersion, Version: Version}

// Header fields, little endian. The header occupies the first PageSize
// bytes of the file; bytes past headerLen are zero.
const (
	offMagic     = 0  // [8]byte
	offVersion   = 8  // le32
	offPageSize  = 12 // le32, PageSize
	offPages     = 16 // le64, pages held
	offTail      = 24 // format.IndexTail: data offset = dataOffset, index offset = dataOffset + pages*PageSize, data CRC of the page data
	offHeaderCRC = offTail + format.TailLen - 4
	headerLen    = offTail + format.TailLen
)

// header is the decoded header. Its invariants, checked by decodeHeader:
// pageSize == PageSize, dataOffset == PageSize, indexOffset == dataOffset +
// pages*PageSize, indexLen == extents*ExtentSize, extents <= pages <=
// MaxPages.
type header struct {
	version uint32
	pages   uint64
	format.IndexTail
}

func newHeader(pages, extents uint64, indexCRC, dataCRC uint32) header {
	h := header{version: Version, pages: pages, IndexTail: format.IndexTail{
		Extents: extents, DataOffset: dataOffset, IndexOffset: dataOffset + pages*PageSize,
		IndexLen: extents * format.ExtentSize, IndexCRC: indexCRC, DataCRC: dataCRC,
	}}
	h.HeaderCRC = format.Checksum(h.encode()[:offHeaderCRC])
	return h
}

// encode returns the header's headerLen bytes, its checksum field included.
func (h header) encode() []byte {
	b := make([]byte, headerLen)
	copy(b[offMagic:], magic[:])
	le := binary.LittleEndian
	le.PutUint32(b[offVersion:], h.version)
	le.PutUint32(b[offPageSize:], PageSize)
	le.PutUint64(b[offPages:], h.pages)
	h.IndexTail.Put(b[offTail:])
	return b
}

func decodeHeader(b []byte) (header, error) {
	if _, err := layerFormat.CheckHeader(b); err != nil {
		return header{}, err
	}
	le := binary.LittleEndian
	h := header{version: le.Uint32(b[offVersion:]), pages: le.Uint64(b[offPages:]), IndexTail: format.GetTail(b[offTail:])}
	ps, do := le.Uint32(b[offPageSize:]), h.DataOffset
	switch {
	case ps != PageSize:
		return header{}, format.Corrupt(what, "header", "page size %d, want %d", ps, PageSize)
	case do != dataOffset:
		return header{}, format.Corrupt(what, "header", "data offset %d, want %d", do, dataOffset)
	case h.pages > MaxPages:
		return header{}, format.Corrupt(what, "header", "%d pages, at most %d", h.pages, uint64(MaxPages))
	case h.Extents > h.pages:
		return header{}, format.Corrupt(what, "header", "%d extents for %d pages", h.Extents, h.pages)
	case h.IndexOffset != dataOffset+h.pages*PageSize:
		return header{}, format.Corrupt(what, "header", "index offset %d, want %d", h.IndexOffset, dataOffset+h.pages*PageSize)
	case h.IndexLen != h.Extents*format.ExtentSize:
		return header{}, format.Corrupt(what, "header", "index length %d for %d extents", h.IndexLen, h.Extents)
	}
	return h, nil
}

// fileSize is the size of a complete layer file with this header.
func (h header) fileSize() int64 { return int64(h.IndexOffset + h.IndexLen) }
