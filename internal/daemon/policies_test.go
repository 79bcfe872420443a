package daemon_test

import (
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
)

// fakeClock is a daemon.Clock that moves only when told: Advance runs
// the timers it passes, in order, in the caller's goroutine.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c    *fakeClock
	at   time.Time
	f    func()
	done bool // guarded by c.mu: fired or stopped
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) daemon.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.done
	t.done = true
	return was
}

// Advance moves the clock by d and runs every timer due by then,
// earliest first, including those the timers set.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var next *fakeTimer
		for _, t := range c.timers {
			if !t.done && !t.at.After(c.now) && (next == nil || t.at.Before(next.at)) {
				next = t
			}
		}
		if next != nil {
			next.done = true
		}
		c.timers = slices.DeleteFunc(c.timers, func(t *fakeTimer) bool { return t.done })
		c.mu.Unlock()
		if next == nil {
			return
		}
		next.f()
	}
}

func newClockEnv(t *testing.T) (*env, *fakeClock) {
	t.Helper()
	e := &env{t: t, path: t.TempDir() + "/catalog.db", fake: fakebackend.New(2), ctx: t.Context()}
	clk := newFakeClock()
	e.clock = clk
	e.open()
	t.Cleanup(e.close)
	return e, clk
}

func (e *env) createWith(req api.CreateRequest) api.Box {
	e.t.Helper()
	b, err := e.m.Create(e.ctx, req)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *env) state(id string) lifecycle.State {
	e.t.Helper()
	return e.get(id).State
}

func ids(boxes []api.Box) []string {
	var out []string
	for _, b := range boxes {
		out = append(out, b.ID)
	}
	slices.Sort(out)
	return out
}

func TestLabels(t *testing.T) {
	e := newEnv(t)
	a := e.createWith(api.CreateRequest{Labels: map[string]string{"team": "ml", "app": "eval"}})
	b := e.createWith(api.CreateRequest{Labels: map[string]string{"team": "ml"}})
	c := e.create()
	if a.Labels["team"] != "ml" || a.Labels["app"] != "eval" || len(a.Labels) != 2 || c.Labels != nil {
		t.Fatalf("labels: %v, %v", a.Labels, c.Labels)
	}
	list := func(f daemon.ListFilter) []string {
		t.Helper()
		l, err := e.m.List(e.ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		return ids(l)
	}
	if got, want := list(daemon.ListFilter{Labels: map[string]string{"team": "ml"}}), ids([]api.Box{a, b}); !slices.Equal(got, want) {
		t.Errorf("team=ml: %v, want %v", got, want)
	}
	if got := list(daemon.ListFilter{Labels: map[string]string{"team": "ml", "app": "eval"}}); !slices.Equal(got, []string{a.ID}) {
		t.Errorf("team=ml app=eval: %v, want %s", got, a.ID)
	}
	if got := list(daemon.ListFilter{Labels: map[string]string{"team": "web"}}); len(got) != 0 {
		t.Errorf("team=web: %v", got)
	}
	if got := list(daemon.ListFilter{}); len(got) != 3 {
		t.Errorf("no filter: %v", got)
	}
	f, err := e.m.Fork(e.ctx, a.ID, api.ForkRequest{})
	if err != nil || f.Box.Labels["app"] != "eval" {
		t.Fatalf("fork: %+v, %v", f.Box.Labels, err)
	}
	// Labels are in the record: a restarted daemon has them.
	e.close()
	e.open()
	if got := list(daemon.ListFilter{Labels: map[string]string{"app": "eval"}}); !slices.Equal(got, ids([]api.Box{a, f.Box})) {
		t.Errorf("after restart, app=eval: %v", got)
	}
	many := map[string]string{}
	for i := range api.MaxLabels + 1 {
		many[string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
	}
	for _, labels := range []map[string]string{
		{"": "x"}, {"-lead": "x"}, {"sp ace": "x"}, {"ünï": "x"}, {"k": "line\nbreak"},
		{string(make([]byte, 64)): "x"}, {"k": string(make([]rune, 256))}, many,
	} {
		if _, err := e.m.Create(e.ctx, api.CreateRequest{Labels: labels}); !errors.Is(err, daemon.ErrInvalidArgument) {
			t.Errorf("create with labels %q: %v", labels, err)
		}
	}
	if _, err := e.m.Create(e.ctx, api.CreateRequest{Labels: map[string]string{"example.com/team-a_b": ""}}); err != nil {
		t.Errorf("create with a dotted, slashed key and an empty value: %v", err)
	}
}

func TestIdleTimeoutSleeps(t *testing.T) {
	e, clk := newClockEnv(t)
	b := e.createWith(api.CreateRequest{IdleTimeoutSeconds: 60})
	keep := e.create() // no idle timeout
	if b.IdleTimeoutSeconds != 60 {
		t.Fatalf("idle_timeout_seconds = %d", b.IdleTimeoutSeconds)
	}
	clk.Advance(59 * time.Second)
	if s := e.state(b.ID); s != lifecycle.Running {
		t.Fatalf("before its timeout: %s", s)
	}
	if _, err := e.exec(b.ID, "echo", "hi"); err != nil { // a use restarts the count
		t.Fatal(err)
	}
	clk.Advance(59 * time.Second)
	if s := e.state(b.ID); s != lifecycle.Running {
		t.Fatalf("59s after an exec: %s", s)
	}
	if _, err := e.m.WriteFile(e.ctx, b.ID, "/f", strings.NewReader("x"), daemon.FileOptions{}); err != nil { // a use too
		t.Fatal(err)
	}
	clk.Advance(59 * time.Second)
	if s := e.state(b.ID); s != lifecycle.Running {
		t.Fatalf("59s after a file call: %s", s)
	}
	clk.Advance(2 * time.Second)
	if s := e.state(b.ID); s != lifecycle.Sleeping {
		t.Fatalf("after 61s unused: %s, want sleeping", s)
	}
	if s := e.state(keep.ID); s != lifecycle.Running {
		t.Errorf("a box without an idle timeout: %s", s)
	}
	// The usual wake rules apply, and the timer runs again.
	if out, err := e.exec(b.ID, "echo", "awake"); err != nil || out != "awake\n" {
		t.Fatalf("exec on the sleeping box: %q, %v", out, err)
	}
	if s := e.state(b.ID); s != lifecycle.Running {
		t.Fatalf("after exec: %s", s)
	}
	clk.Advance(61 * time.Second)
	if s := e.state(b.ID); s != lifecycle.Sleeping {
		t.Fatalf("unused again: %s, want sleeping", s)
	}
	// A paused box is left alone; resumed, it runs its timeout again.
	if _, err := e.m.Pause(e.ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Resume(e.ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	clk.Advance(30 * time.Second)
	if s := e.state(b.ID); s != lifecycle.Running {
		t.Fatalf("30s after resume: %s", s)
	}
	clk.Advance(31 * time.Second)
	if s := e.state(b.ID); s != lifecycle.Sleeping {
		t.Fatalf("61s after resume: %s", s)
	}
	// The timeout is in the record: a restarted daemon arms it for the
	// running boxes, counting from its start.
	if _, err := e.m.Resume(e.ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	e.close()
	e.open()
	clk.Advance(59 * time.Second)
	if s := e.state(b.ID); s != lifecycle.Running {
		t.Fatalf("59s after a restart: %s", s)
	}
	clk.Advance(2 * time.Second)
	if s := e.state(b.ID); s != lifecycle.Sleeping {
		t.Fatalf("61s after a restart: %s, want sleeping", s)
	}
}

func TestIdleTimeoutWaitsForUses(t *testing.T) {
	e, clk := newClockEnv(t)
	b := e.createWith(api.CreateRequest{IdleTimeoutSeconds: 60})
	// An exec in flight keeps the box awake, however long it runs.
	started, finish := make(chan struct{}), make(chan struct{})
	e.fake.OnNext("Exec", func() { close(started); <-finish })
	done := make(chan error, 1)
	go func() { _, err := e.exec(b.ID, "echo", "slow"); done <- err }()
	<-started
	clk.Advance(10 * time.Minute)
	if s := e.state(b.ID); s != lifecycle.Running {
		t.Fatalf("with an exec in flight: %s", s)
	}
	close(finish)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	clk.Advance(59 * time.Second)
	if s := e.state(b.ID); s != lifecycle.Running {
		t.Fatalf("59s after the exec ended: %s", s)
	}
	clk.Advance(2 * time.Second)
	if s := e.state(b.ID); s != lifecycle.Sleeping {
		t.Fatalf("61s after the exec ended: %s, want sleeping", s)
	}

	// A connection to an exposed port wakes it, and keeps it awake while
	// it is open.
	p, err := e.m.Expose(e.ctx, b.ID, api.ExposeRequest{GuestPort: 80})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", p.HostAddr)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, c, "ping")
	if s := e.state(b.ID); s != lifecycle.Running {
		t.Fatalf("after a connection: %s", s)
	}
	clk.Advance(10 * time.Minute)
	if s := e.state(b.ID); s != lifecycle.Running {
		t.Fatalf("with a connection open: %s", s)
	}
	echo(t, c, "still")
	c.Close()
	// The forward sees the close on its own goroutine: advance until the
	// box falls asleep (each step a whole timeout, so the box sleeps at
	// the first step after the connection's end is recorded).
	for i := 0; e.state(b.ID) != lifecycle.Sleeping; i++ {
		if i == 1000 {
			t.Fatal("the box never fell asleep after its connection closed")
		}
		time.Sleep(5 * time.Millisecond)
		clk.Advance(61 * time.Second)
	}
}

// echo writes msg on c and reads it back (the fake guest echoes).
func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo: %q, %v", buf, err)
	}
}

func TestTTL(t *testing.T) {
	e, clk := newClockEnv(t)
	b := e.createWith(api.CreateRequest{TTLSeconds: 100})
	forever := e.create()
	if b.TTLSeconds != 100 || b.ExpiresAt == nil || !b.ExpiresAt.Equal(b.Created.Add(100*time.Second)) {
		t.Fatalf("ttl %d, expires_at %v, created %v", b.TTLSeconds, b.ExpiresAt, b.Created)
	}
	if forever.ExpiresAt != nil {
		t.Errorf("a box without a TTL expires at %v", forever.ExpiresAt)
	}
	clk.Advance(99 * time.Second)
	if s := e.state(b.ID); s != lifecycle.Running {
		t.Fatalf("before its expiry: %s", s)
	}
	x, err := e.m.Extend(e.ctx, b.ID, api.ExtendRequest{TTLSeconds: 100})
	if err != nil || x.TTLSeconds != 100 || x.ExpiresAt == nil || !x.ExpiresAt.Equal(clk.Now().Add(100*time.Second)) {
		t.Fatalf("extend = %+v, %v", x, err)
	}
	clk.Advance(50 * time.Second) // past the first expiry
	if s := e.state(b.ID); s != lifecycle.Running {
		t.Fatalf("extended, past its first expiry: %s", s)
	}
	clk.Advance(51 * time.Second)
	if _, err := e.m.Get(e.ctx, b.ID); !errors.Is(err, daemon.ErrNotFound) {
		t.Fatalf("after its expiry: %v, want not found", err)
	}
	if e.fake.Running(b.ID) {
		t.Error("the expired box's VM still runs")
	}
	if s := e.state(forever.ID); s != lifecycle.Running {
		t.Errorf("a box without a TTL: %s", s)
	}
	// A sleeping box expires too, and a box without a TTL can get one.
	s := e.create()
	if _, err := e.m.Sleep(e.ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Extend(e.ctx, s.ID, api.ExtendRequest{TTLSeconds: 10}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(11 * time.Second)
	if _, err := e.m.Get(e.ctx, s.ID); !errors.Is(err, daemon.ErrNotFound) {
		t.Errorf("sleeping box after its expiry: %v, want not found", err)
	}
	for _, n := range []int64{0, -1, api.MaxPolicySeconds + 1} {
		if _, err := e.m.Extend(e.ctx, forever.ID, api.ExtendRequest{TTLSeconds: n}); !errors.Is(err, daemon.ErrInvalidArgument) {
			t.Errorf("extend by %d: %v", n, err)
		}
	}
	if _, err := e.m.Extend(e.ctx, "sb-nosuchbox", api.ExtendRequest{TTLSeconds: 1}); !errors.Is(err, daemon.ErrNotFound) {
		t.Errorf("extend an unknown box: %v", err)
	}
	for _, req := range []api.CreateRequest{{TTLSeconds: -1}, {IdleTimeoutSeconds: -5}, {TTLSeconds: api.MaxPolicySeconds + 1}} {
		if _, err := e.m.Create(e.ctx, req); !errors.Is(err, daemon.ErrInvalidArgument) {
			t.Errorf("create %+v: %v", req, err)
		}
	}
}

func TestTTLAcrossRestart(t *testing.T) {
	e, clk := newClockEnv(t)
	soon := e.createWith(api.CreateRequest{TTLSeconds: 100})
	later := e.createWith(api.CreateRequest{TTLSeconds: 1000})
	e.close()
	clk.Advance(200 * time.Second) // the daemon is down at soon's expiry
	e.open()
	clk.Advance(0) // timers already due run
	if _, err := e.m.Get(e.ctx, soon.ID); !errors.Is(err, daemon.ErrNotFound) {
		t.Fatalf("a box that expired while the daemon was down: %v", err)
	}
	got := e.get(later.ID)
	if got.ExpiresAt == nil || !got.ExpiresAt.Equal(*later.ExpiresAt) {
		t.Fatalf("expires_at after restart = %v, want %v", got.ExpiresAt, later.ExpiresAt)
	}
	clk.Advance(799 * time.Second)
	if s := e.state(later.ID); s != lifecycle.Running {
		t.Fatalf("before its stored expiry: %s", s)
	}
	clk.Advance(2 * time.Second)
	if _, err := e.m.Get(e.ctx, later.ID); !errors.Is(err, daemon.ErrNotFound) {
		t.Fatalf("after its stored expiry: %v", err)
	}
}

func TestForkCount(t *testing.T) {
	e, clk := newClockEnv(t)
	p := e.createWith(api.CreateRequest{Labels: map[string]string{"k": "v"}, IdleTimeoutSeconds: 60, TTLSeconds: 3600})
	clk.Advance(10 * time.Second)
	f, err := e.m.Fork(e.ctx, p.ID, api.ForkRequest{Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Boxes) != 3 || f.Box.ID != f.Boxes[0].ID || !f.Checkpoint.Completed {
		t.Fatalf("fork count 3 = %+v", f)
	}
	seen := map[string]bool{p.ID: true}
	for _, c := range f.Boxes {
		if seen[c.ID] || c.State != lifecycle.Running || c.ParentID != p.ID || !e.fake.Running(c.ID) {
			t.Errorf("child %+v", c)
		}
		seen[c.ID] = true
		if c.Labels["k"] != "v" || c.IdleTimeoutSeconds != 60 || c.TTLSeconds != 3600 || !c.ExpiresAt.Equal(c.Created.Add(time.Hour)) {
			t.Errorf("child %s's policies: %v %d %d %v", c.ID, c.Labels, c.IdleTimeoutSeconds, c.TTLSeconds, c.ExpiresAt)
		}
		if h, err := e.exec(c.ID, "hostname"); err != nil || h != c.ID+"\n" {
			t.Errorf("child %s: hostname %q, %v", c.ID, h, err)
		}
	}
	if cks, _ := e.m.Checkpoints(e.ctx, p.ID); len(cks) != 1 || cks[0].ID != f.Checkpoint.ID {
		t.Errorf("parent's chain after one fork of 3: %+v", cks)
	}
	if s := e.state(p.ID); s != lifecycle.Running {
		t.Errorf("parent: %s", s)
	}
	// The children's idle timers run: unused, they fall asleep, as does
	// the parent.
	clk.Advance(61 * time.Second)
	for _, c := range append(f.Boxes, p) {
		if s := e.state(c.ID); s != lifecycle.Sleeping {
			t.Errorf("child %s unused for its timeout: %s", c.ID, s)
		}
	}
	// From a sleeping parent: its last checkpoint (its sleep's), the
	// parent stays down.
	f2, err := e.m.Fork(e.ctx, p.ID, api.ForkRequest{Count: 2})
	if err != nil || len(f2.Boxes) != 2 || f2.Checkpoint.ID != e.get(p.ID).LastCheckpointID {
		t.Fatalf("fork count 2 of the sleeping parent: %+v, %v", f2, err)
	}
	if s := e.state(p.ID); s != lifecycle.Sleeping {
		t.Errorf("parent after fork: %s", s)
	}
	one, err := e.m.Fork(e.ctx, p.ID, api.ForkRequest{})
	if err != nil || len(one.Boxes) != 1 || one.Box.ID != one.Boxes[0].ID {
		t.Fatalf("fork without count: %+v, %v", one, err)
	}
	for _, n := range []int{-1, api.MaxForkCount + 1} {
		if _, err := e.m.Fork(e.ctx, p.ID, api.ForkRequest{Count: n}); !errors.Is(err, daemon.ErrInvalidArgument) {
			t.Errorf("fork count %d: %v", n, err)
		}
	}
}

// The children of a fork with a count start concurrently: while the
// first child's restore is held, the others' begin.
func TestForkCountConcurrent(t *testing.T) {
	e := newEnv(t)
	p := e.create()
	entered, release := make(chan struct{}), make(chan struct{})
	e.fake.OnNext("Restore", func() { close(entered); <-release })
	type result struct {
		f   api.ForkResponse
		err error
	}
	done := make(chan result, 1)
	go func() {
		f, err := e.m.Fork(e.ctx, p.ID, api.ForkRequest{Count: 3})
		done <- result{f, err}
	}()
	<-entered
	restores := func() int {
		n := 0
		for _, c := range e.fake.Calls() {
			if strings.HasPrefix(c, "Restore ") {
				n++
			}
		}
		return n
	}
	// A bound on a slow machine, not a measurement: one after another,
	// the other two would never begin while the first is held.
	for deadline := time.Now().Add(30 * time.Second); restores() < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			n := restores()
			close(release)
			<-done
			t.Fatalf("%d other restores began while the first child's was held; want 2 (concurrent)", n)
		}
	}
	close(release)
	r := <-done
	if r.err != nil || len(r.f.Boxes) != 3 {
		t.Fatalf("fork count 3: %+v, %v", r.f, r.err)
	}
	for _, c := range r.f.Boxes {
		if !e.fake.Running(c.ID) || e.state(c.ID) != lifecycle.Running {
			t.Errorf("child %s: %s, VM %v", c.ID, e.state(c.ID), e.fake.Running(c.ID))
		}
	}
}

func TestForkCountAllOrNothing(t *testing.T) {
	for _, parentState := range []string{"running", "sleeping"} {
		t.Run(parentState, func(t *testing.T) {
			e := newEnv(t)
			p := e.create()
			if parentState == "sleeping" {
				if _, err := e.m.Sleep(e.ctx, p.ID); err != nil {
					t.Fatal(err)
				}
			}
			boxes, _ := e.records()
			vms := e.fake.RunningCount()
			e.fake.FailNext("Restore", errors.New("injected"))
			if _, err := e.m.Fork(e.ctx, p.ID, api.ForkRequest{Count: 4}); err == nil {
				t.Fatal("fork with a failing child succeeded")
			}
			if after, _ := e.records(); !slices.Equal(after, boxes) {
				t.Errorf("boxes after a failed fork: %v, want %v", after, boxes)
			}
			if n := e.fake.RunningCount(); n != vms {
				t.Errorf("%d VMs after a failed fork, want %d", n, vms)
			}
			if l, _ := e.m.List(e.ctx, daemon.ListFilter{}); len(l) != 1 {
				t.Errorf("list after a failed fork: %v", ids(l))
			}
		})
	}
}

// The policies survive crash recovery: a box whose VM died with the
// daemon (a host failure) is restored by the next start with its labels,
// idle timeout and TTL as recorded, and both timers run again; so does a
// box whose VM dies while the daemon runs.
func TestPoliciesAcrossCrashRecovery(t *testing.T) {
	e, clk := newClockEnv(t)
	b := e.createWith(api.CreateRequest{Labels: map[string]string{"team": "ml"}, IdleTimeoutSeconds: 60, TTLSeconds: 1000})
	if _, err := e.m.Checkpoint(e.ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	same := func(when string, got api.Box) {
		t.Helper()
		if got.Labels["team"] != "ml" || len(got.Labels) != 1 || got.IdleTimeoutSeconds != 60 || got.TTLSeconds != 1000 ||
			got.ExpiresAt == nil || !got.ExpiresAt.Equal(*b.ExpiresAt) {
			t.Fatalf("%s: labels %v, idle %d, ttl %d, expires %v; want team=ml, 60, 1000, %v",
				when, got.Labels, got.IdleTimeoutSeconds, got.TTLSeconds, got.ExpiresAt, b.ExpiresAt)
		}
	}

	e.close()
	e.fake.Kill(b.ID) // the host failed: the daemon and the VM are gone
	e.open()
	got := e.get(b.ID)
	if got.State != lifecycle.Running || !e.fake.Running(b.ID) {
		t.Fatalf("after the host failure: %s, VM %v; want restored", got.State, e.fake.Running(b.ID))
	}
	same("restored by the next start", got)
	if l, err := e.m.List(e.ctx, daemon.ListFilter{Labels: map[string]string{"team": "ml"}}); err != nil || len(l) != 1 {
		t.Errorf("list team=ml after recovery: %v, %v", ids(l), err)
	}
	clk.Advance(59 * time.Second)
	if s := e.state(b.ID); s != lifecycle.Running {
		t.Fatalf("59s after recovery: %s", s)
	}
	clk.Advance(2 * time.Second)
	if s := e.state(b.ID); s != lifecycle.Sleeping {
		t.Fatalf("61s unused after recovery: %s, want sleeping (its idle timer armed)", s)
	}

	// Its VM dies while the daemon runs: restored at once, the same.
	if _, err := e.exec(b.ID, "echo", "wake"); err != nil {
		t.Fatal(err)
	}
	e.fake.Crash(b.ID)
	for deadline := time.Now().Add(10 * time.Second); !e.fake.Running(b.ID); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the crashed VM was not restored: %+v", e.get(b.ID))
		}
	}
	same("restored after its VM crashed", e.get(b.ID))

	// The TTL counts from the creation, as recorded.
	clk.Advance(b.ExpiresAt.Sub(clk.Now()) - time.Second)
	if _, err := e.m.Get(e.ctx, b.ID); err != nil {
		t.Fatalf("a second before its expiry: %v", err)
	}
	clk.Advance(2 * time.Second)
	if _, err := e.m.Get(e.ctx, b.ID); !errors.Is(err, daemon.ErrNotFound) {
		t.Fatalf("after its expiry: %v, want not found", err)
	}
	if e.fake.Running(b.ID) {
		t.Error("the expired box's VM still runs")
	}
}
