package daemon_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
)

// With -compact-after at its default, 8, a box that keeps sleeping and
// waking has its own part of its chain merged into one checkpoint on its
// template's once it passes eight: the box wakes with its files from the
// compacted checkpoint, the template's checkpoint stays shared, and the
// old checkpoints are freed, except those a fork's chain holds.
func TestSleepCompactsLongChain(t *testing.T) {
	e := newTemplateEnv(t)
	e.close()
	e.compactAfter = daemon.DefaultCompactAfter
	e.open()
	b := e.create()
	chain := func() []catalog.Checkpoint {
		var c []catalog.Checkpoint
		e.cat.View(func(tx *catalog.Tx) error {
			var err error
			c, err = tx.Chain(b.ID)
			return err
		})
		return c
	}
	base := chain()
	if len(base) != 1 || !strings.HasPrefix(base[0].ID, "tpl-") {
		t.Fatalf("a new box's chain: %+v, want its template's checkpoint", base)
	}
	// A fork from the second checkpoint keeps it and its parent.
	for i := 1; i <= 9; i++ {
		if _, err := e.exec(b.ID, "write", "/f", strings.Repeat("x", i)); err != nil {
			t.Fatal(err)
		}
		s, err := e.m.Sleep(e.ctx, b.ID)
		if err != nil {
			t.Fatalf("sleep %d: %v", i, err)
		}
		if i < 9 && len(chain()) != i+1 {
			t.Fatalf("after sleep %d the chain is %d deep, want %d", i, len(chain()), i+1)
		}
		if i == 2 {
			if s.LastCheckpointID != b.ID+"-c2" {
				t.Fatalf("second sleep's checkpoint %s", s.LastCheckpointID)
			}
			if _, err := e.m.Fork(e.ctx, b.ID, api.ForkRequest{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	c := chain()
	if len(c) != 2 || c[0].ID != b.ID+"-c10" || c[0].ParentID != base[0].ID || c[1].ID != base[0].ID {
		t.Fatalf("after nine sleeps the chain is %+v, want %s-c10 on %s", c, b.ID, base[0].ID)
	}
	if calls := e.fake.Calls(); !slices.Contains(calls, "Compact "+b.ID+"-c9 "+b.ID+"-c10 "+base[0].ID) {
		t.Errorf("no compaction of c9 into c10 onto the template's checkpoint in %v", calls)
	}
	_, kept := e.records()
	for i := 1; i <= 9; i++ {
		id := b.ID + "-c" + string(rune('0'+i))
		if want := i <= 2; slices.Contains(kept, id) != want { // the fork's chain: c2 on c1
			t.Errorf("checkpoint %s kept: %v, want %v (checkpoints %v)", id, !want, want, kept)
		}
	}
	if out, err := e.exec(b.ID, "cat", "/f"); err != nil || out != strings.Repeat("x", 9) {
		t.Errorf("woken from the compacted checkpoint, /f holds %q (%v)", out, err)
	}
}

// With -compact-after 0, chains are never compacted.
func TestNoCompactionWhenOff(t *testing.T) {
	e := newTemplateEnv(t)
	b := e.create()
	for i := range 10 {
		if _, err := e.m.Sleep(e.ctx, b.ID); err != nil {
			t.Fatalf("sleep %d: %v", i, err)
		}
		if _, err := e.exec(b.ID, "write", "/f", "x"); err != nil {
			t.Fatal(err)
		}
	}
	if calls := e.fake.Calls(); slices.ContainsFunc(calls, func(c string) bool { return strings.HasPrefix(c, "Compact ") }) {
		t.Errorf("a compaction with -compact-after 0: %v", calls)
	}
}
