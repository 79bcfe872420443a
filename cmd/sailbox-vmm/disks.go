package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/snapshot/disklayer"
	"github.com/sailbox-dev/sailbox/vmm"
)

// version is recorded in checkpoints this VMM writes.
const version = "sailbox-vmm dev"

// openDisks opens the configured disks; layered ones get a new top in
// root.
func openDisks(c config, root *snapshot.Root) ([]vmm.Disk, error) {
	var disks []vmm.Disk
	fail := func(err error) ([]vmm.Disk, error) {
		for _, d := range disks {
			if d.Layered != nil {
				d.Layered.Close()
			}
		}
		return nil, err
	}
	for i, dc := range c.Disks {
		d := vmm.Disk{Path: dc.Path, ReadOnly: dc.ReadOnly, ID: dc.ID}
		if dc.Layered {
			if d.ID == "" {
				d.ID = fmt.Sprintf("disk%d", i)
			}
			fi, err := os.Stat(dc.Path)
			if err != nil {
				return fail(fmt.Errorf("%w: disk %d: %w", vmm.ErrConfig, i, err))
			}
			top := root.TopPath(fmt.Sprintf("boot-%s-%s.top", randomName(), d.ID))
			if d.Layered, err = disklayer.Open(disklayer.Layout{Base: dc.Path}, top); err != nil {
				return fail(fmt.Errorf("%w: disk %d: %w", vmm.ErrConfig, i, err))
			}
			d.Chain = snapshot.DiskChain{Base: dc.Path, BaseSize: fi.Size(), Size: fi.Size()}
		}
		disks = append(disks, d)
	}
	return disks, nil
}

func randomName() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// fixUpRestoredGuest tells the restored guest's agent to set its clock and
// reseed its entropy pool, and a fork to take a new identity.
func fixUpRestoredGuest(ctx context.Context, c config, log *slog.Logger) {
	agent := &guestagent.Client{Dial: func(ctx context.Context) (net.Conn, error) {
		return guestagent.DialHybridVsock(ctx, c.VsockUDS, guestagent.Port)
	}}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := agent.WaitHealthy(ctx, 50*time.Millisecond, nil); err != nil {
		log.Error("restored guest: agent not reachable", "err", err)
		return
	}
	args := guestagent.RestoreArgs()
	if c.ForkName != "" {
		var err error
		if args, err = guestagent.ForkArgs(c.ForkName); err != nil {
			log.Error("restored guest: fork identity", "err", err)
			return
		}
	}
	if _, err := agent.Restored(ctx, args); err != nil {
		log.Error("restored guest: clock, entropy and identity not renewed", "err", err)
	}
}

// controller serves the control API for the running machine.
type controller struct {
	m       *vmm.Machine
	cfg     config
	root    *snapshot.Root // nil without -store
	started time.Time
	stderr  io.Writer
}

func (c *controller) Status() vmmapi.Status {
	state := "running"
	if c.m.Paused() {
		state = "paused"
	}
	return vmmapi.Status{State: state, VCPUs: c.cfg.VCPUs, MemoryMiB: c.cfg.MemoryMiB, StartedAt: c.started.UTC(), PID: os.Getpid()}
}

func (c *controller) Shutdown() { c.m.Stop() }

func (c *controller) Pause() error  { return conflict(c.m.Pause()) }
func (c *controller) Resume() error { return conflict(c.m.Resume()) }

// DescribeVCPUs says where each vCPU is; of a paused VM, only that it is.
func (c *controller) DescribeVCPUs() string { return c.m.DescribeVCPUs() }

// SaveWorkingSet records a restored VM's working set in its checkpoint.
func (c *controller) SaveWorkingSet() (vmmapi.WorkingSetResult, error) {
	if c.cfg.Restore == "" {
		return vmmapi.WorkingSetResult{}, &vmmapi.Error{Status: 409, Err: errors.New("working set: the VM was booted, not restored")}
	}
	saved, err := c.m.SaveWorkingSet()
	return vmmapi.WorkingSetResult{Saved: saved}, err
}

// conflict marks lifecycle errors as the caller's (HTTP 409).
func conflict(err error) error {
	if errors.Is(err, vmm.ErrNotRunning) || errors.Is(err, vmm.ErrNotCheckpointable) || errors.Is(err, snapshot.ErrExists) {
		return &vmmapi.Error{Status: 409, Err: err}
	}
	return err
}

func (c *controller) Checkpoint(req vmmapi.CheckpointRequest) (vmmapi.CheckpointResult, error) {
	if c.root == nil {
		return vmmapi.CheckpointResult{}, &vmmapi.Error{Status: 409, Err: errors.New("checkpoint: the VMM runs without -store")}
	}
	man, st, err := c.m.Checkpoint(vmm.CheckpointOptions{Root: c.root, ID: req.ID, GuestSchemaVersion: guestagent.GuestSchemaVersion, VMMVersion: version})
	if err != nil {
		return vmmapi.CheckpointResult{}, conflict(err)
	}
	return vmmapi.CheckpointResult{
		ID: man.ID, Parent: man.Parent, Created: man.Created,
		Pages: st.Pages, PageBytes: st.PageBytes, LayerBytes: st.LayerBytes, PausedPages: st.PausedPages,
		DiskBytes: st.DiskBytes, PauseNanos: st.Pause.Nanoseconds(), TotalNanos: st.Total.Nanoseconds(),
	}, nil
}

// Fork checkpoints the machine and starts a child VMM restored from that
// checkpoint, with its own disk tops, vsock and control sockets. The
// parent keeps running.
func (c *controller) Fork(req vmmapi.ForkRequest) (vmmapi.ForkResult, error) {
	if req.ChildAPISocket == "" || req.ChildVsockUDS == "" || req.Name == "" {
		return vmmapi.ForkResult{}, &vmmapi.Error{Status: 400, Err: errors.New("fork: name, child_api_socket and child_vsock_uds are required")}
	}
	cp, err := c.Checkpoint(vmmapi.CheckpointRequest{ID: req.CheckpointID})
	if err != nil {
		return vmmapi.ForkResult{}, err
	}
	self, err := os.Executable()
	if err != nil {
		return vmmapi.ForkResult{}, fmt.Errorf("fork: %w", err)
	}
	args := []string{"-store", c.cfg.Store, "-restore", cp.ID, "-fork-name", req.Name,
		"-vsock-uds", req.ChildVsockUDS, "-api-sock", req.ChildAPISocket, "-console=false"}
	if req.ChildConsoleLog != "" {
		args = append(args, "-console-log", req.ChildConsoleLog)
	}
	cmd := exec.Command(self, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives the parent
	logPath := filepath.Join(filepath.Dir(req.ChildAPISocket), filepath.Base(req.ChildAPISocket)+".log")
	if f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); err == nil {
		cmd.Stdout, cmd.Stderr = f, f
		defer f.Close()
	}
	if err := cmd.Start(); err != nil {
		return vmmapi.ForkResult{}, fmt.Errorf("fork: start child: %w", err)
	}
	go cmd.Wait()
	return vmmapi.ForkResult{Checkpoint: cp, ChildPID: cmd.Process.Pid}, nil
}
