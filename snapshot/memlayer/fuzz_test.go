package memlayer

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
)

// FuzzDecode feeds arbitrary layer files to the header and index decoder:
// it must never panic, never allocate beyond the input, and whatever it
// accepts must re-encode to the same header and index bytes. A file is
// head, then gap zero bytes, then tail, so that inputs stay small though
// page data sits at realistic offsets.
func FuzzDecode(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("testdata", "layer-v1.golden")); err == nil {
		h, err := decodeHeader(b)
		if err != nil {
			f.Fatal(err)
		}
		head, gap, tail := format.SplitGap(b, headerLen, int64(h.IndexOffset)-headerLen)
		f.Add(head, gap, tail, false)
		f.Add(head, gap, tail, true)
	}
	empty := newHeader(0, 0, format.Checksum(nil), 0)
	f.Add(empty.encode(), uint64(PageSize-headerLen), []byte{}, false)
	idx := format.AppendExtents(nil, []Extent{{Start: 2, Count: 1}, {Start: 9, Count: 3}})
	small := newHeader(4, 2, format.Checksum(idx), 0)
	f.Add(small.encode(), uint64(small.IndexOffset-headerLen), idx, false)
	f.Add([]byte("SBXMEM"), uint64(0), []byte{}, false)
	f.Fuzz(func(t *testing.T, head []byte, gap uint64, tail []byte, fix bool) {
		r := &format.GapReader{Head: head, Gap: int64(gap % (1 << 50)), Tail: tail}
		if fix {
			// Make the checksums match, so that the fuzzer explores the
			// checks behind them.
			fixChecksums(r)
		}
		h, index, err := decode(r, r.Size())
		if err != nil {
			return
		}
		hb := make([]byte, headerLen)
		if _, err := r.ReadAt(hb, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(h.encode(), hb) {
			t.Fatal("accepted header does not re-encode to its bytes")
		}
		stored := make([]byte, h.IndexLen)
		if _, err := r.ReadAt(stored, int64(h.IndexOffset)); err != nil {
			t.Fatal(err)
		}
		if enc := format.AppendExtents(nil, index); !bytes.Equal(enc, stored) {
			t.Fatal("accepted index does not re-encode to its bytes")
		}
		if _, err := Plan([]*Layer{fakeLayer(index)}, MaxPages*PageSize); err != nil {
			t.Fatal(err)
		}
	})
}

// fixChecksums rewrites the index and header checksums of the header in
// r.Head to match, when the index is small and inside the file.
func fixChecksums(r *format.GapReader) {
	if len(r.Head) < headerLen {
		return
	}
	head := bytes.Clone(r.Head)
	le := binary.LittleEndian
	tail := format.GetTail(head[offTail:])
	ioff, il := tail.IndexOffset, tail.IndexLen
	if il <= 1<<16 && ioff <= uint64(r.Size()) && il <= uint64(r.Size())-ioff {
		idx := make([]byte, il)
		if _, err := r.ReadAt(idx, int64(ioff)); err == nil {
			tail.IndexCRC = format.Checksum(idx)
			tail.Put(head[offTail:])
		}
	}
	le.PutUint32(head[offHeaderCRC:], format.Checksum(head[:offHeaderCRC]))
	r.Head = head
}
