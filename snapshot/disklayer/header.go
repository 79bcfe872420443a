package disklayer

import (
	"encoding/binary"

	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
)

// BlockSize is the granularity at which layers hold disk data: a write to
// part of a block not yet in the top copies the rest of the block up.
const BlockSize = 4096

// Version is the disk layer format version this package writes. Readers
// accept MinVersion through Version (see ../FORMAT.md).
const (
	Version    = 1
	MinVersion = 1
)

// MaxSize bounds the virtual size of a disk: 1 PiB.
const MaxSize = 1 << 50

// dataOffset is where block 0 is stored: right after the header page, so
// blocks are page aligned.
const dataOffset = BlockSize

const what = "disk layer"

var magic = [8]byte{'S', 'B', 'X', 'D', 'S', 'K', 0, '\n'}

// layerFormat is what this kind of layer shares with the others (package
// format reads the header's frame and the index).
var layerFormat = format.LayerFormat{What: what, Magic: magic, HeaderLen: headerLen, MinVersion: MinVersion, Version: Version}

// Layer states.
const (
	stateTop    = 1 // a writable top: no index, not a valid layer
	stateSealed = 2
)

// Header fields, little endian. The header occupies the first BlockSize
// bytes of the file; bytes past headerLen are zero.
const (
	offMagic     = 0  // [8]byte
	offVersion   = 8  // le32
	offBlockSize = 12 // le32, BlockSize
	offState     = 16 // le32, stateTop or stateSealed
	offReserved  = 20 // le32, zero
	offSize      = 24 // le64, virtual disk size in bytes
	offBlocks    = 32 // le64, blocks present
	offTail      = 40 // format.IndexTail: data offset = dataOffset, index offset = dataOffset + roundup(size, BlockSize), data CRC of the present blocks, ascending
	offHeaderCRC = offTail + format.TailLen - 4
	headerLen    = offTail + format.TailLen
)

// header is a decoded header. Invariants checked by decodeHeader for a
// sealed layer: 0 < size <= MaxSize, indexOffset == dataOffset +
// blocks(size)*BlockSize, indexLen == extents*ExtentSize, extents <= blocks
// <= blocks(size).
type header struct {
	version uint32
	state   uint32
	size    int64
	blocks  uint64
	format.IndexTail
}

// blockCount is the number of blocks of a disk of size bytes.
func blockCount(size int64) uint64 { return uint64((size + BlockSize - 1) / BlockSize) }

func newHeader(state uint32, size int64, blocks, extents uint64, indexCRC, dataCRC uint32) header {
	h := header{version: Version, state: state, size: size, blocks: blocks, IndexTail: format.IndexTail{
		Extents: extents, DataOffset: dataOffset, IndexOffset: dataOffset + blockCount(size)*BlockSize,
		IndexLen: extents * format.ExtentSize, IndexCRC: indexCRC, DataCRC: dataCRC,
	}}
	h.HeaderCRC = format.Checksum(h.encode()[:offHeaderCRC])
	return h
}

// encode returns the whole header page, checksum field included.
func (h header) encode() []byte {
	b := make([]byte, dataOffset)
	copy(b[offMagic:], magic[:])
	le := binary.LittleEndian
	le.PutUint32(b[offVersion:], h.version)
	le.PutUint32(b[offBlockSize:], BlockSize)
	le.PutUint32(b[offState:], h.state)
	le.PutUint64(b[offSize:], uint64(h.size))
	le.PutUint64(b[offBlocks:], h.blocks)
	h.IndexTail.Put(b[offTail:])
	return b
}

func decodeHeader(b []byte) (header, error) {
	if _, err := layerFormat.CheckHeader(b); err != nil {
		return header{}, err
	}
	le := binary.LittleEndian
	size := le.Uint64(b[offSize:])
	h := header{version: le.Uint32(b[offVersion:]), state: le.Uint32(b[offState:]), blocks: le.Uint64(b[offBlocks:]), IndexTail: format.GetTail(b[offTail:])}
	bs, do, res := le.Uint32(b[offBlockSize:]), h.DataOffset, le.Uint32(b[offReserved:])
	switch {
	case h.state == stateTop:
		return header{}, format.Corrupt(what, "header", "not sealed: a writable top, or a seal that did not finish")
	case h.state != stateSealed:
		return header{}, format.Corrupt(what, "header", "unknown state %d", h.state)
	case bs != BlockSize:
		return header{}, format.Corrupt(what, "header", "block size %d, want %d", bs, BlockSize)
	case do != dataOffset:
		return header{}, format.Corrupt(what, "header", "data offset %d, want %d", do, dataOffset)
	case res != 0:
		return header{}, format.Corrupt(what, "header", "reserved field %#x is not zero", res)
	case size == 0 || size > MaxSize:
		return header{}, format.Corrupt(what, "header", "virtual size %d out of range (1 to %d)", size, uint64(MaxSize))
	}
	h.size = int64(size)
	nb := blockCount(h.size)
	switch {
	case h.blocks > nb:
		return header{}, format.Corrupt(what, "header", "%d blocks present in a disk of %d blocks", h.blocks, nb)
	case h.Extents > h.blocks:
		return header{}, format.Corrupt(what, "header", "%d extents for %d blocks", h.Extents, h.blocks)
	case h.IndexOffset != dataOffset+nb*BlockSize:
		return header{}, format.Corrupt(what, "header", "index offset %d, want %d", h.IndexOffset, dataOffset+nb*BlockSize)
	case h.IndexLen != h.Extents*format.ExtentSize:
		return header{}, format.Corrupt(what, "header", "index length %d for %d extents", h.IndexLen, h.Extents)
	}
	return h, nil
}

// fileSize is the (apparent) size of a complete layer file.
func (h header) fileSize() int64 { return int64(h.IndexOffset + h.IndexLen) }
