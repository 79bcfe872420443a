package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
		return nil, err
	}
	r.healthy = time.Since(t0)
	if _, _, code, err := r.agent.Run(wctx, "true"); err != nil || code != 0 {
		r.stop()
		return nil, fmt.Errorf("first exec: exit %d, %v", code, err)
	}
	r.exec = time.Since(t0) - r.healthy
	return r, nil
}

// benchSnapshots measures checkpoints, restores and forks of one box, and
// reports each against the cold boot measured in the same run.
func benchSnapshots(ctx context.Context, sys *kvm.System, o options, coldBoot time.Duration, stdout, stderr io.Writer) error {
	dir, err := os.MkdirTemp("", "sailbox-bench-snap")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	root, err := snapshot.OpenRoot(filepath.Join(dir, "store"), nil)
	if err != nil {
		return err
	}
	uds := filepath.Join(dir, "parent.vsock")
	m, err := vmm.New(sys, vmm.Config{
		KernelPath: o.kernel, InitrdPath: o.initrd, MemoryMiB: o.memMiB, VCPUs: 1,
		Cmdline: "quiet", Vsock: &vmm.Vsock{CID: 3, UDSPath: uds},
	})
	if err != nil {
		return err
	}
	parent, err := startMachine(ctx, m, uds, o)
	if err != nil {
		return fmt.Errorf("parent: %w", err)
	}
	defer parent.stop()
	ckpt := func(id string) (vmm.CheckpointStats, error) {
		_, st, err := parent.m.Checkpoint(vmm.CheckpointOptions{Root: root, ID: id, GuestSchemaVersion: guestagent.GuestSchemaVersion, VMMVersion: "bench"})
		return st, err
	}

	// Checkpoint cost against the memory dirtied since the last one.
	full, err := ckpt("full")
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\ncheckpoints of a running %d MiB box (the first is full: every page the guest touched)\n", o.memMiB)
	fmt.Fprintf(stdout, "%-22s %14s %14s %12s %14s\n", "dirtied since last", "pages written", "bytes/dirtied", "pause", "paused pages")
	line := func(name string, dirtied int64, st vmm.CheckpointStats) {
		r := "-"
		if dirtied > 0 {
			r = fmt.Sprintf("%.3f", float64(st.PageBytes)/float64(dirtied))
		}
		fmt.Fprintf(stdout, "%-22s %14d %14s %12v %14d\n", name, st.Pages, r, st.Pause.Round(10*time.Microsecond), st.PausedPages)
	}
	line("(full)", 0, full)
	for _, mib := range []int{0, 16, 64} {
		if _, _, code, err := parent.agent.Run(ctx, "sh", "-c", fmt.Sprintf("dd if=/dev/urandom of=/tmp/blob bs=1M count=%d 2>/dev/null", mib)); err != nil || code != 0 {
			return fmt.Errorf("dirty %d MiB: exit %d, %v", mib, code, err)
		}
		st, err := ckpt(fmt.Sprintf("dirty%d", mib))
		if err != nil {
			return err
		}
		line(fmt.Sprintf("%d MiB", mib), int64(mib)<<20, st)
	}

	// Restore to first exec, from the latest checkpoint: the first with
	// nothing mapped ahead, then the others with the working set the first
	// recorded.
	var restores, warmRestores []time.Duration
	for i := range max(o.runs, 2) {
		cuds := filepath.Join(dir, fmt.Sprintf("restore%d.vsock", i))
		t0 := time.Now()
		rm, err := vmm.Restore(sys, vmm.RestoreConfig{Root: root, ID: "dirty64", VsockUDSPath: cuds})
		if err != nil {
			return err
		}
		r, err := startMachine(ctx, rm, cuds, o)
		if err != nil {
			return fmt.Errorf("restore %d: %w", i, err)
		}
		if i == 0 {
			restores = append(restores, time.Since(t0))
			if _, err := rm.SaveWorkingSet(); err != nil {
				r.stop()
				return err
			}
		} else {
			warmRestores = append(warmRestores, time.Since(t0))
		}
		r.stop()
	}

	// Forks of the running parent, kept running together.
	const forks = 10
	var forkTimes, prefaulted []time.Duration
	var private uint64
	var children []*running
	defer func() {
		for _, c := range children {
			c.stop()
		}
	}()
	for i := range forks {
		id := fmt.Sprintf("fork%d", i)
		cuds := filepath.Join(dir, id+".vsock")
		t0 := time.Now()
		if _, err := ckpt(id); err != nil {
			return err
		}
		tCkpt := time.Since(t0)
		// Fork 0 records its working set in its checkpoint, which the
		// parent's later checkpoints chain onto. Odd forks map it ahead;
		// even ones do not.
		withWS := i%2 == 1
		cm, err := vmm.Restore(sys, vmm.RestoreConfig{Root: root, ID: id, VsockUDSPath: cuds, NoWorkingSet: !withWS})
		if err != nil {
			return err
		}
		tRestore := time.Since(t0) - tCkpt
		c, err := startMachine(ctx, cm, cuds, o)
		if err != nil {
			return fmt.Errorf("fork %d: %w", i, err)
		}
		total := time.Since(t0)
		if withWS {
			prefaulted = append(prefaulted, total)
		} else {
			forkTimes = append(forkTimes, total)
		}
		children = append(children, c)
		if i == 0 {
			if _, err := cm.SaveWorkingSet(); err != nil {
				return err
			}
		}
		u, err := cm.Memory().Usage()
		if err != nil {
			return err
		}
		private += u.Private
		fmt.Fprintf(stderr, "fork %d: first exec after %v (working set ahead: %v; checkpoint %v, restore %v, agent healthy %v, exec %v); guest pages touched %d, private memory %d KiB\n",
			i, total.Round(time.Millisecond), withWS, tCkpt.Round(time.Millisecond), tRestore.Round(time.Millisecond),
			c.healthy.Round(time.Millisecond), c.exec.Round(time.Millisecond), u.Resident/memory.PageSize, u.Private>>10)
	}

	fmt.Fprintf(stdout, "\n%-44s %12s %10s\n", "median (same run)", "time", "÷ boot")
	fmt.Fprintf(stdout, "%-44s %12v %10s\n", "cold boot to agent ready", coldBoot.Round(time.Millisecond), "1")
	fmt.Fprintf(stdout, "%-44s %12v %10.4f\n", "restore to first exec (64 MiB-dirty chain)", median(restores).Round(time.Millisecond), ratio(median(restores), coldBoot))
	fmt.Fprintf(stdout, "%-44s %12v %10.4f\n", "  again, its working set mapped ahead", median(warmRestores).Round(time.Millisecond), ratio(median(warmRestores), coldBoot))
	fmt.Fprintf(stdout, "%-44s %12v %10.4f\n", "fork of a running box to first exec in child", median(forkTimes).Round(time.Millisecond), ratio(median(forkTimes), coldBoot))
	fmt.Fprintf(stdout, "%-44s %12v %10.4f\n", "  the same, fork 0's working set mapped ahead", median(prefaulted).Round(time.Millisecond), ratio(median(prefaulted), coldBoot))
	fmt.Fprintf(stdout, "\n%d forks running: private host memory %d KiB in all, %d KiB per fork, of %d MiB guest memory each\n",
		forks, private>>10, private/forks>>10, o.memMiB)

	if o.qemu == "" {
		return nil
	}
	var qs []qemuSnapshot
	for i := range o.runs {
		q, err := benchQEMUSnapshot(ctx, o, uint32(200+i))
		if err != nil {
			fmt.Fprintf(stderr, "qemu snapshot run %d: failed, left out: %v\n", i, err)
			continue
		}
		fmt.Fprintf(stderr, "qemu snapshot run %d: save %v (%d MiB file), restore to first exec %v\n", i, q.save.Round(time.Millisecond), q.fileBytes>>20, q.restore.Round(time.Millisecond))
		qs = append(qs, q)
	}
	if len(qs) == 0 {
		return nil
	}
	var saves, qrestores []time.Duration
	for _, q := range qs {
		saves, qrestores = append(saves, q.save), append(qrestores, q.restore)
	}
	fmt.Fprintf(stdout, "\nqemu's own snapshot of the same guest (stop + migrate to a file; -incoming + cont), same run:\n")
	fmt.Fprintf(stdout, "  save                                     %12v   (%d MiB file)\n", median(saves).Round(time.Millisecond), qs[0].fileBytes>>20)
	fmt.Fprintf(stdout, "  restore to first exec                    %12v\n", median(qrestores).Round(time.Millisecond))
	fmt.Fprintf(stdout, "  sailbox restore / qemu restore           %12.4f\n", ratio(median(restores), median(qrestores)))
	fmt.Fprintf(stdout, "  sailbox fork / qemu save+restore         %12.4f\n", ratio(median(forkTimes), median(saves)+median(qrestores)))
	return nil
}
