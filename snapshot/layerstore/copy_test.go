package layerstore

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestCopyIn exercises Put's fallback for a source on another file system
// (rename fails with EXDEV): a sparse copy, then the source removed.
func TestCopyIn(t *testing.T) {
	dir := t.TempDir()
	s, err := NewDir(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "src")
	data := make([]byte, 1<<20)
	copy(data[5000:], "some data")
	copy(data[len(data)-3:], "end")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "store", "l")
	if err := s.copyIn(src, dst); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("copy differs (%v)", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 64<<10 {
		t.Errorf("copy of a sparse file occupies %d bytes", st.Blocks*512)
	}
	if _, err := os.Stat(src); !os.IsNotExist(err) {
		t.Errorf("source left after the copy: %v", err)
	}
}
