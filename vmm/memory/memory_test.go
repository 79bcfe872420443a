package memory

import (
	"bytes"
	"errors"
	"math"
	"os"
	"testing"
)

func TestReadWriteBounds(t *testing.T) {
	m, err := New(2 << 12)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	want := []byte("sailbox")
	if _, err := m.WriteAt(want, 0x1ff9); err != nil {
		t.Fatalf("write straddling the last bytes: %v", err)
	}
	got := make([]byte, len(want))
	if _, err := m.ReadAt(got, 0x1ff9); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back %q, %v; want %q", got, err, want)
	}

	for _, c := range []struct {
		off int64
		n   int
	}{
		{0x1ffa, 7},            // one byte past the end
		{0x2000, 1},            // starts at the end
		{-1, 1},                // negative
		{math.MaxInt64, 1},     // far away
		{0x1000, 0x1001},       // long
		{math.MaxInt64 - 2, 8}, // offset+len wraps
	} {
		if _, err := m.ReadAt(make([]byte, c.n), c.off); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("ReadAt(%d bytes at %#x) = %v, want ErrOutOfRange", c.n, c.off, err)
		}
		if _, err := m.WriteAt(make([]byte, c.n), c.off); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("WriteAt(%d bytes at %#x) = %v, want ErrOutOfRange", c.n, c.off, err)
		}
	}
	if _, err := m.Slice(math.MaxUint64, 2); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Slice wrapping = %v, want ErrOutOfRange", err)
	}
	s, err := m.Slice(0x10, 4)
	if err != nil || cap(s) != 4 {
		t.Errorf("Slice cap = %d, %v; want 4 (no access past the range through append)", cap(s), err)
	}
}

func TestNewRejectsBadSizes(t *testing.T) {
	for _, size := range []uint64{0, 1, 4095, 4097} {
		if m, err := New(size); err == nil {
			m.Close()
			t.Errorf("New(%d) succeeded, want an error", size)
		}
	}
}

func TestWrittenPages(t *testing.T) {
	m, err := New(64 * PageSize)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.WriteAt([]byte{1, 2}, PageSize-1); err != nil { // pages 0 and 1
		t.Fatal(err)
	}
	if _, err := m.WriteAt([]byte{3}, 40*PageSize); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ReadAt(make([]byte, 8), 10*PageSize); err != nil { // a read marks nothing
		t.Fatal(err)
	}
	bm := make([]uint64, 1)
	m.TakeWritten(bm)
	if want := uint64(1)<<0 | 1<<1 | 1<<40; bm[0] != want {
		t.Errorf("written = %#x, want %#x", bm[0], want)
	}
	bm[0] = 0
	m.TakeWritten(bm)
	if bm[0] != 0 {
		t.Errorf("after take, written = %#x, want 0", bm[0])
	}
}

func TestNewFromFiles(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "layer")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := bytes.Repeat([]byte{0xab}, PageSize)
	if _, err := f.Write(append(bytes.Repeat([]byte{0xcd}, PageSize), page...)); err != nil {
		t.Fatal(err)
	}
	// Guest page 3 from the file's second page.
	m, err := NewFromFiles(8*PageSize, []FileRange{{GuestOffset: 3 * PageSize, Length: PageSize, File: f, FileOffset: PageSize}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got := make([]byte, PageSize)
	m.ReadAt(got, 3*PageSize)
	if !bytes.Equal(got, page) {
		t.Errorf("guest page 3 = %x..., want ab...", got[:4])
	}
	m.ReadAt(got, 2*PageSize)
	if !bytes.Equal(got, make([]byte, PageSize)) {
		t.Errorf("guest page 2 = %x..., want zeros", got[:4])
	}
	// Writes are private: the file keeps its bytes.
	m.WriteAt([]byte{1}, 3*PageSize)
	fb := make([]byte, 1)
	f.ReadAt(fb, PageSize)
	if fb[0] != 0xab {
		t.Errorf("file byte changed to %#x by a guest write", fb[0])
	}
	if _, err := NewFromFiles(8*PageSize, []FileRange{{GuestOffset: 7 * PageSize, Length: 2 * PageSize, File: f}}); err == nil {
		t.Error("a range past the end of memory was accepted")
	}
	if _, err := NewFromFiles(8*PageSize, []FileRange{{GuestOffset: 1, Length: PageSize, File: f}}); err == nil {
		t.Error("an unaligned range was accepted")
	}
}

func TestUsage(t *testing.T) {
	m, err := New(256 * PageSize)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	u0, err := m.Usage()
	if err != nil {
		t.Fatal(err)
	}
	for p := int64(0); p < 64; p++ {
		m.WriteAt([]byte{1}, p*PageSize)
	}
	u1, err := m.Usage()
	if err != nil {
		t.Fatal(err)
	}
	// At least the pages written: a kernel may back a write with a large
	// folio (THP), which the mapping then holds whole.
	if grew := u1.Private - u0.Private; grew < 64*PageSize || grew > m.Size() {
		t.Errorf("private memory grew by %d bytes after writing 64 pages, want %d to %d", grew, 64*PageSize, m.Size())
	}
}
