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
	if grew := u1.Private - u0.Private; grew != 64*PageSize {
		t.Errorf("private memory grew by %d bytes after writing 64 pages, want %d", grew, 64*PageSize)
	}
}

// WorkingSet names the pages read or written since the mapping, including
// a page of a file mapped copy-on-write that was only read, and no
// untouched anonymous page (a read of a file page may map its neighbours
// too: the kernel's fault-around); of them, exactly those written, or
// populated for writing, as Written.
func TestWorkingSet(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "layer")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(8 * PageSize); err != nil {
		t.Fatal(err)
	}
	m, err := NewFromFiles(200*PageSize, []FileRange{{GuestOffset: 100 * PageSize, Length: 8 * PageSize, File: f}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	read := map[uint64]bool{5: true, 101: true, 199: true}
	written := map[uint64]bool{3: true, 64: true, 107: true, 150: true, 151: true, 104: true}
	b := make([]byte, 1)
	for p := range read {
		m.ReadAt(b, int64(p*PageSize))
	}
	for p := range written {
		if p == 150 || p == 151 || p == 104 {
			continue
		}
		m.WriteAt([]byte{1}, int64(p*PageSize))
	}
	if err := m.PopulateWrite(150, 2); err != nil {
		t.Fatal(err)
	}
	if err := m.PopulateWrite(104, 1); err != nil {
		t.Fatal(err)
	}
	if err := m.PopulateWrite(199, 2); err == nil {
		t.Error("PopulateWrite beyond guest memory succeeded")
	}
	ws, err := m.WorkingSet()
	if err != nil {
		t.Fatal(err)
	}
	if len(ws.Touched) != 4 || len(ws.Written) != 4 {
		t.Fatalf("bitmaps of %d and %d words for 200 pages, want 4", len(ws.Touched), len(ws.Written))
	}
	for p := uint64(0); p < 200; p++ {
		touched := ws.Touched[p/64]&(1<<(p%64)) != 0
		wrote := ws.Written[p/64]&(1<<(p%64)) != 0
		want := read[p] || written[p]
		if inFile := p >= 100 && p < 108; touched != want && !(inFile && touched) {
			t.Errorf("page %d touched = %v, want %v", p, touched, want)
		}
		if wrote != written[p] {
			t.Errorf("page %d written = %v, want %v", p, wrote, written[p])
		}
	}
	// Populating kept the contents: the file's zeros.
	if _, err := m.ReadAt(b, 104*PageSize); err != nil || b[0] != 0 {
		t.Errorf("page 104 after populating reads %v, %v", b, err)
	}
}
