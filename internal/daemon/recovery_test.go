package daemon_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Crashes of the daemon between a VMM's commit and the catalog's record,
// or between the steps of a call, and what the next start makes of them.

// A checkpoint the VMM committed while the daemon died before recording
// it is completed: the restart promotes it and the box builds on it,
// rather than deleting a layer of a live VMM's chain.
func TestRestartPromotesCommittedCheckpoint(t *testing.T) {
	e := newEnv(t)
	a := e.create()
	c1, err := e.m.Checkpoint(e.ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	// The daemon recorded c2 as begun, the VMM committed it, the daemon
	// died.
	c2 := a.ID + "-c2"
	e.cat.Update(func(tx *catalog.Tx) error {
		b, _ := tx.Box(a.ID)
		b.CheckpointSeq = 2
		tx.PutBox(b)
		return tx.PutCheckpoint(catalog.Checkpoint{ID: c2, BoxID: a.ID, ParentID: c1.ID})
	})
	e.close()
	if _, err := e.fake.Checkpoint(e.ctx, a.ID, c2); err != nil {
		t.Fatal(err)
	}
	e.open()
	if got := e.get(a.ID); got.State != lifecycle.Running || got.LastCheckpointID != c2 {
		t.Errorf("after restart: %+v, want running on %s", got, c2)
	}
	if !slices.Contains(e.fake.Checkpoints(), c2) {
		t.Fatalf("the committed checkpoint was removed from the store: %v", e.fake.Checkpoints())
	}
	c3, err := e.m.Checkpoint(e.ctx, a.ID)
	if err != nil || c3.ParentID != c2 {
		t.Errorf("next checkpoint = %+v, %v; want one on %s", c3, err, c2)
	}
}

// A live fork the daemon did not see through: the parent's checkpoint is
// promoted (the parent's VMM builds on it) and the half-made child, whose
// VM the parent's VMM had started, is stopped and forgotten.
func TestRestartAfterForkCrash(t *testing.T) {
	e := newEnv(t)
	p := e.create()
	ck, child := p.ID+"-c1", "sb-child"
	e.cat.Update(func(tx *catalog.Tx) error {
		b, _ := tx.Box(p.ID)
		b.CheckpointSeq = 1
		tx.PutBox(b)
		if err := tx.PutCheckpoint(catalog.Checkpoint{ID: ck, BoxID: p.ID}); err != nil {
			return err
		}
		return tx.CreateBox(catalog.Box{ID: child, State: lifecycle.Creating, ParentID: p.ID, BaseCheckpoint: ck})
	})
	e.close()
	if _, _, err := e.fake.Fork(e.ctx, p.ID, ck, child, catalog.Spec{Net: &catalog.NetPolicy{}}); err != nil {
		t.Fatal(err)
	}
	e.open()
	if e.fake.Running(child) {
		t.Error("the half-made child's VM still runs")
	}
	if boxes, _ := e.records(); !slices.Equal(boxes, []string{p.ID}) {
		t.Errorf("boxes after restart: %v", boxes)
	}
	if got := e.get(p.ID); got.LastCheckpointID != ck {
		t.Errorf("parent after restart: %+v, want its last checkpoint %s", got, ck)
	}
}

// Whatever the store holds that the catalog does not reference (a
// checkpoint committed for a box since terminated, say) is swept at start.
func TestRestartSweepsStore(t *testing.T) {
	e := newEnv(t)
	a := e.create()
	e.m.Checkpoint(e.ctx, a.ID)
	e.close()
	e.fake.Checkpoint(e.ctx, a.ID, "sb-gone-c1")
	e.open()
	if got, want := e.fake.Checkpoints(), []string{a.ID + "-c1"}; !slices.Equal(got, want) {
		t.Errorf("store after restart: %v, want %v", got, want)
	}
}

// A terminate that crashed after stopping the VM, before deleting the
// record, is finished at start: the box does not come back.
func TestRestartFinishesTerminate(t *testing.T) {
	e := newEnv(t)
	a := e.create()
	e.m.Checkpoint(e.ctx, a.ID)
	e.cat.Update(func(tx *catalog.Tx) error {
		b, _ := tx.Box(a.ID)
		b.Terminating = true
		return tx.PutBox(b)
	})
	e.close()
	e.fake.Kill(a.ID)
	e.open()
	if boxes, cks := e.records(); len(boxes) != 0 || len(cks) != 0 || e.fake.Running(a.ID) {
		t.Errorf("after restart: boxes %v, checkpoints %v, VM running %v", boxes, cks, e.fake.Running(a.ID))
	}
	if got := e.fake.Checkpoints(); len(got) != 0 {
		t.Errorf("store after restart: %v", got)
	}
}

// A fork that never took a checkpoint of its own comes back after a host
// failure from the checkpoint it was forked from, as itself.
func TestLostForkRestoredFromItsBase(t *testing.T) {
	e := newEnv(t)
	p := e.create()
	e.exec(p.ID, "write", "/f", "at birth")
	f, err := e.m.Fork(e.ctx, p.ID, api.ForkRequest{})
	if err != nil {
		t.Fatal(err)
	}
	e.close()
	e.fake.Kill(f.Box.ID)
	e.open()
	if got := e.get(f.Box.ID); got.State != lifecycle.Running {
		t.Fatalf("fork after a host failure: %+v, want running", got)
	}
	if out, _ := e.exec(f.Box.ID, "cat", "/f"); out != "at birth" {
		t.Errorf("restored fork sees %q", out)
	}
	if out, _ := e.exec(f.Box.ID, "hostname"); out != f.Box.ID+"\n" {
		t.Errorf("restored fork's hostname %q", out)
	}
}

// A client that goes away in the middle of a call does not make the
// daemon forget what the VMM did meanwhile: the checkpoint, the fork and
// the box are recorded.
func TestClientDisconnectDoesNotHalfForget(t *testing.T) {
	e := newEnv(t)
	gone := func() context.Context {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		return ctx
	}
	b, err := e.m.Create(gone(), api.CreateRequest{})
	if err != nil {
		t.Fatalf("create with a client gone: %v", err)
	}
	if !e.fake.Running(b.ID) {
		t.Error("created box runs no VM")
	}
	ck, err := e.m.Checkpoint(gone(), b.ID)
	if err != nil || !ck.Completed {
		t.Fatalf("checkpoint with a client gone = %+v, %v", ck, err)
	}
	if got := e.get(b.ID); got.LastCheckpointID != ck.ID {
		t.Errorf("box after the checkpoint: %+v", got)
	}
	f, err := e.m.Fork(gone(), b.ID, api.ForkRequest{})
	if err != nil {
		t.Fatalf("fork with a client gone: %v", err)
	}
	if got := e.get(f.Box.ID); got.State != lifecycle.Running || !e.fake.Running(f.Box.ID) {
		t.Errorf("child after the fork: %+v", got)
	}
	boxes, cks := e.records()
	if len(boxes) != 2 || len(cks) != 2 || e.fake.RunningCount() != 2 || len(e.fake.Checkpoints()) != 2 {
		t.Errorf("records %v %v; VMs %d, stored checkpoints %v", boxes, cks, e.fake.RunningCount(), e.fake.Checkpoints())
	}
}

// Calls naming boxes that do not exist leave no lock behind, nor do
// terminated boxes.
func TestLocksOfUnknownBoxesForgotten(t *testing.T) {
	e := newEnv(t)
	a := e.create()
	for i := range 100 {
		e.m.Checkpoint(e.ctx, fmt.Sprintf("sb-nope%d", i))
		e.m.Resume(e.ctx, fmt.Sprintf("sb-nope%d", i))
	}
	e.m.Terminate(e.ctx, a.ID)
	if n := e.m.LockCount(); n != 0 {
		t.Errorf("%d locks held after calls on unknown and terminated boxes", n)
	}
}

// A wake the daemon did not see through leaves a VM for a box recorded
// asleep; the restart stops it.
func TestRestartStopsVMOfSleepingBox(t *testing.T) {
	e := newEnv(t)
	a := e.create()
	s, err := e.m.Sleep(e.ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	e.close()
	if _, err := e.fake.Restore(e.ctx, a.ID, catalog.Spec{Net: &catalog.NetPolicy{}}, s.LastCheckpointID, false); err != nil {
		t.Fatal(err)
	}
	e.open()
	if got := e.get(a.ID); got.State != lifecycle.Sleeping || e.fake.Running(a.ID) {
		t.Errorf("after restart: %+v, VM running %v", got, e.fake.Running(a.ID))
	}
}

// A box whose VM dies right after each automatic restore is not restored
// over and over: the third exit within a minute marks it failed, and a
// resume brings it back.
func TestCrashLoopMarksFailed(t *testing.T) {
	e := newEnv(t)
	a := e.create()
	if _, err := e.m.Checkpoint(e.ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s: box %+v", what, e.get(a.ID))
			}
		}
	}
	for i := range 2 {
		e.fake.Crash(a.ID)
		waitFor(fmt.Sprintf("restore %d", i+1), func() bool { return e.fake.Running(a.ID) })
	}
	e.fake.Crash(a.ID)
	waitFor("failed", func() bool { return e.get(a.ID).State == lifecycle.Failed })
	if e.fake.Running(a.ID) {
		t.Error("a crash-looping box was restored a third time")
	}
	if b, err := e.m.Resume(e.ctx, a.ID); err != nil || b.State != lifecycle.Running {
		t.Errorf("resume after a crash loop: %+v, %v", b, err)
	}
}
