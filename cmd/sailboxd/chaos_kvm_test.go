package main

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/snapshot"
)

// Chaos: the daemon, or the daemon and every VMM, killed at random points
// of the calls that write checkpoints and start VMs, and clients that go
// away in the middle of them. After each, the host must be whole: every
// box running or asleep as the calls left it, one VMM per running box,
// the store holding exactly what the catalog references, memory written
// before intact, and the next checkpoint possible.
//
// $SAILBOX_CHAOS_TRIALS sets the number of trials of each test (default
// 20 daemon kills, 10 host failures, 30 disconnects: 10 each of create,
// checkpoint and fork); $SAILBOX_CHAOS_SEED replays a run (its seed is
// logged).

// chaosTrials is $SAILBOX_CHAOS_TRIALS, or def.
func chaosTrials(t *testing.T, def int) int {
	if s := os.Getenv("SAILBOX_CHAOS_TRIALS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("SAILBOX_CHAOS_TRIALS=%q", s)
		}
		return n
	}
	return def
}

// chaosRand is a random source seeded by $SAILBOX_CHAOS_SEED or the clock,
// logged so that a failure can be replayed.
func chaosRand(t *testing.T) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SAILBOX_CHAOS_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("SAILBOX_CHAOS_SEED=%d", seed)
	return rand.New(rand.NewPCG(seed, seed))
}

// A buffer written in a box's memory (/tmp is the guest's RAM) before any
// chaos, and its checksum, checked after each trial.
const (
	writeBuffer = "head -c 4194304 /dev/urandom > /tmp/buf && md5sum /tmp/buf > /tmp/buf.md5"
	checkBuffer = "[ ! -e /tmp/buf ] && [ ! -e /tmp/buf.md5 ] || md5sum -c -s /tmp/buf.md5" // a box created meanwhile has none
)

// newChaos prepares a chaos test: a host, its box with the buffer written
// (and checkpointed, with checkpoint), the number of trials (def unless
// $SAILBOX_CHAOS_TRIALS), a random source and a context long enough.
func newChaos(t *testing.T, def int, checkpoint bool) (*host, api.Box, int, *rand.Rand, context.Context) {
	h := newHost(t)
	trials := chaosTrials(t, def)
	rng := chaosRand(t)
	ctx := ctxFor(t, time.Duration(trials)*3*time.Minute)
	box, err := h.c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	h.run(box.ID, "sh", "-c", writeBuffer)
	if checkpoint {
		if _, err := h.c.Checkpoint(ctx, box.ID); err != nil {
			t.Fatal(err)
		}
	}
	return h, box, trials, rng, ctx
}

// The daemon alone is killed at a random point of a checkpoint, a fork, a
// sleep or a wake; the VMMs live on. The restarted daemon takes them back
// and loses nothing.
func TestKVMChaosDaemonKilledMidCall(t *testing.T) {
	h, box, trials, rng, ctx := newChaos(t, 20, true)
	ops := map[string]func() error{
		"checkpoint": func() error { _, err := h.c.Checkpoint(ctx, box.ID); return err },
		"fork":       func() error { _, err := h.c.Fork(ctx, box.ID); return err },
		"sleep":      func() error { _, err := h.c.Sleep(ctx, box.ID); return err },
		"wake":       func() error { _, _, err := h.exec(box.ID, "true"); return err },
	}
	for i := range trials {
		op := []string{"checkpoint", "fork", "sleep"}[i%3]
		if h.state(box.ID) == string(lifecycle.Sleeping) {
			op = "wake"
		}
		delay := time.Duration(rng.IntN(3000)) * time.Millisecond
		done := make(chan error, 1)
		go func() { done <- ops[op]() }()
		time.Sleep(delay)
		h.kill()
		err := <-done
		t.Logf("trial %d: %s killed after %v (call: %v)", i, op, delay, err)
		h.start()
		h.checkWhole(ctx, true)
		if t.Failed() {
			t.Fatalf("trial %d (%s after %v) left the host broken", i, op, delay)
		}
		h.trimForks(ctx, box.ID, 2)
	}
}

// The daemon and every VMM are killed at a random point of a checkpoint:
// a host failure. Each box comes back from its most recent completed
// checkpoint, with the memory it had then.
func TestKVMChaosHostFailureMidCheckpoint(t *testing.T) {
	h, box, trials, rng, ctx := newChaos(t, 10, true)
	prev := "" // what /tmp/trial held at the box's last completed checkpoint
	for i := range trials {
		h.run(box.ID, "sh", "-c", "echo -n "+strconv.Itoa(i)+" > /tmp/trial")
		delay := time.Duration(rng.IntN(2000)) * time.Millisecond
		done := make(chan error, 1)
		go func() { _, err := h.c.Checkpoint(ctx, box.ID); done <- err }()
		time.Sleep(delay)
		h.kill()
		h.killVMMs()
		err := <-done
		h.start()
		b, gerr := h.c.Get(ctx, box.ID)
		if gerr != nil || b.State != lifecycle.Running {
			t.Fatalf("trial %d: box after a host failure %v into a checkpoint: %+v, %v", i, delay, b, gerr)
		}
		// The checkpoint in flight completed (the box has trial i's
		// write) or did not (the box is back at its previous one).
		trial, _, _ := h.exec(box.ID, "cat", "/tmp/trial")
		t.Logf("trial %d: host failed %v into a checkpoint (call: %v); the box came back at trial %q", i, delay, err, trial)
		if trial != strconv.Itoa(i) && trial != prev {
			t.Errorf("trial %d: the box came back with trial %q, want %q or %q", i, trial, strconv.Itoa(i), prev)
		}
		h.checkWhole(ctx, true) // checkpoints the box as it came back
		prev = trial
		if t.Failed() {
			t.Fatalf("trial %d left the host broken", i)
		}
	}
}

// Clients that go away in the middle of a create, a checkpoint or a fork
// leak nothing: the call runs to its end and is recorded, so no VM runs
// that the daemon does not know, and no layer is stored that the catalog
// does not reference.
func TestKVMChaosClientDisconnects(t *testing.T) {
	h, box, trials, rng, ctx := newChaos(t, 30, false)
	for i := range trials {
		op := []string{"create", "checkpoint", "fork"}[i%3]
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			var err error
			switch op {
			case "create":
				_, err = h.c.Create(cctx, api.CreateRequest{})
			case "checkpoint":
				_, err = h.c.Checkpoint(cctx, box.ID)
			case "fork":
				_, err = h.c.Fork(cctx, box.ID)
			}
			done <- err
		}()
		delay := time.Duration(rng.IntN(2000)) * time.Millisecond
		time.Sleep(delay)
		cancel()
		t.Logf("trial %d: %s abandoned after %v (call: %v)", i, op, delay, <-done)
		// The daemon finishes the call; wait until no box is creating.
		h.settle(ctx)
		h.checkWhole(ctx, false)
		if t.Failed() {
			t.Fatalf("trial %d (%s abandoned after %v) left the host broken", i, op, delay)
		}
		h.trimForks(ctx, box.ID, 2)
	}
}

// settle waits until no box is being created and the VMMs and networks
// running are those of the running boxes, and that has held for two
// seconds. An abandoned create may reach the daemon after the client gave
// up, and the daemon records its box (Creating) only once the call runs:
// until then its VMM and network cannot exist either, so a list taken in
// between looks settled, and one taken a moment later shows the box
// creating (a CI run saw this: a create abandoned after 3 ms was recorded
// after settle had returned). Nothing marks a request still on its way,
// so settle waits for quiet. A VMM or network that belongs to no box
// never goes away: settle gives up after 3 minutes and checkWhole reports
// it.
func (h *host) settle(ctx context.Context) {
	h.t.Helper()
	const quiet = 2 * time.Second
	var since time.Time // when the state last became settled
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		all, err := h.c.List(ctx, client.ListOptions{})
		if err != nil {
			h.t.Fatal(err)
		}
		running, networks := 0, 0
		for _, b := range all {
			if b.State == lifecycle.Running {
				running++
				if b.Network != nil {
					networks++
				}
			}
		}
		creating := slices.ContainsFunc(all, func(b api.Box) bool { return b.State == lifecycle.Creating })
		switch settled := !creating && len(h.vmmPIDs()) == running && len(h.netPIDs()) == networks; {
		case !settled:
			since = time.Time{}
		case since.IsZero():
			since = time.Now()
		case time.Since(since) >= quiet:
			return
		}
		if time.Now().After(deadline) {
			h.t.Logf("not settled after 3 minutes: %d VMMs, %d networks for %+v", len(h.vmmPIDs()), len(h.netPIDs()), all)
			return
		}
	}
}

// checkWhole checks the host after a trial: every box running or asleep,
// one VMM per running box and no other, one network per running box with
// a network and no other, each running box's memory buffer
// intact and, with checkpoint, a new checkpoint possible; and the store
// holding exactly the checkpoints the catalog lists (all completed) and
// the layers they reference.
func (h *host) checkWhole(ctx context.Context, checkpoint bool) {
	t := h.t
	t.Helper()
	all, err := h.c.List(ctx, client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	running, networks := 0, 0
	want := map[string]bool{}
	for _, b := range all {
		switch b.State {
		case lifecycle.Running:
			running++
			if pids := h.vmmPIDsOf(b.ID); len(pids) != 1 {
				t.Errorf("running box %s has %d VMMs", b.ID, len(pids))
			}
			if b.Network != nil {
				networks++
				if pids := h.netPIDsOf(b.ID); len(pids) != 1 {
					t.Errorf("running box %s has %d networks", b.ID, len(pids))
				}
			}
			if _, code, err := h.exec(b.ID, "sh", "-c", checkBuffer); err != nil || code != 0 {
				t.Errorf("box %s's memory buffer: exit %d, %v", b.ID, code, err)
				h.describeVCPUs(ctx, b.ID)
			}
			if checkpoint {
				if _, err := h.c.Checkpoint(ctx, b.ID); err != nil {
					t.Errorf("checkpoint of box %s: %v", b.ID, err)
				}
			}
		case lifecycle.Sleeping:
			if pids := h.vmmPIDsOf(b.ID); len(pids) != 0 {
				t.Errorf("sleeping box %s has %d VMMs", b.ID, len(pids))
			}
			if pids := h.netPIDsOf(b.ID); len(pids) != 0 {
				t.Errorf("sleeping box %s has %d networks", b.ID, len(pids))
			}
		default:
			t.Errorf("box %s is %s", b.ID, b.State)
		}
		cks, err := h.c.Checkpoints(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, ck := range cks {
			if !ck.Completed {
				t.Errorf("box %s has an incomplete checkpoint %s", b.ID, ck.ID)
			}
			want[ck.ID] = true
		}
	}
	if n := len(h.vmmPIDs()); n != running {
		t.Errorf("%d VMMs run for %d running boxes", n, running)
	}
	if n := len(h.netPIDs()); n != networks {
		t.Errorf("%d networks run for %d running boxes with one", n, networks)
	}
	stored, layers := h.storeContents()
	for id := range want {
		if !stored[id] {
			t.Errorf("checkpoint %s is listed but not stored", id)
		}
	}
	for id := range stored {
		// A template's checkpoint is kept for the next create.
		if !want[id] && !strings.HasPrefix(id, "tpl-") {
			t.Errorf("checkpoint %s is stored but not listed", id)
		}
	}
	if len(layers) > 0 {
		t.Errorf("layers stored that no checkpoint references: %v", layers)
	}
}

// describeVCPUs logs where box id's vCPUs are, for a guest that stopped
// answering: a RIP in the lab's kernel is the lab's emulated SVM at fault
// (the runner looks for the sign), anything else a bug to chase.
func (h *host) describeVCPUs(ctx context.Context, id string) {
	d, err := h.vcpus(ctx, id)
	h.t.Logf("box %s's vCPUs (%v):\n%s", id, err, d)
}

// vcpus asks box id's VMM where its vCPUs are.
func (h *host) vcpus(ctx context.Context, id string) (string, error) {
	return vmmapi.NewClient(filepath.Join(h.stateDir, "run", id, "api.sock")).DescribeVCPUs(ctx)
}

// storeContents opens the host's checkpoint store: its completed
// checkpoints, and the layers none of them references.
func (h *host) storeContents() (checkpoints map[string]bool, unreferenced []string) {
	t := h.t
	root, err := snapshot.OpenRoot(filepath.Join(h.stateDir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := root.List()
	if err != nil {
		t.Fatal(err)
	}
	checkpoints = map[string]bool{}
	referenced := map[string]bool{}
	for _, id := range ids {
		checkpoints[id] = true
		m, err := root.Load(id)
		if err != nil {
			t.Fatalf("checkpoint %s: %v", id, err)
		}
		for _, l := range m.Memory {
			referenced[l.ID] = true
		}
		for _, d := range m.Disks {
			for _, l := range d.Layers {
				referenced[l.ID] = true
			}
		}
	}
	layers, err := root.Layers().List()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		if !referenced[l.ID] {
			unreferenced = append(unreferenced, l.ID)
		}
	}
	return checkpoints, unreferenced
}

// trimForks terminates every box but parent and its newest keep children,
// so that a long chaos run does not fill the lab's memory.
func (h *host) trimForks(ctx context.Context, parent string, keep int) {
	all, err := h.c.List(ctx, client.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	var kids []api.Box
	for _, b := range all {
		switch {
		case b.ParentID == parent:
			kids = append(kids, b)
		case b.ID != parent:
			if _, err := h.c.Terminate(ctx, b.ID); err != nil {
				h.t.Errorf("terminate %s: %v", b.ID, err)
			}
		}
	}
	slices.SortFunc(kids, func(a, b api.Box) int { return a.Created.Compare(b.Created) })
	for len(kids) > keep {
		if _, err := h.c.Terminate(ctx, kids[0].ID); err != nil {
			h.t.Errorf("terminate fork %s: %v", kids[0].ID, err)
		}
		kids = kids[1:]
	}
}

// The store's disk fills up in the middle of a checkpoint: the call fails
// with a clear error, the box keeps running as it was, the previous
// checkpoint still restores, and once there is room again the next
// checkpoint holds everything written since the last completed one.
func TestKVMChaosStoreDiskFull(t *testing.T) {
	h := newHost(t)
	ctx := ctxFor(t, 20*time.Minute)
	// The store on a file system of its own, small enough to fill.
	h.stop()
	store := filepath.Join(h.stateDir, "store")
	if err := syscall.Mount("tmpfs", store, "tmpfs", 0, "size=512m"); err != nil {
		t.Fatalf("mount a tmpfs on the store: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(store, syscall.MNT_DETACH) })
	h.start()

	box, err := h.c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	h.run(box.ID, "sh", "-c", "echo -n before > /tmp/before")
	if _, err := h.c.Checkpoint(ctx, box.ID); err != nil {
		t.Fatal(err)
	}
	h.run(box.ID, "sh", "-c", "head -c 16777216 /dev/urandom > /tmp/after && md5sum /tmp/after > /tmp/after.md5")

	filler := filepath.Join(store, "filler")
	fill := func() {
		var st syscall.Statfs_t
		if err := syscall.Statfs(store, &st); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filler, make([]byte, int64(st.Bavail)*st.Bsize-(1<<20)), 0o600); err != nil {
			t.Fatalf("fill the store: %v", err)
		}
	}
	fill()
	for range 2 {
		_, err = h.c.Checkpoint(ctx, box.ID)
		t.Logf("checkpoint on a full disk: %v", err)
		if err == nil || !strings.Contains(err.Error(), "no space left on device") {
			t.Fatalf("checkpoint on a full disk = %v, want an error that says so", err)
		}
		if out := h.run(box.ID, "sh", "-c", "md5sum -c -s /tmp/after.md5 && cat /tmp/before"); out != "before" {
			t.Errorf("box after the failed checkpoint: %q", out)
		}
	}
	// The previous checkpoint still restores.
	os.Remove(filler)
	h.killVMMs()
	h.waitState(ctx, box.ID, lifecycle.Running)
	if out, _, _ := h.exec(box.ID, "sh", "-c", "cat /tmp/before; ls /tmp/after 2>/dev/null"); out != "before" {
		t.Errorf("box restored from its previous checkpoint has %q, want only what it had then", out)
	}
	// Once there is room again, a checkpoint holds what was written since
	// the last completed one, failed attempts or not.
	h.run(box.ID, "sh", "-c", "head -c 16777216 /dev/urandom > /tmp/after && md5sum /tmp/after > /tmp/after.md5")
	fill()
	if _, err := h.c.Checkpoint(ctx, box.ID); err == nil {
		t.Error("checkpoint succeeded on a full disk")
	}
	os.Remove(filler)
	if _, err := h.c.Checkpoint(ctx, box.ID); err != nil {
		t.Fatalf("checkpoint with room again: %v", err)
	}
	h.killVMMs()
	h.waitState(ctx, box.ID, lifecycle.Running)
	if out := h.run(box.ID, "sh", "-c", "md5sum -c -s /tmp/after.md5 && cat /tmp/before"); out != "before" {
		t.Errorf("box restored from the checkpoint after the disk filled: %q", out)
	}
	h.checkWhole(ctx, true)
}

// waitState waits for box id to be in state st with a VM that answers.
func (h *host) waitState(ctx context.Context, id string, st lifecycle.State) {
	h.t.Helper()
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		b, err := h.c.Get(ctx, id)
		if err == nil && b.State == st {
			if _, code, err := h.exec(id, "true"); err == nil && code == 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("box %s not %s after 3 minutes: %+v, %v", id, st, b, err)
		}
	}
}
