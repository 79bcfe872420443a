package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/vmm"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// running is a machine started by the benchmark, with its agent.
type running struct {
	m       *vmm.Machine
	agent   *guestagent.Client
	done    chan struct{}
	healthy time.Duration // from Run to the agent's first health answer
	exec    time.Duration // then to the end of the first exec
}

func (r *running) stop() {
	r.m.Stop()
	<-r.done
	r.m.Close()
}

// startMachine runs m, whose vsock listens on uds, and returns once its
// agent has answered one exec.
func startMachine(ctx context.Context, m *vmm.Machine, uds string, o options) (*running, error) {
	r := &running{m: m, done: make(chan struct{})}
	go func() { m.Run(ctx); close(r.done) }()
	r.agent = guestagent.NewHybridClient(uds)
	wctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	t0 := time.Now()
	if _, err := r.agent.WaitHealthy(wctx, 2*time.Millisecond, r.done); err != nil {
		r.stop()
		return nil, brokenBoot{err}
	}
	r.healthy = time.Since(t0)
	if _, _, code, err := r.agent.Run(wctx, "true"); err != nil || code != 0 {
		r.stop()
		return nil, fmt.Errorf("first exec: exit %d, %v", code, err)
	}
	r.exec = time.Since(t0) - r.healthy
	return r, nil
}

// bootParent boots the box a row group checkpoints and forks, its vsock
// socket in dir, taking the boot again if the lab breaks it.
func bootParent(ctx context.Context, sys *kvm.System, dir string, o options, res *Results, stderr io.Writer, group string) (*running, error) {
	var parent *running
	err := res.retryBoot(stderr, group+" parent boot", func() error {
		uds := filepath.Join(dir, "parent.vsock")
		os.Remove(uds) // a broken attempt's
		m, err := vmm.New(sys, vmm.Config{
			KernelPath: o.kernel, InitrdPath: o.initrd, MemoryMiB: o.memMiB, VCPUs: 1,
			Cmdline: "quiet", Vsock: &vmm.Vsock{CID: 3, UDSPath: uds},
		})
		if err != nil {
			return err
		}
		parent, err = startMachine(ctx, m, uds, o)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s parent: %w", group, err)
	}
	return parent, nil
}

// densityForks is how many forks the bench keeps running together, for
// the host memory they take; later forks are stopped once measured.
const densityForks = 10

// benchSnapshots measures checkpoints, restores and forks of one box, and
// reports each against the cold boot measured in the same run.
func benchSnapshots(ctx context.Context, sys *kvm.System, o options, res *Results, stdout, stderr io.Writer) error {
	dir, err := os.MkdirTemp("", "sailbox-bench-snap")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	root, err := snapshot.OpenRoot(filepath.Join(dir, "store"), nil)
	if err != nil {
		return err
	}
	parent, err := bootParent(ctx, sys, dir, o, res, stderr, "snapshots")
	if err != nil {
		return err
	}
	defer parent.stop()
	ckpt := func(id string) (vmm.CheckpointStats, error) {
		_, st, err := parent.m.Checkpoint(vmm.CheckpointOptions{Root: root, ID: id, GuestSchemaVersion: guestagent.GuestSchemaVersion, VMMVersion: "bench"})
		return st, err
	}

	// Checkpoint cost against the memory dirtied since the last one, in
	// rounds of 0, 16 and 64 MiB, -runs samples in all or more.
	full, err := ckpt("full")
	if err != nil {
		return err
	}
	res.durations("checkpoint.full.pause", "snapshots", "pause of the first (full) checkpoint", full.Pause)
	fmt.Fprintf(stdout, "\ncheckpoints of a running %d MiB box (the first is full: every page the guest touched)\n", o.memMiB)
	fmt.Fprintf(stdout, "%-22s %14s %14s %12s %14s %s\n", "dirtied since last", "pages written", "bytes/dirtied", "pause", "paused pages", " pause parts (ms)")
	line := func(name string, dirtied int64, st vmm.CheckpointStats) {
		r := "-"
		if dirtied > 0 {
			r = fmt.Sprintf("%.3f", float64(st.PageBytes)/float64(dirtied))
		}
		fmt.Fprintf(stdout, "%-22s %14d %14s %12v %14d  %s\n", name, st.Pages, r, st.Pause.Round(10*time.Microsecond), st.PausedPages, pausePartsLine(st.PauseParts))
	}
	line("(full)", 0, full)
	dirties := []int{0, 16, 64}
	for round := range (o.runs + len(dirties) - 1) / len(dirties) {
		for _, mib := range dirties {
			if _, _, code, err := parent.agent.Run(ctx, "sh", "-c", fmt.Sprintf("dd if=/dev/urandom of=/tmp/blob bs=1M count=%d 2>/dev/null", mib)); err != nil || code != 0 {
				return fmt.Errorf("dirty %d MiB: exit %d, %v", mib, code, err)
			}
			st, err := ckpt(fmt.Sprintf("dirty%d-%d", mib, round))
			if err != nil {
				return err
			}
			line(fmt.Sprintf("%d MiB", mib), int64(mib)<<20, st)
			res.pair("checkpoint.pause", "snapshots", "checkpoint pause against MiB dirtied since the last", "ms", "MiB", float64(mib), ms(st.Pause))
			res.recordPauseParts(float64(mib), st)
			res.pair("checkpoint.written", "snapshots", "checkpoint pages written against MiB dirtied since the last", "MiB", "MiB", float64(mib), float64(st.PageBytes)/(1<<20))
		}
	}
	latest := fmt.Sprintf("dirty64-%d", (o.runs+len(dirties)-1)/len(dirties)-1)

	// Restore to first exec, from the latest checkpoint, alternating:
	// nothing mapped ahead, then the working set restore 0 recorded.
	for i := range 2 * o.runs {
		withWS := i%2 == 1
		var took time.Duration
		err := res.retryBoot(stderr, fmt.Sprintf("restore %d", i), func() error {
			cuds := filepath.Join(dir, fmt.Sprintf("restore%d.vsock", i))
			os.Remove(cuds)
			t0 := time.Now()
			rm, err := vmm.Restore(sys, vmm.RestoreConfig{Root: root, ID: latest, VsockUDSPath: cuds, NoWorkingSet: !withWS})
			if err != nil {
				return err
			}
			r, err := startMachine(ctx, rm, cuds, o)
			if err != nil {
				return err
			}
			took = time.Since(t0)
			defer r.stop()
			if i == 0 {
				_, err = rm.SaveWorkingSet()
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("restore %d: %w", i, err)
		}
		if withWS {
			res.durations("restore.ws", "snapshots", "restore to first exec, working set mapped ahead", took)
		} else {
			res.durations("restore.cold", "snapshots", "restore to first exec, nothing mapped ahead", took)
		}
	}

	// Forks of the running parent, the first densityForks kept running
	// together for the host memory they take.
	var private uint64
	var children []*running
	defer func() {
		for _, c := range children {
			c.stop()
		}
	}()
	for i := range 2 * o.runs {
		// Fork 0 records its working set in its checkpoint, which the
		// parent's later checkpoints chain onto. Odd forks map it ahead;
		// even ones do not.
		withWS := i%2 == 1
		var c *running
		var cm *vmm.Machine
		var total, tCkpt, tRestore time.Duration
		err := res.retryBoot(stderr, fmt.Sprintf("fork %d", i), func() error {
			id := fmt.Sprintf("fork%d-%d", i, len(res.Retries))
			cuds := filepath.Join(dir, id+".vsock")
			t0 := time.Now()
			if _, err := ckpt(id); err != nil {
				return err
			}
			tCkpt = time.Since(t0)
			var err error
			cm, err = vmm.Restore(sys, vmm.RestoreConfig{Root: root, ID: id, VsockUDSPath: cuds, NoWorkingSet: !withWS})
			if err != nil {
				return err
			}
			tRestore = time.Since(t0) - tCkpt
			c, err = startMachine(ctx, cm, cuds, o)
			total = time.Since(t0)
			return err
		})
		if err != nil {
			return fmt.Errorf("fork %d: %w", i, err)
		}
		if withWS {
			res.durations("fork.ws", "snapshots", "fork of a running box to first exec, fork 0's working set mapped ahead", total)
		} else {
			res.durations("fork.cold", "snapshots", "fork of a running box to first exec in the child", total)
		}
		if i == 0 {
			if _, err := cm.SaveWorkingSet(); err != nil {
				c.stop()
				return err
			}
		}
		u, err := cm.Memory().Usage()
		if err != nil {
			c.stop()
			return err
		}
		if i < densityForks {
			children = append(children, c)
			private += u.Private
			res.curve("forks.private", "snapshots", "private host memory of the forks running together", "MiB", "forks", float64(i+1), float64(private)/(1<<20))
		} else {
			c.stop()
		}
		fmt.Fprintf(stderr, "fork %d: first exec after %v (working set ahead: %v; checkpoint %v, restore %v, agent healthy %v, exec %v); guest pages touched %d, private memory %d KiB\n",
			i, total.Round(time.Millisecond), withWS, tCkpt.Round(time.Millisecond), tRestore.Round(time.Millisecond),
			c.healthy.Round(time.Millisecond), c.exec.Round(time.Millisecond), u.Resident/memory.PageSize, u.Private>>10)
	}

	if err := benchFamilyFork(ctx, sys, root, dir, "full", o, res, stderr); err != nil {
		return err
	}

	p50 := func(id string) time.Duration { v, _ := res.p50(id); return fromMS(v).Round(time.Millisecond) }
	coldBoot := p50("boot.sailbox")
	fmt.Fprintf(stdout, "\n%-44s %12s %10s\n", "median (same run)", "time", "÷ boot")
	fmt.Fprintf(stdout, "%-44s %12v %10s\n", "cold boot to agent ready", coldBoot, "1")
	for _, r := range []struct{ id, label string }{
		{"restore.cold", "restore to first exec (64 MiB-dirty chain)"},
		{"restore.ws", "  again, restore 0's working set mapped ahead"},
		{"fork.cold", "fork of a running box to first exec in child"},
		{"fork.ws", "  the same, fork 0's working set mapped ahead"},
		{"fork.family", "first fork of a new box of the family (ws)"},
	} {
		fmt.Fprintf(stdout, "%-44s %12v %10.4f\n", r.label, p50(r.id), res.ratio(r.id+"/boot.sailbox", r.label+" ÷ cold boot", r.id, "boot.sailbox"))
	}
	forks := min(densityForks, 2*o.runs)
	fmt.Fprintf(stdout, "\n%d forks running: private host memory %d KiB in all, %d KiB per fork, of %d MiB guest memory each\n",
		forks, private>>10, private/uint64(forks)>>10, o.memMiB)

	if o.qemu == "" {
		return nil
	}
	return benchQEMUSnapshots(ctx, o, res, stdout, stderr)
}

// benchQEMUSnapshots measures QEMU's own snapshots of the same guest, in
// each of qemuSnapModes, interleaved, and reports Sailbox's checkpoints,
// restores and forks against each.
func benchQEMUSnapshots(ctx context.Context, o options, res *Results, stdout, stderr io.Writer) error {
	for i := range o.runs {
		for m, mode := range qemuSnapModes {
			q, err := benchQEMUSnapshot(ctx, o, uint32(200+100*m+i), mode)
			if err != nil {
				fmt.Fprintf(stderr, "qemu snapshot (%s) run %d: failed, left out: %v\n", mode.label, i, err)
				res.note("qemu snapshot (%s) run %d failed, left out: %v", mode.label, i, err)
				continue
			}
			fmt.Fprintf(stderr, "qemu snapshot (%s) run %d: save %v (%d KiB file), restore to first exec %v\n", mode.label, i, q.save.Round(time.Millisecond), q.fileBytes>>10, q.restore.Round(time.Millisecond))
			res.durations(mode.rows+".save", "snapshots", "qemu's own snapshot ("+mode.label+"): save (stop + migrate to a file)", q.save)
			res.durations(mode.rows+".restore", "snapshots", "qemu's own snapshot ("+mode.label+"): restore to first exec (-incoming + cont)", q.restore)
			res.values(mode.rows+".file", "snapshots", "qemu's own snapshot ("+mode.label+"): migration file size", "MiB", float64(q.fileBytes)/(1<<20))
		}
	}

	fmt.Fprintf(stdout, "\nqemu's own snapshots of the same guest (stop + migrate to a file; -incoming + cont), same run:\n")
	fmt.Fprintf(stdout, "%-50s", "")
	for _, mode := range qemuSnapModes {
		fmt.Fprintf(stdout, " %38s", mode.label)
	}
	fmt.Fprintln(stdout)
	line := func(label string, cell func(mode qemuSnapMode) string) {
		fmt.Fprintf(stdout, "  %-48s", label)
		for _, mode := range qemuSnapModes {
			if _, ok := res.p50(mode.rows + ".save"); !ok {
				fmt.Fprintf(stdout, " %38s", "-")
				continue
			}
			fmt.Fprintf(stdout, " %38s", cell(mode))
		}
		fmt.Fprintln(stdout)
	}
	p50 := func(id string) string { v, _ := res.p50(id); return fromMS(v).Round(time.Millisecond).String() }
	line("save", func(m qemuSnapMode) string { return p50(m.rows + ".save") })
	line("migration file", func(m qemuSnapMode) string { v, _ := res.p50(m.rows + ".file"); return fmt.Sprintf("%.2f MiB", v) })
	line("restore to first exec", func(m qemuSnapMode) string { return p50(m.rows + ".restore") })
	// Sailbox's rows against each mode. The row IDs of the first mode's
	// ratios predate the second.
	for _, r := range []struct {
		num, label, what string
		at               *float64 // the checkpoints at this many MiB dirtied
		den              []string // qemu row suffixes, summed
	}{
		{"checkpoint.full.pause", "sailbox first (full) checkpoint's pause ÷ qemu save", "pause ÷ save, full checkpoint", nil, []string{".save"}},
		{"checkpoint.pause", "sailbox checkpoint pause, 0 MiB dirtied since the last ÷ qemu save", "pause ÷ save, 0 MiB dirtied", ptr(0.0), []string{".save"}},
		{"restore.cold", "sailbox restore ÷ qemu restore", "restore ÷ restore", nil, []string{".restore"}},
		{"restore.ws", "sailbox restore, working set mapped ahead ÷ qemu restore", "restore, working set ahead ÷ restore", nil, []string{".restore"}},
		{"fork.cold", "sailbox fork ÷ qemu save+restore", "fork ÷ save + restore", nil, []string{".save", ".restore"}},
	} {
		// Each cell records its ratio as it prints it.
		line("sailbox "+r.what, func(m qemuSnapMode) string {
			den := make([]string, len(r.den))
			for i, d := range r.den {
				den[i] = m.rows + d
			}
			id, label := r.num+"/"+strings.Join(den, "+"), fmt.Sprintf("%s (%s)", r.label, m.label)
			if id == "fork.cold/qemu.save+qemu.restore" {
				id = "fork.cold/qemu.save+restore" // its ID before the second mode
			}
			if r.at != nil {
				id = fmt.Sprintf("%s@%gMiB/%s", r.num, *r.at, strings.Join(den, "+"))
				return fmt.Sprintf("%.4f", res.ratioAt(id, label, r.num, *r.at, den...))
			}
			return fmt.Sprintf("%.4f", res.ratio(id, label, r.num, den...))
		})
	}
	return nil
}

func ptr[T any](v T) *T { return &v }
