package vmmbackend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sailbox-dev/sailbox/api/netapi"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
)

// The networks of boxes: a box whose spec has a network runs a
// sailbox-net process (api/netapi) beside its VMM, in its run directory
// (net.sock, net-ctl.sock, net.log). It is started before the VMM, which
// connects to net.sock at start and cannot start without it, and stopped
// when the VMM stops or exits, whoever ended it. Every start of the VMM
// (boot, restore, fork, reboot) gets a new one: connections in flight
// are reset, the guest's listeners and addresses stay. Like the VMM, it
// runs in a session of its own and outlives a daemon restart: Attach
// finds it again by its socket, and a start or Stop kills one that a
// crash left behind.

// Bounds on a network process's start and stop.
const (
	// netReadyTimeout bounds how long a start waits for sailbox-net to
	// answer on its control socket.
	netReadyTimeout = 10 * time.Second
	// netStopWait is how long sailbox-net has to exit after SIGTERM
	// before it is killed.
	netStopWait = 5 * time.Second
)

// maxSocketPath is the longest path of a Unix socket: sun_path holds 108
// bytes with the terminating NUL.
const maxSocketPath = 107

// netProc is one box's sailbox-net process.
type netProc struct {
	pid     int
	control string        // its control socket (netapi)
	exited  chan struct{} // closed when the process is gone

	stopping atomic.Bool // the backend is stopping it: its exit is expected
	stopOnce sync.Once
}

// alive reports whether n's process still runs.
func (n *netProc) alive() bool {
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// startNet starts box's network under policy p and returns once it
// answers on its control socket; on failure nothing of it is left
// running.
func (b *Backend) startNet(ctx context.Context, box string, p catalog.NetPolicy) (*netProc, error) {
	f := b.files(box)
	for _, sock := range []string{f.netSock, f.netCtl} {
		if len(sock) > maxSocketPath {
			return nil, fmt.Errorf("box %s: network socket %s is %d bytes long, more than a Unix socket's %d: give the daemon a shorter state directory", box, sock, len(sock), maxSocketPath)
		}
	}
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return nil, fmt.Errorf("box %s: network: %w", box, err)
	}
	l := b.netLaunch(box, p)
	cmd, err := l.Start(b.cfg.Net, f.netLog)
	if err != nil {
		return nil, fmt.Errorf("box %s: network: %w", box, err)
	}
	n := &netProc{pid: cmd.Process.Pid, control: l.Control, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(n.exited)
	}()
	ctx, cancel := context.WithTimeout(ctx, netReadyTimeout)
	defer cancel()
	for {
		sctx, scancel := context.WithTimeout(ctx, time.Second)
		_, err := netapi.GetStats(sctx, l.Control)
		scancel()
		if err == nil {
			b.log.Debug("network started", "box", box, "pid", n.pid, "no_internet", p.NoInternet, "allow", p.Allow, "deny", p.Deny)
			return n, nil
		}
		select {
		case <-n.exited:
			return nil, fmt.Errorf("box %s: sailbox-net exited at start (its log ends %q)", box, logTail(f.netLog, 1))
		case <-ctx.Done():
			b.stopNet(box, n)
			return nil, fmt.Errorf("box %s: sailbox-net did not answer within %v: %w (its log ends %q)", box, netReadyTimeout, err, logTail(f.netLog, 1))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stopNet ends box's network n (nil: none) and waits for it to go: it
// has netStopWait to remove its sockets and exit after SIGTERM, then is
// killed. Safe to call more than once, from any goroutine.
func (b *Backend) stopNet(box string, n *netProc) {
	if n == nil {
		return
	}
	n.stopOnce.Do(func() {
		n.stopping.Store(true)
		syscall.Kill(n.pid, syscall.SIGTERM)
		select {
		case <-n.exited:
			return
		case <-time.After(netStopWait):
		}
		b.log.Warn("sailbox-net did not exit on SIGTERM; killing it", "box", box, "pid", n.pid)
		syscall.Kill(n.pid, syscall.SIGKILL)
		select {
		case <-n.exited:
		case <-time.After(5 * time.Second):
		}
	})
}

// watchNet logs it if v's network exits while v's VMM runs and nothing
// stopped it: the guest's link then drops every frame until its next
// restore.
func (b *Backend) watchNet(box string, v *vm) {
	n := v.net
	if n == nil {
		return
	}
	go func() {
		select {
		case <-n.exited:
		case <-v.exited:
			return
		}
		select {
		case <-v.exited:
			return
		default:
		}
		if !n.stopping.Load() {
			b.log.Error("box's network (sailbox-net) exited on its own; the guest has no network until it is next restored, exposed ports go through the agent",
				"box", box, "pid", n.pid, "log_tail", logTail(v.files.netLog, 1))
		}
	}()
}

// adoptNet returns the sailbox-net that serves box's network socket, if
// one runs (after a daemon restart), watched until it exits; others
// serving it (there should be none) are killed.
func (b *Backend) adoptNet(box string) *netProc {
	f := b.files(box)
	pids, err := netsServing(f.netSock)
	if err != nil || len(pids) == 0 {
		return nil
	}
	for _, pid := range pids[1:] {
		b.log.Warn("killing a second sailbox-net of a box", "box", box, "pid", pid)
		b.killPID(pid)
	}
	n := &netProc{pid: pids[0], control: f.netCtl, exited: make(chan struct{})}
	go watchPID(n.pid, n.exited)
	return n
}

// stopUntrackedNets kills every sailbox-net serving box's network socket:
// when the box runs no VM the backend tracks, any is an orphan (of a
// crash, or of a VMM that died with the daemon down).
func (b *Backend) stopUntrackedNets(box string) error {
	pids, err := netsServing(b.files(box).netSock)
	if err != nil {
		return fmt.Errorf("box %s: find its network: %w", box, err)
	}
	for _, pid := range pids {
		b.log.Warn("killing a sailbox-net the daemon did not track", "box", box, "pid", pid)
		b.killPID(pid)
	}
	return nil
}

// killPID kills a process this one did not start, and waits (briefly)
// for it to go.
func (b *Backend) killPID(pid int) {
	exited := make(chan struct{})
	go watchPID(pid, exited)
	b.kill(&vm{pid: pid, exited: exited})
}

// netsServing returns the sailbox-net processes whose frame socket is
// sock: read from their command lines, as vmmsServing does for VMMs.
func netsServing(sock string) ([]int, error) {
	return processesServing(sock, func(argv []string) bool {
		l, err := netapi.ParseLaunch(argv[1:], io.Discard)
		return err == nil && l.Socket == sock
	})
}

// NetworkStats returns the counters of box's network since it started
// (the VM's last boot, restore or fork): sailbox-net's, from its control
// socket, then the network device's, from the VMM's status (none from a
// VMM older than them). A box that runs no VM, has no network or whose
// network is gone is a daemon.ErrConflict.
func (b *Backend) NetworkStats(ctx context.Context, box string) (daemon.NetworkCounters, error) {
	v, err := b.get(box)
	if err != nil {
		return daemon.NetworkCounters{}, err
	}
	if v.net == nil || !v.net.alive() {
		return daemon.NetworkCounters{}, fmt.Errorf("box %s: %w: its VM runs no network", box, daemon.ErrConflict)
	}
	st, err := netapi.GetStats(ctx, v.net.control)
	if err != nil {
		return daemon.NetworkCounters{}, fmt.Errorf("box %s: network: %w", box, err)
	}
	vs, err := v.ctl.Status(ctx)
	if err != nil {
		return daemon.NetworkCounters{}, vmmError(box, "network device", err)
	}
	return daemon.NetworkCounters{Stack: st, Device: vs.Network}, nil
}

// dialNet connects to the guest's port through box's network v.net.
func dialNet(ctx context.Context, box string, n *netProc, port int) (net.Conn, error) {
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("box %s: guest port %d: out of range", box, port)
	}
	conn, err := netapi.Dial(ctx, n.control, uint16(port))
	switch {
	case errors.Is(err, netapi.ErrRefused):
		return nil, fmt.Errorf("box %s: guest port %d: nothing listens on %s:%d: %w", box, port, netapi.GuestIP, port, err)
	case err != nil:
		return nil, fmt.Errorf("box %s: guest port %d through its network: %w", box, port, err)
	}
	return conn, nil
}
