package memory

import (
	"bytes"
	"errors"
	"math"
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
