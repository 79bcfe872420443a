package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
)

type env struct {
	t    *testing.T
	path string
	cat  *catalog.Catalog
	fake *fakebackend.Backend
	m    *daemon.Manager
	ctx  context.Context

	templates    bool         // daemon.Config.Templates
	clock        daemon.Clock // daemon.Config.Clock
	compactAfter int          // daemon.Config.CompactAfter
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, path: filepath.Join(t.TempDir(), "catalog.db"), fake: fakebackend.New(2), ctx: context.Background()}
	e.open()
	t.Cleanup(e.close)
	return e
}

func (e *env) open() {
	e.t.Helper()
	cat, err := catalog.Open(e.path, &catalog.Options{NoSync: true})
	if err != nil {
		e.t.Fatal(err)
	}
	m, err := daemon.New(daemon.Config{Catalog: cat, Backend: e.fake, HostID: "host-a", Templates: e.templates, Clock: e.clock, CompactAfter: e.compactAfter})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := m.Start(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	e.cat, e.m = cat, m
}

func (e *env) close() {
	if e.m != nil {
		e.m.Close()
		e.cat.Close()
		e.m = nil
	}
}

func (e *env) create() api.Box {
	e.t.Helper()
	b, err := e.m.Create(e.ctx, api.CreateRequest{})
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *env) get(id string) api.Box {
	e.t.Helper()
	b, err := e.m.Get(e.ctx, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *env) exec(id string, argv ...string) (string, error) {
	var out bytes.Buffer
	_, err := e.m.Exec(e.ctx, id, api.ExecRequest{Argv: argv}, &out, io.Discard)
	return out.String(), err
}

func (e *env) records() (boxes []string, checkpoints []string) {
	e.cat.View(func(tx *catalog.Tx) error {
		bs, _ := tx.Boxes()
		for _, b := range bs {
			boxes = append(boxes, b.ID)
		}
		cs, _ := tx.Checkpoints()
		for _, c := range cs {
			checkpoints = append(checkpoints, c.ID)
		}
		return nil
	})
	return boxes, checkpoints
}

func TestCreate(t *testing.T) {
	e := newEnv(t)
	b := e.create()
	if b.State != lifecycle.Running || b.GuestSchemaVersion != 2 || b.HostID != "host-a" || b.LastCheckpoint != nil ||
		b.ParentID != "" || b.MemoryMiB != 256 || b.VCPUs != 1 || !strings.HasPrefix(b.ID, "sb-") || b.Created.IsZero() {
		t.Errorf("created box = %+v", b)
	}
	if !e.fake.Running(b.ID) {
		t.Error("no VM for the new box")
	}
	for _, req := range []api.CreateRequest{{MemoryMiB: 1}, {VCPUs: 1000}, {Image: "relative.img"}} {
		if _, err := e.m.Create(e.ctx, req); !errors.Is(err, daemon.ErrInvalidArgument) {
			t.Errorf("create %+v: %v", req, err)
		}
	}
	// A boot that fails leaves no record and no VM.
	e.fake.FailNext("Boot", errors.New("no kvm"))
	if _, err := e.m.Create(e.ctx, api.CreateRequest{}); err == nil || !strings.Contains(err.Error(), "no kvm") {
		t.Errorf("create with a failing boot: %v", err)
	}
	if boxes, _ := e.records(); !slices.Equal(boxes, []string{b.ID}) {
		t.Errorf("records after a failed create: %v", boxes)
	}
	if e.fake.RunningCount() != 1 {
		t.Errorf("%d VMs after a failed create", e.fake.RunningCount())
	}
	if _, err := e.m.Get(e.ctx, "sb-nope"); !errors.Is(err, daemon.ErrNotFound) {
		t.Errorf("get unknown: %v", err)
	}
}

func TestPauseSleepResume(t *testing.T) {
	e := newEnv(t)
	b := e.create()
	if _, err := e.exec(b.ID, "write", "/f", "hello"); err != nil {
		t.Fatal(err)
	}
	p, err := e.m.Pause(e.ctx, b.ID)
	if err != nil || p.State != lifecycle.Paused || p.LastCheckpoint == nil || p.LastCheckpointID != b.ID+"-c1" {
		t.Fatalf("pause = %+v, %v", p, err)
	}
	if e.fake.Running(b.ID) {
		t.Error("a paused box still has a VM")
	}
	for name, call := range map[string]func() error{
		"pause":      func() error { _, err := e.m.Pause(e.ctx, b.ID); return err },
		"exec":       func() error { _, err := e.exec(b.ID, "echo"); return err },
		"checkpoint": func() error { _, err := e.m.Checkpoint(e.ctx, b.ID); return err },
		"read":       func() error { _, err := e.m.ReadFile(e.ctx, b.ID, "/f", io.Discard); return err },
	} {
		var ite *lifecycle.InvalidTransitionError
		if err := call(); !errors.As(err, &ite) || ite.State != lifecycle.Paused {
			t.Errorf("%s of a paused box: %v", name, err)
		}
	}
	r, err := e.m.Resume(e.ctx, b.ID)
	if err != nil || r.State != lifecycle.Running {
		t.Fatalf("resume = %+v, %v", r, err)
	}
	if out, _ := e.exec(b.ID, "cat", "/f"); out != "hello" {
		t.Errorf("after resume the file holds %q", out)
	}
	if _, err := e.m.Resume(e.ctx, b.ID); !errors.Is(err, lifecycle.ErrInvalidTransition) {
		t.Errorf("resume of a running box: %v", err)
	}
	// Sleep; an exec wakes the box.
	if s, err := e.m.Sleep(e.ctx, b.ID); err != nil || s.State != lifecycle.Sleeping || s.LastCheckpointID != b.ID+"-c2" {
		t.Fatalf("sleep = %+v, %v", s, err)
	}
	if out, err := e.exec(b.ID, "cat", "/f"); err != nil || out != "hello" {
		t.Errorf("exec on a sleeping box = %q, %v", out, err)
	}
	if e.get(b.ID).State != lifecycle.Running {
		t.Error("exec did not wake the box")
	}
	// So does a file call.
	e.m.Sleep(e.ctx, b.ID)
	var buf bytes.Buffer
	if _, err := e.m.ReadFile(e.ctx, b.ID, "/f", &buf); err != nil || buf.String() != "hello" {
		t.Errorf("read from a sleeping box = %q, %v", buf.String(), err)
	}
	// Connect resumes a paused box.
	e.m.Pause(e.ctx, b.ID)
	if c, err := e.m.Connect(e.ctx, b.ID); err != nil || c.State != lifecycle.Running {
		t.Errorf("connect = %+v, %v", c, err)
	}
	if c, err := e.m.Connect(e.ctx, b.ID); err != nil || c.State != lifecycle.Running {
		t.Errorf("connect to a running box = %+v, %v", c, err)
	}
}

// Connect checks placement: a box whose record places it on another host
// (a catalog taken over by a daemon of another -host-id) is refused with
// ErrWrongHost, naming that host, and left as it was.
func TestConnectChecksPlacement(t *testing.T) {
	e := newEnv(t)
	b := e.create()
	if _, err := e.m.Sleep(e.ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.cat.Update(func(tx *catalog.Tx) error {
		r, err := tx.Box(b.ID)
		if err != nil {
			return err
		}
		r.HostID = "host-b"
		return tx.PutBox(r)
	}); err != nil {
		t.Fatal(err)
	}
	_, err := e.m.Connect(e.ctx, b.ID)
	if !errors.Is(err, daemon.ErrWrongHost) || !strings.Contains(err.Error(), "host-b") {
		t.Fatalf("connect to a box of host-b: %v, want wrong host naming it", err)
	}
	if got := e.get(b.ID); got.State != lifecycle.Sleeping || e.fake.Running(b.ID) {
		t.Errorf("a refused connect woke the box: %s, VM %v", got.State, e.fake.Running(b.ID))
	}
	if _, err := e.m.Connect(e.ctx, "sb-nosuchbox"); !errors.Is(err, daemon.ErrNotFound) {
		t.Errorf("connect to an unknown box: %v", err)
	}
}

func TestCheckpointFailureLeavesNothing(t *testing.T) {
	e := newEnv(t)
	b := e.create()
	e.fake.FailNext("Checkpoint", errors.New("disk full"))
	if _, err := e.m.Checkpoint(e.ctx, b.ID); err == nil {
		t.Fatal("checkpoint succeeded")
	}
	if _, cks := e.records(); len(cks) != 0 {
		t.Errorf("checkpoint records after a failure: %v", cks)
	}
	// A failed pause leaves the box running.
	e.fake.FailNext("Checkpoint", errors.New("disk full"))
	if _, err := e.m.Pause(e.ctx, b.ID); err == nil {
		t.Fatal("pause succeeded")
	}
	if got := e.get(b.ID); got.State != lifecycle.Running || got.LastCheckpoint != nil {
		t.Errorf("after a failed pause: %+v", got)
	}
	ck, err := e.m.Checkpoint(e.ctx, b.ID)
	if err != nil || !ck.Completed || ck.BoxID != b.ID || ck.ParentID != "" {
		t.Errorf("checkpoint = %+v, %v", ck, err)
	}
	ck2, _ := e.m.Checkpoint(e.ctx, b.ID)
	if ck2.ParentID != ck.ID {
		t.Errorf("second checkpoint's parent = %q, want %q", ck2.ParentID, ck.ID)
	}
	chain, err := e.m.Checkpoints(e.ctx, b.ID)
	if err != nil || len(chain) != 2 || chain[0].ID != ck2.ID {
		t.Errorf("chain = %+v, %v", chain, err)
	}
}

func TestFork(t *testing.T) {
	e := newEnv(t)
	p := e.create()
	e.exec(p.ID, "write", "/f", "parent")
	// Live fork of a running box.
	f, err := e.m.Fork(e.ctx, p.ID, api.ForkRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if f.Box.State != lifecycle.Running || f.Box.ParentID != p.ID || f.Checkpoint.BoxID != p.ID || !f.Checkpoint.Completed {
		t.Errorf("fork = %+v", f)
	}
	if out, _ := e.exec(f.Box.ID, "hostname"); out != f.Box.ID+"\n" {
		t.Errorf("child hostname %q", out)
	}
	if out, _ := e.exec(f.Box.ID, "cat", "/f"); out != "parent" {
		t.Errorf("child sees %q", out)
	}
	if got := e.get(p.ID); got.State != lifecycle.Running || got.LastCheckpointID != f.Checkpoint.ID {
		t.Errorf("parent after a live fork: %+v", got)
	}
	// Fork of a sleeping box: from its last checkpoint, without waking it.
	e.exec(p.ID, "write", "/f", "later")
	s, _ := e.m.Sleep(e.ctx, p.ID)
	f2, err := e.m.Fork(e.ctx, p.ID, api.ForkRequest{})
	if err != nil || f2.Checkpoint.ID != s.LastCheckpointID {
		t.Fatalf("fork of a sleeping box = %+v, %v", f2, err)
	}
	if got := e.get(p.ID); got.State != lifecycle.Sleeping || e.fake.Running(p.ID) {
		t.Errorf("fork woke the parent: %+v", got)
	}
	if out, _ := e.exec(f2.Box.ID, "cat", "/f"); out != "later" {
		t.Errorf("second child sees %q", out)
	}
	// A failed fork leaves neither child nor checkpoint.
	boxes, cks := e.records()
	e.m.Resume(e.ctx, p.ID)
	e.fake.FailNext("Fork", errors.New("no memory"))
	if _, err := e.m.Fork(e.ctx, p.ID, api.ForkRequest{}); err == nil {
		t.Fatal("fork succeeded")
	}
	e.m.Pause(e.ctx, p.ID)
	_, cks2 := e.records()
	e.fake.FailNext("Restore", errors.New("no memory"))
	if _, err := e.m.Fork(e.ctx, p.ID, api.ForkRequest{}); err == nil {
		t.Fatal("fork of a paused box succeeded")
	}
	boxes2, cks3 := e.records()
	if !slices.Equal(boxes, boxes2) || !slices.Equal(cks2, cks3) || len(cks2) != len(cks)+1 {
		t.Errorf("records after failed forks: %v %v; before %v %v", boxes2, cks3, boxes, cks)
	}
}

func TestUpgrade(t *testing.T) {
	e := newEnv(t)
	b := e.create()
	if u, err := e.m.Upgrade(e.ctx, b.ID); err != nil || !u.Upgraded || slices.Contains(e.fake.Calls(), "Reboot "+b.ID) {
		t.Errorf("upgrade of a current box = %+v, %v", u, err)
	}
	e.fake.SetSchema(3)
	u, err := e.m.Upgrade(e.ctx, b.ID)
	if err != nil || !u.Upgraded || u.Box.GuestSchemaVersion != 3 || u.Box.State != lifecycle.Running {
		t.Errorf("upgrade of a running box = %+v, %v", u, err)
	}
	if out, _ := e.exec(b.ID, "schema"); out != "3\n" {
		t.Errorf("agent schema after the upgrade: %q", out)
	}
	// Paused: recorded, applied at the next wake.
	e.fake.SetSchema(4)
	s, _ := e.m.Sleep(e.ctx, b.ID)
	u, err = e.m.Upgrade(e.ctx, b.ID)
	if err != nil || u.Upgraded || !u.Box.PendingUpgrade || u.Box.State != lifecycle.Sleeping || u.Box.GuestSchemaVersion != 3 {
		t.Errorf("upgrade of a sleeping box = %+v, %v", u, err)
	}
	r, err := e.m.Resume(e.ctx, b.ID)
	if err != nil || r.PendingUpgrade || r.GuestSchemaVersion != 4 {
		t.Errorf("resume with an upgrade pending = %+v, %v", r, err)
	}
	if !slices.Contains(e.fake.Calls(), "Reboot "+b.ID+" "+s.LastCheckpointID) {
		t.Errorf("no reboot on the sleeping box's disk: %v", e.fake.Calls())
	}
	// A backend that cannot reboot yet wakes the box as it was, the
	// upgrade still pending.
	e.fake.SetSchema(5)
	e.m.Sleep(e.ctx, b.ID)
	e.m.Upgrade(e.ctx, b.ID)
	e.fake.FailNext("Reboot", fmt.Errorf("reboot: %w", errors.ErrUnsupported))
	if r, err := e.m.Resume(e.ctx, b.ID); err != nil || !r.PendingUpgrade || r.GuestSchemaVersion != 4 || r.State != lifecycle.Running {
		t.Errorf("resume with an unsupported reboot = %+v, %v", r, err)
	}
	// A failed reboot of a running box restores it from the checkpoint.
	e.fake.SetSchema(5)
	e.fake.FailNext("Reboot", errors.New("bad kernel"))
	if _, err := e.m.Upgrade(e.ctx, b.ID); err == nil {
		t.Error("upgrade with a failing reboot succeeded")
	}
	if got := e.get(b.ID); got.State != lifecycle.Running || got.GuestSchemaVersion != 4 || !got.PendingUpgrade || !e.fake.Running(b.ID) {
		t.Errorf("after a failed upgrade: %+v", got)
	}
	// List finds the boxes that still need one.
	e.create() // the current schema
	four := 4
	if l, _ := e.m.List(e.ctx, daemon.ListFilter{MaxGuestSchemaVersion: &four}); len(l) != 1 || l[0].ID != b.ID {
		t.Errorf("list max_guest_schema_version=4: %+v", l)
	}
	if l, _ := e.m.List(e.ctx, daemon.ListFilter{}); len(l) != 2 {
		t.Errorf("list: %d boxes", len(l))
	}
}

func TestTerminateFreesOnlyUnreferenced(t *testing.T) {
	e := newEnv(t)
	p := e.create()
	e.m.Checkpoint(e.ctx, p.ID) // c1
	f, _ := e.m.Fork(e.ctx, p.ID, api.ForkRequest{})
	e.m.Checkpoint(e.ctx, p.ID) // c3, not on the child's chain
	res, err := e.m.Terminate(e.ctx, p.ID)
	if err != nil || res.State != "terminated" || !slices.Equal(res.FreedCheckpoints, []string{p.ID + "-c3"}) {
		t.Errorf("terminate parent = %+v, %v", res, err)
	}
	if e.fake.Running(p.ID) {
		t.Error("terminated box still runs")
	}
	if _, err := e.m.Get(e.ctx, p.ID); !errors.Is(err, daemon.ErrNotFound) {
		t.Errorf("get of a terminated box: %v", err)
	}
	// The child still restores from the parent's checkpoints.
	e.m.Pause(e.ctx, f.Box.ID)
	if _, err := e.m.Resume(e.ctx, f.Box.ID); err != nil {
		t.Errorf("child resume after the parent's terminate: %v", err)
	}
	res, err = e.m.Terminate(e.ctx, f.Box.ID)
	if err != nil || len(res.FreedCheckpoints) != 3 {
		t.Errorf("terminate child = %+v, %v", res, err)
	}
	if cks := e.fake.Checkpoints(); len(cks) != 0 {
		t.Errorf("stored checkpoints left: %v", cks)
	}
	if _, err := e.m.Terminate(e.ctx, f.Box.ID); !errors.Is(err, daemon.ErrNotFound) {
		t.Errorf("second terminate: %v", err)
	}
}

// A restarted daemon finds its boxes, removes half-created ones and
// brings back boxes whose VM died.
func TestRestart(t *testing.T) {
	e := newEnv(t)
	a := e.create()
	e.m.Checkpoint(e.ctx, a.ID)
	bx := e.create() // no checkpoint: cannot come back
	c := e.create()
	e.m.Sleep(e.ctx, c.ID)
	// Debris of a crash: a box still creating, a checkpoint not completed.
	e.cat.Update(func(tx *catalog.Tx) error {
		tx.PutBox(catalog.Box{ID: "sb-half", State: lifecycle.Creating})
		return tx.PutCheckpoint(catalog.Checkpoint{ID: a.ID + "-c9", BoxID: a.ID, ParentID: a.ID + "-c1"})
	})
	e.close()
	e.fake.Kill(a.ID)
	e.fake.Kill(bx.ID)
	e.open()
	boxes, cks := e.records()
	if len(boxes) != 3 || slices.Contains(boxes, "sb-half") || slices.Contains(cks, a.ID+"-c9") {
		t.Errorf("after restart: boxes %v, checkpoints %v", boxes, cks)
	}
	if got := e.get(a.ID); got.State != lifecycle.Running || !e.fake.Running(a.ID) {
		t.Errorf("box restored from its checkpoint: %+v", got)
	}
	if got := e.get(bx.ID); got.State != lifecycle.Failed {
		t.Errorf("box without a checkpoint: %+v, want failed", got)
	}
	if got := e.get(c.ID); got.State != lifecycle.Sleeping || got.LastCheckpoint == nil {
		t.Errorf("sleeping box after restart: %+v", got)
	}
	if _, err := e.m.Resume(e.ctx, bx.ID); !errors.Is(err, daemon.ErrConflict) {
		t.Errorf("resume of a failed box without checkpoint: %v", err)
	}
	if _, err := e.m.Terminate(e.ctx, bx.ID); err != nil {
		t.Errorf("terminate failed box: %v", err)
	}
}

// A VM that dies while the daemon runs is noticed at once: its box is
// restored from its last checkpoint, or failed without one. A box that
// sleeps is left alone.
func TestVMLostWhileRunning(t *testing.T) {
	e := newEnv(t)
	a := e.create()
	if _, err := e.m.Checkpoint(e.ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	bx := e.create()
	c := e.create()
	e.m.Sleep(e.ctx, c.ID)
	e.fake.Crash(a.ID)
	e.fake.Crash(bx.ID)
	e.fake.Crash(c.ID)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if e.fake.Running(a.ID) && e.get(bx.ID).State == lifecycle.Failed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the crashes: %+v (VM running: %v), %+v", e.get(a.ID), e.fake.Running(a.ID), e.get(bx.ID))
		}
	}
	if got := e.get(a.ID); got.State != lifecycle.Running {
		t.Errorf("box restored from its checkpoint: %+v", got)
	}
	if got := e.get(c.ID); got.State != lifecycle.Sleeping || e.fake.Running(c.ID) {
		t.Errorf("sleeping box after a crash report: %+v", got)
	}
	// Once the manager is closed, reports are not acted on.
	e.close()
	e.fake.Crash(a.ID)
	time.Sleep(50 * time.Millisecond)
	if e.fake.Running(a.ID) {
		t.Error("a closed manager restored a box")
	}
	e.open()
}

func TestExpose(t *testing.T) {
	e := newEnv(t)
	b := e.create()
	p, err := e.m.Expose(e.ctx, b.ID, api.ExposeRequest{GuestPort: 8080})
	if err != nil || p.HostPort == 0 || p.GuestPort != 8080 {
		t.Fatalf("expose = %+v, %v", p, err)
	}
	// Without host_addr, the listener is on loopback only.
	if want := net.JoinHostPort("127.0.0.1", strconv.Itoa(p.HostPort)); p.HostAddr != want {
		t.Errorf("expose without host_addr listens on %s, want %s", p.HostAddr, want)
	}
	// With it (sail expose -addr), on that address.
	if other, err := e.m.Expose(e.ctx, b.ID, api.ExposeRequest{GuestPort: 8080, HostAddr: "127.0.0.2"}); err != nil || !strings.HasPrefix(other.HostAddr, "127.0.0.2:") {
		t.Errorf("expose on host_addr 127.0.0.2: %+v, %v", other, err)
	} else if err := e.m.Unexpose(e.ctx, b.ID, other.HostPort); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Expose(e.ctx, b.ID, api.ExposeRequest{GuestPort: 80, HostPort: p.HostPort}); !errors.Is(err, daemon.ErrConflict) {
		t.Errorf("expose of a port in use: %v", err)
	}
	for _, req := range []api.ExposeRequest{{}, {GuestPort: 70000}, {GuestPort: 1, HostPort: -1}, {GuestPort: 1, HostAddr: "localhost"}} {
		if _, err := e.m.Expose(e.ctx, b.ID, req); !errors.Is(err, daemon.ErrInvalidArgument) {
			t.Errorf("expose %+v: %v", req, err)
		}
	}
	e.m.Sleep(e.ctx, b.ID)
	roundTrip := func() error {
		c, err := net.DialTimeout("tcp", p.HostAddr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			return fmt.Errorf("echo %q, %v", buf, err)
		}
		return nil
	}
	if err := roundTrip(); err != nil {
		t.Fatalf("connection to a sleeping box's port: %v", err)
	}
	if got := e.get(b.ID); got.State != lifecycle.Running || len(got.Ports) != 1 {
		t.Errorf("after ingress: %+v", got)
	}
	// The forward survives a daemon restart.
	e.close()
	e.open()
	if err := roundTrip(); err != nil {
		t.Errorf("after restart: %v", err)
	}
	if err := e.m.Unexpose(e.ctx, b.ID, p.HostPort); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Unexpose(e.ctx, b.ID, p.HostPort); !errors.Is(err, daemon.ErrNotFound) {
		t.Errorf("second unexpose: %v", err)
	}
	if err := roundTrip(); err == nil {
		t.Error("connection after unexpose succeeded")
	}
}

func TestInferenceCall(t *testing.T) {
	e := newEnv(t)
	b := e.create()
	var during lifecycle.State
	err := e.m.InferenceCall(e.ctx, b.ID, func(ctx context.Context) error {
		during = e.get(b.ID).State
		return nil
	})
	if err != nil || during != lifecycle.Sleeping {
		t.Errorf("inference: %v, box %s during the call", err, during)
	}
	if got := e.get(b.ID); got.State != lifecycle.Running {
		t.Errorf("after the call: %s", got.State)
	}
	e.m.Pause(e.ctx, b.ID)
	if err := e.m.InferenceCall(e.ctx, b.ID, func(context.Context) error { return nil }); !errors.Is(err, lifecycle.ErrInvalidTransition) {
		t.Errorf("inference for a paused box: %v", err)
	}
}

// Twenty goroutines create, fork and terminate boxes at once.
func TestConcurrentManager(t *testing.T) {
	e := newEnv(t)
	root := e.create()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			switch i % 3 {
			case 0:
				_, err = e.m.Create(e.ctx, api.CreateRequest{})
			case 1:
				_, err = e.m.Fork(e.ctx, root.ID, api.ForkRequest{})
			case 2:
				var f api.ForkResponse
				if f, err = e.m.Fork(e.ctx, root.ID, api.ForkRequest{}); err == nil {
					_, err = e.m.Terminate(e.ctx, f.Box.ID)
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
	boxes, _ := e.records()
	if len(boxes) != 1+7+7 || e.fake.RunningCount() != len(boxes) {
		t.Errorf("%d boxes, %d VMs; want 15 of each", len(boxes), e.fake.RunningCount())
	}
	chain, _ := e.m.Checkpoints(e.ctx, root.ID)
	if len(chain) != 13 {
		t.Errorf("root's chain has %d checkpoints, want 13", len(chain))
	}
}
