// Package vmmcontrol serves one running machine's control API (package
// vmmapi) inside sailbox-vmm: status, pause and resume, checkpoints, the
// working set, and forks, which start a child sailbox-vmm restored from a
// checkpoint of the machine.
package vmmcontrol

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
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
	// self is the sailbox-vmm binary a fork starts.
	self string
	// busy is held by a checkpoint or a fork from start to end, which go
	// on when their client has gone; Status waits for it.
	busy sync.Mutex
}

// New returns the controller of machine m, which a VMM started with
// launch runs; root is its checkpoint store (nil without one). Forks
// start the binary at self (empty: this process's own).
func New(m *vmm.Machine, launch vmmapi.Launch, root *snapshot.Root, self string) *Controller {
	return &Controller{m: m, launch: launch, root: root, started: time.Now(), self: self}
}

var _ vmmapi.Controller = (*Controller)(nil)

// Status describes the machine once no checkpoint or fork is in
// progress: a daemon that restarted attaches with it, and then sees the
// store as the previous daemon's last call left it (committed or not).
func (c *Controller) Status() vmmapi.Status {
	c.busy.Lock()
	defer c.busy.Unlock()
	state := "running"
	if c.m.Paused() {
		state = "paused"
	}
	return vmmapi.Status{State: state, VCPUs: c.m.VCPUs(), MemoryMiB: int(c.m.Memory().Size() >> 20), StartedAt: c.started.UTC(), PID: os.Getpid()}
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
	return c.checkpoint(req)
}

func (c *Controller) checkpoint(req vmmapi.CheckpointRequest) (vmmapi.CheckpointResult, error) {
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
	}, nil
}

// Fork checkpoints the machine and starts a child VMM restored from that
// checkpoint as req.Child says, in this VMM's store. The parent keeps
// running.
func (c *Controller) Fork(req vmmapi.ForkRequest) (vmmapi.ForkResult, error) {
	c.busy.Lock()
	defer c.busy.Unlock()
	child := req.Child
	child.Store, child.Restore = c.launch.Store, req.CheckpointID
	if err := child.Validate(); err != nil {
		return vmmapi.ForkResult{}, fmt.Errorf("fork: %w: %w", vmmapi.ErrBadRequest, err)
	}
	cp, err := c.checkpoint(vmmapi.CheckpointRequest{ID: req.CheckpointID})
	if err != nil {
		return vmmapi.ForkResult{}, err
	}
	self := c.self
	if self == "" {
		if self, err = os.Executable(); err != nil {
			return vmmapi.ForkResult{}, fmt.Errorf("fork: %w", err)
		}
	}
	cmd, err := child.Start(self)
	if err != nil {
		return vmmapi.ForkResult{}, fmt.Errorf("fork: %w", err)
	}
	go cmd.Wait()
	return vmmapi.ForkResult{Checkpoint: cp, ChildPID: cmd.Process.Pid}, nil
}

// FixUpRestoredGuest tells a restored guest's agent, reached through the
// vsock socket of launch, to set its clock and reseed its entropy pool,
// and a fork to take a new identity.
func FixUpRestoredGuest(ctx context.Context, launch vmmapi.Launch, log *slog.Logger) {
	agent := guestagent.NewHybridClient(launch.VsockUDS)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := agent.WaitHealthy(ctx, 50*time.Millisecond, nil); err != nil {
		log.Error("restored guest: agent not reachable", "err", err)
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
	if _, err := agent.Restored(ctx, args); err != nil {
		log.Error("restored guest: clock, entropy and identity not renewed", "err", err)
	}
}
