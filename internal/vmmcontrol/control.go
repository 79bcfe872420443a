// Package vmmcontrol serves one running machine's control API (package
// vmmapi) inside sailbox-vmm: status, pause and resume, checkpoints, the
// working set. It never starts a process: a fork is a checkpoint here and
// a restore the daemon starts.
package vmmcontrol

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	virtionet "github.com/sailbox-dev/sailbox/devices/virtio/net"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/vmm"
)

// Version is recorded in the checkpoints this VMM writes.
const Version = "sailbox-vmm dev"

// Controller serves the control API for a running machine.
type Controller struct {
	m       *vmm.Machine
	launch  vmmapi.Launch  // how this VMM was started
	root    *snapshot.Root // nil without a store
	started time.Time
	// busy is held by a checkpoint from start to end, which goes on
	// when its client has gone; Status waits for it.
	busy sync.Mutex
}

// New returns the controller of machine m, which a VMM started with
// launch runs; root is its checkpoint store (nil without one).
func New(m *vmm.Machine, launch vmmapi.Launch, root *snapshot.Root) *Controller {
	return &Controller{m: m, launch: launch, root: root, started: time.Now()}
}

var _ vmmapi.Controller = (*Controller)(nil)

// Status describes the machine once no checkpoint is in
// progress: a daemon that restarted attaches with it, and then sees the
// store as the previous daemon's last call left it (committed or not).
func (c *Controller) Status() vmmapi.Status {
	c.busy.Lock()
	defer c.busy.Unlock()
	state := "running"
	if c.m.Paused() {
		state = "paused"
	}
	st := vmmapi.Status{State: state, VCPUs: c.m.VCPUs(), MemoryMiB: int(c.m.Memory().Size() >> 20), StartedAt: c.started.UTC(), PID: os.Getpid()}
	if u, err := c.m.Memory().ProcessUsage(); err == nil {
		st.Memory = &vmmapi.MemoryUsage{
			GuestResident: u.Guest.Resident, GuestPrivate: u.Guest.Private,
			VMMResident: u.Other.Resident, VMMPrivate: u.Other.Private, VMMFiles: u.OtherFiles.Resident,
			Proportional: u.Guest.Proportional + u.Other.Proportional,
			Go:           goMemory(),
		}
	}
	if w, ok := c.m.MappedAhead(); ok {
		st.WorkingSet = mappedAhead(w)
	}
	if n, ok := c.m.NetStats(); ok {
		st.Network = networkStats(n)
	}
	return st
}

// mappedAhead is w as the control API reports it.
func mappedAhead(w vmm.MappedAhead) *vmmapi.MappedAhead {
	return &vmmapi.MappedAhead{From: w.From, Pages: w.Pages, Copied: w.Copied, Entered: w.Entered}
}

// networkStats is the network device's counters as the control API
// reports them: the device's transmit side is the guest's out.
func networkStats(s virtionet.Stats) *vmmapi.NetworkStats {
	return &vmmapi.NetworkStats{
		FramesOut: s.TxFrames, BytesOut: s.TxBytes, InvalidOut: s.TxInvalid, DroppedOut: s.TxDropped,
		FramesIn: s.RxFrames, BytesIn: s.RxBytes, InvalidIn: s.RxInvalid, DroppedIn: s.RxDropped,
		PeerGone: s.PeerGone,
	}
}

func (c *Controller) Shutdown()     { c.m.Stop() }
func (c *Controller) Pause() error  { return c.m.Pause() }
func (c *Controller) Resume() error { return c.m.Resume() }

// DescribeVCPUs says where each vCPU is; of a paused VM, only that it is.
func (c *Controller) DescribeVCPUs() string { return c.m.DescribeVCPUs() }

// SaveWorkingSet records a restored VM's working set in its checkpoint.
func (c *Controller) SaveWorkingSet() (vmmapi.WorkingSetResult, error) {
	if c.launch.Restore == "" {
		return vmmapi.WorkingSetResult{}, fmt.Errorf("working set: %w: the VM was booted, not restored", vmmapi.ErrConflict)
	}
	saved, err := c.m.SaveWorkingSet()
	return vmmapi.WorkingSetResult{Saved: saved}, err
}

func (c *Controller) Checkpoint(req vmmapi.CheckpointRequest) (vmmapi.CheckpointResult, error) {
	c.busy.Lock()
	defer c.busy.Unlock()
	if c.root == nil {
		return vmmapi.CheckpointResult{}, fmt.Errorf("checkpoint: %w: the VMM runs without -store", vmmapi.ErrConflict)
	}
	man, st, err := c.m.Checkpoint(vmm.CheckpointOptions{Root: c.root, ID: req.ID, GuestSchemaVersion: guestagent.GuestSchemaVersion, VMMVersion: Version})
	if err != nil {
		return vmmapi.CheckpointResult{}, err
	}
	return vmmapi.CheckpointResult{
		ID: man.ID, Parent: man.Parent, Created: man.Created,
		Pages: st.Pages, PageBytes: st.PageBytes, LayerBytes: st.LayerBytes, PausedPages: st.PausedPages,
		DiskBytes: st.DiskBytes, PauseNanos: st.Pause.Nanoseconds(), TotalNanos: st.Total.Nanoseconds(),
		PauseParts: pauseParts(st.PauseParts),
	}, nil
}

// pauseParts is p as the control API reports it.
func pauseParts(p vmm.PauseParts) *vmmapi.PauseParts {
	return &vmmapi.PauseParts{
		StopNanos: p.Stop.Nanoseconds(), DirtyLogNanos: p.DirtyLog.Nanoseconds(), CopyNanos: p.Copy.Nanoseconds(),
		VMStateNanos: p.VMState.Nanoseconds(), VCPUStateNanos: p.VCPUState.Nanoseconds(), DevicesNanos: p.Devices.Nanoseconds(),
		DiskSwitchNanos: p.DiskSwitch.Nanoseconds(), ResumeNanos: p.Resume.Nanoseconds(),
	}
}

// FixUpRestoredGuest tells a restored guest's agent, reached through the
// vsock socket of launch, to set its clock, reseed its entropy pool and
// reset the TCP connections its new network never knew, and a fork to
// take a new identity. Cancelling ctx ends it quietly: the VM stopped,
// and why is the VMM's to say.
func FixUpRestoredGuest(ctx context.Context, launch vmmapi.Launch, log *slog.Logger) {
	agent := guestagent.NewHybridClient(launch.VsockUDS)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	stopped := func() bool { return errors.Is(ctx.Err(), context.Canceled) }
	if _, err := agent.WaitHealthy(ctx, 50*time.Millisecond, nil); err != nil {
		if !stopped() {
			log.Error("restored guest: agent not reachable", "err", err)
		}
		return
	}
	args := guestagent.RestoreArgs()
	if launch.ForkName != "" {
		var err error
		if args, err = guestagent.ForkArgs(launch.ForkName); err != nil {
			log.Error("restored guest: fork identity", "err", err)
			return
		}
	}
	res, err := agent.Restored(ctx, args)
	if err != nil {
		if !stopped() {
			log.Error("restored guest: not every fix-up applied (clock, entropy, identity, connections)", "err", err)
		}
		return
	}
	if res.ConnectionsReset > 0 {
		log.Info("restored guest: connections from before the checkpoint reset", "connections", res.ConnectionsReset)
	}
}
