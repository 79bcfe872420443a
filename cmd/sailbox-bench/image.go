package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/snapshot/disklayer"
	"github.com/sailbox-dev/sailbox/vmm"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// Boxes with a root file system (-image, the Debian image of
// image/build.sh): the same kernel and initramfs, the disk a layered
// copy-on-write disk over the read-only image, and sailbox.root=/dev/vda,
// on which the guest agent mounts the disk and moves into it.

// imageRootCmdline has the guest agent mount the box's disk as its root,
// as the daemon's boxes with a root image have it.
const imageRootCmdline = "quiet sailbox.root=/dev/vda"

// pythonImports is what the warm python3 of a box imported, and what the
// first exec in its forks imports again.
const pythonImports = "import json, sqlite3, ssl, http.client, asyncio"

// imageBench is one run's machines made from the image, in one
// checkpoint store.
type imageBench struct {
	sys  *kvm.System
	o    options
	dir  string
	root *snapshot.Root
	n    int // machines started, for unique socket and top names
	// net, if not nil, gives the machines boot starts a network.
	net *netBox
}

// netBox is a booted machine's network: the socket of its sailbox-net
// and the guest's configuration on the kernel command line.
type netBox struct {
	socket, cmdline string
}

// newImageBench makes an imageBench in dir, with a checkpoint store.
func newImageBench(sys *kvm.System, o options, dir string) (*imageBench, error) {
	root, err := snapshot.OpenRoot(filepath.Join(dir, "store"), nil)
	if err != nil {
		return nil, err
	}
	return &imageBench{sys: sys, o: o, dir: dir, root: root}, nil
}

// phases is how one machine came to its first exec.
type phases struct {
	start    time.Duration // vmm.New or vmm.Restore (with its disk)
	healthy  time.Duration // then to the agent's first health answer
	identity time.Duration // then the fork's new identity (Restored), if a fork
	exec     time.Duration // then the first exec, answered
}

func (p phases) total() time.Duration { return p.start + p.healthy + p.identity + p.exec }

func (p phases) String() string {
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	s := fmt.Sprintf("start %v, agent healthy %v", r(p.start), r(p.healthy))
	if p.identity > 0 {
		s += fmt.Sprintf(", fork identity %v", r(p.identity))
	}
	return s + fmt.Sprintf(", first exec %v", r(p.exec))
}

// boxRun is a machine benchImage started, running, with its agent.
type boxRun struct {
	m       *vmm.Machine
	agent   *guestagent.Client
	done    chan struct{}
	console *tailBuffer
}

func (b *boxRun) stop() {
	b.m.Stop()
	<-b.done
	b.m.Close()
}

// fail stops b and returns err with the end of b's console, which says
// why a guest that never answered did not.
func (b *boxRun) fail(err error) error {
	b.stop()
	return b.console.wrap(err)
}

// stopGrace is how long unanswered waits for a guest to be seen stopped:
// a machine that stops closes its connections before its Run returns.
const stopGrace = time.Second

// unanswered fails a call the guest did not answer. A guest that stopped
// (the lab's triple fault ends its machine) is a broken boot, as it is
// before its agent first answers; a running one's vCPUs are described,
// which says whose fault it is: a vCPU the lab's emulated SVM
// left at an address of the lab's kernel is the lab's (a broken boot: the
// sample is taken again, said in the results, as density.go's children
// are); anything else ends the run, with the description to find it by.
func (b *boxRun) unanswered(err error) error {
	select {
	case <-b.done: // as WaitHealthy's, a guest that stopped is a broken boot
		return b.fail(brokenBoot{fmt.Errorf("%w; the guest stopped", err)})
	case <-time.After(stopGrace):
	}
	vcpus := b.m.DescribeVCPUs()
	err = fmt.Errorf("%w; its vCPUs:\n%s", err, vcpus)
	if strings.Contains(vcpus, vmm.HostRIP) {
		err = brokenBoot{err}
	}
	return b.fail(err)
}

// boot boots a new machine, on a new top over the image if withImage
// (else on the initramfs alone, as the first rows do), and waits for its
// agent. With firstExec it also runs `true`, the first exec.
func (ib *imageBench) boot(ctx context.Context, withImage, firstExec bool) (*boxRun, phases, error) {
	var p phases
	ib.n++
	console := &tailBuffer{max: 4 << 10}
	uds := filepath.Join(ib.dir, fmt.Sprintf("box%d.vsock", ib.n))
	cfg := vmm.Config{
		KernelPath: ib.o.kernel, InitrdPath: ib.o.initrd, MemoryMiB: ib.o.memMiB, VCPUs: 1,
		Cmdline: "quiet", Vsock: &vmm.Vsock{CID: 3, UDSPath: uds}, Serial: console,
	}
	var base os.FileInfo
	if withImage {
		var err error
		if base, err = os.Stat(ib.o.image); err != nil {
			return nil, p, err
		}
		cfg.Cmdline = imageRootCmdline
	}
	if ib.net != nil {
		cfg.Net = &vmm.Net{SocketPath: ib.net.socket}
		cfg.Cmdline += " " + ib.net.cmdline
	}
	t0 := time.Now()
	if withImage {
		top := ib.root.TopPath(fmt.Sprintf("boot%d-vda.top", ib.n))
		disk, err := disklayer.Open(disklayer.Layout{Base: ib.o.image}, top)
		if err != nil {
			return nil, p, fmt.Errorf("open a layered disk over %s: %w", ib.o.image, err)
		}
		cfg.Disks = []vmm.Disk{{Layered: disk, ID: "vda",
			Chain: snapshot.DiskChain{Base: ib.o.image, BaseSize: base.Size(), Size: disk.Size()}}}
	}
	m, err := vmm.New(ib.sys, cfg)
	if err != nil {
		on := "the initramfs alone"
		if withImage {
			on = ib.o.image
		}
		return nil, p, fmt.Errorf("new machine on %s: %w", on, err)
	}
	p.start = time.Since(t0)
	b, err := ib.await(ctx, m, uds, console, "", firstExec, &p, "true")
	return b, p, err
}

// bootRetried is boot, taken again if the boot broke (retryBoot).
func (ib *imageBench) bootRetried(ctx context.Context, res *Results, log io.Writer, what string, withImage, firstExec bool) (b *boxRun, p phases, err error) {
	err = res.retryBoot(log, what, func() (err error) {
		b, p, err = ib.boot(ctx, withImage, firstExec)
		return err
	})
	return b, p, err
}

// restoreFork restores checkpoint id as a fork: a new machine, a new top
// over the checkpoint's disk, then the new identity a fork takes
// (guestagent.ForkArgs) and the first exec, argv.
func (ib *imageBench) restoreFork(ctx context.Context, id string, withWorkingSet bool, argv ...string) (*boxRun, phases, error) {
	var p phases
	ib.n++
	console := &tailBuffer{max: 4 << 10}
	uds := filepath.Join(ib.dir, fmt.Sprintf("box%d.vsock", ib.n))
	t0 := time.Now()
	m, err := vmm.Restore(ib.sys, vmm.RestoreConfig{Root: ib.root, ID: id, VsockUDSPath: uds, Serial: console, NoWorkingSet: !withWorkingSet})
	if err != nil {
		return nil, p, err // it names the checkpoint
	}
	p.start = time.Since(t0)
	b, err := ib.await(ctx, m, uds, console, fmt.Sprintf("bench%d", ib.n), true, &p, argv...)
	return b, p, err
}

// await runs m, waits for its agent, gives a fork (forkName not empty) its
// new identity, and with firstExec runs argv, each step timed into p.
func (ib *imageBench) await(ctx context.Context, m *vmm.Machine, uds string, console *tailBuffer, forkName string, firstExec bool, p *phases, argv ...string) (*boxRun, error) {
	b := &boxRun{m: m, agent: guestagent.NewHybridClient(uds), done: make(chan struct{}), console: console}
	go func() { m.Run(ctx); close(b.done) }()
	wctx, cancel := b.calls(ctx, ib.o.timeout)
	defer cancel()
	t := time.Now()
	if _, err := b.agent.WaitHealthy(wctx, 2*time.Millisecond, b.done); err != nil {
		return nil, b.fail(brokenBoot{fmt.Errorf("agent: %w", err)})
	}
	p.healthy = time.Since(t)
	if forkName != "" {
		t = time.Now()
		args, err := guestagent.ForkArgs(forkName)
		if err == nil {
			_, err = b.agent.Restored(wctx, args)
		}
		if err != nil {
			return nil, b.unanswered(fmt.Errorf("fork identity: %w", err))
		}
		p.identity = time.Since(t)
	}
	if firstExec {
		t = time.Now()
		if err := guestRun(wctx, b.agent, argv...); err != nil {
			return nil, b.unanswered(fmt.Errorf("first exec: %w", err))
		}
		p.exec = time.Since(t)
	}
	return b, nil
}

// calls is a context for calls to b's guest: it ends after timeout, or
// when the guest stops. A guest the lab broke answers nothing more, and
// no call may wait for it longer than a boot may take to answer.
func (b *boxRun) calls(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	go func() {
		select {
		case <-b.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// run runs argv in b's guest (guestRun) within timeout, or until the
// guest stops.
func (b *boxRun) run(ctx context.Context, timeout time.Duration, argv ...string) error {
	ctx, cancel := b.calls(ctx, timeout)
	defer cancel()
	return guestRun(ctx, b.agent, argv...)
}

// guestRun runs argv in the guest and fails unless it exits 0.
func guestRun(ctx context.Context, agent *guestagent.Client, argv ...string) error {
	_, errOut, code, err := agent.Run(ctx, argv...)
	if err == nil && code != 0 {
		err = fmt.Errorf("exit %d: %s", code, strings.TrimSpace(string(errOut)))
	}
	if err != nil {
		return fmt.Errorf("%q: %w", strings.Join(argv, " "), err)
	}
	return nil
}

func (ib *imageBench) checkpoint(b *boxRun, id string) error {
	_, _, err := b.m.Checkpoint(vmm.CheckpointOptions{Root: ib.root, ID: id, GuestSchemaVersion: guestagent.GuestSchemaVersion, VMMVersion: "bench"})
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", id, err)
	}
	return nil
}

// benchImage measures boxes made from o.image in rounds, each round one
// of every kind, so that the ratios hold while the host's speed drifts
// over the run (the lab's does, by a factor of two): a boot of the
// initramfs alone and a cold boot of the image, to the agent's first
// answer and the first exec; a create from the template; and a fork of a
// box with python3 warm. Forks alternate without and with the working set
// the first of their kind recorded mapped ahead.
func benchImage(ctx context.Context, sys *kvm.System, o options, res *Results, stdout, stderr io.Writer) error {
	dir, err := os.MkdirTemp("", "sailbox-bench-image")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ib, err := newImageBench(sys, o, dir)
	if err != nil {
		return err
	}

	// The template: a boot checkpointed once its agent answers, as the
	// daemon makes one. A create restores it as a fork.
	tpl, _, err := ib.bootRetried(ctx, res, stderr, "template boot", true, false)
	if err != nil {
		return fmt.Errorf("template boot: %w", err)
	}
	err = ib.checkpoint(tpl, "template")
	tpl.stop()
	if err != nil {
		return fmt.Errorf("template: %w", err)
	}
	create := &forkKind{
		what:       "create",
		checkpoint: func(int) (string, time.Duration, error) { return "template", 0, nil },
		argv:       []string{"true"},
	}

	// Python warm: a box runs a python3 that imported its modules and
	// sleeps. A fork checkpoints it (incrementally) and restores the
	// checkpoint as a fork, to the first exec of python3 with the same
	// imports, answered: a new interpreter, but the guest's page cache
	// holds what it reads. The parent idles through all the rounds.
	pythonArgv := []string{"python3", "-c", pythonImports}
	parent, _, err := ib.bootRetried(ctx, res, stderr, "python parent boot", true, true)
	if err != nil {
		return fmt.Errorf("python parent boot: %w", err)
	}
	defer parent.stop()
	warm := fmt.Sprintf(`setsid -f python3 -c '%s; import os, time; open("/tmp/warm.tmp", "w").write(str(os.getpid())); os.rename("/tmp/warm.tmp", "/tmp/warm.pid"); time.sleep(1e6)' </dev/null >/dev/null 2>&1
for i in $(seq 3000); do [ -e /tmp/warm.pid ] && exit 0; sleep 0.1; done
echo "python3 wrote no /tmp/warm.pid in 300 s" >&2; exit 1`, pythonImports)
	if err := parent.run(ctx, ib.o.timeout+300*time.Second, "sh", "-c", warm); err != nil {
		return fmt.Errorf("python parent: start the warm python3: %w", parent.console.wrap(err))
	}
	// Its first checkpoint is full (every page the guest touched); the
	// forks' are incremental over it, as a running box's usually are.
	if err := ib.checkpoint(parent, "py-base"); err != nil {
		return fmt.Errorf("python parent: %w", err)
	}
	pyFork := &forkKind{
		what: "python fork",
		checkpoint: func(i int) (string, time.Duration, error) {
			id := fmt.Sprintf("py%d", i)
			t := time.Now()
			err := ib.checkpoint(parent, id)
			return id, time.Since(t), err
		},
		argv: pythonArgv,
		check: func(b *boxRun) error {
			if err := b.run(ctx, ib.o.timeout, "sh", "-c", `kill -0 "$(cat /tmp/warm.pid)"`); err != nil {
				return fmt.Errorf("the warm python3 is not running in the fork: %w", err)
			}
			return nil
		},
	}

	var initramfsReady, imageReady, coldExec, coldPython, againPython []time.Duration
	for i := range o.runs {
		b, p, err := ib.bootRetried(ctx, res, stderr, fmt.Sprintf("initramfs boot %d", i), false, true)
		if err != nil {
			return fmt.Errorf("initramfs boot %d: %w", i, err)
		}
		b.stop()
		fmt.Fprintf(stderr, "initramfs boot %d: first exec after %v (%v)\n", i, p.total().Round(time.Millisecond), p)
		initramfsReady = append(initramfsReady, p.start+p.healthy)

		// The image, to the first exec; then, in the same box, the
		// Python imports on a cold page cache, and again on a warm one:
		// what the interpreter itself costs.
		p, py, pyAgain, err := ib.coldPython(ctx, res, stderr, i, pythonArgv)
		if err != nil {
			return err
		}
		imageReady, coldExec = append(imageReady, p.start+p.healthy), append(coldExec, p.total())
		coldPython, againPython = append(coldPython, py), append(againPython, pyAgain)

		for _, f := range []*forkKind{create, pyFork} {
			for _, withWS := range []bool{false, true} {
				if err := ib.fork(ctx, res, stderr, f, withWS); err != nil {
					return err
				}
			}
		}
	}

	rows := []struct {
		id, label string
		d         []time.Duration
	}{
		{"image.initramfs-ready", "boot to agent ready, initramfs only", initramfsReady},
		{"image.image-ready", "boot to agent ready, the image (root switch)", imageReady},
		{"image.cold-exec", "cold boot of the image to first exec (true)", coldExec},
		{"image.create.cold", "create from its template to first exec (true)", create.cold},
		{"image.create.ws", "  again, the first create's working set mapped ahead", create.warm},
		{"image.pyfork.cold", "fork of a box with python3 warm to first exec", pyFork.cold},
		{"image.pyfork.ws", "  the same, fork 0's working set mapped ahead", pyFork.warm},
		{"image.python.cold", "python3 imports in a cold-booted box (exec alone)", coldPython},
		{"image.python.again", "  again in that box (page cache warm)", againPython},
		{"image.python.forks", "python3 imports in the python-warm forks (exec alone)", pyFork.execs},
	}
	for _, r := range rows {
		res.durations(r.id, "image", strings.TrimSpace(r.label), r.d...)
	}
	p50 := func(id string) time.Duration { v, _ := res.p50(id); return fromMS(v).Round(time.Millisecond) }
	fmt.Fprintf(stdout, "\nroot image %s, %d MiB, booted with %s; %d rounds, each one of every kind\n",
		o.image, o.memMiB, strings.TrimPrefix(imageRootCmdline, "quiet "), o.runs)
	fmt.Fprintf(stdout, "%-52s %12s %10s\n", "median (same run)", "time", "÷ initramfs")
	fmt.Fprintf(stdout, "%-52s %12v %10s\n", rows[0].label, p50(rows[0].id), "1")
	fmt.Fprintf(stdout, "%-52s %12v %10.3f\n", rows[1].label, p50(rows[1].id), res.ratio(rows[1].id+"/"+rows[0].id, "image boot ÷ initramfs boot", rows[1].id, rows[0].id))
	fmt.Fprintf(stdout, "\n%-52s %12s %10s\n", "median (same run)", "time", "÷ boot")
	fmt.Fprintf(stdout, "%-52s %12v %10s\n", rows[2].label, p50(rows[2].id), "1")
	for _, r := range rows[3:7] {
		fmt.Fprintf(stdout, "%-52s %12v %10.4f\n", r.label, p50(r.id), res.ratio(r.id+"/"+rows[2].id, strings.TrimSpace(r.label)+" ÷ cold boot of the image", r.id, rows[2].id))
	}
	fmt.Fprintf(stdout, "  (a fork's first exec: python3 -c '%s')\n", pythonImports)
	for _, r := range rows[7:] {
		fmt.Fprintf(stdout, "%-52s %12v\n", r.label, p50(r.id))
	}
	return nil
}

// coldPython is round i's cold boot of the image to its first exec, then
// argv (python3's imports) twice in that box: on a cold page cache, then
// on a warm one. A box the lab breaks during any of the three is a broken
// boot, and the whole sample is taken again.
func (ib *imageBench) coldPython(ctx context.Context, res *Results, stderr io.Writer, i int, argv []string) (p phases, py, again time.Duration, err error) {
	what := fmt.Sprintf("image cold boot %d", i)
	err = res.retryBoot(stderr, what, func() error {
		b, bp, err := ib.boot(ctx, true, true)
		if err != nil {
			return err
		}
		p = bp
		t := time.Now()
		if err := b.run(ctx, ib.o.timeout, argv...); err != nil {
			return b.unanswered(err)
		}
		py = time.Since(t)
		t = time.Now()
		if err := b.run(ctx, ib.o.timeout, argv...); err != nil {
			return b.unanswered(fmt.Errorf("again: %w", err))
		}
		again = time.Since(t)
		b.stop()
		return nil
	})
	if err != nil {
		return p, 0, 0, fmt.Errorf("%s: %w", what, err)
	}
	fmt.Fprintf(stderr, "%s: first exec after %v (%v); then python3 imports %v, again %v\n",
		what, p.total().Round(time.Millisecond), p, py.Round(time.Millisecond), again.Round(time.Millisecond))
	return p, py, again, nil
}

// forkKind is one kind of fork and what its forks measured: checkpoint(a)
// is the checkpoint of its fork attempt a, taken by it if need be (tookCkpt > 0
// then, counted in the fork's time); argv is the first exec; check, if
// not nil, runs after the first exec, untimed. Its fork 0 records the
// working set that the later ones with the working set map ahead.
type forkKind struct {
	what       string
	checkpoint func(i int) (id string, tookCkpt time.Duration, err error)
	argv       []string
	check      func(*boxRun) error

	n          int             // forks made
	attempts   int             // forks tried, broken boots included: checkpoint(attempts)
	cold, warm []time.Duration // to the first exec: without, with the working set
	execs      []time.Duration // the first exec alone, of all
}

// fork makes f's next fork, with or without the working set mapped
// ahead, to its first exec, records the times and stops it.
func (ib *imageBench) fork(ctx context.Context, res *Results, stderr io.Writer, f *forkKind, withWS bool) error {
	i := f.n
	f.n++
	var b *boxRun
	var p phases
	var tCkpt time.Duration
	err := res.retryBoot(stderr, fmt.Sprintf("%s %d", f.what, i), func() error {
		id, took, err := f.checkpoint(f.attempts)
		f.attempts++
		if err != nil {
			return err
		}
		tCkpt = took
		if b, p, err = ib.restoreFork(ctx, id, withWS, f.argv...); err != nil {
			return fmt.Errorf("from checkpoint %s: %w", id, err)
		}
		if i == 0 {
			if _, err := b.m.SaveWorkingSet(); err != nil {
				return b.fail(err)
			}
		}
		if f.check != nil {
			if err := f.check(b); err != nil {
				return b.unanswered(err)
			}
		}
		b.stop()
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s %d: %w", f.what, i, err)
	}
	total := tCkpt + p.total()
	if withWS {
		f.warm = append(f.warm, total)
	} else {
		f.cold = append(f.cold, total)
	}
	f.execs = append(f.execs, p.exec)
	split := p.String()
	if tCkpt > 0 {
		split = fmt.Sprintf("checkpoint %v, %s", tCkpt.Round(time.Millisecond), split)
	}
	fmt.Fprintf(stderr, "%s %d: first exec answered after %v (working set ahead: %v; %s)\n", f.what, i, total.Round(time.Millisecond), withWS, split)
	return nil
}

// tailBuffer keeps the last max bytes written to it: a guest's console,
// for the errors of a guest that did not come up.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.b))
}

// wrap adds the end of the console to err.
func (t *tailBuffer) wrap(err error) error {
	if tail := t.String(); tail != "" {
		return fmt.Errorf("%w; console ends:\n%s", err, tail)
	}
	return err
}
