package catalog

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sailbox-dev/sailbox/api/lifecycle"
)

func open(t *testing.T, path string) *Catalog {
	t.Helper()
	c, err := Open(path, &Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newCatalog(t *testing.T) *Catalog {
	c := open(t, filepath.Join(t.TempDir(), "catalog.db"))
	t.Cleanup(func() { c.Close() })
	return c
}

func box(id string) Box {
	return Box{ID: id, State: lifecycle.Running, Created: time.Unix(1700000000, 0).UTC(), HostID: "h1", Spec: Spec{MemoryMiB: 256, VCPUs: 1}}
}

// checkpoint records a completed checkpoint of box id on its chain, as
// the daemon does.
func checkpoint(tx *Tx, boxID string) (Checkpoint, error) {
	b, err := tx.Box(boxID)
	if err != nil {
		return Checkpoint{}, err
	}
	b.CheckpointSeq++
	c := Checkpoint{ID: fmt.Sprintf("%s-c%d", b.ID, b.CheckpointSeq), BoxID: b.ID, ParentID: b.Head(), Created: time.Now().UTC(), Completed: true}
	if err := tx.PutCheckpoint(c); err != nil {
		return Checkpoint{}, err
	}
	b.LastCheckpoint = c.ID
	return c, tx.PutBox(b)
}

// fork records child as a fork of parent's head.
func fork(tx *Tx, parent, child string) error {
	p, err := tx.Box(parent)
	if err != nil {
		return err
	}
	b := box(child)
	b.ParentID, b.BaseCheckpoint = parent, p.Head()
	return tx.CreateBox(b)
}

func ids(cs []Checkpoint) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.ID)
	}
	return out
}

func TestBoxesAndCheckpoints(t *testing.T) {
	c := newCatalog(t)
	err := c.Update(func(tx *Tx) error {
		if err := tx.CreateBox(box("a")); err != nil {
			return err
		}
		if err := tx.CreateBox(box("a")); !errors.Is(err, ErrExists) {
			t.Errorf("second create: %v", err)
		}
		if err := tx.PutCheckpoint(Checkpoint{ID: "x", BoxID: "nobox"}); !errors.Is(err, ErrDangling) {
			t.Errorf("checkpoint of an unknown box: %v", err)
		}
		if err := tx.PutCheckpoint(Checkpoint{ID: "x", BoxID: "a", ParentID: "nope"}); !errors.Is(err, ErrDangling) {
			t.Errorf("checkpoint with an unknown parent: %v", err)
		}
		b := box("b")
		b.LastCheckpoint = "nope"
		if err := tx.PutBox(b); !errors.Is(err, ErrDangling) {
			t.Errorf("box naming an unknown checkpoint: %v", err)
		}
		for range 3 {
			if _, err := checkpoint(tx, "a"); err != nil {
				return err
			}
		}
		return fork(tx, "a", "b")
	})
	if err != nil {
		t.Fatal(err)
	}
	c.View(func(tx *Tx) error {
		chain, err := tx.Chain("b")
		if err != nil || !slices.Equal(ids(chain), []string{"a-c3", "a-c2", "a-c1"}) {
			t.Errorf("chain of b = %v, %v", ids(chain), err)
		}
		if _, err := tx.Box("zz"); !errors.Is(err, ErrNotFound) {
			t.Errorf("unknown box: %v", err)
		}
		if _, err := tx.Chain("zz"); !errors.Is(err, ErrNotFound) {
			t.Errorf("chain of unknown box: %v", err)
		}
		boxes, _ := tx.Boxes()
		if len(boxes) != 2 || boxes[0].ID != "a" || boxes[1].ID != "b" || boxes[1].ParentID != "a" {
			t.Errorf("boxes = %+v", boxes)
		}
		return nil
	})
	// A failed Update leaves nothing behind.
	boom := errors.New("boom")
	if err := c.Update(func(tx *Tx) error {
		if err := tx.CreateBox(box("half")); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	c.View(func(tx *Tx) error {
		if _, err := tx.Box("half"); !errors.Is(err, ErrNotFound) {
			t.Errorf("rolled-back box: %v", err)
		}
		return nil
	})
	if err := c.Update(func(tx *Tx) error { return tx.DeleteBox("nope") }); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete unknown box: %v", err)
	}
	if err := c.Update(func(tx *Tx) error { return tx.DeleteCheckpoint("nope") }); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete unknown checkpoint: %v", err)
	}
}

// Terminating boxes frees only the checkpoints no remaining chain holds,
// children before parents.
func TestUnreferenced(t *testing.T) {
	c := newCatalog(t)
	err := c.Update(func(tx *Tx) error {
		tx.CreateBox(box("a"))
		checkpoint(tx, "a") // a-c1
		checkpoint(tx, "a") // a-c2
		fork(tx, "a", "b")  // b on a-c2
		checkpoint(tx, "a") // a-c3
		checkpoint(tx, "b") // b-c1 ← a-c2
		checkpoint(tx, "b") // b-c2
		tx.PutCheckpoint(Checkpoint{ID: "a-pending", BoxID: "a", ParentID: "a-c3"})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	unref := func() []string {
		var out []string
		c.View(func(tx *Tx) error {
			u, err := tx.Unreferenced()
			if err != nil {
				t.Fatal(err)
			}
			out = ids(u)
			return nil
		})
		return out
	}
	if u := unref(); len(u) != 0 {
		t.Errorf("unreferenced with every box alive: %v", u)
	}
	c.Update(func(tx *Tx) error { return tx.DeleteBox("a") })
	if u := unref(); !slices.Equal(u, []string{"a-c3"}) {
		t.Errorf("after a: unreferenced = %v, want [a-c3] (b's chain holds a-c2, a-c1)", u)
	}
	c.Update(func(tx *Tx) error { return tx.DeleteBox("b") })
	if u := unref(); len(u) != 5 || u[0] != "b-c2" || u[len(u)-1] != "a-c1" {
		t.Errorf("after b: unreferenced = %v, want all five, children first", u)
	}
	c.View(func(tx *Tx) error {
		inc, _ := tx.Incomplete()
		if !slices.Equal(ids(inc), []string{"a-pending"}) {
			t.Errorf("incomplete = %v", ids(inc))
		}
		return nil
	})
}

// A template's checkpoint is referenced while the template or a box made
// from it holds it; a checkpoint needs an owner, a box or a template.
func TestTemplates(t *testing.T) {
	c := newCatalog(t)
	err := c.Update(func(tx *Tx) error {
		if err := tx.PutCheckpoint(Checkpoint{ID: "tpl-x-1", BoxID: "tpl-x", Completed: true}); !errors.Is(err, ErrDangling) {
			t.Errorf("checkpoint of no box or template: %v", err)
		}
		if err := tx.PutTemplate(Template{ID: "tpl-x", Checkpoint: "tpl-x-1"}); !errors.Is(err, ErrDangling) {
			t.Errorf("template naming a missing checkpoint: %v", err)
		}
		if err := tx.PutTemplate(Template{ID: "tpl-x"}); err != nil {
			return err
		}
		if err := tx.PutCheckpoint(Checkpoint{ID: "tpl-x-1", BoxID: "tpl-x", Completed: true}); err != nil {
			return err
		}
		if err := tx.PutTemplate(Template{ID: "tpl-x", Checkpoint: "tpl-x-1"}); err != nil {
			return err
		}
		b := box("a")
		b.Template, b.BaseCheckpoint = "tpl-x", "tpl-x-1"
		if err := tx.CreateBox(b); err != nil {
			return err
		}
		_, err := checkpoint(tx, "a")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	unref := func() (out []string) {
		c.View(func(tx *Tx) error {
			u, err := tx.Unreferenced()
			if err != nil {
				t.Fatal(err)
			}
			out = ids(u)
			return nil
		})
		return out
	}
	c.Update(func(tx *Tx) error { return tx.DeleteTemplate("tpl-x") })
	if u := unref(); len(u) != 0 {
		t.Errorf("with box a on the template's checkpoint: unreferenced %v", u)
	}
	c.Update(func(tx *Tx) error {
		tx.PutTemplate(Template{ID: "tpl-x", Checkpoint: "tpl-x-1"})
		return tx.DeleteBox("a")
	})
	if u := unref(); !slices.Equal(u, []string{"a-c1"}) {
		t.Errorf("with the template only: unreferenced %v, want [a-c1]", u)
	}
	c.Update(func(tx *Tx) error { return tx.DeleteTemplate("tpl-x") })
	if u := unref(); !slices.Equal(u, []string{"a-c1", "tpl-x-1"}) {
		t.Errorf("with neither: unreferenced %v", u)
	}
}

func TestReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.db")
	c := open(t, path)
	c.Update(func(tx *Tx) error {
		b := box("a")
		b.Ports = []Port{{HostAddr: "127.0.0.1:8080", HostPort: 8080, GuestPort: 80}}
		b.PendingUpgrade = true
		tx.CreateBox(b)
		_, err := checkpoint(tx, "a")
		return err
	})
	// A second opener waits for the lock, then fails.
	if _, err := Open(path, &Options{LockTimeout: 50 * time.Millisecond}); err == nil {
		t.Error("second open of a catalog in use succeeded")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c = open(t, path)
	defer c.Close()
	c.View(func(tx *Tx) error {
		b, err := tx.Box("a")
		want := box("a")
		want.Ports = []Port{{HostAddr: "127.0.0.1:8080", HostPort: 8080, GuestPort: 80}}
		want.PendingUpgrade, want.LastCheckpoint, want.CheckpointSeq = true, "a-c1", 1
		if err != nil || !equalBox(b, want) {
			t.Errorf("after reopen: %+v, %v; want %+v", b, err, want)
		}
		if ck, err := tx.Checkpoint("a-c1"); err != nil || !ck.Completed || ck.BoxID != "a" {
			t.Errorf("checkpoint after reopen: %+v, %v", ck, err)
		}
		return nil
	})
}

func equalBox(a, b Box) bool {
	return a.ID == b.ID && a.State == b.State && a.Created.Equal(b.Created) && a.Spec == b.Spec &&
		a.LastCheckpoint == b.LastCheckpoint && a.CheckpointSeq == b.CheckpointSeq &&
		a.PendingUpgrade == b.PendingUpgrade && slices.Equal(a.Ports, b.Ports)
}

func TestVersionRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.db")
	open(t, path).Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyVersion, []byte("99")) })
	db.Close()
	if _, err := Open(path, nil); !errors.Is(err, ErrVersion) {
		t.Errorf("open of a version 99 catalog: %v", err)
	}
}

func TestCorruptChain(t *testing.T) {
	c := newCatalog(t)
	c.Update(func(tx *Tx) error {
		tx.CreateBox(box("a"))
		checkpoint(tx, "a")
		checkpoint(tx, "a")
		// Make a-c1's parent a-c2: a loop.
		ck, _ := tx.Checkpoint("a-c1")
		ck.ParentID = "a-c2"
		return tx.PutCheckpoint(ck)
	})
	c.View(func(tx *Tx) error {
		if _, err := tx.Chain("a"); !errors.Is(err, ErrCorrupt) {
			t.Errorf("looping chain: %v", err)
		}
		return nil
	})
}

// Twenty goroutines create boxes, checkpoint them and fork each other's
// at once; afterwards every chain resolves and nothing is unreferenced.
func TestConcurrent(t *testing.T) {
	c := newCatalog(t)
	const workers, rounds = 20, 5
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("w%02d", w)
			if err := c.Update(func(tx *Tx) error { return tx.CreateBox(box(id)) }); err != nil {
				errs <- err
				return
			}
			for r := range rounds {
				err := c.Update(func(tx *Tx) error {
					if _, err := checkpoint(tx, id); err != nil {
						return err
					}
					// Fork a neighbour if it exists yet.
					parent := fmt.Sprintf("w%02d", (w+1)%workers)
					if _, err := tx.Box(parent); errors.Is(err, ErrNotFound) {
						return nil
					}
					return fork(tx, parent, fmt.Sprintf("%s-f%d", id, r))
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	c.View(func(tx *Tx) error {
		boxes, err := tx.Boxes()
		if err != nil {
			t.Fatal(err)
		}
		cks, _ := tx.Checkpoints()
		if len(cks) != workers*rounds {
			t.Errorf("%d checkpoints, want %d", len(cks), workers*rounds)
		}
		for _, b := range boxes {
			chain, err := tx.Chain(b.ID)
			if err != nil {
				t.Errorf("chain of %s: %v", b.ID, err)
			}
			if b.ParentID == "" && len(chain) != rounds {
				t.Errorf("%s: chain of %d, want %d", b.ID, len(chain), rounds)
			}
		}
		if u, _ := tx.Unreferenced(); len(u) != 0 {
			t.Errorf("unreferenced: %v", ids(u))
		}
		return nil
	})
}
