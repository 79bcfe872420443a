package disklayer

import (
	"math/bits"
	"sort"
)

// blockSet is the set of blocks a top holds: a bitmap allocated in chunks
// as blocks are written, so its memory follows what the box wrote rather
// than the disk's size.
type blockSet struct {
	chunks map[uint64]*[chunkWords]uint64 // by block/chunkBlocks
	n      uint64                         // blocks in the set
}

const (
	chunkWords  = 512             // 4 KiB of bitmap per chunk...
	chunkBlocks = chunkWords * 64 // ...for 128 MiB of disk
)

func (s *blockSet) has(b uint64) bool {
	c := s.chunks[b/chunkBlocks]
	if c == nil {
		return false
	}
	i := b % chunkBlocks
	return c[i/64]&(1<<(i%64)) != 0
}

func (s *blockSet) add(b uint64) {
	if s.chunks == nil {
		s.chunks = make(map[uint64]*[chunkWords]uint64)
	}
	c := s.chunks[b/chunkBlocks]
	if c == nil {
		c = new([chunkWords]uint64)
		s.chunks[b/chunkBlocks] = c
	}
	i := b % chunkBlocks
	if c[i/64]&(1<<(i%64)) == 0 {
		c[i/64] |= 1 << (i % 64)
		s.n++
	}
}

// extents returns the set as sorted, maximal extents.
func (s *blockSet) extents() []Extent {
	keys := make([]uint64, 0, len(s.chunks))
	for k := range s.chunks {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	var out []Extent
	for _, k := range keys {
		for wi, word := range s.chunks[k] {
			for word != 0 {
				tz := bits.TrailingZeros64(word)
				ones := bits.TrailingZeros64(^(word >> tz))
				b := k*chunkBlocks + uint64(wi)*64 + uint64(tz)
				if n := len(out) - 1; n >= 0 && out[n].End() == b {
					out[n].Count += uint64(ones)
				} else {
					out = append(out, Extent{Start: b, Count: uint64(ones)})
				}
				word &^= (uint64(1)<<ones - 1) << tz
			}
		}
	}
	return out
}
