package vmmbackend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
)

// The VMM processes: started, adopted once their agent answers, watched,
// killed.

// start runs sailbox-vmm as l says for box and waits for its agent; with
// a policy (a box with a network, whose launch names its network's
// socket), box's sailbox-net first, under it, which l's network device
// then connects to.
func (b *Backend) start(ctx context.Context, box string, l vmmapi.Launch, policy *catalog.NetPolicy) (daemon.Instance, error) {
	f := b.files(box)
	// A VMM of the box the backend does not track is an orphan (of a
	// wake or a create the daemon did not see through): it would keep the
	// sockets from the new one. So is a network: the box runs no VM.
	if pids, err := vmmsServing(f.apiSock); err == nil && len(pids) > 0 {
		if err := b.stopUntracked(box); err != nil {
			return daemon.Instance{}, err
		}
	}
	if err := b.stopUntrackedNets(box); err != nil {
		return daemon.Instance{}, err
	}
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return daemon.Instance{}, err
	}
	// A VMM killed with the host (kill -9) leaves its sockets behind, and
	// the new one could not listen on them. Remove them, unless something
	// still answers there: then a VMM of the box is alive after all.
	for _, sock := range []struct{ network, path string }{
		{"unix", f.apiSock}, {"unix", f.vsockSock}, {"unixpacket", f.netSock}, {"unix", f.netCtl},
	} {
		if c, err := net.DialTimeout(sock.network, sock.path, time.Second); err == nil {
			c.Close()
			return daemon.Instance{}, fmt.Errorf("box %s: a process still serves %s", box, sock.path)
		}
		if err := os.Remove(sock.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return daemon.Instance{}, fmt.Errorf("box %s: remove stale socket: %w", box, err)
		}
	}
	var network *netProc
	if policy != nil {
		n, err := b.startNet(ctx, box, *policy)
		if err != nil {
			return daemon.Instance{}, err
		}
		network = n
	}
	cmd, err := l.Start(b.cfg.VMM) // in a session of its own: it outlives the daemon
	if err != nil {
		b.stopNet(box, network)
		return daemon.Instance{}, fmt.Errorf("box %s: %w", box, err)
	}
	v := &vm{files: f, pid: cmd.Process.Pid, ctl: vmmapi.NewClient(f.apiSock), agent: guestagent.NewHybridClient(f.vsockSock), exited: make(chan struct{}), restored: l.Restore != "", net: network}
	go func() {
		cmd.Wait()
		close(v.exited)
	}()
	return b.adopt(ctx, box, v)
}

// adopt waits for v's agent and registers v as box's VM; on failure it
// kills v and stops its network.
func (b *Backend) adopt(ctx context.Context, box string, v *vm) (daemon.Instance, error) {
	wctx, cancel := context.WithTimeout(ctx, b.cfg.BootTimeout)
	defer cancel()
	h, err := v.agent.WaitHealthy(wctx, 50*time.Millisecond, v.exited)
	if err != nil {
		b.logVCPUs(box, v)
		b.kill(v)
		b.stopNet(box, v.net)
		return daemon.Instance{}, fmt.Errorf("box %s: guest agent: %w (the VMM's log ends %q)", box, err, logTail(v.files.log, 1))
	}
	v.schema.Store(int32(h.GuestSchemaVersion))
	b.register(box, v)
	return daemon.Instance{GuestSchemaVersion: h.GuestSchemaVersion}, nil
}

// logVCPUs logs where the vCPUs of v are, if its VMM still runs: for a
// guest whose agent never answered (a hung boot, a guest stuck in a
// fault loop).
func (b *Backend) logVCPUs(box string, v *vm) {
	select {
	case <-v.exited:
		return
	default:
	}
	// A pause gives up on a vCPU stuck in the kernel after 10s.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	d, err := v.ctl.DescribeVCPUs(ctx)
	if err != nil {
		b.log.Warn("guest agent did not answer; its vCPUs cannot be described", "box", box, "err", err)
		return
	}
	// The guest's console says why, if its kernel got as far as printing
	// (a panic, an oops); a guest booted quiet prints nothing else.
	b.log.Warn("guest agent did not answer; its vCPUs", "box", box, "vcpus", d, "console", logTail(v.files.console, 30))
}

// register makes v box's VM, and logs it if it exits while it still is:
// nothing asked it to (Stop forgets a VM before it stops it). Its network
// goes with it, whatever ended it.
func (b *Backend) register(box string, v *vm) {
	b.mu.Lock()
	b.vms[box] = v
	b.mu.Unlock()
	b.watchNet(box, v)
	go func() {
		<-v.exited
		// Before the loss is reported: the restore that follows starts
		// a network of its own on the same sockets.
		b.stopNet(box, v.net)
		b.mu.Lock()
		current := b.vms[box] == v
		b.mu.Unlock()
		if current {
			b.log.Error("box's VMM exited on its own", "box", box, "pid", v.pid, "log_tail", logTail(v.files.log, 1))
			if lost := b.lost.Load(); lost != nil && *lost != nil {
				(*lost)(box)
			}
		}
	}()
}

// Watch has lost called when a box's VMM exits on its own.
func (b *Backend) Watch(lost func(box string)) { b.lost.Store(&lost) }

// logTail is the last n lines of the log at path: what it said last, or
// "" if it cannot be read.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// watchPID closes exited when process pid is gone (for VMMs this process
// did not start: after a restart, or a fork's child).
func watchPID(pid int, exited chan struct{}) {
	for running(pid) {
		time.Sleep(200 * time.Millisecond)
	}
	close(exited)
}

// running reports whether process pid exists and has not exited: whether
// any of its threads still runs. A zombie has exited: a VMM whose daemon
// is gone is reaped by init, which may take its time (or, as a
// container's PID 1, never do it). The thread group's leader alone does
// not say: killed, a Go process's leader is a zombie at once while its
// other threads are still exiting, and their descriptors (its listening
// sockets among them) are closed by the last one; a restore that took
// the leader's word found the sockets still served.
func running(pid int) bool {
	tids, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		// Gone, or no /proc: existence is all that can be told.
		return syscall.Kill(pid, 0) == nil
	}
	for _, t := range tids {
		if threadRunning(fmt.Sprintf("/proc/%d/task/%s/stat", pid, t.Name())) {
			return true
		}
	}
	return false
}

// threadRunning reports whether the thread whose stat file is path exists
// and is not a zombie.
func threadRunning(path string) bool {
	stat, err := os.ReadFile(path)
	if err != nil {
		return false // gone since the directory was read
	}
	// "tid (comm) S ...": the state follows the last ')', as comm may
	// hold anything.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return true
	}
	switch stat[i+2] {
	case 'Z', 'X':
		return false
	}
	return true
}

// stopUntracked kills every VMM serving box's control socket that the
// backend does not track, and every network of the box, and removes the
// box's run directory.
func (b *Backend) stopUntracked(box string) error {
	f := b.files(box)
	pids, err := vmmsServing(f.apiSock)
	if err != nil {
		return fmt.Errorf("box %s: find its VMM: %w", box, err)
	}
	for _, pid := range pids {
		b.log.Warn("killing a VMM the daemon did not track", "box", box, "pid", pid)
		b.killPID(pid)
	}
	if err := b.stopUntrackedNets(box); err != nil {
		return err
	}
	return os.RemoveAll(f.dir)
}

// vmmsServing returns the processes started as sailbox-vmm with control
// socket apiSock: read from each process's command line, which
// vmmapi.ParseLaunch understands, so a VMM is found before it listens
// and after it stopped answering.
func vmmsServing(apiSock string) ([]int, error) {
	return processesServing(apiSock, func(argv []string) bool {
		l, err := vmmapi.ParseLaunch(argv[1:], io.Discard)
		return err == nil && l.APISocket == apiSock
	})
}

// processesServing returns the running processes whose command line has
// sock as an argument and that match says are serving it.
func processesServing(sock string, match func(argv []string) bool) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(cmdline) == 0 {
			continue // gone, or a kernel thread
		}
		argv := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
		if !slices.Contains(argv, sock) {
			continue // cheap filter before parsing
		}
		if match(argv) && running(pid) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
