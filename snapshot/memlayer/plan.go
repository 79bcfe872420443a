package memlayer

import (
	"container/heap"
	"fmt"
	"io"
	"sort"
)

// Mapping is one run of guest memory backed by one layer file: guest bytes
// [GuestOffset, GuestOffset+Length) are the file's bytes from FileOffset
// on. All four numbers are multiples of PageSize.
type Mapping struct {
	GuestOffset uint64
	Length      uint64
	Layer       int   // the layer's position in the chain given to Plan
	FileOffset  int64 // in that layer's file
}

// Plan computes how to map a chain of layers, ordered base→top, over guest
// memory of memSize bytes: each page from the topmost layer that holds it,
// contiguous runs of one file coalesced into one mapping. The mappings are
// sorted by GuestOffset and do not overlap; pages in no mapping belong to
// no layer and stay zero (the VMM's anonymous memory). A layer holding a
// page at or beyond memSize is an error.
//
// The VMM maps each run with mmap(MAP_PRIVATE|MAP_FIXED) over its
// anonymous guest memory; see the package documentation.
func Plan(chain []*Layer, memSize uint64) ([]Mapping, error) {
	limit := memSize / PageSize
	idx := make([][]Extent, len(chain))
	for i, l := range chain {
		idx[i] = l.index
		if n := len(l.index); n > 0 && l.index[n-1].End() > limit {
			return nil, fmt.Errorf("plan memory: layer %d (%s) holds page %d, beyond guest memory of %d bytes", i, l.path, l.index[n-1].End()-1, memSize)
		}
	}
	var maps []Mapping
	for _, s := range topmost(idx) {
		l := chain[s.layer]
		off := l.fileOffset(s.extent, s.start)
		m := Mapping{GuestOffset: s.start * PageSize, Length: s.count * PageSize, Layer: s.layer, FileOffset: off}
		if n := len(maps) - 1; n >= 0 {
			p := &maps[n]
			if p.Layer == m.Layer && p.GuestOffset+p.Length == m.GuestOffset && p.FileOffset+int64(p.Length) == m.FileOffset {
				p.Length += m.Length
				continue
			}
		}
		maps = append(maps, m)
	}
	return maps, nil
}

// segment is a run of pages owned by one layer: pages [start, start+count)
// of extent `extent` of layer `layer`.
type segment struct {
	start, count  uint64
	layer, extent int
}

// topmost splits the union of the chain's indexes into segments, each
// owned by the topmost layer holding its pages, in ascending page order.
// It sweeps the extents by start page, keeping the extents that cover the
// sweep position in a heap ordered by layer (topmost first): O(n log n)
// in the number of extents.
func topmost(chain [][]Extent) []segment {
	type ref struct{ layer, extent int }
	var all []ref
	for li, idx := range chain {
		for ei := range idx {
			all = append(all, ref{li, ei})
		}
	}
	ext := func(r ref) Extent { return chain[r.layer][r.extent] }
	sort.Slice(all, func(i, j int) bool { return ext(all[i]).Start < ext(all[j]).Start })

	var active refHeap
	var out []segment
	var pos uint64
	next := 0 // the first extent of all not yet pushed
	for next < len(all) || len(active) > 0 {
		if len(active) == 0 {
			pos = max(pos, ext(all[next]).Start)
		}
		for next < len(all) && ext(all[next]).Start <= pos {
			heap.Push(&active, heapItem{layer: all[next].layer, extent: all[next].extent, end: ext(all[next]).End()})
			next++
		}
		for len(active) > 0 && active[0].end <= pos {
			heap.Pop(&active)
		}
		if len(active) == 0 {
			continue
		}
		top := active[0]
		end := top.end
		if next < len(all) && ext(all[next]).Start < end {
			end = ext(all[next]).Start
		}
		out = append(out, segment{start: pos, count: end - pos, layer: top.layer, extent: top.extent})
		pos = end
	}
	return out
}

type heapItem struct {
	layer, extent int
	end           uint64
}

// refHeap is a max-heap of extents by layer. Extents of one layer are
// disjoint, so at most one per layer covers a position and the order is
// total among the covering ones.
type refHeap []heapItem

func (h refHeap) Len() int           { return len(h) }
func (h refHeap) Less(i, j int) bool { return h[i].layer > h[j].layer }
func (h refHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *refHeap) Push(x any)        { *h = append(*h, x.(heapItem)) }
func (h *refHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// View reads guest memory as a chain of layers describes it, through the
// files rather than mappings: for compaction, checks and tests.
type View struct {
	chain   []*Layer
	maps    []Mapping
	memSize uint64
}

// NewView plans chain (see Plan) for reading.
func NewView(chain []*Layer, memSize uint64) (*View, error) {
	maps, err := Plan(chain, memSize)
	if err != nil {
		return nil, err
	}
	return &View{chain: chain, maps: maps, memSize: memSize}, nil
}

// Mappings returns the plan the view reads by. The caller must not modify
// it.
func (v *View) Mappings() []Mapping { return v.maps }

// ReadAt reads guest memory at guest offset off: pages from the chain,
// zeros elsewhere. It implements io.ReaderAt over memSize bytes.
func (v *View) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read memory view at %d: negative offset", off)
	}
	if uint64(off) >= v.memSize {
		return 0, io.EOF
	}
	want := len(p)
	if rest := v.memSize - uint64(off); uint64(want) > rest {
		p = p[:rest]
	}
	clear(p)
	// The first mapping that ends after off.
	i := sort.Search(len(v.maps), func(i int) bool { return v.maps[i].GuestOffset+v.maps[i].Length > uint64(off) })
	end := uint64(off) + uint64(len(p))
	for ; i < len(v.maps) && v.maps[i].GuestOffset < end; i++ {
		m := v.maps[i]
		lo, hi := max(m.GuestOffset, uint64(off)), min(m.GuestOffset+m.Length, end)
		dst := p[lo-uint64(off) : hi-uint64(off)]
		if _, err := v.chain[m.Layer].f.ReadAt(dst, m.FileOffset+int64(lo-m.GuestOffset)); err != nil {
			return 0, fmt.Errorf("read memory view at %#x: layer %s: %w", lo, v.chain[m.Layer].path, err)
		}
	}
	if len(p) < want {
		return len(p), io.EOF
	}
	return len(p), nil
}

// compactChunk bounds Compact's copy buffer.
const compactChunk = 1 << 20

// Compact writes a new layer at dst holding every page of the chain, each
// from the topmost layer holding it: a base that restores exactly as the
// chain does. The chain's files are only read; boxes mapping them are
// undisturbed.
func Compact(chain []*Layer, dst string) (Info, error) {
	var limit uint64
	for _, l := range chain {
		if n := len(l.index); n > 0 {
			limit = max(limit, l.index[n-1].End())
		}
	}
	maps, err := Plan(chain, limit*PageSize)
	if err != nil {
		return Info{}, err
	}
	w, err := Create(dst)
	if err != nil {
		return Info{}, fmt.Errorf("compact memory layers: %w", err)
	}
	buf := make([]byte, compactChunk)
	for _, m := range maps {
		for done := uint64(0); done < m.Length; {
			n := min(m.Length-done, uint64(len(buf)))
			if _, err := chain[m.Layer].f.ReadAt(buf[:n], m.FileOffset+int64(done)); err != nil {
				w.Abort()
				return Info{}, fmt.Errorf("compact memory layers: read %s: %w", chain[m.Layer].path, err)
			}
			if err := w.WritePages((m.GuestOffset+done)/PageSize, buf[:n]); err != nil {
				w.Abort()
				return Info{}, fmt.Errorf("compact memory layers: %w", err)
			}
			done += n
		}
	}
	return w.Finish()
}
