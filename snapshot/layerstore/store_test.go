package layerstore_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sailbox-dev/sailbox/snapshot/layerstore"
	"github.com/sailbox-dev/sailbox/snapshot/storetest"
)

func TestDir(t *testing.T) {
	storetest.Run(t, func(t *testing.T, dir string) layerstore.Store {
		s, err := layerstore.NewDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestZstd(t *testing.T) {
	storetest.Run(t, func(t *testing.T, dir string) layerstore.Store {
		s, err := layerstore.NewZstd(filepath.Join(dir, "store"), filepath.Join(dir, "cache"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestZstdCompresses: a compressible layer takes less room at rest, and a
// lost cache is rebuilt.
func TestZstdCompresses(t *testing.T) {
	dir := t.TempDir()
	s, err := layerstore.NewZstd(filepath.Join(dir, "store"), filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i / 1000)
	}
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Put("l", src); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, "store", "l.zst"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > int64(len(data))/10 {
		t.Errorf("compressed to %d of %d bytes", st.Size(), len(data))
	}
	p, err := s.Open("l")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if p, err = s.Open("l"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p); err != nil || !slices.Equal(b, data) {
		t.Fatalf("rebuilt cache differs (%v)", err)
	}
}

// TestZstdCorrupt: a damaged compressed layer fails to open; no partial
// cached copy is left to be mapped.
func TestZstdCorrupt(t *testing.T) {
	dir := t.TempDir()
	s, err := layerstore.NewZstd(filepath.Join(dir, "store"), filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 200000)
	for i := range data {
		data[i] = byte(i * 7 / 3)
	}
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Put("l", src); err != nil {
		t.Fatal(err)
	}
	stored := filepath.Join(dir, "store", "l.zst")
	b, err := os.ReadFile(stored)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	os.Chmod(stored, 0o644)
	if err := os.WriteFile(stored, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open("l"); err == nil {
		t.Fatal("Open of a damaged layer succeeded")
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "cache")); len(ents) != 0 {
		t.Errorf("cache holds %v after a failed Open", ents)
	}
}

// TestClean removes temporary files nobody holds, and keeps one that a
// writer holds locked.
func TestClean(t *testing.T) {
	dir := t.TempDir()
	s, err := layerstore.NewDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, ".tmp-123")
	if err := os.WriteFile(stale, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, []byte("layer"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Put("keep", src); err != nil {
		t.Fatal(err)
	}
	removed, err := s.Clean()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{stale}) {
		t.Errorf("Clean removed %v, want %v", removed, []string{stale})
	}
	if _, err := s.Stat("keep"); err != nil {
		t.Error(err)
	}
}
