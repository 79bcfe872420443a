package main

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
)

// Host failure: after SIGKILL of the daemon and of every VMM, a restarted
// daemon restores each running box from its most recent completed
// checkpoint (what ran after it is gone, nothing is replayed), leaves
// paused and sleeping boxes so, and keeps only completed checkpoints.
func TestKVMDaemonCrashRecovery(t *testing.T) {
	h := newHost(t)
	ctx := ctxFor(t, 15*time.Minute)
	c := h.c

	boxes := map[string]api.Box{}
	for _, name := range []string{"running", "paused", "sleeping", "fresh"} {
		b, err := c.Create(ctx, api.CreateRequest{})
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		boxes[name] = b
		h.run(b.ID, "sh", "-c", "echo -n before > /tmp/f")
	}
	run := boxes["running"].ID
	if _, err := c.Checkpoint(ctx, run); err != nil {
		t.Fatal(err)
	}
	h.run(run, "sh", "-c", "echo -n after > /tmp/f")
	if _, err := c.Pause(ctx, boxes["paused"].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Sleep(ctx, boxes["sleeping"].ID); err != nil {
		t.Fatal(err)
	}
	// A checkpoint in flight when the host dies either completed or
	// leaves nothing.
	inFlight := make(chan error, 1)
	go func() {
		_, err := c.Checkpoint(ctx, boxes["fresh"].ID)
		inFlight <- err
	}()
	time.Sleep(50 * time.Millisecond)

	h.kill()
	if n := h.killVMMs(); n != 2 {
		t.Errorf("killed %d VMMs, want 2 (the running boxes')", n)
	}
	<-inFlight
	h.start()

	got := map[string]lifecycle.State{}
	for name, b := range boxes {
		nb, err := c.Get(ctx, b.ID)
		if err != nil {
			t.Fatalf("%s box after the crash: %v", name, err)
		}
		got[name] = nb.State
	}
	want := map[string]lifecycle.State{"running": lifecycle.Running, "paused": lifecycle.Paused, "sleeping": lifecycle.Sleeping}
	for name, st := range want {
		if got[name] != st {
			t.Errorf("%s box is %s after the crash, want %s", name, got[name], st)
		}
	}
	// The running box is back at its checkpoint.
	if out := h.run(run, "cat", "/tmp/f"); out != "before" {
		t.Errorf("running box after the crash has %q, want its checkpoint's before", out)
	}
	// The fresh box had no checkpoint of its own unless the one in flight
	// completed: it is running from it, or from its template's (as it
	// was created, without /tmp/f).
	fresh, _ := c.Get(ctx, boxes["fresh"].ID)
	switch {
	case fresh.State != lifecycle.Running:
		t.Errorf("fresh box after the crash: %+v, want running", fresh)
	case fresh.LastCheckpoint != nil:
		if out := h.run(fresh.ID, "cat", "/tmp/f"); out != "before" {
			t.Errorf("fresh box restored with %q", out)
		}
	default:
		if out, code, err := h.exec(fresh.ID, "cat", "/tmp/f"); err != nil || code == 0 {
			t.Errorf("fresh box restored from its template has /tmp/f: %q, exit %d, %v", out, code, err)
		}
	}
	for name, b := range boxes {
		cks, err := c.Checkpoints(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, ck := range cks {
			if !ck.Completed {
				t.Errorf("%s box kept an incomplete checkpoint %s", name, ck.ID)
			}
		}
	}
	// Sleeping and paused boxes wake as before.
	if out := h.run(boxes["sleeping"].ID, "cat", "/tmp/f"); out != "before" {
		t.Errorf("sleeping box woke with %q", out)
	}
	if b, err := c.Resume(ctx, boxes["paused"].ID); err != nil || b.State != lifecycle.Running {
		t.Errorf("resume of the paused box: %+v, %v", b, err)
	}
	if out := h.run(boxes["paused"].ID, "cat", "/tmp/f"); out != "before" {
		t.Errorf("paused box resumed with %q", out)
	}
}

// Twenty forks of one box and an exec in each, all at once, leave the
// catalog consistent: every child runs its own guest, every checkpoint is
// complete and accounted for, and terminating everything frees the store.
func TestKVMDaemonConcurrentForks(t *testing.T) {
	h := newHost(t)
	ctx := ctxFor(t, 20*time.Minute)
	c := h.c
	parent, err := c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	h.run(parent.ID, "sh", "-c", "echo -n parent > /tmp/who")

	const n = 20
	var wg sync.WaitGroup
	var mu sync.Mutex
	kids := map[string]bool{}
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fr, err := c.Fork(ctx, parent.ID)
			if err != nil {
				errs <- fmt.Errorf("fork %d: %w", i, err)
				return
			}
			out, code, err := h.exec(fr.Box.ID, "sh", "-c", "cat /tmp/who; echo -n "+fr.Box.ID+" > /tmp/who")
			if err != nil || code != 0 || out != "parent" {
				errs <- fmt.Errorf("exec in fork %s: %q, exit %d, %v", fr.Box.ID, out, code, err)
			}
			mu.Lock()
			kids[fr.Box.ID] = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(kids) != n {
		t.Fatalf("%d forks, want %d", len(kids), n)
	}

	all, err := c.List(ctx, client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != n+1 {
		t.Errorf("list: %d boxes, want %d", len(all), n+1)
	}
	for _, b := range all {
		if b.State != lifecycle.Running {
			t.Errorf("box %s is %s", b.ID, b.State)
		}
		if b.ID != parent.ID && (!kids[b.ID] || b.ParentID != parent.ID) {
			t.Errorf("unexpected box %+v", b)
		}
	}
	if got := len(h.vmmPIDs()); got != n+1 {
		t.Errorf("%d VMMs run, want %d", got, n+1)
	}
	// The parent's checkpoints form one chain of completed checkpoints,
	// one per fork, on its template's.
	cks, err := c.Checkpoints(ctx, parent.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(cks) != n+1 {
		t.Errorf("parent has %d checkpoints, want %d and its template's", len(cks), n)
	}
	ids := map[string]bool{}
	for _, ck := range cks {
		ids[ck.ID] = true
	}
	roots := 0
	for _, ck := range cks {
		if !ck.Completed {
			t.Errorf("checkpoint %s incomplete", ck.ID)
		}
		if ck.ParentID == "" {
			roots++
		} else if !ids[ck.ParentID] {
			t.Errorf("checkpoint %s's parent %s is not the box's", ck.ID, ck.ParentID)
		}
	}
	if roots != 1 {
		t.Errorf("%d chain roots, want 1", roots)
	}
	// Each child kept its own write.
	var sorted []string
	for id := range kids {
		sorted = append(sorted, id)
	}
	sort.Strings(sorted)
	for _, id := range sorted[:3] {
		if out := h.run(id, "cat", "/tmp/who"); out != id {
			t.Errorf("fork %s sees %q", id, out)
		}
	}

	// Terminate everything at once.
	errs = make(chan error, n+1)
	for _, b := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Terminate(ctx, b.ID); err != nil {
				errs <- fmt.Errorf("terminate %s: %w", b.ID, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if left, err := c.List(ctx, client.ListOptions{}); err != nil || len(left) != 0 {
		t.Errorf("after terminating all: %d boxes, %v", len(left), err)
	}
	if n := len(h.vmmPIDs()); n != 0 {
		t.Errorf("%d VMMs still run", n)
	}
	if left := h.storeFiles(); len(left) != 0 {
		t.Errorf("files left in the checkpoint store: %s", strings.Join(left, " "))
	}
}

// A box's VMM killed while the daemon runs, by its seccomp filter for a
// forbidden call or by SIGKILL, is noticed at once: the box is restored
// from its last completed checkpoint (what it did after is gone) and
// works on; a box without one of its own comes back from its template's,
// as it was created.
func TestKVMDaemonRestoresAKilledVMM(t *testing.T) {
	h := newHost(t)
	ctx := ctxFor(t, 10*time.Minute)
	c := h.c
	a, err := c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	h.run(a.ID, "sh", "-c", "echo -n checkpointed > /tmp/f")
	if _, err := c.Checkpoint(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	h.run(a.ID, "sh", "-c", "echo -n after > /tmp/f")
	fresh, err := c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	h.run(fresh.ID, "sh", "-c", "echo -n lost > /tmp/f")
	pidOf := func(id string) int {
		pids := h.vmmPIDsOf(id)
		if len(pids) != 1 {
			t.Fatalf("box %s has VMMs %v, want one", id, pids)
		}
		return pids[0]
	}
	// The first VMM makes a call its seccomp filter forbids, as a guest
	// that took it over would, and is killed for it (-seccomp kill, the
	// default); the second is killed outright.
	if ws := makeForbiddenCall(t, pidOf(a.ID)); !ws.Signaled() || ws.Signal() != syscall.SIGSYS {
		t.Errorf("the VMM that made a forbidden call ended with status %#x, want killed by SIGSYS", uint32(ws))
	}
	syscall.Kill(pidOf(fresh.ID), syscall.SIGKILL)
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		up := func(id string) bool { return len(h.vmmPIDsOf(id)) == 1 && h.state(id) == string(lifecycle.Running) }
		if up(a.ID) && up(fresh.ID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the kills: %s is %s with VMMs %v, %s is %s with VMMs %v", a.ID, h.state(a.ID), h.vmmPIDsOf(a.ID),
				fresh.ID, h.state(fresh.ID), h.vmmPIDsOf(fresh.ID))
		}
	}
	if out := h.run(a.ID, "cat", "/tmp/f"); out != "checkpointed" {
		t.Errorf("box after its VMM was killed has %q, want its checkpoint's", out)
	}
	if out, code, err := h.exec(fresh.ID, "cat", "/tmp/f"); err != nil || code == 0 {
		t.Errorf("box restored from its template has /tmp/f: %q, exit %d, %v", out, code, err)
	}
	if got := h.run(fresh.ID, "hostname"); got != hostnameOf(t, fresh.ID)+"\n" {
		t.Errorf("box restored from its template is %q", got)
	}
	if _, err := c.Checkpoint(ctx, a.ID); err != nil {
		t.Errorf("checkpoint of the restored box: %v", err)
	}
}
