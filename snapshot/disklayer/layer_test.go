package disklayer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// goldenLayer writes the layer the golden test expects: a 5.5-block disk
// with blocks 0, 2, 3 and the short last block written.
func goldenLayer(t *testing.T, dir string) Info {
	d, err := Open(Layout{Size: 5*BlockSize + 100}, filepath.Join(dir, "golden"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	mustWrite(t, d, bytes.Repeat([]byte("block 0 "), BlockSize/8), 0)
	mustWrite(t, d, bytes.Repeat([]byte("blocks 2 and 3 "), 2*BlockSize/15), 2*BlockSize)
	mustWrite(t, d, []byte("the short last block"), 5*BlockSize+10)
	info, err := d.Seal(filepath.Join(dir, "next"))
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// TestGolden decodes the committed version-1 layer, and checks that the
// same writes today produce it byte for byte.
func TestGolden(t *testing.T) {
	golden := filepath.Join("testdata", "layer-v1.golden")
	info := goldenLayer(t, t.TempDir())
	fresh, err := os.ReadFile(info.Path)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(golden, fresh, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l, err := OpenLayer(golden)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Verify(); err != nil {
		t.Fatal(err)
	}
	if got := l.Extents(); len(got) != 3 || got[0] != (Extent{Start: 0, Count: 1}) || got[1] != (Extent{Start: 2, Count: 2}) || got[2] != (Extent{Start: 5, Count: 1}) {
		t.Errorf("golden extents = %v", got)
	}
	d, err := Open(Layout{Layers: []string{golden}}, filepath.Join(t.TempDir(), "top"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got := make([]byte, 20)
	if _, err := d.ReadAt(got, 5*BlockSize+10); err != nil || string(got) != "the short last block" {
		t.Errorf("golden last block reads %q (%v)", got, err)
	}
	old, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(old, fresh) {
		t.Error("sealing produces bytes that differ from testdata/layer-v1.golden: the format changed; bump Version and keep the old golden file (see snapshot/FORMAT.md)")
	}
}

func sealedBytes(t *testing.T) (Info, []byte) {
	info := goldenLayer(t, t.TempDir())
	b, err := os.ReadFile(info.Path)
	if err != nil {
		t.Fatal(err)
	}
	return info, b
}

func openBytes(t *testing.T, b []byte) (*Layer, error) {
	p := filepath.Join(t.TempDir(), "bad")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := OpenLayer(p)
	if err == nil {
		t.Cleanup(func() { l.Close() })
	}
	return l, err
}

func TestCorruption(t *testing.T) {
	info, good := sealedBytes(t)
	for _, tc := range []struct {
		name, section string
		off           int
	}{
		{"magic", "bad magic", 1},
		{"size", "header: checksum", offSize},
		{"state", "header: checksum", offState},
		{"index", "index: checksum", int(info.FileBytes) - 5},
		{"block data", "", dataOffset + 2*BlockSize + 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := bytes.Clone(good)
			bad[tc.off] ^= 1
			l, err := openBytes(t, bad)
			if tc.section != "" {
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.section) {
					t.Fatalf("OpenLayer = %v, want ErrCorrupt naming %q", err, tc.section)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Verify(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "block data") {
				t.Fatalf("Verify = %v, want ErrCorrupt naming the block data", err)
			}
		})
	}
}

func TestTruncated(t *testing.T) {
	_, good := sealedBytes(t)
	for n := 0; n < len(good); n += 1 + n/16 {
		if _, _, err := decode(bytes.NewReader(good[:n]), int64(n)); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d of %d bytes: %v, want ErrCorrupt", n, len(good), err)
		}
	}
}

func TestNewerVersion(t *testing.T) {
	_, b := sealedBytes(t)
	binary.LittleEndian.PutUint32(b[offVersion:], Version+1)
	_, err := openBytes(t, b)
	var ve *format.VersionError
	if !errors.Is(err, ErrIncompatibleVersion) || !errors.As(err, &ve) || ve.Got != Version+1 {
		t.Fatalf("OpenLayer = %v, want ErrIncompatibleVersion", err)
	}
}

// FuzzDecode feeds arbitrary layer files to the header and index decoder:
// no panics, allocations bounded by the input, and what it accepts
// re-encodes to the same bytes. A file is head, then gap zero bytes, then
// tail, so that inputs stay small though blocks sit at realistic offsets.
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
	idx := format.AppendExtents(nil, []Extent{{Start: 1, Count: 1}})
	small := newHeader(stateSealed, 2*BlockSize, 1, 1, format.Checksum(idx), 0)
	f.Add(small.encode()[:headerLen], uint64(small.IndexOffset-headerLen), idx, false)
	f.Add(newHeader(stateTop, BlockSize, 0, 0, 0, 0).encode()[:headerLen], uint64(2*BlockSize-headerLen), []byte{}, false)
	f.Fuzz(func(t *testing.T, head []byte, gap uint64, tail []byte, fix bool) {
		r := &format.GapReader{Head: head, Gap: int64(gap % (1 << 52)), Tail: tail}
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
		if !bytes.Equal(h.encode()[:headerLen], hb) {
			t.Fatal("accepted header does not re-encode to its bytes")
		}
		stored := make([]byte, h.IndexLen)
		if _, err := r.ReadAt(stored, int64(h.IndexOffset)); err != nil {
			t.Fatal(err)
		}
		if enc := format.AppendExtents(nil, index); !bytes.Equal(enc, stored) {
			t.Fatal("accepted index does not re-encode to its bytes")
		}
		l := &Layer{h: h, index: index}
		for _, e := range index {
			if n, ok := l.has(e.Start); !ok || n != e.Count {
				t.Fatalf("has(%d) = %d, %v", e.Start, n, ok)
			}
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
