// Package storetest is the conformance suite every layerstore.Store
// implementation must pass:
//
//	func TestSuite(t *testing.T) {
//		storetest.Run(t, func(t *testing.T, dir string) layerstore.Store {
//			s, err := layerstore.NewDir(dir)
//			if err != nil {
//				t.Fatal(err)
//			}
//			return s
//		})
//	}
//
// newStore is called with a fresh directory for each test, and again with
// the same directory where a test checks that layers outlive the Store
// value (a daemon restart).
package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sailbox-dev/sailbox/snapshot/disklayer"
	"github.com/sailbox-dev/sailbox/snapshot/layerstore"
	"github.com/sailbox-dev/sailbox/snapshot/memlayer"
)

// Run runs the suite against the stores newStore makes.
func Run(t *testing.T, newStore func(t *testing.T, dir string) layerstore.Store) {
	tests := []struct {
		name string
		fn   func(*testing.T, func(*testing.T, string) layerstore.Store)
	}{
		{"PutOpen", testPutOpen},
		{"PutExisting", testPutExisting},
		{"NotFound", testNotFound},
		{"InvalidID", testInvalidID},
		{"ListDelete", testListDelete},
		{"Reopen", testReopen},
		{"EmptyLayer", testEmpty},
		{"MemoryLayerMappable", testMemoryLayer},
		{"SparseDiskLayer", testDiskLayer},
		{"ConcurrentOpen", testConcurrentOpen},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore) })
	}
}

// scratch returns a directory for source files, on the same file system
// as the store's when possible (so Put can rename).
func scratch(t *testing.T) string { return t.TempDir() }

// writeFile writes b to a new file and returns its path.
func writeFile(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(scratch(t), "src")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func put(t *testing.T, s layerstore.Store, id string, b []byte) {
	t.Helper()
	if err := s.Put(id, writeFile(t, b)); err != nil {
		t.Fatalf("Put(%q): %v", id, err)
	}
}

// checkContent opens id and compares its bytes with want.
func checkContent(t *testing.T, s layerstore.Store, id string, want []byte) {
	t.Helper()
	p, err := s.Open(id)
	if err != nil {
		t.Fatalf("Open(%q): %v", id, err)
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("layer %q: %d bytes differ from the %d put", id, len(got), len(want))
	}
	info, err := s.Stat(id)
	if err != nil || info.ID != id || info.Size != int64(len(want)) {
		t.Fatalf("Stat(%q) = %+v, %v; want size %d", id, info, err, len(want))
	}
}

func testPutOpen(t *testing.T, newStore func(*testing.T, string) layerstore.Store) {
	s := newStore(t, t.TempDir())
	data := randomBytes(1, 300<<10)
	src := writeFile(t, data)
	if err := s.Put("layer-1", src); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(src); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Put left its source in place: %v", err)
	}
	checkContent(t, s, "layer-1", data)
	checkContent(t, s, "layer-1", data) // a second Open
}

func testPutExisting(t *testing.T, newStore func(*testing.T, string) layerstore.Store) {
	s := newStore(t, t.TempDir())
	first := randomBytes(2, 10000)
	put(t, s, "a", first)
	src := writeFile(t, []byte("other"))
	if err := s.Put("a", src); !errors.Is(err, layerstore.ErrExists) {
		t.Fatalf("Put over an existing layer = %v, want ErrExists", err)
	}
	if _, err := os.Stat(src); err != nil {
		t.Errorf("a failed Put consumed its source: %v", err)
	}
	checkContent(t, s, "a", first)
}

func testNotFound(t *testing.T, newStore func(*testing.T, string) layerstore.Store) {
	s := newStore(t, t.TempDir())
	if _, err := s.Open("nope"); !errors.Is(err, layerstore.ErrNotFound) {
		t.Errorf("Open = %v, want ErrNotFound", err)
	}
	if _, err := s.Stat("nope"); !errors.Is(err, layerstore.ErrNotFound) {
		t.Errorf("Stat = %v, want ErrNotFound", err)
	}
	if err := s.Delete("nope"); !errors.Is(err, layerstore.ErrNotFound) {
		t.Errorf("Delete = %v, want ErrNotFound", err)
	}
	if err := s.Put("x", filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("Put of a missing file succeeded")
	}
	if l, err := s.List(); err != nil || len(l) != 0 {
		t.Errorf("List of an empty store = %v, %v", l, err)
	}
}

func testInvalidID(t *testing.T, newStore func(*testing.T, string) layerstore.Store) {
	s := newStore(t, t.TempDir())
	for _, id := range []string{"", ".", "..", "../x", "a/b", ".tmp-x", "-a", "a b", string(make([]byte, 200))} {
		if err := s.Put(id, writeFile(t, []byte("x"))); !errors.Is(err, layerstore.ErrInvalidID) {
			t.Errorf("Put(%q) = %v, want ErrInvalidID", id, err)
		}
		if _, err := s.Open(id); !errors.Is(err, layerstore.ErrInvalidID) {
			t.Errorf("Open(%q) = %v, want ErrInvalidID", id, err)
		}
		if err := s.Delete(id); !errors.Is(err, layerstore.ErrInvalidID) {
			t.Errorf("Delete(%q) = %v, want ErrInvalidID", id, err)
		}
	}
}

func testListDelete(t *testing.T, newStore func(*testing.T, string) layerstore.Store) {
	s := newStore(t, t.TempDir())
	for i, id := range []string{"c", "a", "b.mem", "B"} {
		put(t, s, id, randomBytes(uint64(i), 100*(i+1)))
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(list); got != "[{B 400} {a 200} {b.mem 300} {c 100}]" {
		t.Errorf("List = %s", got)
	}
	p, err := s.Open("a")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p) // an open file survives Delete
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := s.Delete("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open("a"); !errors.Is(err, layerstore.ErrNotFound) {
		t.Errorf("Open after Delete = %v", err)
	}
	if b := make([]byte, 200); func() error { _, err := f.ReadAt(b, 0); return err }() != nil || !bytes.Equal(b, randomBytes(1, 200)) {
		t.Error("a file opened before Delete is no longer readable")
	}
	list, err = s.List()
	if err != nil || fmt.Sprint(list) != "[{B 400} {b.mem 300} {c 100}]" {
		t.Errorf("List after Delete = %v, %v", list, err)
	}
	// The ID can be used again.
	put(t, s, "a", []byte("again"))
	checkContent(t, s, "a", []byte("again"))
}

func testReopen(t *testing.T, newStore func(*testing.T, string) layerstore.Store) {
	dir := t.TempDir()
	data := randomBytes(3, 50000)
	put(t, newStore(t, dir), "persist", data)
	s := newStore(t, dir)
	checkContent(t, s, "persist", data)
	if l, err := s.List(); err != nil || len(l) != 1 {
		t.Errorf("List after reopen = %v, %v", l, err)
	}
}

func testEmpty(t *testing.T, newStore func(*testing.T, string) layerstore.Store) {
	s := newStore(t, t.TempDir())
	put(t, s, "empty", nil)
	checkContent(t, s, "empty", nil)
}

// testMemoryLayer: what Open returns is a valid, mappable memory layer.
func testMemoryLayer(t *testing.T, newStore func(*testing.T, string) layerstore.Store) {
	s := newStore(t, t.TempDir())
	w, err := memlayer.Create(filepath.Join(scratch(t), "mem"))
	if err != nil {
		t.Fatal(err)
	}
	for _, pfn := range []uint64{3, 4, 90} {
		if err := w.WritePages(pfn, randomBytes(pfn, memlayer.PageSize)); err != nil {
			t.Fatal(err)
		}
	}
	info, err := w.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put("mem", info.Path); err != nil {
		t.Fatal(err)
	}
	p, err := s.Open("mem")
	if err != nil {
		t.Fatal(err)
	}
	l, err := memlayer.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Verify(); err != nil {
		t.Fatal(err)
	}
	if l.Checksum() != info.Checksum {
		t.Errorf("checksum %08x after the store, %08x before", l.Checksum(), info.Checksum)
	}
}

// testDiskLayer: a sealed (sparse) disk layer comes back valid, and still
// sparse.
func testDiskLayer(t *testing.T, newStore func(*testing.T, string) layerstore.Store) {
	s := newStore(t, t.TempDir())
	dir := scratch(t)
	const size = 4 << 20
	d, err := disklayer.Open(disklayer.Layout{Size: size}, filepath.Join(dir, "top"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	data := randomBytes(4, 3*disklayer.BlockSize)
	if _, err := d.WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	info, err := d.Seal(filepath.Join(dir, "top2"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put("disk", info.Path); err != nil {
		t.Fatal(err)
	}
	p, err := s.Open("disk")
	if err != nil {
		t.Fatal(err)
	}
	l, err := disklayer.OpenLayer(p)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Verify(); err != nil {
		t.Fatal(err)
	}
	if l.Checksum() != info.Checksum {
		t.Errorf("checksum %08x after the store, %08x before", l.Checksum(), info.Checksum)
	}
	if used := allocated(t, p); used > 1<<20 {
		t.Errorf("a %d-byte sparse layer occupies %d bytes after the store", info.FileBytes, used)
	}
}

func testConcurrentOpen(t *testing.T, newStore func(*testing.T, string) layerstore.Store) {
	s := newStore(t, t.TempDir())
	data := randomBytes(5, 200<<10)
	put(t, s, "shared", data)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := s.Open("shared")
			if err == nil {
				var b []byte
				if b, err = os.ReadFile(p); err == nil && !bytes.Equal(b, data) {
					err = errors.New("content differs")
				}
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}
