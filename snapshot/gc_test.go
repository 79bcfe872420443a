package snapshot

import (
	"slices"
	"testing"
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
