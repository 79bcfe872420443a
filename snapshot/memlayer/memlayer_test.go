package memlayer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// page returns a page whose bytes identify pfn and a layer tag.
func page(pfn uint64, tag byte) []byte {
	p := make([]byte, PageSize)
	for i := 0; i < PageSize; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], pfn<<8|uint64(tag))
	}
	return p
}

// writeLayer writes a layer holding pfns (ascending) with content page(pfn, tag).
func writeLayer(t *testing.T, path string, pfns []uint64, tag byte) Info {
	t.Helper()
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, pfn := range pfns {
		if err := w.WritePages(pfn, page(pfn, tag)); err != nil {
			t.Fatal(err)
		}
	}
	info, err := w.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func openLayer(t *testing.T, path string) *Layer {
	t.Helper()
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l")
	pfns := []uint64{0, 1, 2, 7, 9, 10, 1000}
	info := writeLayer(t, path, pfns, 1)
	if info.Pages != 7 || info.Extents != 4 || info.DataBytes != 7*PageSize {
		t.Errorf("info = %+v", info)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != info.FileBytes || st.Mode().Perm() != 0o444 {
		t.Errorf("file is %d bytes mode %v, info says %d bytes", st.Size(), st.Mode(), info.FileBytes)
	}
	// bytes written ≤ 1.05 × dirtied + fixed metadata (header page + index)
	if over := info.FileBytes - info.DataBytes; over > PageSize+int64(info.Extents)*format.ExtentSize {
		t.Errorf("overhead %d bytes", over)
	}
	l := openLayer(t, path)
	want := []Extent{{Start: 0, Count: 3}, {Start: 7, Count: 1}, {Start: 9, Count: 2}, {Start: 1000, Count: 1}}
	if got := l.Extents(); !equalExtents(got, want) {
		t.Errorf("extents = %v, want %v", got, want)
	}
	if l.Checksum() != info.Checksum || l.Pages() != 7 || l.Size() != info.FileBytes {
		t.Errorf("layer checksum/pages/size = %08x/%d/%d, info %+v", l.Checksum(), l.Pages(), l.Size(), info)
	}
	if err := l.Verify(); err != nil {
		t.Fatal(err)
	}
	for i, pfn := range pfns {
		off, _, ok := l.Lookup(pfn)
		if !ok || off != int64(PageSize*(i+1)) {
			t.Errorf("Lookup(%d) = %d, %v; want %d", pfn, off, ok, PageSize*(i+1))
		}
		got := make([]byte, PageSize)
		if _, err := l.File().ReadAt(got, off); err != nil || !bytes.Equal(got, page(pfn, 1)) {
			t.Errorf("page %d content differs (%v)", pfn, err)
		}
	}
	if _, run, ok := l.Lookup(0); !ok || run != 3 {
		t.Errorf("Lookup(0) run = %d, want 3", run)
	}
	for _, pfn := range []uint64{3, 8, 11, 999, 1001} {
		if _, _, ok := l.Lookup(pfn); ok {
			t.Errorf("Lookup(%d) found a page the layer does not hold", pfn)
		}
	}
}

func TestEmptyLayer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l")
	info := writeLayer(t, path, nil, 0)
	if info.Pages != 0 || info.FileBytes != PageSize {
		t.Errorf("info = %+v", info)
	}
	if l := openLayer(t, path); l.Pages() != 0 || l.Verify() != nil {
		t.Errorf("empty layer: pages %d, verify %v", l.Pages(), l.Verify())
	}
}

func TestWriterRejects(t *testing.T) {
	dir := t.TempDir()
	w, err := Create(filepath.Join(dir, "l"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	if err := w.WritePages(5, page(5, 0)); err != nil {
		t.Fatal(err)
	}
	if err := w.WritePages(5, page(5, 0)); err == nil || !strings.Contains(err.Error(), "ascend") {
		t.Errorf("repeated page: %v", err)
	}
	if err := w.WritePages(9, make([]byte, 100)); err == nil {
		t.Error("partial page accepted")
	}
	if err := w.WritePages(MaxPages, page(0, 0)); err == nil {
		t.Error("page beyond MaxPages accepted")
	}
	if _, err := Create(filepath.Join(dir, "l")); err == nil {
		t.Error("Create over an existing file succeeded")
	}
	w.Abort()
	if _, err := os.Stat(filepath.Join(dir, "l")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Abort left the file: %v", err)
	}
}

func TestWriteDirty(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 50; iter++ {
		bitmap := make([]uint64, 1+rng.IntN(6))
		for i := range bitmap {
			switch rng.IntN(4) {
			case 0:
				bitmap[i] = 0
			case 1:
				bitmap[i] = ^uint64(0)
			default:
				bitmap[i] = rng.Uint64() & rng.Uint64()
			}
		}
		first := uint64(rng.IntN(3)) * 1000
		path := filepath.Join(t.TempDir(), "l")
		w, err := Create(path)
		if err != nil {
			t.Fatal(err)
		}
		orig := append([]uint64(nil), bitmap...)
		err = w.WriteDirty(first, bitmap, func(pfn uint64, dst []byte) error {
			if len(dst) == 0 || len(dst) > dirtyChunk*PageSize {
				t.Fatalf("read of %d bytes", len(dst))
			}
			for i := 0; i < len(dst)/PageSize; i++ {
				copy(dst[i*PageSize:], page(pfn+uint64(i), 3))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Finish(); err != nil {
			t.Fatal(err)
		}
		if !equalU64(bitmap, orig) {
			t.Fatal("WriteDirty modified the bitmap")
		}
		var want []uint64
		for i := range uint64(len(bitmap) * 64) {
			if bitmap[i/64]&(1<<(i%64)) != 0 {
				want = append(want, first+i)
			}
		}
		l := openLayer(t, path)
		var got []uint64
		for _, e := range l.Extents() {
			for p := e.Start; p < e.End(); p++ {
				got = append(got, p)
			}
		}
		if !equalU64(got, want) {
			t.Fatalf("bitmap %x: pages %v, want %v", bitmap, got, want)
		}
		for i := 1; i < len(l.Extents()); i++ {
			if l.Extents()[i-1].End() == l.Extents()[i].Start {
				t.Fatalf("adjacent extents not merged: %v", l.Extents())
			}
		}
		view, err := NewView([]*Layer{l}, (first+uint64(len(bitmap))*64)*PageSize)
		if err != nil {
			t.Fatal(err)
		}
		for _, pfn := range want {
			got := make([]byte, PageSize)
			if _, err := view.ReadAt(got, int64(pfn*PageSize)); err != nil || !bytes.Equal(got, page(pfn, 3)) {
				t.Fatalf("page %d differs (%v)", pfn, err)
			}
		}
	}
}

func TestCorruption(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l")
	info := writeLayer(t, path, []uint64{1, 2, 3, 8}, 7)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	indexOff := int(info.FileBytes) - 2*format.ExtentSize
	for _, tc := range []struct {
		name    string
		off     int
		section string // in the error of Open, or "" when only Verify fails
	}{
		{"magic", 0, "bad magic"},
		{"page count", offPages, "header: checksum"},
		{"header checksum", offHeaderCRC, "header: checksum"},
		{"index", indexOff + 3, "index: checksum"},
		{"page data", dataOffset + 5000, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := bytes.Clone(good)
			bad[tc.off] ^= 0x40
			l, err := decodeBytes(t, bad)
			if tc.section != "" {
				if err == nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.section) {
					t.Fatalf("Open = %v, want an ErrCorrupt naming %q", err, tc.section)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Verify(); err == nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "page data") {
				t.Fatalf("Verify = %v, want an ErrCorrupt naming the page data", err)
			}
		})
	}
}

// decodeBytes writes b to a file and opens it as a layer.
func decodeBytes(t *testing.T, b []byte) (*Layer, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bad")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := Open(path)
	if err == nil {
		t.Cleanup(func() { l.Close() })
	}
	return l, err
}

func TestTruncated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l")
	writeLayer(t, path, []uint64{1, 2, 3, 8, 20}, 7)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; n < len(good); n += 1 + n/16 {
		if _, _, err := decode(bytes.NewReader(good[:n]), int64(n)); err == nil || !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d of %d bytes: %v, want ErrCorrupt", n, len(good), err)
		}
	}
}

func TestNewerVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l")
	writeLayer(t, path, []uint64{4}, 0)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint32(b[offVersion:], Version+1)
	_, err = decodeBytes(t, b)
	var ve *format.VersionError
	if !errors.Is(err, ErrIncompatibleVersion) || !errors.As(err, &ve) || ve.Got != Version+1 || ve.Max != Version {
		t.Fatalf("Open = %v, want ErrIncompatibleVersion naming both versions", err)
	}
	if !strings.Contains(err.Error(), "version 2") || !strings.Contains(err.Error(), "1 to 1") {
		t.Errorf("error %q does not name both versions", err)
	}
}

// TestGolden decodes the committed version-1 file, and checks that writing
// the same pages today produces it byte for byte: a format change must
// bump Version and add a golden file, not slip in.
func TestGolden(t *testing.T) {
	golden := filepath.Join("testdata", "layer-v1.golden")
	pfns := []uint64{0, 1, 5, 6, 7, 300}
	path := filepath.Join(t.TempDir(), "l")
	writeLayer(t, path, pfns, 0xab)
	fresh, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(golden, fresh, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l := openLayer(t, golden)
	if err := l.Verify(); err != nil {
		t.Fatal(err)
	}
	if want := []Extent{{Start: 0, Count: 2}, {Start: 5, Count: 3}, {Start: 300, Count: 1}}; !equalExtents(l.Extents(), want) {
		t.Errorf("golden extents = %v, want %v", l.Extents(), want)
	}
	view, err := NewView([]*Layer{l}, 301*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	for _, pfn := range pfns {
		got := make([]byte, PageSize)
		if _, err := view.ReadAt(got, int64(pfn*PageSize)); err != nil || !bytes.Equal(got, page(pfn, 0xab)) {
			t.Errorf("golden page %d differs (%v)", pfn, err)
		}
	}
	old, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(old, fresh) {
		t.Error("the writer's output differs from testdata/layer-v1.golden: the format changed; bump Version and keep the old golden file (see snapshot/FORMAT.md)")
	}
}

func equalExtents(a, b []Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
