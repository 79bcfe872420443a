// Package vmmbackend is the daemon.Backend that runs each box in its own
// sailbox-vmm process: it starts the VMM with the flags of cmd/sailbox-vmm,
// drives it over its control socket (api/vmmapi) and reaches the guest
// agent over the box's hybrid vsock socket (guestagent).
//
// Per box it keeps RunDir/<box>/: api.sock (control), vsock.sock (agent),
// console.log and vmm.log. The VMM runs in its own session, so it
// outlives a daemon restart; Attach finds it again by its control socket.
// Checkpoints, layers and disk tops live in the checkpoint store (Store).
//
// It needs /dev/kvm and a built sailbox-vmm, kernel and initramfs, so the
// unit tier does not exercise it; the argument building and the
// checkpoint-freeing logic are covered by tests that need none of these.
package vmmbackend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/snapshot"
)

// guestCID is every box's vsock CID: each VM has its own vsock device
// whose host side is a per-box Unix socket, so CIDs need not differ.
const guestCID = 3

// Config configures the backend.
type Config struct {
	VMM     string // path of the sailbox-vmm binary
	Kernel  string // guest kernel bzImage
	Initrd  string // initramfs with the guest agent
	Cmdline string // extra kernel command line
	Store   string // checkpoint store directory
	RunDir  string // per-box sockets and logs
	// BootTimeout bounds how long a boot or restore waits for the guest
	// agent; zero means two minutes.
	BootTimeout time.Duration
	Logger      *slog.Logger // nil discards
}

// Backend runs boxes in sailbox-vmm processes.
type Backend struct {
	cfg  Config
	root *snapshot.Root
	log  *slog.Logger

	mu  sync.Mutex
	vms map[string]*vm // running VMs by box ID; guarded by mu

	lost atomic.Pointer[func(box string)] // Watch's function
}

// vm is one sailbox-vmm process.
type vm struct {
	files    boxFiles
	pid      int
	ctl      *vmmapi.Client
	agent    *guestagent.Client
	exited   chan struct{} // closed when the process is gone
	restored bool          // restored from a checkpoint: it can record a working set
	wsAsked  atomic.Bool   // it was asked to
}

var _ daemon.Backend = (*Backend)(nil)

// New opens the checkpoint store and returns the backend.
func New(cfg Config) (*Backend, error) {
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{cfg.Store, cfg.RunDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("vmm backend: %w", err)
		}
	}
	root, err := snapshot.OpenRoot(cfg.Store, nil)
	if err != nil {
		return nil, fmt.Errorf("vmm backend: %w", err)
	}
	return &Backend{cfg: cfg, root: root, log: cfg.Logger, vms: map[string]*vm{}}, nil
}

// GuestSchemaVersion is the schema of the agent this daemon's initramfs
// carries (the one it was built with).
func (b *Backend) GuestSchemaVersion() int { return guestagent.GuestSchemaVersion }

// boxFiles are where box's VMM keeps its sockets and logs.
type boxFiles struct {
	dir, apiSock, vsockSock, console, log string
}

func (b *Backend) files(box string) boxFiles {
	dir := filepath.Join(b.cfg.RunDir, box)
	return boxFiles{dir: dir, apiSock: filepath.Join(dir, "api.sock"), vsockSock: filepath.Join(dir, "vsock.sock"),
		console: filepath.Join(dir, "console.log"), log: filepath.Join(dir, "vmm.log")}
}

// launch is what every VMM of box is started with: its sockets and logs,
// the store, no console on stdout.
func (b *Backend) launch(box string) vmmapi.Launch {
	f := b.files(box)
	return vmmapi.Launch{
		MemoryMiB: vmmapi.DefaultMemoryMiB, VCPUs: vmmapi.DefaultVCPUs,
		Store: b.cfg.Store, VsockUDS: f.vsockSock, APISocket: f.apiSock, ConsoleLog: f.console, Log: f.log,
	}
}

// bootLaunch boots box from spec.
func (b *Backend) bootLaunch(box string, spec catalog.Spec) vmmapi.Launch {
	l := b.launch(box)
	l.Kernel, l.Initrd, l.Cmdline = b.cfg.Kernel, b.cfg.Initrd, b.cfg.Cmdline
	l.MemoryMiB, l.VCPUs, l.VsockCID = spec.MemoryMiB, spec.VCPUs, guestCID
	if spec.Image != "" {
		l.Disks = []vmmapi.LaunchDisk{{Path: spec.Image, Layered: true, ID: "vda"}}
	}
	return l
}

// rebootLaunch boots box from spec on the disks of checkpoint ckpt: a
// boot with the checkpoint's disks instead of a new one over spec's image.
func (b *Backend) rebootLaunch(box string, spec catalog.Spec, ckpt string) vmmapi.Launch {
	spec.Image = ""
	l := b.bootLaunch(box, spec)
	l.DisksFrom = ckpt
	return l
}

// restoreLaunch restores box from ckpt, as a fork named box if fork.
func (b *Backend) restoreLaunch(box, ckpt string, fork bool) vmmapi.Launch {
	l := b.launch(box)
	l.Restore = ckpt
	if fork {
		l.ForkName = box
	}
	return l
}

func (b *Backend) Boot(ctx context.Context, box string, spec catalog.Spec) (daemon.Instance, error) {
	return b.start(ctx, box, b.bootLaunch(box, spec))
}

func (b *Backend) Restore(ctx context.Context, box, ckpt string, fork bool) (daemon.Instance, error) {
	return b.start(ctx, box, b.restoreLaunch(box, ckpt, fork))
}

// Reboot boots the configured kernel and initramfs on the disks of ckpt
// (sailbox-vmm -disks-from): a fresh boot, memory not restored, whose
// checkpoints continue ckpt's disk layers.
func (b *Backend) Reboot(ctx context.Context, box string, spec catalog.Spec, ckpt string) (daemon.Instance, error) {
	return b.start(ctx, box, b.rebootLaunch(box, spec, ckpt))
}

// start runs sailbox-vmm as l says for box and waits for its agent.
func (b *Backend) start(ctx context.Context, box string, l vmmapi.Launch) (daemon.Instance, error) {
	f := b.files(box)
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return daemon.Instance{}, err
	}
	// A VMM killed with the host (kill -9) leaves its sockets behind, and
	// the new one could not listen on them. Remove them, unless something
	// still answers there: then a VMM of the box is alive after all.
	for _, sock := range []string{f.apiSock, f.vsockSock} {
		if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
			c.Close()
			return daemon.Instance{}, fmt.Errorf("box %s: a process still serves %s", box, sock)
		}
		if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return daemon.Instance{}, fmt.Errorf("box %s: remove stale socket: %w", box, err)
		}
	}
	cmd, err := l.Start(b.cfg.VMM) // in a session of its own: it outlives the daemon
	if err != nil {
		return daemon.Instance{}, fmt.Errorf("box %s: %w", box, err)
	}
	v := &vm{files: f, pid: cmd.Process.Pid, ctl: vmmapi.NewClient(f.apiSock), agent: guestagent.NewHybridClient(f.vsockSock), exited: make(chan struct{}), restored: l.Restore != ""}
	go func() {
		cmd.Wait()
		close(v.exited)
	}()
	return b.adopt(ctx, box, v)
}

// adopt waits for v's agent and registers v as box's VM; on failure it
// kills v.
func (b *Backend) adopt(ctx context.Context, box string, v *vm) (daemon.Instance, error) {
	wctx, cancel := context.WithTimeout(ctx, b.cfg.BootTimeout)
	defer cancel()
	h, err := v.agent.WaitHealthy(wctx, 50*time.Millisecond, v.exited)
	if err != nil {
		b.logVCPUs(box, v)
		b.kill(v)
		return daemon.Instance{}, fmt.Errorf("box %s: guest agent: %w (the VMM's log ends %q)", box, err, logTail(v.files.log))
	}
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
	b.log.Warn("guest agent did not answer; its vCPUs", "box", box, "vcpus", d)
}

// register makes v box's VM, and logs it if it exits while it still is:
// nothing asked it to (Stop forgets a VM before it stops it).
func (b *Backend) register(box string, v *vm) {
	b.mu.Lock()
	b.vms[box] = v
	b.mu.Unlock()
	go func() {
		<-v.exited
		b.mu.Lock()
		current := b.vms[box] == v
		b.mu.Unlock()
		if current {
			b.log.Error("box's VMM exited on its own", "box", box, "pid", v.pid, "log_tail", logTail(v.files.log))
			if lost := b.lost.Load(); lost != nil && *lost != nil {
				(*lost)(box)
			}
		}
	}()
}

// Watch has lost called when a box's VMM exits on its own.
func (b *Backend) Watch(lost func(box string)) { b.lost.Store(&lost) }

// logTail is the last line of the VMM log at path: what it said last,
// often why it stopped.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// watchPID closes exited when process pid is gone (for VMMs this process
// did not start: after a restart, or a fork's child).
func watchPID(pid int, exited chan struct{}) {
	for running(pid) {
		time.Sleep(200 * time.Millisecond)
	}
	close(exited)
}

// running reports whether process pid exists and has not exited. A
// zombie has exited: a fork's VMM whose parent VMM is gone is reaped by
// init, which may take its time (or, as a container's PID 1, never do it).
func running(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return syscall.Kill(pid, 0) == nil // no /proc: existence is all we can tell
	}
	// "pid (comm) S ...": the state follows the last ')', as comm may
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

func (b *Backend) get(box string) (*vm, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v := b.vms[box]
	if v == nil {
		return nil, fmt.Errorf("box %s: %w: it runs no VM", box, daemon.ErrConflict)
	}
	return v, nil
}

// vmmError is err from box's VMM refusing or failing op, as the daemon
// sees it: a refusal because of the VM's state is a daemon.ErrConflict.
func vmmError(box, op string, err error) error {
	if errors.Is(err, vmmapi.ErrConflict) {
		return fmt.Errorf("box %s: %s: %w: %w", box, op, daemon.ErrConflict, err)
	}
	return fmt.Errorf("box %s: %s: %w", box, op, err)
}

func (b *Backend) Checkpoint(ctx context.Context, box, id string) (daemon.CheckpointInfo, error) {
	v, err := b.get(box)
	if err != nil {
		return daemon.CheckpointInfo{}, err
	}
	res, err := v.ctl.Checkpoint(ctx, id)
	if err != nil {
		return daemon.CheckpointInfo{}, vmmError(box, "checkpoint", err)
	}
	b.log.Debug("checkpoint", "box", box, "id", id, "pages", res.Pages, "pause", time.Duration(res.PauseNanos))
	return daemon.CheckpointInfo{Created: res.Created}, nil
}

func (b *Backend) Fork(ctx context.Context, parent, ckpt, child string) (daemon.CheckpointInfo, daemon.Instance, error) {
	v, err := b.get(parent)
	if err != nil {
		return daemon.CheckpointInfo{}, daemon.Instance{}, err
	}
	f := b.files(child)
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return daemon.CheckpointInfo{}, daemon.Instance{}, err
	}
	// The parent VMM fills in the store and the checkpoint.
	launch := b.restoreLaunch(child, "", true)
	launch.Store = ""
	res, err := v.ctl.Fork(ctx, vmmapi.ForkRequest{CheckpointID: ckpt, Child: launch})
	if err != nil {
		return daemon.CheckpointInfo{}, daemon.Instance{}, vmmError(parent, "fork", err)
	}
	cv := &vm{files: f, pid: res.ChildPID, ctl: vmmapi.NewClient(f.apiSock), agent: guestagent.NewHybridClient(f.vsockSock), exited: make(chan struct{}), restored: true}
	go watchPID(cv.pid, cv.exited)
	inst, err := b.adopt(ctx, child, cv)
	return daemon.CheckpointInfo{Created: res.Checkpoint.Created}, inst, err
}

// Stop asks the VMM to shut down, and kills it if it has not exited in
// ten seconds.
func (b *Backend) Stop(ctx context.Context, box string) error {
	b.mu.Lock()
	v := b.vms[box]
	delete(b.vms, box)
	b.mu.Unlock()
	if v == nil {
		return nil
	}
	if err := v.ctl.Shutdown(ctx); err != nil {
		b.log.Warn("shutdown request failed; killing the VMM", "box", box, "err", err)
	}
	select {
	case <-v.exited:
	case <-time.After(10 * time.Second):
		b.kill(v)
	}
	return os.RemoveAll(v.files.dir)
}

// kill ends v's process and waits (briefly) for it to go.
func (b *Backend) kill(v *vm) {
	syscall.Kill(v.pid, syscall.SIGKILL)
	select {
	case <-v.exited:
	case <-time.After(5 * time.Second):
	}
}

func (b *Backend) Attach(ctx context.Context, box string) (bool, error) {
	f := b.files(box)
	ctl := vmmapi.NewClient(f.apiSock)
	st, err := ctl.Status(ctx)
	if err != nil {
		return false, nil
	}
	v := &vm{files: f, pid: st.PID, ctl: ctl, agent: guestagent.NewHybridClient(f.vsockSock), exited: make(chan struct{})}
	go watchPID(v.pid, v.exited)
	b.register(box, v)
	return true, nil
}

// RemoveCheckpoints frees the checkpoints' storage in the store
// (snapshot.Root.RemoveCheckpoints).
func (b *Backend) RemoveCheckpoints(ctx context.Context, ids []string) error {
	deleted, err := b.root.RemoveCheckpoints(ids)
	b.log.Debug("checkpoints removed", "ids", ids, "layers", len(deleted))
	return err
}

func (b *Backend) Exec(ctx context.Context, box string, req api.ExecRequest, stdout, stderr io.Writer) (api.ExecResult, error) {
	v, err := b.get(box)
	if err != nil {
		return api.ExecResult{}, err
	}
	var stdin io.Reader
	if len(req.Stdin) > 0 {
		stdin = bytes.NewReader(req.Stdin)
	}
	res, err := v.agent.Exec(ctx, guestagent.ExecRequest{
		Argv: req.Argv, Env: req.Env, Dir: req.Dir, Timeout: time.Duration(req.TimeoutMS) * time.Millisecond,
	}, stdin, stdout, stderr)
	if err != nil {
		return api.ExecResult{}, err
	}
	b.recordWorkingSet(box, v)
	return api.ExecResult{ExitCode: res.ExitCode, Signal: res.Signal, TimedOut: res.TimedOut}, nil
}

// recordWorkingSet has a restored VM record its working set once its
// first exec is done: the pages its guest needed to wake and serve it,
// which later restores of the box's checkpoints (wakes, forks) map ahead
// (vmm.Machine.SaveWorkingSet). Once per VM, in the background.
func (b *Backend) recordWorkingSet(box string, v *vm) {
	if !v.restored || !v.wsAsked.CompareAndSwap(false, true) {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		res, err := v.ctl.SaveWorkingSet(ctx)
		select {
		case <-v.exited:
			return // stopped meanwhile: nothing to say
		default:
		}
		if err != nil {
			b.log.Warn("record working set", "box", box, "err", err)
			return
		}
		b.log.Debug("record working set", "box", box, "saved", res.Saved)
	}()
}

func (b *Backend) ReadFile(ctx context.Context, box, path string, w io.Writer) (int64, error) {
	v, err := b.get(box)
	if err != nil {
		return 0, err
	}
	return v.agent.ReadFile(ctx, path, w)
}

func (b *Backend) WriteFile(ctx context.Context, box, path string, r io.Reader, opts daemon.FileOptions) (int64, error) {
	v, err := b.get(box)
	if err != nil {
		return 0, err
	}
	return v.agent.WriteFile(ctx, path, r, guestagent.WriteOptions{Mode: fs.FileMode(opts.Mode), Append: opts.Append, CreateDirs: opts.CreateDirs})
}

// DialGuest reaches TCP port port on the guest's 127.0.0.1 through the
// agent's dial_tcp op. ctx bounds the dial only. The connection half-closes
// (it has CloseWrite) and lasts until it is closed. A box whose agent
// predates the op (guestagent.DialTCPSchemaVersion) fails with an error
// that wraps errors.ErrUnsupported: it needs an upgrade.
func (b *Backend) DialGuest(ctx context.Context, box string, port int) (net.Conn, error) {
	v, err := b.get(box)
	if err != nil {
		return nil, err
	}
	conn, err := v.agent.DialTCP(ctx, "", port)
	if errors.Is(err, errors.ErrUnsupported) {
		return nil, fmt.Errorf("box %s needs an upgrade to reach guest port %d: %w", box, port, err)
	}
	if err != nil {
		return nil, fmt.Errorf("box %s: guest port %d: %w", box, port, err)
	}
	return conn, nil
}
