package format

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// LayerFormat is what sets one kind of layer file apart from the others
// that share its layout: a header that starts with an 8-byte magic and a
// le32 version and ends with the CRC-32C of the bytes before it, and an
// index of extents at an offset the header gives. Each kind keeps its own
// magic, version and header fields.
type LayerFormat struct {
	What                string // "memory layer", for errors
	Magic               [8]byte
	HeaderLen           int // the header's bytes, its CRC the last 4
	MinVersion, Version uint32
}

// CheckHeader checks b's length, magic, version and checksum, in that
// order, and returns the version. The version goes before the checksum:
// a newer format may have moved the checksum, and "too new" is the
// useful error.
func (f LayerFormat) CheckHeader(b []byte) (uint32, error) {
	if len(b) < f.HeaderLen {
		return 0, Corrupt(f.What, "header", "truncated: %d of %d bytes", len(b), f.HeaderLen)
	}
	if [8]byte(b[:8]) != f.Magic {
		return 0, Corrupt(f.What, "header", "bad magic %q (not a %s)", b[:8], f.What)
	}
	v := binary.LittleEndian.Uint32(b[8:])
	if v < f.MinVersion || v > f.Version {
		return 0, &VersionError{What: f.What, Got: v, Min: f.MinVersion, Max: f.Version}
	}
	crcAt := f.HeaderLen - 4
	if got, stored := Checksum(b[:crcAt]), binary.LittleEndian.Uint32(b[crcAt:]); got != stored {
		return 0, Corrupt(f.What, "header", "checksum %08x, stored %08x", got, stored)
	}
	return v, nil
}

// IndexAt is where a layer's header puts its index, and what bounds the
// extents in it.
type IndexAt struct {
	Offset, Len uint64 // the index ends the file
	CRC         uint32
	Total       uint64 // pages or blocks the extents hold in all
	Limit       uint64 // every extent ends at or below it
}

// ReadLayer reads the header and index of a layer file of size bytes:
// decode checks the header (CheckHeader first) and says where the index
// is; the file must be as long as header and index say (a truncated file
// would fault when mapped), and the index must match its checksum and be
// well formed. Its allocations are bounded by size.
func ReadLayer[H any](f LayerFormat, r io.ReaderAt, size int64, decode func([]byte) (H, IndexAt, error)) (H, []Extent, error) {
	var zero H
	hb := make([]byte, f.HeaderLen)
	if n, err := r.ReadAt(hb, 0); n < f.HeaderLen {
		if err == io.EOF {
			return zero, nil, Corrupt(f.What, "header", "truncated: file is %d bytes", size)
		}
		return zero, nil, fmt.Errorf("read header: %w", err)
	}
	h, at, err := decode(hb)
	if err != nil {
		return zero, nil, err
	}
	// The header's fields are bounded, so this cannot overflow.
	if want := int64(at.Offset + at.Len); size < want {
		return zero, nil, Corrupt(f.What, "file", "truncated: %d bytes, header describes %d", size, want)
	}
	ib := make([]byte, at.Len)
	if _, err := r.ReadAt(ib, int64(at.Offset)); err != nil {
		return zero, nil, fmt.Errorf("read index: %w", err)
	}
	if got := Checksum(ib); got != at.CRC {
		return zero, nil, Corrupt(f.What, "index", "checksum %08x, stored %08x", got, at.CRC)
	}
	index, err := DecodeExtents(ib, at.Total, at.Limit)
	if err != nil {
		return zero, nil, Corrupt(f.What, "index", "%v", err)
	}
	return h, index, nil
}

// IndexTail is the part of a layer header that every layer kind shares,
// at the header's end: the index's place and size, the checksums, and the
// header's own checksum last. Encoded, it is TailLen bytes, little endian:
// extents (8), data offset (8), index offset (8), index length (8), index
// CRC (4), data CRC (4), header CRC (4).
type IndexTail struct {
	Extents     uint64
	DataOffset  uint64
	IndexOffset uint64
	IndexLen    uint64
	IndexCRC    uint32
	DataCRC     uint32
	HeaderCRC   uint32
}

// TailLen is the size of an encoded IndexTail.
const TailLen = 44

// Put encodes t into b[:TailLen].
func (t IndexTail) Put(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], t.Extents)
	le.PutUint64(b[8:], t.DataOffset)
	le.PutUint64(b[16:], t.IndexOffset)
	le.PutUint64(b[24:], t.IndexLen)
	le.PutUint32(b[32:], t.IndexCRC)
	le.PutUint32(b[36:], t.DataCRC)
	le.PutUint32(b[40:], t.HeaderCRC)
}

// GetTail decodes the IndexTail in b[:TailLen].
func GetTail(b []byte) IndexTail {
	le := binary.LittleEndian
	return IndexTail{
		Extents: le.Uint64(b[0:]), DataOffset: le.Uint64(b[8:]), IndexOffset: le.Uint64(b[16:]), IndexLen: le.Uint64(b[24:]),
		IndexCRC: le.Uint32(b[32:]), DataCRC: le.Uint32(b[36:]), HeaderCRC: le.Uint32(b[40:]),
	}
}

// OpenLayer opens the layer file at path and reads its header and index
// with decode (which calls ReadLayer); the file is closed again on any
// error, which names the operation and the path.
func OpenLayer[H any](what, path string, decode func(io.ReaderAt, int64) (H, []Extent, error)) (*os.File, H, []Extent, error) {
	var zero H
	f, err := os.Open(path)
	if err != nil {
		return nil, zero, nil, fmt.Errorf("open %s: %w", what, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, zero, nil, fmt.Errorf("open %s: %w", what, err)
	}
	h, index, err := decode(f, st.Size())
	if err != nil {
		f.Close()
		return nil, zero, nil, fmt.Errorf("open %s: %w", path, err)
	}
	return f, h, index, nil
}
