package snapshot

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/snapshot/layerstore"
)

// Removing checkpoints deletes exactly the layers no remaining checkpoint
// holds: a parent's layers stay while a child builds on them, and go with
// the last checkpoint holding them. What remains still restores.
func TestRemoveCheckpoints(t *testing.T) {
	eachStore(t, func(t *testing.T, root *Root) {
		b := newBox(t, root, "box1")
		b.run()
		b.checkpoint("c1")
		b.run()
		c2 := b.checkpoint("c2")
		mem2, disk2 := slices.Clone(b.mem), b.diskContents(b.disk)

		deleted, err := root.RemoveCheckpoints([]string{"c1", "nope"})
		if err != nil {
			t.Fatal(err)
		}
		if len(deleted) != 0 {
			t.Errorf("removing c1 deleted %v, which c2 builds on", deleted)
		}
		if ids, _ := root.List(); !slices.Equal(ids, []string{"c2"}) {
			t.Errorf("checkpoints left: %v", ids)
		}
		restore(t, root, "c2", mem2, disk2, root.TopPath("r2")).Close()

		deleted, err = root.RemoveCheckpoints([]string{"c2"})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(deleted)
		if want := slices.Sorted(slices.Values(c2.layerIDs())); !slices.Equal(deleted, want) {
			t.Errorf("removing c2 deleted %v, want its layers %v", deleted, want)
		}
		for _, l := range c2.layerIDs() {
			if _, err := root.Layers().Open(l); err == nil {
				t.Errorf("layer %s still stored", l)
			}
		}
		if ids, _ := root.List(); len(ids) != 0 {
			t.Errorf("checkpoints left: %v", ids)
		}
	})
}

// Sweep leaves exactly what the caller keeps: the checkpoints it names,
// their layers and the layers a live VM may build on. Checkpoints the
// caller forgot (a crash between the store's commit and the catalog's
// record), their layers, and layers no manifest took (a VM killed in the
// middle of a commit) go.
func TestSweep(t *testing.T) {
	eachStore(t, func(t *testing.T, root *Root) {
		a := newBox(t, root, "a")
		a.run()
		a.checkpoint("a-c1")
		a.run()
		c2 := a.checkpoint("a-c2")
		memA, diskA := slices.Clone(a.mem), a.diskContents(a.disk)
		b := newBox(t, root, "b")
		b.run()
		forgotten := b.checkpoint("b-c1")
		for _, id := range []string{"b-c2-memory", "a-c3-memory"} {
			f := filepath.Join(t.TempDir(), id)
			if err := os.WriteFile(f, make([]byte, 4096), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := root.Layers().Put(id, f); err != nil {
				t.Fatal(err)
			}
		}

		keep := func(id string) bool { return id == "a-c1" || id == "a-c2" }
		live := func(layer string) bool { return strings.HasPrefix(layer, "a-") }
		removed, err := root.Sweep(keep, live)
		if err != nil {
			t.Fatal(err)
		}
		want := append([]string{"b-c1", "b-c2-memory"}, forgotten.layerIDs()...)
		slices.Sort(removed)
		slices.Sort(want)
		if !slices.Equal(removed, want) {
			t.Errorf("swept %v, want %v", removed, want)
		}
		if ids, _ := root.List(); !slices.Equal(ids, []string{"a-c1", "a-c2"}) {
			t.Errorf("checkpoints left: %v", ids)
		}
		if _, err := root.Layers().Stat("a-c3-memory"); err != nil {
			t.Errorf("a live VM's uncommitted layer was swept: %v", err)
		}
		for _, l := range c2.layerIDs() {
			if _, err := root.Layers().Stat(l); err != nil {
				t.Errorf("kept checkpoint's layer %s: %v", l, err)
			}
		}
		restore(t, root, "a-c2", memA, diskA, root.TopPath("r")).Close()
	})
}

// failingDelete is a layer store whose next Delete fails: a removal cut
// short.
type failingDelete struct {
	layerstore.Store
	fail bool
}

func (f *failingDelete) Delete(id string) error {
	if f.fail {
		f.fail = false
		return errors.New("injected: the process died here")
	}
	return f.Store.Delete(id)
}

// A removal cut short between its layers leaves every checkpoint removed
// still listing what it held, so that the same removal again frees it all:
// no layer is left that no manifest names.
func TestRemoveCheckpointsCutShort(t *testing.T) {
	dir := t.TempDir()
	d, err := layerstore.NewDir(filepath.Join(dir, "layers"))
	if err != nil {
		t.Fatal(err)
	}
	store := &failingDelete{Store: d}
	root, err := OpenRoot(dir, store)
	if err != nil {
		t.Fatal(err)
	}
	b := newBox(t, root, "box1")
	b.run()
	c1 := b.checkpoint("c1")
	store.fail = true
	if _, err := root.RemoveCheckpoints([]string{"c1"}); err == nil {
		t.Fatal("the injected failure was not reported")
	}
	if ids, _ := root.List(); !slices.Equal(ids, []string{"c1"}) {
		t.Fatalf("after a removal cut short the store lists %v, want c1 still", ids)
	}
	if _, err := root.RemoveCheckpoints([]string{"c1"}); err != nil {
		t.Fatal(err)
	}
	left, err := store.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("layers left after the removal was done again: %v (c1 held %v)", left, c1.layerIDs())
	}
}
