// Package vmmbackend is the daemon.Backend that runs each box in its own
// sailbox-vmm process: it starts the VMM from a vmmapi.Launch, drives it over its control socket (api/vmmapi) and reaches the guest
// agent over the box's hybrid vsock socket (guestagent).
//
// Per box it keeps RunDir/<box>/: api.sock (control), vsock.sock (agent),
// console.log and vmm.log; for a box with a network, its sailbox-net's
// net.sock (frames), net-ctl.sock (control) and net.log (network.go). The
// VMM and the network run in sessions of their own, so they outlive a
// daemon restart; Attach finds them again by their sockets. Checkpoints,
// layers and disk tops live in the checkpoint store (Store).
//
// Running boxes needs /dev/kvm and a built sailbox-vmm, kernel and
// initramfs (the kvm tier, through sailboxd); the unit tier covers the
// launches, the error mapping and the process handling with fake VMMs.
package vmmbackend

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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
	VMM string // path of the sailbox-vmm binary
	Net string // path of the sailbox-net binary (boxes' networks)
	// NetHosts are static DNS entries of every box's network
	// (netapi.Launch.Hosts).
	NetHosts map[string]netip.Addr
	Kernel   string // guest kernel bzImage
	Initrd   string // initramfs with the guest agent
	Cmdline  string // extra kernel command line
	Store    string // checkpoint store directory
	RunDir   string // per-box sockets and logs
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

	identity func() (string, error) // BootIdentity, computed once
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
	net      *netProc      // the box's network; nil: none (set before the VM is registered)
	schema   atomic.Int32  // its agent's GuestSchemaVersion; 0 until known (a VM Attach found)
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
	root.SetLogger(cfg.Logger)
	b := &Backend{cfg: cfg, root: root, log: cfg.Logger, vms: map[string]*vm{}}
	b.identity = sync.OnceValues(b.bootIdentity)
	return b, nil
}

// BootIdentity is a digest of the VMM binary, the kernel, the initramfs
// (with its agent) and the command line: the files are read once, and
// replacing one needs a daemon restart anyway.
func (b *Backend) BootIdentity() (string, error) { return b.identity() }

func (b *Backend) bootIdentity() (string, error) {
	h := sha256.New()
	vmm, err := exec.LookPath(b.cfg.VMM)
	if err != nil {
		return "", fmt.Errorf("boot identity: %w", err)
	}
	for _, p := range []string{vmm, b.cfg.Kernel, b.cfg.Initrd} {
		f, err := os.Open(p)
		if err != nil {
			return "", fmt.Errorf("boot identity: %w", err)
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("boot identity: %s: %w", p, err)
		}
	}
	fmt.Fprintf(h, "cmdline %q\n", b.cfg.Cmdline)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// GuestSchemaVersion is the schema of the agent this daemon's initramfs
// carries (the one it was built with).
func (b *Backend) GuestSchemaVersion() int { return guestagent.GuestSchemaVersion }

func (b *Backend) Boot(ctx context.Context, box string, spec catalog.Spec) (daemon.Instance, error) {
	return b.start(ctx, box, b.bootLaunch(box, spec), spec.Net)
}

func (b *Backend) Restore(ctx context.Context, box string, spec catalog.Spec, ckpt string, fork bool) (daemon.Instance, error) {
	return b.start(ctx, box, b.restoreLaunch(box, spec, ckpt, fork), spec.Net)
}

// Reboot boots the configured kernel and initramfs on the disks of ckpt
// (sailbox-vmm -disks-from): a fresh boot, memory not restored, whose
// checkpoints continue ckpt's disk layers.
func (b *Backend) Reboot(ctx context.Context, box string, spec catalog.Spec, ckpt string) (daemon.Instance, error) {
	return b.start(ctx, box, b.rebootLaunch(box, spec, ckpt), spec.Net)
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
// sees it: a refusal because of the VM's state is a daemon.ErrConflict,
// a full disk a daemon.ErrCapacity.
func vmmError(box, op string, err error) error {
	switch {
	case errors.Is(err, vmmapi.ErrConflict):
		return fmt.Errorf("box %s: %s: %w: %w", box, op, daemon.ErrConflict, err)
	case errors.Is(err, vmmapi.ErrNoSpace):
		return fmt.Errorf("box %s: %s: %w: %w", box, op, daemon.ErrCapacity, err)
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
	b.log.Debug("checkpoint", "box", box, "id", id, "pages", res.Pages, "paused_pages", res.PausedPages, "pause", time.Duration(res.PauseNanos), pausePartsAttr(res.PauseParts))
	return daemon.CheckpointInfo{Created: res.Created, Bytes: res.LayerBytes + res.DiskBytes, Pause: time.Duration(res.PauseNanos)}, nil
}

func (b *Backend) Fork(ctx context.Context, parent, ckpt, child string, spec catalog.Spec) (daemon.CheckpointInfo, daemon.Instance, error) {
	info, err := b.Checkpoint(ctx, parent, ckpt)
	if err != nil {
		return daemon.CheckpointInfo{}, daemon.Instance{}, err
	}
	// The child is a restore like any other, started by the backend (a
	// VMM never starts processes: its seccomp filter forbids it), with a
	// network of its own.
	inst, err := b.Restore(ctx, child, spec, ckpt, true)
	return info, inst, err
}

// Stop asks the VMM to shut down, and kills it if it has not exited in
// ten seconds; then stops the box's network. A box's VMM or network the
// backend does not track (one a crash left behind: a create, a fork or a
// wake the daemon did not see through) is found by its socket and
// killed.
func (b *Backend) Stop(ctx context.Context, box string) error {
	b.mu.Lock()
	v := b.vms[box]
	delete(b.vms, box)
	b.mu.Unlock()
	if v == nil {
		return b.stopUntracked(box)
	}
	if err := v.ctl.Shutdown(ctx); err != nil {
		b.log.Warn("shutdown request failed; killing the VMM", "box", box, "err", err)
	}
	select {
	case <-v.exited:
	case <-time.After(10 * time.Second):
		b.kill(v)
	}
	b.stopNet(box, v.net)
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
	v := &vm{files: f, pid: st.PID, ctl: ctl, agent: guestagent.NewHybridClient(f.vsockSock), exited: make(chan struct{}), net: b.adoptNet(box)}
	go watchPID(v.pid, v.exited)
	if v.net == nil && hasNetDevice(v.pid, f) {
		b.log.Error("box's VMM runs, but its network (sailbox-net) is gone; the guest has no network until it is next restored", "box", box, "pid", v.pid)
	}
	b.register(box, v)
	return true, nil
}

// hasNetDevice reports whether the VMM process pid was started with a
// network device on f's socket.
func hasNetDevice(pid int, f boxFiles) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	argv := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
	l, err := vmmapi.ParseLaunch(argv[1:], io.Discard)
	return err == nil && l.NetSocket == f.netSock
}

// RemoveCheckpoints frees the checkpoints' storage in the store
// (snapshot.Root.RemoveCheckpoints).
func (b *Backend) RemoveCheckpoints(ctx context.Context, ids []string) error {
	deleted, err := b.root.RemoveCheckpoints(ids)
	b.log.Debug("checkpoints removed", "ids", ids, "layers", len(deleted))
	return err
}

// Compact merges checkpoint from's layers above base's into checkpoint id
// (snapshot.Root.CompactOnto), here in the daemon: from's box runs no VMM.
func (b *Backend) Compact(ctx context.Context, from, id, base string) (daemon.CheckpointInfo, error) {
	m, err := b.root.CompactOnto(from, id, base)
	if err != nil {
		return daemon.CheckpointInfo{}, err
	}
	info := daemon.CheckpointInfo{Created: m.Created}
	if n := len(m.Memory); n > 0 && strings.HasPrefix(m.Memory[n-1].ID, id+"-") {
		info.Bytes += m.Memory[n-1].Size
	}
	for _, d := range m.Disks {
		if n := len(d.Layers); n > 0 && strings.HasPrefix(d.Layers[n-1].ID, id+"-") {
			info.Bytes += d.Layers[n-1].Size
		}
	}
	b.log.Debug("checkpoint compacted", "from", from, "id", id, "base", base, "bytes", info.Bytes)
	return info, nil
}

// Completed reports whether the store holds checkpoint ckpt's manifest:
// the VMM commits a checkpoint by renaming its manifest into place.
func (b *Backend) Completed(ctx context.Context, ckpt string) (daemon.CheckpointInfo, bool, error) {
	m, err := b.root.Load(ckpt)
	if errors.Is(err, snapshot.ErrNotFound) {
		return daemon.CheckpointInfo{}, false, nil
	}
	if err != nil {
		return daemon.CheckpointInfo{}, false, err
	}
	return daemon.CheckpointInfo{Created: m.Created}, true, nil
}

// Sweep frees the store of all but keep (snapshot.Root.Sweep). A layer
// is live when it belongs to a box whose VMM runs: layers are named after
// the checkpoint that put them, and checkpoints after their box.
func (b *Backend) Sweep(ctx context.Context, keep []string) ([]string, error) {
	kept := map[string]bool{}
	for _, id := range keep {
		kept[id] = true
	}
	b.mu.Lock()
	var running []string
	for box := range b.vms {
		running = append(running, box+"-")
	}
	b.mu.Unlock()
	live := func(layer string) bool {
		return slices.ContainsFunc(running, func(prefix string) bool { return strings.HasPrefix(layer, prefix) })
	}
	removed, err := b.root.Sweep(func(id string) bool { return kept[id] }, live)
	b.log.Debug("store swept", "removed", removed)
	return removed, err
}

// pausePartsAttr is where a checkpoint's pause went, for the log: a group
// "parts" (empty, so left out, from a VMM that does not report it).
func pausePartsAttr(p *vmmapi.PauseParts) slog.Attr {
	if p == nil {
		return slog.Group("parts")
	}
	d := func(ns int64) time.Duration { return time.Duration(ns) }
	return slog.Group("parts",
		"stop", d(p.StopNanos), "dirty_log", d(p.DirtyLogNanos), "copy", d(p.CopyNanos),
		"vm_state", d(p.VMStateNanos), "vcpu_state", d(p.VCPUStateNanos), "devices", d(p.DevicesNanos),
		"disk_switch", d(p.DiskSwitchNanos), "resume", d(p.ResumeNanos))
}
