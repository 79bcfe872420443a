package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/sailbox-dev/sailbox/snapshot/memlayer"
)

// sampleWorkingSet is the working set of testdata/workingset-v1.golden,
// over 200 guest pages.
func sampleWorkingSet() WorkingSet {
	ws := WorkingSet{Touched: make([]uint64, 4), Written: make([]uint64, 4)}
	for _, p := range []uint64{0, 1, 2, 3, 63, 64, 65, 120, 199} {
		ws.Touched[p/64] |= 1 << (p % 64)
	}
	for _, p := range []uint64{2, 3, 64, 150} {
		ws.Written[p/64] |= 1 << (p % 64)
	}
	return ws
}

func TestWorkingSetGolden(t *testing.T) {
	b, err := EncodeWorkingSet(sampleWorkingSet(), 200)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "workingset-v1.golden")
	if *update {
		if err := os.WriteFile(golden, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, old) {
		t.Error("EncodeWorkingSet's output differs from testdata/workingset-v1.golden: the format changed; bump WorkingSetVersion and keep the old golden file (see FORMAT.md)")
	}
	ws, err := DecodeWorkingSet(old, 200)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ws, sampleWorkingSet()) {
		t.Errorf("golden working set decodes to %+v, want %+v", ws, sampleWorkingSet())
	}
	if ws.Pages() != 10 {
		t.Errorf("Pages() = %d, want 10", ws.Pages())
	}
}

// Every damage is refused with ErrCorrupt (or ErrIncompatibleVersion for a
// version this reader does not know), never decoded into something else.
func TestWorkingSetRefusesDamage(t *testing.T) {
	good, err := EncodeWorkingSet(sampleWorkingSet(), 200)
	if err != nil {
		t.Fatal(err)
	}
	for i := range good {
		b := bytes.Clone(good)
		b[i] ^= 0x40
		if _, err := DecodeWorkingSet(b, 200); !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrIncompatibleVersion) {
			t.Errorf("byte %d flipped: %v", i, err)
		}
	}
	for n := range len(good) {
		if _, err := DecodeWorkingSet(good[:n], 200); !errors.Is(err, ErrCorrupt) {
			t.Errorf("truncated to %d bytes: %v", n, err)
		}
	}
	if _, err := DecodeWorkingSet(good, 100); !errors.Is(err, ErrCorrupt) {
		t.Errorf("decoded for another memory size: %v", err)
	}
	newer := bytes.Clone(good)
	binary.LittleEndian.PutUint32(newer[8:], WorkingSetVersion+1)
	if _, err := DecodeWorkingSet(newer, 200); !errors.Is(err, ErrIncompatibleVersion) {
		t.Errorf("version %d: %v", WorkingSetVersion+1, err)
	}
	if _, err := EncodeWorkingSet(sampleWorkingSet(), 150); err == nil {
		t.Error("encoded a page beyond the guest")
	}
}

// A checkpoint's working set is the first one saved for it, else its
// nearest ancestor's (held from the start by a checkpoint committed after
// it); a removed ancestor ends the search.
func TestWorkingSetOfAChain(t *testing.T) {
	root, err := OpenRoot(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	b := newBox(t, root, "ws")
	b.run()
	c1 := b.checkpoint("c1")
	b.run()
	c2 := b.checkpoint("c2")
	b.run()
	c3 := b.checkpoint("c3")
	if _, from, err := root.WorkingSet(c3); err != nil || from != "" {
		t.Fatalf("working set of a chain without one: from %q, %v", from, err)
	}

	pages := uint64(testMemSize / memlayer.PageSize)
	first := WorkingSet{Touched: []uint64{0b1011}, Written: []uint64{0b10}}
	second := WorkingSet{Touched: []uint64{0xff00}, Written: []uint64{0}}
	if saved, err := root.SaveWorkingSet("c1", first); err != nil || !saved {
		t.Fatalf("save c1: %v, %v", saved, err)
	}
	if saved, err := root.SaveWorkingSet("c1", second); err != nil || saved {
		t.Errorf("second save of c1: saved %v, %v; want the first to stay", saved, err)
	}
	for _, m := range []*Manifest{c1, c2, c3} {
		ws, from, err := root.WorkingSet(m)
		if err != nil || from != "c1" || ws.Touched[0] != first.Touched[0] || ws.Written[0] != first.Written[0] || len(ws.Touched) != int(pages+63)/64 {
			t.Errorf("working set of %s = %+v from %q, %v; want c1's", m.ID, ws, from, err)
		}
	}
	if saved, err := root.SaveWorkingSet("c2", second); err != nil || !saved {
		t.Fatalf("save c2: %v, %v", saved, err)
	}
	if ws, from, err := root.WorkingSet(c3); err != nil || from != "c2" || ws.Touched[0] != second.Touched[0] {
		t.Errorf("working set of c3 = %+v from %q, %v; want c2's", ws, from, err)
	}
	if _, err := root.SaveWorkingSet("nope", first); !errors.Is(err, ErrNotFound) {
		t.Errorf("save for a missing checkpoint: %v", err)
	}
	if _, err := root.SaveWorkingSet("c3", WorkingSet{Touched: []uint64{0, 1}}); err == nil {
		t.Error("saved a working set with a page beyond the guest")
	}

	// A damaged file is an error naming the checkpoint, not a guess.
	path := filepath.Join(root.checkpointDir("c2"), workingSetName)
	if err := os.WriteFile(path, []byte("SBXWSET\nrubbish"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := root.WorkingSet(c3); !errors.Is(err, ErrCorrupt) {
		t.Errorf("damaged working set of c2: %v", err)
	}

	// With c2 removed, c3's search ends there.
	if err := root.Remove("c2"); err != nil {
		t.Fatal(err)
	}
	if _, from, err := root.WorkingSet(c3); err != nil || from != "" {
		t.Errorf("working set of c3 past a removed parent: from %q, %v", from, err)
	}

	// A checkpoint committed on one with a working set holds it itself.
	if saved, err := root.SaveWorkingSet("c3", second); err != nil || !saved {
		t.Fatalf("save c3: %v, %v", saved, err)
	}
	b.run()
	c4 := b.checkpoint("c4")
	if ws, from, err := root.WorkingSet(c4); err != nil || from != "c4" || ws.Touched[0] != second.Touched[0] {
		t.Errorf("working set of c4 = %+v from %q, %v; want c3's, held by c4", ws, from, err)
	}
	if saved, err := root.SaveWorkingSet("c4", first); err != nil || saved {
		t.Errorf("save over c4's inherited working set: saved %v, %v", saved, err)
	}
}

func FuzzDecodeWorkingSet(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("testdata", "workingset-v1.golden")); err == nil {
		f.Add(b)
	}
	f.Add([]byte("SBXWSET\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ws, err := DecodeWorkingSet(b, 200)
		if err != nil {
			return
		}
		again, err := EncodeWorkingSet(ws, 200)
		if err != nil {
			t.Fatalf("a decoded working set does not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("decode → encode changed the bytes")
		}
	})
}
