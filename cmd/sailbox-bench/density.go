package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/vmm"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// The density rows: how many boxes one running box forks into, how fast,
// and what they cost the host.
//
// Each child is what the daemon makes of a fork (vmmbackend.Fork): a
// checkpoint of the running parent, then a sailbox-vmm process of its own
// that restores it as a fork (a new hostname and machine-id), counted
// once its agent has answered a first exec. The children start one after
// the other, each once the one before has answered, and all keep running
// to the end: forks per second is then the rate a harness that forks one
// box at a time gets, the checkpoint of the parent included, as the cold
// boots of the boot rows are one at a time.
//
// A process per box is how Sailbox runs boxes, so the VMM's own memory is
// measured as Firecracker's is: the process's RSS outside guest RAM
// (api/vmmapi.MemoryUsage).

// firecrackerVMMOverheadMiB is the memory overhead Firecracker publishes
// for its VMM: "Firecracker's virtual machine manager threads have a
// memory overhead <= 5 MiB" for a microVM of 1 vCPU and 128 MiB
// (SPECIFICATION.md, "Overhead"), which its CI checks as the RSS of every
// mapping of the process but guest memory (tests/host_tools/memory.py;
// 5 MiB booted and restored, 7 MiB while a snapshot is taken). A
// published number, not measured here.
const firecrackerVMMOverheadMiB = 5

// densityReserveMiB is the host memory the density rows leave free: they
// start no more children once MemAvailable is below it, and report how
// many fitted.
const densityReserveMiB = 256

// densityChild is one fork, running in a sailbox-vmm of its own.
type densityChild struct {
	cmd    *exec.Cmd
	exited chan struct{}
	api    *vmmapi.Client
	log    string
}

// kill ends the child's VMM and waits for it; false if it has not gone
// after ten seconds.
func (c *densityChild) kill() bool {
	c.cmd.Process.Kill()
	select {
	case <-c.exited:
		return true
	case <-time.After(10 * time.Second):
		return false
	}
}

// benchDensity forks o.densityForks children of one running box, or as
// many as the host's memory holds, and reports their rate against the
// cold boots of the boot rows (if measured) and their memory against
// o.densityForks × guest memory and Firecracker's published overhead.
func benchDensity(ctx context.Context, sys *kvm.System, o options, res *Results, stdout, stderr io.Writer) error {
	if _, err := os.Stat(o.vmmBinary); err != nil {
		return fmt.Errorf("density: -vmm-binary: %w", err)
	}
	dir, err := os.MkdirTemp("", "sailbox-bench-density")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	store := filepath.Join(dir, "store")
	root, err := snapshot.OpenRoot(store, nil)
	if err != nil {
		return err
	}
	parent, err := bootParent(ctx, sys, dir, o, res, stderr, "density")
	if err != nil {
		return err
	}
	defer parent.stop()

	var children []*densityChild
	defer func() {
		left := 0
		for _, c := range children {
			if !c.kill() {
				left++
			}
		}
		if left > 0 {
			fmt.Fprintf(stderr, "density: %d of %d children still running after SIGKILL and 10 s\n", left, len(children))
			res.note("density: %d of %d children did not exit when killed", left, len(children))
		} else {
			fmt.Fprintf(stderr, "density: all %d children killed and gone\n", len(children))
		}
	}()

	before, err := memAvailable()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\ndensity: forking a running %d MiB box %d times, one after the other, each child a sailbox-vmm of its own (host MemAvailable %d MiB)\n", o.memMiB, o.densityForks, before>>20)
	var forkErr error
	// The rate is of forking: the time the loop spends measuring memory
	// (asking every child at the Pss points) is taken out of it. Broken
	// attempts that were taken again stay in.
	var measuring time.Duration
	t0 := time.Now()
	for i := range o.densityForks {
		tm := time.Now()
		avail, err := memAvailable()
		if err != nil {
			return err
		}
		if avail < densityReserveMiB<<20 {
			res.note("density: stopped at %d of %d forks: host MemAvailable %d MiB, below the %d MiB the bench leaves free", i, o.densityForks, avail>>20, densityReserveMiB)
			fmt.Fprintf(stdout, "density: stopped at %d of %d forks, host MemAvailable %d MiB < %d MiB\n", i, o.densityForks, avail>>20, densityReserveMiB)
			break
		}
		measuring += time.Since(tm)
		var c *densityChild
		var took, tCkpt time.Duration
		err = res.retryBoot(stderr, fmt.Sprintf("density fork %d", i), func() error {
			id := fmt.Sprintf("density%d-%d", i, len(res.Retries))
			start := time.Now()
			if _, _, err := parent.m.Checkpoint(vmm.CheckpointOptions{Root: root, ID: id, GuestSchemaVersion: guestagent.GuestSchemaVersion, VMMVersion: "bench"}); err != nil {
				return fmt.Errorf("checkpoint the parent: %w", err)
			}
			tCkpt = time.Since(start)
			var err error
			c, err = startChild(ctx, o, store, filepath.Join(dir, id), id)
			took = time.Since(start)
			return err
		})
		if err != nil {
			forkErr = fmt.Errorf("density fork %d: %w", i, err)
			res.note("density: fork %d failed, measured the %d running: %v", i, len(children), err)
			break
		}
		children = append(children, c)
		tm = time.Now()
		res.durations("density.fork", "density", "density: fork of a running box to first exec in a sailbox-vmm of its own (checkpoint included), one after the other", took)
		after, err := memAvailable()
		if err != nil {
			return err
		}
		n := len(children)
		res.curve("density.host.curve", "density", "density: host memory used since the first fork (MemTotal − MemAvailable)", "MiB", "forks", float64(n), mib(int64(before)-int64(after)))
		line := fmt.Sprintf("density fork %d: first exec after %v (checkpoint %v); host MemAvailable %d MiB", i, took.Round(time.Millisecond), tCkpt.Round(time.Millisecond), after>>20)
		if pssPoint(n, o.densityForks) {
			// A child that does not answer is left out of this point
			// (said in the notes), not the end of the rows.
			sum, err := sumProportional(ctx, children)
			if err != nil {
				res.note("density: the Pss at %d forks left out: %v", n, err)
				fmt.Fprintln(stderr, line+"; Pss left out: "+err.Error())
				measuring += time.Since(tm)
				continue
			}
			res.curve("density.pss.curve", "density", "density: the children's Pss, summed", "MiB", "forks", float64(n), mib(int64(sum)))
			line += fmt.Sprintf(", children's Pss %d MiB", sum>>20)
			// What the boxes cost the host's CPUs doing nothing: the
			// guests idle, their VMMs waiting, the parent idle too.
			if busy, err := hostBusy(time.Second); err == nil {
				res.curve("density.idle_cpu.curve", "density", "density: host CPU busy over 1 s with the forks running idle", "%", "forks", float64(n), busy)
				line += fmt.Sprintf(", host CPU %.1f%% busy idle", busy)
			}
		}
		fmt.Fprintln(stderr, line)
		measuring += time.Since(tm)
	}
	wall := time.Since(t0) - measuring
	n := len(children)
	if n == 0 {
		return errors.Join(forkErr, errors.New("density: no child started"))
	}

	// Every child's memory, once all run.
	var sum uint64
	reported := 0
	for i, c := range children {
		st, err := childStatus(ctx, c)
		if err != nil {
			res.note("density: child %d's memory left out: %v", i, err)
			continue
		}
		reported++
		u := st.Memory
		sum += u.Proportional
		res.values("density.vmm.rss", "density", "density: the VMM's own memory per box (RSS outside guest RAM)", "MiB", mib(int64(u.VMMResident)))
		res.values("density.vmm.private", "density", "density: the VMM's own memory per box, private (its binary's shared text left out)", "MiB", mib(int64(u.VMMPrivate)))
		res.values("density.vmm.files", "density", "density: the VMM's own memory per box mapped from files (its binary, shared by every VMM)", "MiB", mib(int64(u.VMMFiles)))
		if g := u.Go; g != nil {
			res.values("density.go.heap_objects", "density", "density: per box, the Go runtime's heap objects", "MiB", mib(int64(g.HeapObjects)))
			res.values("density.go.heap_free", "density", "density: per box, the Go runtime's free heap not returned to the OS", "MiB", mib(int64(g.HeapFree)))
			res.values("density.go.stacks", "density", "density: per box, the Go runtime's stacks", "MiB", mib(int64(g.Stacks)))
			res.values("density.go.other", "density", "density: per box, the Go runtime's metadata and other", "MiB", mib(int64(g.Other)))
			if g.HeapGoal > 0 { // 0 from a VMM older than the field
				res.values("density.go.heap_goal", "density", "density: per box, the Go runtime's heap goal (the heap size at which its next collection ends)", "MiB", mib(int64(g.HeapGoal)))
			}
		}
		res.values("density.guest.rss", "density", "density: guest RAM resident per box (checkpoint pages shared by the forks included)", "MiB", mib(int64(u.GuestResident)))
		res.values("density.guest.private", "density", "density: guest RAM private per box (written since its fork)", "MiB", mib(int64(u.GuestPrivate)))
	}
	if reported < n {
		res.note("density: the children's Pss, summed, is of the %d of %d children that reported their memory", reported, n)
	}
	after, err := memAvailable()
	if err != nil {
		return err
	}
	storeBytes := treeBytes(store)
	d := densitySummary{
		forks: n, wall: wall, guestMiB: o.memMiB,
		hostUsed: int64(before) - int64(after), pss: sum, store: storeBytes,
	}
	if boot, ok := res.p50("boot.sailbox"); ok {
		d.bootMS = boot
	}
	d.record(res)
	d.print(stdout, res)
	return forkErr
}

// startChild starts a sailbox-vmm restoring checkpoint id from store as a
// fork, its sockets and log in dir, and returns once its agent has
// answered a first exec.
func startChild(ctx context.Context, o options, store, dir, id string) (*densityChild, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	l := childLaunch(store, dir, id)
	cmd, err := l.Start(o.vmmBinary)
	if err != nil {
		return nil, err
	}
	c := &densityChild{cmd: cmd, exited: make(chan struct{}), api: vmmapi.NewClient(l.APISocket), log: l.Log}
	go func() { cmd.Wait(); close(c.exited) }()
	fail := func(err error) (*densityChild, error) {
		c.kill()
		return nil, fmt.Errorf("%w; its log ends: %s", err, logTail(c.log, 5))
	}
	agent := guestagent.NewHybridClient(l.VsockUDS)
	wctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if _, err := agent.WaitHealthy(wctx, 2*time.Millisecond, c.exited); err != nil {
		_, err = fail(err)
		return nil, brokenBoot{err}
	}
	if _, _, code, err := agent.Run(wctx, "true"); err != nil || code != 0 {
		// Where the guest stands says whose fault it is: a vCPU the lab's
		// emulated SVM left at a host address is the lab's (the sample is
		// taken again, said in the results); anything else ends the run,
		// with the description to find it by.
		dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
		vcpus, derr := c.api.DescribeVCPUs(dctx)
		dcancel()
		if derr != nil {
			vcpus = "(its vCPUs: " + derr.Error() + ")"
		}
		_, err = fail(fmt.Errorf("first exec: exit %d, %v; its vCPUs:\n%s", code, err, vcpus))
		if strings.Contains(vcpus, vmm.HostRIP) {
			return nil, brokenBoot{err}
		}
		return nil, err
	}
	return c, nil
}

// childLaunch is how a child's VMM starts, as the daemon's backend starts
// a fork's (vmmbackend.restoreLaunch): checkpoint id restored from store
// as a fork named id, its vsock, control socket and log in dir.
func childLaunch(store, dir, id string) vmmapi.Launch {
	return vmmapi.Launch{
		MemoryMiB: vmmapi.DefaultMemoryMiB, VCPUs: vmmapi.DefaultVCPUs,
		Store: store, Restore: id, ForkName: id,
		VsockUDS: filepath.Join(dir, "vsock"), APISocket: filepath.Join(dir, "api.sock"),
		Log: filepath.Join(dir, "vmm.log"),
	}
}

// childStatus is c's VMM's status, with its memory.
func childStatus(ctx context.Context, c *densityChild) (vmmapi.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := c.api.Status(ctx)
	if err != nil {
		return st, err
	}
	if st.Memory == nil {
		return st, errors.New("its status has no memory: the VMM could not read its smaps")
	}
	return st, nil
}

// sumProportional is the children's Pss summed: every page they map
// counted once, shared ones divided among them.
func sumProportional(ctx context.Context, children []*densityChild) (uint64, error) {
	var sum uint64
	for i, c := range children {
		st, err := childStatus(ctx, c)
		if err != nil {
			return 0, fmt.Errorf("density child %d: %w", i, err)
		}
		sum += st.Memory.Proportional
	}
	return sum, nil
}

// pssPoint says whether the children's Pss is summed when the k-th of n
// has started: it asks every child, so at 1, 2, 5, every tenth and the
// last, not at each (which would ask n²/2 times).
func pssPoint(k, n int) bool {
	return k <= 2 || k == 5 || k%10 == 0 || k == n
}

// densitySummary is what the density rows come to.
type densitySummary struct {
	forks    int
	wall     time.Duration // from the first fork's checkpoint to the last child's first exec, less the time measuring memory
	bootMS   float64       // p50 of the boot rows' cold boots; 0 if not measured
	guestMiB int
	hostUsed int64  // bytes: MemAvailable's drop from before the first fork to the end
	pss      uint64 // bytes: the children's Pss, summed
	store    int64  // bytes: the checkpoint store's files (on the lab's tmpfs: in RAM)
}

func (d densitySummary) forksPerSecond() float64 { return float64(d.forks) / d.wall.Seconds() }

// bootsPerSecond is the rate of cold boots one after the other; 0 without
// boot rows.
func (d densitySummary) bootsPerSecond() float64 {
	if d.bootMS <= 0 {
		return 0
	}
	return 1000 / d.bootMS
}

// nominalMiB is what the children's guest memory adds up to.
func (d densitySummary) nominalMiB() float64 { return float64(d.forks * d.guestMiB) }

// record adds the summary's rows and ratios to res.
func (d densitySummary) record(res *Results) {
	res.values("density.forks", "density", "density: children running together (forks that fitted)", "forks", float64(d.forks))
	res.values("density.forks_per_s", "density", "density: forks per second, one after the other, each to its first exec", "1/s", d.forksPerSecond())
	if b := d.bootsPerSecond(); b > 0 {
		res.values("density.boots_per_s", "density", "density: cold boots per second (1 ÷ p50 of boot.sailbox)", "1/s", b)
		res.ratio("density.forks_per_s/density.boots_per_s", "forks per second ÷ cold boots per second", "density.forks_per_s", "density.boots_per_s")
	}
	res.values("density.guest.nominal", "density", "density: the children's guest memory, summed (forks × -mem)", "MiB", d.nominalMiB())
	res.values("density.host.used", "density", "density: host memory used by the children (MemAvailable's drop; checkpoints, page tables and page cache included)", "MiB", mib(d.hostUsed))
	res.values("density.pss", "density", "density: the children's Pss, summed", "MiB", mib(int64(d.pss)))
	res.values("density.store", "density", "density: the checkpoint store's files (in RAM on the lab's tmpfs, within host.used)", "MiB", mib(d.store))
	res.ratio("density.host.used/density.guest.nominal", "host memory used ÷ forks × guest memory", "density.host.used", "density.guest.nominal")
	res.ratio("density.pss/density.guest.nominal", "children's Pss ÷ forks × guest memory", "density.pss", "density.guest.nominal")
	res.values("firecracker.vmm.overhead", "density", "Firecracker's published VMM memory overhead (SPECIFICATION.md: <= 5 MiB, 1 vCPU, 128 MiB; not measured here)", "MiB", firecrackerVMMOverheadMiB)
	res.ratio("density.vmm.rss/firecracker.vmm.overhead", "the VMM's own memory per box ÷ Firecracker's published 5 MiB", "density.vmm.rss", "firecracker.vmm.overhead")
	res.ratio("density.vmm.private/firecracker.vmm.overhead", "the VMM's own private memory per box ÷ Firecracker's published 5 MiB", "density.vmm.private", "firecracker.vmm.overhead")
}

// print is the density table.
func (d densitySummary) print(w io.Writer, res *Results) {
	p50 := func(id string) float64 { v, _ := res.p50(id); return v }
	fmt.Fprintf(w, "\ndensity: %d forks of one running %d MiB box, each in a sailbox-vmm of its own, all running at the end\n", d.forks, d.guestMiB)
	fmt.Fprintf(w, "  forks per second (one after the other)      %10.3f   (%d in %v; p50 fork to first exec %v)\n", d.forksPerSecond(), d.forks, d.wall.Round(time.Millisecond), fromMS(p50("density.fork")).Round(time.Millisecond))
	if b := d.bootsPerSecond(); b > 0 {
		fmt.Fprintf(w, "  cold boots per second (1 ÷ p50 boot)        %10.3f   → forks/s ÷ boots/s %.2f\n", b, d.forksPerSecond()/b)
	}
	nominal := d.nominalMiB()
	fmt.Fprintf(w, "  host memory used (MemAvailable's drop)      %10.1f MiB  ÷ %d × %d MiB = %.4f\n", mib(d.hostUsed), d.forks, d.guestMiB, mib(d.hostUsed)/nominal)
	fmt.Fprintf(w, "  children's Pss, summed                      %10.1f MiB  ÷ %d × %d MiB = %.4f\n", mib(int64(d.pss)), d.forks, d.guestMiB, mib(int64(d.pss))/nominal)
	fmt.Fprintf(w, "  checkpoint store (within host memory used)  %10.1f MiB\n", mib(d.store))
	fmt.Fprintf(w, "  per box, p50: VMM RSS outside guest RAM     %10.2f MiB  (Firecracker publishes <= %d MiB)\n", p50("density.vmm.rss"), firecrackerVMMOverheadMiB)
	fmt.Fprintf(w, "  per box, p50: VMM private outside guest RAM %10.2f MiB\n", p50("density.vmm.private"))
	fmt.Fprintf(w, "  per box, p50: VMM RSS mapped from files     %10.2f MiB  (its binary)\n", p50("density.vmm.files"))
	if _, ok := res.p50("density.go.heap_objects"); ok {
		fmt.Fprintf(w, "  per box, p50: Go heap objects / free heap / stacks / other  %.2f / %.2f / %.2f / %.2f MiB (mapped, not all resident)\n",
			p50("density.go.heap_objects"), p50("density.go.heap_free"), p50("density.go.stacks"), p50("density.go.other"))
	}
	if _, ok := res.p50("density.go.heap_goal"); ok {
		fmt.Fprintf(w, "  per box, p50: Go heap goal                  %10.2f MiB\n", p50("density.go.heap_goal"))
	}
	fmt.Fprintf(w, "  per box, p50: guest RAM resident / private  %10.2f / %.2f MiB\n", p50("density.guest.rss"), p50("density.guest.private"))
}

// hostBusy is the percentage of the host's CPU time spent busy (not idle
// or waiting for I/O) over the next d.
func hostBusy(d time.Duration) (float64, error) {
	read := func() (busy, total uint64, err error) {
		b, err := os.ReadFile("/proc/stat")
		if err != nil {
			return 0, 0, err
		}
		busy, total, ok := cpuTimes(string(b))
		if !ok {
			return 0, 0, errors.New("/proc/stat has no cpu line")
		}
		return busy, total, nil
	}
	b0, t0, err := read()
	if err != nil {
		return 0, err
	}
	time.Sleep(d)
	b1, t1, err := read()
	if err != nil {
		return 0, err
	}
	if t1 <= t0 {
		return 0, errors.New("/proc/stat: no CPU time passed")
	}
	return 100 * float64(b1-b0) / float64(t1-t0), nil
}

// cpuTimes adds up /proc/stat's first line, the host's CPU time in
// ticks: all of it, and the busy part (all but idle and iowait).
func cpuTimes(stat string) (busy, total uint64, ok bool) {
	line, _, _ := strings.Cut(stat, "\n")
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, 0, false
	}
	var idle uint64
	for i, f := range fields[1:] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		// user nice system idle iowait irq softirq steal guest
		// guest_nice: guest time is already in user and nice.
		if i >= 8 {
			break
		}
		total += v
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return total - idle, total, true
}

// memAvailable is the host's MemAvailable, in bytes.
func memAvailable() (uint64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	kib, ok := meminfoKiB(string(b), "MemAvailable")
	if !ok {
		return 0, errors.New("/proc/meminfo has no MemAvailable")
	}
	return kib << 10, nil
}

// meminfoKiB is the value of key in /proc/meminfo's text, in KiB.
func meminfoKiB(meminfo, key string) (uint64, bool) {
	for line := range strings.Lines(meminfo) {
		k, v, ok := strings.Cut(line, ":")
		if !ok || k != key {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		return n, err == nil
	}
	return 0, false
}

// treeBytes is the space the files under dir take: their blocks, not
// their sizes (a layer file has holes).
func treeBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			if fi, err := e.Info(); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					n += st.Blocks * 512
				}
			}
		}
		return nil
	})
	return n
}

// logTail is the last n lines of the file at path, on one line.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

func mib(bytes int64) float64 { return float64(bytes) / (1 << 20) }
