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
)

// benchFamilyFork measures the first fork of a box that never forked
// before, in a family (a kernel, initramfs and image) whose working set
// is already recorded: how sailboxd runs boxes. The daemon boots a
// family's guest once and checkpoints it as a template; every create
// restores the template, and the first box created records its working
// set in the template's checkpoint. A box's own checkpoints chain onto
// the template's, so the first fork of any later box maps that working
// set ahead without a fork of its own before it.
//
// Here the template is tpl, a checkpoint of the booted parent: box 0 is
// restored from it and records the working set; then each sample
// restores a new box from it (a create, its first exec answered), and
// times a fork of that box: its checkpoint, the child's restore (which
// inherits the template's working set) and the child's first exec.
func benchFamilyFork(ctx context.Context, sys *kvm.System, root *snapshot.Root, dir, tpl string, o options, res *Results, stderr io.Writer) error {
	restore := func(id, name string, noWS bool) (*running, error) {
		uds := filepath.Join(dir, name+".vsock")
		os.Remove(uds) // a broken attempt's
		m, err := vmm.Restore(sys, vmm.RestoreConfig{Root: root, ID: id, VsockUDSPath: uds, NoWorkingSet: noWS})
		if err != nil {
			return nil, err
		}
		return startMachine(ctx, m, uds, o)
	}
	err := res.retryBoot(stderr, "family box 0", func() error {
		b, err := restore(tpl, "family0", true)
		if err != nil {
			return err
		}
		defer b.stop()
		_, err = b.m.SaveWorkingSet()
		return err
	})
	if err != nil {
		return fmt.Errorf("family box 0: %w", err)
	}
	for i := range o.runs {
		var total, tCkpt, tRestore time.Duration
		var st vmm.CheckpointStats
		err := res.retryBoot(stderr, fmt.Sprintf("family fork %d", i), func() error {
			name := fmt.Sprintf("family%d-%d", i+1, len(res.Retries))
			box, err := restore(tpl, name, false)
			if err != nil {
				return err
			}
			defer box.stop()
			t0 := time.Now()
			if _, st, err = box.m.Checkpoint(vmm.CheckpointOptions{Root: root, ID: name, GuestSchemaVersion: guestagent.GuestSchemaVersion, VMMVersion: "bench"}); err != nil {
				return err
			}
			tCkpt = time.Since(t0)
			child, err := restore(name, name+"-fork", false)
			if err != nil {
				return err
			}
			total = time.Since(t0)
			tRestore = total - tCkpt - child.healthy - child.exec
			child.stop()
			return nil
		})
		if err != nil {
			return fmt.Errorf("family fork %d: %w", i, err)
		}
		res.durations("fork.family", "snapshots", "first fork of a box created from its family's template, the family's working set mapped ahead", total)
		rp := st.RunningParts
		fmt.Fprintf(stderr, "family fork %d: first exec after %v (checkpoint %v: %d pages, pre-copy %.1f ms, pause %.1f ms, files %.1f ms (memory layer %.1f, disk seals %.1f, side by side), commit %.1f ms; restore %v)\n",
			i, total.Round(time.Millisecond), tCkpt.Round(time.Millisecond), st.Pages, ms(rp.PreCopy), ms(st.Pause), ms(rp.Files), ms(rp.Write), ms(rp.Seal), ms(rp.Commit), tRestore.Round(time.Millisecond))
	}
	return nil
}
