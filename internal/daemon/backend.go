package daemon

import (
	"context"
	"io"
	"net"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/netapi"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Backend runs boxes' VMs: on a real host, one sailbox-vmm process per
// running box (internal/vmmbackend); in tests, a fake
// (internal/daemon/fakebackend).
//
// The Manager calls the methods that change a box's VM (Boot, Restore,
// Reboot, Checkpoint, Fork, Stop, Attach) with the box's lock held, so
// never two at once for one box; different boxes' calls run
// concurrently. Exec, ReadFile, WriteFile and DialGuest are called
// without the lock, concurrently with each other and possibly with a
// Stop that cuts them short. Every call identifies boxes by ID; the
// backend keeps whatever per-box handles it needs.
//
// A call that fails must leave nothing running or half-written: a Boot or
// Restore that fails has stopped what it started, a Checkpoint that fails
// has left no completed checkpoint.
type Backend interface {
	// GuestSchemaVersion is the guest agent's schema version that a boot
	// (Boot, Reboot) starts now; a box reporting less needs an upgrade.
	GuestSchemaVersion() int
	// BootIdentity names what a Boot starts besides its spec (kernel,
	// initramfs and agent, command line, VMM): a template made under
	// another identity is not used.
	BootIdentity() (string, error)

	// Boot starts box's first VM from spec and returns when its guest
	// agent answers. With spec.Net, the VM has a network device on a
	// network of its own under that policy.
	Boot(ctx context.Context, box string, spec catalog.Spec) (Instance, error)
	// Restore starts a VM for box from completed checkpoint ckpt and
	// returns when its agent answers. With fork, the checkpoint is
	// another box's and the guest becomes a new machine named box (its
	// own hostname, machine-id and entropy). spec is box's: the
	// checkpoint holds the machine (memory, disks, devices), and a
	// restored network device gets a new network under spec.Net's
	// policy (every restore gets a fresh one: connections in flight are
	// reset). A spec without Net restores no network: that of a box
	// whose checkpoints have no network device.
	Restore(ctx context.Context, box string, spec catalog.Spec, ckpt string, fork bool) (Instance, error)
	// Reboot boots the current kernel and guest agent for box on the
	// disks of completed checkpoint ckpt (a fresh boot: memory is not
	// restored). The box runs no VM when it is called.
	Reboot(ctx context.Context, box string, spec catalog.Spec, ckpt string) (Instance, error)
	// Checkpoint writes completed checkpoint id of box's running VM,
	// which keeps running. Its parent is the box's previous checkpoint
	// (or, for a fork, the one it was restored from).
	Checkpoint(ctx context.Context, box, id string) (CheckpointInfo, error)
	// Fork writes completed checkpoint ckpt of running box parent and
	// starts box child, of spec (the parent's, inherited), restored from
	// it as a new machine, as Restore does. The parent keeps running.
	Fork(ctx context.Context, parent, ckpt, child string, spec catalog.Spec) (CheckpointInfo, Instance, error)
	// Stop powers box's VM down and forgets it. It is not an error if the
	// box runs no VM.
	Stop(ctx context.Context, box string) error
	// Attach takes back control of box's VM after a daemon restart and
	// reports whether it still runs.
	Attach(ctx context.Context, box string) (bool, error)
	// Watch has the backend call lost(box), from a goroutine of its own,
	// when box's VM exits without being asked to: its VMM crashed or was
	// killed, or its guest powered off. A VM the backend stopped, or one
	// replaced by a newer VM of the box, is not reported. A later call
	// replaces the function; nil stops the reports.
	Watch(lost func(box string))
	// Compact writes completed checkpoint id: checkpoint from with its
	// layers above base (an ancestor of from, whose layers stay shared;
	// "" for none) merged into one of each kind. It restores exactly as
	// from does, and its parent is base. from's box runs no VM.
	Compact(ctx context.Context, from, id, base string) (CheckpointInfo, error)
	// RemoveCheckpoints frees the storage of checkpoints that no box
	// references, given children before parents. An ID the store does
	// not hold is not an error.
	RemoveCheckpoints(ctx context.Context, ids []string) error
	// Completed reports whether the store holds checkpoint ckpt
	// completed, and when it was taken: after a crash, a checkpoint the
	// catalog had not yet recorded as completed may be.
	Completed(ctx context.Context, ckpt string) (CheckpointInfo, bool, error)
	// Sweep frees what the store holds beyond the checkpoints keep:
	// completed checkpoints not in keep, the debris of checkpoints that
	// never completed, and layers that no checkpoint left references
	// unless a VM the backend runs may still build on them. It returns
	// what it removed. Start calls it once no call is in flight.
	Sweep(ctx context.Context, keep []string) ([]string, error)

	// Exec runs req in box's guest, writing its output to stdout and
	// stderr as it arrives. Exec, ReadFile and WriteFile fail with an
	// ErrNotFound for a guest file (or a directory on its path) that
	// does not exist, and with an ErrInvalidArgument for a path or
	// program the guest cannot use (a directory read as a file, no such
	// program or user).
	Exec(ctx context.Context, box string, req api.ExecRequest, stdout, stderr io.Writer) (api.ExecResult, error)
	// ReadFile writes the guest file at path to w.
	ReadFile(ctx context.Context, box, path string, w io.Writer) (int64, error)
	// WriteFile replaces (or appends to) the guest file at path with r.
	WriteFile(ctx context.Context, box, path string, r io.Reader, opts FileOptions) (int64, error)
	// DialGuest opens a stream to TCP port port inside box's guest:
	// through the box's network, if it has one.
	DialGuest(ctx context.Context, box string, port int) (net.Conn, error)
	// NetworkStats returns the counters of box's network since it
	// started (with the VM), from both ends of its link. A box that runs
	// no VM, or no network, is an ErrConflict.
	NetworkStats(ctx context.Context, box string) (NetworkCounters, error)
}

// NetworkCounters are a box's network counters from both ends of the
// link between its guest and its network.
type NetworkCounters struct {
	// Stack is the network's (sailbox-net's): the frames it exchanged
	// with the VM, the connections it made, what its policy refused.
	Stack netapi.Stats
	// Device is the VM's network device's, as its VMM counts; nil from
	// a VMM that does not report it.
	Device *api.NetworkDeviceStats
}

// Instance describes a VM a backend started.
type Instance struct {
	// GuestSchemaVersion is what the box's guest agent reports.
	GuestSchemaVersion int
}

// CheckpointInfo describes a completed checkpoint.
type CheckpointInfo struct {
	Created time.Time
	// Bytes is what the checkpoint wrote to the store (its memory layer
	// and the disk blocks it sealed), and Pause how long the guest was
	// stopped for it; zero when the backend does not say (Completed).
	Bytes int64
	Pause time.Duration
}

// FileOptions tune WriteFile.
type FileOptions struct {
	Mode       uint32 // permission bits of a created file; 0 means 0644
	Append     bool
	CreateDirs bool
}
