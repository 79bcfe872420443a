package format

import (
	"encoding/binary"
	"fmt"
)

// Extent is a run of consecutive page or block numbers, [Start,
// Start+Count). Layer indexes are lists of extents, sorted and disjoint.
type Extent struct {
	Start uint64
	Count uint64
}

// End returns the first number after the extent.
func (e Extent) End() uint64 { return e.Start + e.Count }

// ExtentSize is the encoded size of one extent: le64 start, le64 count.
const ExtentSize = 16

// AppendExtents appends the encoding of idx to b.
func AppendExtents(b []byte, idx []Extent) []byte {
	for _, e := range idx {
		b = binary.LittleEndian.AppendUint64(b, e.Start)
		b = binary.LittleEndian.AppendUint64(b, e.Count)
	}
	return b
}

// DecodeExtents decodes an index and checks that it is well formed:
// extents non-empty, ascending, disjoint, below limit, and holding total
// numbers in all. Its allocation is bounded by len(b).
func DecodeExtents(b []byte, total, limit uint64) ([]Extent, error) {
	if len(b)%ExtentSize != 0 {
		return nil, fmt.Errorf("index length %d is not a multiple of %d", len(b), ExtentSize)
	}
	idx := make([]Extent, 0, len(b)/ExtentSize)
	var sum, next uint64
	for i := 0; i < len(b); i += ExtentSize {
		e := Extent{
			Start: binary.LittleEndian.Uint64(b[i:]),
			Count: binary.LittleEndian.Uint64(b[i+8:]),
		}
		n := len(idx)
		switch {
		case e.Count == 0:
			return nil, fmt.Errorf("extent %d is empty", n)
		case n > 0 && e.Start < next:
			return nil, fmt.Errorf("extent %d (start %d) overlaps or precedes extent %d", n, e.Start, n-1)
		case e.Start >= limit || e.Count > limit-e.Start:
			return nil, fmt.Errorf("extent %d [%d, +%d) exceeds the limit %d", n, e.Start, e.Count, limit)
		}
		sum += e.Count // cannot overflow: extents are disjoint and below limit
		next = e.End()
		idx = append(idx, e)
	}
	if sum != total {
		return nil, fmt.Errorf("index holds %d entries, header says %d", sum, total)
	}
	return idx, nil
}
