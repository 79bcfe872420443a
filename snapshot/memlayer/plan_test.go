package memlayer

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
)

func TestPlanTopmostWins(t *testing.T) {
	dir := t.TempDir()
	// base holds 0-9, mid holds 3-4, top holds 4-5 and 9; 12-13 in no layer
	// but 14 in base.
	paths := []string{filepath.Join(dir, "base"), filepath.Join(dir, "mid"), filepath.Join(dir, "top")}
	writeLayer(t, paths[0], []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14}, 0)
	writeLayer(t, paths[1], []uint64{3, 4}, 1)
	writeLayer(t, paths[2], []uint64{4, 5, 9}, 2)
	chain := []*Layer{openLayer(t, paths[0]), openLayer(t, paths[1]), openLayer(t, paths[2])}
	maps, err := Plan(chain, 16*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	P := uint64(PageSize)
	want := []Mapping{
		{GuestOffset: 0, Length: 3 * P, Layer: 0, FileOffset: int64(P)},
		{GuestOffset: 3 * P, Length: P, Layer: 1, FileOffset: int64(P)},
		{GuestOffset: 4 * P, Length: 2 * P, Layer: 2, FileOffset: int64(P)},
		{GuestOffset: 6 * P, Length: 3 * P, Layer: 0, FileOffset: int64(7 * P)},
		{GuestOffset: 9 * P, Length: P, Layer: 2, FileOffset: int64(3 * P)},
		{GuestOffset: 14 * P, Length: P, Layer: 0, FileOffset: int64(11 * P)},
	}
	if !slices.Equal(maps, want) {
		t.Errorf("Plan =\n%v\nwant\n%v", maps, want)
	}
	if _, err := Plan(chain, 14*PageSize); err == nil {
		t.Error("Plan accepted a page beyond guest memory")
	}
	if maps, err := Plan(nil, 16*PageSize); err != nil || len(maps) != 0 {
		t.Errorf("empty chain: %v, %v", maps, err)
	}
}

// TestPlanModel checks Plan against a page-by-page model on random chains:
// every page from its topmost layer, pages in no layer absent, mappings
// sorted, disjoint and fully coalesced.
func TestPlanModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for iter := 0; iter < 200; iter++ {
		const pages = 200
		nlayers := 1 + rng.IntN(5)
		chain := make([][]Extent, nlayers)
		owner := make([]int, pages) // topmost layer per page, -1 for none
		for i := range owner {
			owner[i] = -1
		}
		rank := make([]map[uint64]uint64, nlayers) // page -> position in layer
		for li := range chain {
			rank[li] = map[uint64]uint64{}
			density := rng.Float64()
			var n uint64
			for p := uint64(0); p < pages; p++ {
				if rng.Float64() < density*density {
					if k := len(chain[li]) - 1; k >= 0 && chain[li][k].End() == p {
						chain[li][k].Count++
					} else {
						chain[li] = append(chain[li], Extent{Start: p, Count: 1})
					}
					owner[p] = li
					rank[li][p] = n
					n++
				}
			}
		}
		layers := make([]*Layer, nlayers)
		for li, idx := range chain {
			layers[li] = fakeLayer(idx)
		}
		maps, err := Plan(layers, pages*PageSize)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]int, pages)
		for i := range got {
			got[i] = -1
		}
		for i, m := range maps {
			if m.Length == 0 || m.GuestOffset%PageSize != 0 || m.Length%PageSize != 0 || m.FileOffset%PageSize != 0 {
				t.Fatalf("mapping %d misaligned: %+v", i, m)
			}
			if i > 0 {
				p := maps[i-1]
				if p.GuestOffset+p.Length > m.GuestOffset {
					t.Fatalf("mappings %d and %d overlap or are unsorted: %+v %+v", i-1, i, p, m)
				}
				if p.Layer == m.Layer && p.GuestOffset+p.Length == m.GuestOffset && p.FileOffset+int64(p.Length) == m.FileOffset {
					t.Fatalf("mappings %d and %d not coalesced: %+v %+v", i-1, i, p, m)
				}
			}
			for k := uint64(0); k < m.Length/PageSize; k++ {
				pfn := m.GuestOffset/PageSize + k
				got[pfn] = m.Layer
				wantOff := int64(PageSize * (1 + rank[m.Layer][pfn]))
				if off := m.FileOffset + int64(k*PageSize); off != wantOff {
					t.Fatalf("page %d from layer %d at file offset %d, want %d", pfn, m.Layer, off, wantOff)
				}
			}
		}
		if !slices.Equal(got, owner) {
			t.Fatalf("owners differ:\n got %v\nwant %v", got, owner)
		}
	}
}

// fakeLayer is a Layer with an index and no file, for planning only.
func fakeLayer(idx []Extent) *Layer {
	l := &Layer{index: idx, before: make([]uint64, len(idx))}
	var n uint64
	for i, e := range idx {
		l.before[i] = n
		n += e.Count
	}
	l.h.pages = n
	return l
}

// TestCompactEqualsChain builds a random chain of real files and checks
// that the view of the chain, the view of its compaction and a plain
// byte-slice model of guest memory agree, and that the old files are
// untouched.
func TestCompactEqualsChain(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	dir := t.TempDir()
	const pages = 64
	model := make([]byte, pages*PageSize)
	var chain []*Layer
	for li := 0; li < 4; li++ {
		var pfns []uint64
		for p := uint64(0); p < pages; p++ {
			if rng.IntN(3) == 0 {
				pfns = append(pfns, p)
				copy(model[p*PageSize:], page(p, byte(li+1)))
			}
		}
		path := filepath.Join(dir, fmt.Sprint("layer", li))
		writeLayer(t, path, pfns, byte(li+1))
		chain = append(chain, openLayer(t, path))
	}
	view, err := NewView(chain, pages*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, pages*PageSize)
	if n, err := view.ReadAt(got, 0); err != nil || n != len(got) {
		t.Fatal(n, err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("chain view differs from the model")
	}
	// Unaligned reads across mapping boundaries, and past the end.
	for i := 0; i < 100; i++ {
		off := rng.IntN(len(model))
		n := rng.IntN(3 * PageSize)
		buf := make([]byte, n)
		k, err := view.ReadAt(buf, int64(off))
		want := model[off:min(off+n, len(model))]
		if k != len(want) || !bytes.Equal(buf[:k], want) || (k < n) != (err != nil) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", off, n, k, err)
		}
	}

	info, err := Compact(chain, filepath.Join(dir, "compacted"))
	if err != nil {
		t.Fatal(err)
	}
	c := openLayer(t, info.Path)
	if err := c.Verify(); err != nil {
		t.Fatal(err)
	}
	cview, err := NewView([]*Layer{c}, pages*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cview.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("compacted layer differs from the chain")
	}
	for _, l := range chain {
		if err := l.Verify(); err != nil {
			t.Fatalf("compaction disturbed %s: %v", l.Path(), err)
		}
	}
	if len(cview.Mappings()) > len(view.Mappings()) {
		t.Errorf("compacted layer needs %d mappings, the chain %d", len(cview.Mappings()), len(view.Mappings()))
	}
}
