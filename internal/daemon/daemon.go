// Package daemon is the core of sailboxd: it owns every box on the host,
// keeps their records in the catalog, drives their VMs through a Backend,
// and enforces the lifecycle of package lifecycle.
//
// Every call that changes a box runs under that box's lock and follows the
// same steps: look up the record, ask lifecycle.Next whether the box's
// state accepts the op, do the effect's Action to the VM, and record the
// next state. Each step that creates something first records it as
// unfinished (a box in state Creating, a checkpoint not Completed) and
// then commits or deletes it, so a failed call leaves nothing
// half-created, and Start removes what a crash left unfinished.
//
// Errors match ErrNotFound, ErrInvalidArgument, ErrConflict, ErrWrongHost,
// lifecycle.ErrInvalidTransition, or errors.ErrUnsupported (a backend that
// cannot do something yet); package internal/apiserver maps them to HTTP statuses.
package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Errors.
var (
	ErrNotFound        = errors.New("not found")
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrConflict reports a call that clashes with what exists: a port in
	// use, a box without the checkpoint a call needs.
	ErrConflict = errors.New("conflict")
	// ErrWrongHost reports a box placed on another host.
	ErrWrongHost = errors.New("box lives on another host")
)

// Limits on a create request.
const (
	MinMemoryMiB = 64
	MaxMemoryMiB = 256 << 10
	MaxVCPUs     = 64
)

// Config configures a Manager.
type Config struct {
	Catalog *catalog.Catalog
	Backend Backend
	// HostID is this host's placement ID, reported in every box.
	HostID string
	// Defaults fill a create request's zero fields.
	Defaults catalog.Spec
	// MinResumableSchema is the oldest guest schema version that can be
	// restored safely; a box older than that is rebooted onto the
	// current agent when it next wakes. 0: any.
	MinResumableSchema int
	Logger             *slog.Logger // nil discards
	// NewID makes box IDs; nil uses "sb-" and 12 random hex digits.
	NewID func() string
}

// Manager owns the host's boxes. Its methods are safe for concurrent use.
type Manager struct {
	cat       *catalog.Catalog
	be        Backend
	hostID    string
	defaults  catalog.Spec
	minSchema int
	log       *slog.Logger
	newID     func() string

	locks sync.Map   // box ID → *sync.Mutex, held for every change of the box
	gcMu  sync.Mutex // one collection of unreferenced checkpoints at a time

	fwd    forwards
	closed atomic.Bool // Close was called
}

// New returns a Manager; call Start before serving.
func New(cfg Config) (*Manager, error) {
	if cfg.Catalog == nil || cfg.Backend == nil {
		return nil, errors.New("daemon: a catalog and a backend are required")
	}
	m := &Manager{
		cat: cfg.Catalog, be: cfg.Backend, hostID: cfg.HostID, defaults: cfg.Defaults,
		minSchema: cfg.MinResumableSchema, log: cfg.Logger, newID: cfg.NewID,
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.newID == nil {
		m.newID = randomID
	}
	if m.defaults.MemoryMiB == 0 {
		m.defaults.MemoryMiB = 256
	}
	if m.defaults.VCPUs == 0 {
		m.defaults.VCPUs = 1
	}
	m.fwd.init(m)
	return m, nil
}

func randomID() string {
	var b [6]byte
	rand.Read(b[:])
	return "sb-" + hex.EncodeToString(b[:])
}

// HostID is the host's placement ID.
func (m *Manager) HostID() string { return m.hostID }

// Start recovers from whatever the previous daemon left: it removes boxes
// still creating and checkpoints not completed, takes back running boxes'
// VMs (restoring from the last completed checkpoint those whose VM is
// gone), frees unreferenced checkpoints and reopens exposed ports.
func (m *Manager) Start(ctx context.Context) error {
	m.be.Watch(m.vmLost)
	var boxes []catalog.Box
	var incomplete []catalog.Checkpoint
	err := m.cat.View(func(tx *catalog.Tx) error {
		var err error
		if boxes, err = tx.Boxes(); err != nil {
			return err
		}
		incomplete, err = tx.Incomplete()
		return err
	})
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	for _, b := range boxes {
		if b.State != lifecycle.Creating {
			continue
		}
		m.log.Warn("removing a box whose create did not finish", "box", b.ID)
		if err := m.be.Stop(ctx, b.ID); err != nil {
			return fmt.Errorf("start: stop unfinished box %s: %w", b.ID, err)
		}
		if err := m.cat.Update(func(tx *catalog.Tx) error { return tx.DeleteBox(b.ID) }); err != nil {
			return fmt.Errorf("start: %w", err)
		}
	}
	if len(incomplete) > 0 {
		ids := make([]string, len(incomplete))
		for i, c := range incomplete {
			ids[i] = c.ID
		}
		m.log.Warn("removing checkpoints that did not complete", "checkpoints", ids)
		if err := m.be.RemoveCheckpoints(ctx, ids); err != nil {
			return fmt.Errorf("start: %w", err)
		}
		err := m.cat.Update(func(tx *catalog.Tx) error {
			for _, id := range ids {
				if err := tx.DeleteCheckpoint(id); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("start: %w", err)
		}
	}
	for _, b := range boxes {
		if b.State != lifecycle.Running {
			continue
		}
		alive, err := m.be.Attach(ctx, b.ID)
		if err != nil {
			m.log.Warn("attach to box failed", "box", b.ID, "err", err)
		}
		if alive {
			continue
		}
		m.log.Warn("box's VM is gone; restoring it from its last checkpoint", "box", b.ID)
		unlock := m.lock(b.ID)
		_, err = m.lost(ctx, b.ID)
		unlock()
		if err != nil {
			m.log.Error("box not restored", "box", b.ID, "err", err)
		}
	}
	if _, err := m.collect(ctx); err != nil {
		m.log.Warn("freeing unreferenced checkpoints failed", "err", err)
	}
	for _, b := range boxes {
		for _, p := range b.Ports {
			if err := m.fwd.open(b.ID, p); err != nil {
				m.log.Warn("cannot reopen exposed port", "box", b.ID, "addr", p.HostAddr, "err", err)
			}
		}
	}
	return nil
}

// lost handles a running box whose VM is gone: restore it, or mark it
// failed. The box's lock is held.
func (m *Manager) lost(ctx context.Context, id string) (catalog.Box, error) {
	b, err := m.apply(ctx, id, lifecycle.OpLost, nil)
	if err == nil {
		return b, nil
	}
	if fb, ferr := m.apply(ctx, id, lifecycle.OpFail, nil); ferr != nil {
		return fb, errors.Join(err, ferr)
	}
	return b, err
}

// vmLost handles the backend's report that box id's VM exited on its
// own while the daemon runs: a box that should be running is restored
// from its last completed checkpoint at once, as after a host failure, or
// marked failed if it has none.
func (m *Manager) vmLost(id string) {
	if m.closed.Load() {
		return
	}
	unlock := m.lock(id)
	defer unlock()
	b, err := m.record(id)
	if err != nil || b.State != lifecycle.Running {
		return // gone, or going down on purpose
	}
	ctx := context.Background()
	if alive, _ := m.be.Attach(ctx, id); alive {
		return // a newer VM of the box runs
	}
	m.log.Warn("box's VM exited on its own; restoring it from its last checkpoint", "box", id)
	if _, err := m.lost(ctx, id); err != nil {
		m.log.Error("box not restored", "box", id, "err", err)
	}
}

// Close stops the exposed ports' listeners and waits for their
// connections to end, and stops acting on VMs that exit. Boxes' VMs keep
// running.
func (m *Manager) Close() error {
	m.closed.Store(true)
	m.be.Watch(nil)
	m.fwd.closeAll()
	return nil
}

// lock takes box id's lock and returns its release.
func (m *Manager) lock(id string) func() {
	v, _ := m.locks.LoadOrStore(id, &sync.Mutex{})
	mu := v.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// record returns box id's record.
func (m *Manager) record(id string) (catalog.Box, error) {
	var b catalog.Box
	err := m.cat.View(func(tx *catalog.Tx) error {
		var err error
		b, err = tx.Box(id)
		return err
	})
	if errors.Is(err, catalog.ErrNotFound) {
		return b, fmt.Errorf("box %s: %w", id, ErrNotFound)
	}
	return b, err
}

// save stores b.
func (m *Manager) save(b catalog.Box) error {
	return m.cat.Update(func(tx *catalog.Tx) error { return tx.PutBox(b) })
}

// outcome carries what an op produced besides the box's new state.
type outcome struct {
	checkpoint catalog.Checkpoint // ActCheckpoint, ActForkLive, ActForkFromCheckpoint
	child      catalog.Box        // the forks
	upgraded   bool               // ActReboot
	freed      []string           // ActDestroy
}

// apply runs op on box id, whose lock the caller holds: the lifecycle
// decides, the Action is done to the VM, and the next state is recorded.
// It returns the box as recorded afterwards. When the Action fails, the
// record is left as it was (except for a reboot that lost the VM: see
// reboot).
func (m *Manager) apply(ctx context.Context, id string, op lifecycle.Op, out *outcome) (catalog.Box, error) {
	b, err := m.record(id)
	if err != nil {
		return b, err
	}
	eff, err := lifecycle.Next(b.State, op)
	if err != nil {
		return b, fmt.Errorf("box %s: %w", id, err)
	}
	if out == nil {
		out = &outcome{}
	}
	switch eff.Action {
	case lifecycle.ActNone:
	case lifecycle.ActCheckpoint:
		if out.checkpoint, err = m.checkpoint(ctx, &b); err != nil {
			return b, err
		}
	case lifecycle.ActCheckpointStop:
		if out.checkpoint, err = m.checkpoint(ctx, &b); err != nil {
			return b, err
		}
		if err := m.be.Stop(ctx, id); err != nil {
			return b, fmt.Errorf("box %s: %s: stop: %w", id, op, err)
		}
	case lifecycle.ActForkLive, lifecycle.ActForkFromCheckpoint:
		if out.child, out.checkpoint, err = m.fork(ctx, &b, eff.Action); err != nil {
			return b, err
		}
	case lifecycle.ActRestore:
		if err := m.wake(ctx, &b); err != nil {
			return b, err
		}
	case lifecycle.ActReboot:
		if out.upgraded, err = m.reboot(ctx, &b); err != nil {
			return b, err
		}
	case lifecycle.ActRecordUpgrade:
		b.PendingUpgrade = true
	case lifecycle.ActDestroy:
		if err := m.be.Stop(ctx, id); err != nil {
			return b, fmt.Errorf("box %s: terminate: stop: %w", id, err)
		}
		m.fwd.closeBox(id)
		if err := m.cat.Update(func(tx *catalog.Tx) error { return tx.DeleteBox(id) }); err != nil {
			return b, fmt.Errorf("box %s: terminate: %w", id, err)
		}
		m.locks.Delete(id)
		b.State = eff.Next
		freed, err := m.collect(ctx)
		out.freed = freed
		if err != nil {
			// The box is gone; its storage is freed at the next
			// collection.
			m.log.Warn("freeing a terminated box's checkpoints failed", "box", id, "err", err)
		}
		m.log.Info("box terminated", "box", id, "freed", freed)
		return b, nil
	default:
		return b, fmt.Errorf("box %s: %s: unknown action %q", id, op, eff.Action)
	}
	prev := b.State
	b.State = eff.Next
	if err := m.save(b); err != nil {
		return b, fmt.Errorf("box %s: %s: %w", id, op, err)
	}
	if prev != b.State {
		m.log.Info("box state", "box", id, "op", op, "from", prev, "to", b.State)
	}
	return b, nil
}

// checkpoint takes a live checkpoint of running box b and records it as
// b's last. b's record is updated in place and in the catalog.
func (m *Manager) checkpoint(ctx context.Context, b *catalog.Box) (catalog.Checkpoint, error) {
	ck, err := m.beginCheckpoint(b)
	if err != nil {
		return ck, err
	}
	info, err := m.be.Checkpoint(ctx, b.ID, ck.ID)
	if err != nil {
		m.abortCheckpoint(ck.ID)
		return ck, fmt.Errorf("box %s: checkpoint %s: %w", b.ID, ck.ID, err)
	}
	return m.completeCheckpoint(b, ck, info, nil)
}

// beginCheckpoint records a new, not yet completed checkpoint of b.
func (m *Manager) beginCheckpoint(b *catalog.Box) (catalog.Checkpoint, error) {
	next := *b
	next.CheckpointSeq++
	ck := catalog.Checkpoint{
		ID:       fmt.Sprintf("%s-c%d", b.ID, next.CheckpointSeq),
		BoxID:    b.ID,
		ParentID: b.Head(),
		Created:  time.Now().UTC(),
	}
	err := m.cat.Update(func(tx *catalog.Tx) error {
		if err := tx.PutBox(next); err != nil {
			return err
		}
		return tx.PutCheckpoint(ck)
	})
	if err != nil {
		return ck, fmt.Errorf("box %s: checkpoint: %w", b.ID, err)
	}
	*b = next
	return ck, nil
}

// abortCheckpoint deletes the record of a checkpoint that failed.
func (m *Manager) abortCheckpoint(id string) {
	if err := m.cat.Update(func(tx *catalog.Tx) error { return tx.DeleteCheckpoint(id) }); err != nil {
		m.log.Warn("cannot delete the record of a failed checkpoint; the next start does", "checkpoint", id, "err", err)
	}
}

// completeCheckpoint marks ck completed and b's last checkpoint; child,
// if not nil, is stored in the same transaction.
func (m *Manager) completeCheckpoint(b *catalog.Box, ck catalog.Checkpoint, info CheckpointInfo, child *catalog.Box) (catalog.Checkpoint, error) {
	ck.Completed = true
	if !info.Created.IsZero() {
		ck.Created = info.Created.UTC()
	}
	next := *b
	next.LastCheckpoint = ck.ID
	err := m.cat.Update(func(tx *catalog.Tx) error {
		if err := tx.PutCheckpoint(ck); err != nil {
			return err
		}
		if err := tx.PutBox(next); err != nil {
			return err
		}
		if child != nil {
			return tx.PutBox(*child)
		}
		return nil
	})
	if err != nil {
		return ck, fmt.Errorf("box %s: checkpoint %s: %w", b.ID, ck.ID, err)
	}
	*b = next
	m.log.Info("checkpoint completed", "box", b.ID, "checkpoint", ck.ID, "parent", ck.ParentID)
	return ck, nil
}

// fork starts a child of b: live from a new checkpoint of running b, or
// from b's last completed checkpoint for a box that is down. The child is
// recorded as Creating first and deleted if its VM does not start.
func (m *Manager) fork(ctx context.Context, b *catalog.Box, act lifecycle.Action) (catalog.Box, catalog.Checkpoint, error) {
	child := catalog.Box{
		ID:                 m.newID(),
		State:              lifecycle.Creating,
		GuestSchemaVersion: b.GuestSchemaVersion,
		Created:            time.Now().UTC(),
		ParentID:           b.ID,
		HostID:             m.hostID,
		PendingUpgrade:     b.PendingUpgrade,
		Spec:               b.Spec,
	}
	var ck catalog.Checkpoint
	var err error
	if act == lifecycle.ActForkLive {
		if ck, err = m.beginCheckpoint(b); err != nil {
			return child, ck, err
		}
	} else {
		if b.LastCheckpoint == "" {
			return child, ck, fmt.Errorf("box %s: fork: %w: no completed checkpoint", b.ID, ErrConflict)
		}
		err = m.cat.View(func(tx *catalog.Tx) error {
			ck, err = tx.Checkpoint(b.LastCheckpoint)
			return err
		})
		if err != nil {
			return child, ck, fmt.Errorf("box %s: fork: %w", b.ID, err)
		}
	}
	child.BaseCheckpoint = ck.ID
	if err := m.cat.Update(func(tx *catalog.Tx) error { return tx.CreateBox(child) }); err != nil {
		if act == lifecycle.ActForkLive {
			m.abortCheckpoint(ck.ID)
		}
		return child, ck, fmt.Errorf("box %s: fork: %w", b.ID, err)
	}
	undo := func(err error) (catalog.Box, catalog.Checkpoint, error) {
		if serr := m.be.Stop(context.WithoutCancel(ctx), child.ID); serr != nil {
			m.log.Warn("cannot stop a failed fork", "box", child.ID, "err", serr)
		}
		if derr := m.cat.Update(func(tx *catalog.Tx) error { return tx.DeleteBox(child.ID) }); derr != nil {
			m.log.Warn("cannot delete a failed fork; the next start does", "box", child.ID, "err", derr)
		}
		if act == lifecycle.ActForkLive {
			m.abortCheckpoint(ck.ID)
		}
		return child, ck, fmt.Errorf("box %s: fork: %w", b.ID, err)
	}
	var inst Instance
	if act == lifecycle.ActForkLive {
		var info CheckpointInfo
		if info, inst, err = m.be.Fork(ctx, b.ID, ck.ID, child.ID); err != nil {
			return undo(err)
		}
		child.State = lifecycle.Running
		child.GuestSchemaVersion = inst.GuestSchemaVersion
		if ck, err = m.completeCheckpoint(b, ck, info, &child); err != nil {
			return undo(err)
		}
	} else {
		if inst, err = m.be.Restore(ctx, child.ID, ck.ID, true); err != nil {
			return undo(err)
		}
		child.State = lifecycle.Running
		child.GuestSchemaVersion = inst.GuestSchemaVersion
		if err := m.save(child); err != nil {
			return undo(err)
		}
	}
	m.log.Info("box forked", "parent", b.ID, "child", child.ID, "checkpoint", ck.ID, "live", act == lifecycle.ActForkLive)
	return child, ck, nil
}

// wake starts a VM for b from its last completed checkpoint; with an
// upgrade pending, or an agent too old to resume, it boots the current
// agent on that checkpoint's disks instead.
func (m *Manager) wake(ctx context.Context, b *catalog.Box) error {
	if b.LastCheckpoint == "" {
		return fmt.Errorf("box %s: wake: %w: no completed checkpoint to restore", b.ID, ErrConflict)
	}
	var inst Instance
	var err error
	restore := true
	if b.PendingUpgrade || b.GuestSchemaVersion < m.minSchema {
		inst, err = m.be.Reboot(ctx, b.ID, b.Spec, b.LastCheckpoint)
		switch {
		case err == nil:
			restore = false
			b.PendingUpgrade = false
			m.log.Info("box upgraded on wake", "box", b.ID, "from", b.GuestSchemaVersion, "to", inst.GuestSchemaVersion)
		case errors.Is(err, errors.ErrUnsupported):
			// The backend cannot reboot yet: wake the box as it was,
			// with the upgrade still pending.
			m.log.Warn("upgrade on wake not supported; restoring instead", "box", b.ID, "err", err)
		default:
			restore = false
		}
	}
	if restore {
		inst, err = m.be.Restore(ctx, b.ID, b.LastCheckpoint, false)
	}
	if err != nil {
		return fmt.Errorf("box %s: restore %s: %w", b.ID, b.LastCheckpoint, err)
	}
	b.GuestSchemaVersion = inst.GuestSchemaVersion
	return nil
}

// reboot upgrades running box b onto the current agent: a checkpoint
// seals its disk, its VM stops, and the current agent boots on that disk.
// It reports false without rebooting when the agent is already current.
// If the new boot fails, b is restored from the checkpoint; if that fails
// too, b is recorded Failed.
func (m *Manager) reboot(ctx context.Context, b *catalog.Box) (bool, error) {
	if b.GuestSchemaVersion >= m.be.GuestSchemaVersion() {
		return true, nil
	}
	ck, err := m.checkpoint(ctx, b)
	if err != nil {
		return false, err
	}
	if err := m.be.Stop(ctx, b.ID); err != nil {
		return false, fmt.Errorf("box %s: upgrade: stop: %w", b.ID, err)
	}
	inst, err := m.be.Reboot(ctx, b.ID, b.Spec, ck.ID)
	if err == nil {
		m.log.Info("box upgraded", "box", b.ID, "from", b.GuestSchemaVersion, "to", inst.GuestSchemaVersion)
		b.GuestSchemaVersion = inst.GuestSchemaVersion
		b.PendingUpgrade = false
		return true, nil
	}
	err = fmt.Errorf("box %s: upgrade: reboot: %w", b.ID, err)
	if _, rerr := m.be.Restore(ctx, b.ID, ck.ID, false); rerr != nil {
		b.State = lifecycle.Failed
		if serr := m.save(*b); serr != nil {
			m.log.Error("cannot record a failed box", "box", b.ID, "err", serr)
		}
		return false, errors.Join(err, fmt.Errorf("restore after failed upgrade: %w", rerr))
	}
	return false, err
}

// collect frees the checkpoints no box's chain references and returns
// their IDs.
func (m *Manager) collect(ctx context.Context) ([]string, error) {
	m.gcMu.Lock()
	defer m.gcMu.Unlock()
	var unref []catalog.Checkpoint
	if err := m.cat.View(func(tx *catalog.Tx) error {
		var err error
		unref, err = tx.Unreferenced()
		return err
	}); err != nil || len(unref) == 0 {
		return nil, err
	}
	ids := make([]string, len(unref))
	for i, c := range unref {
		ids[i] = c.ID
	}
	if err := m.be.RemoveCheckpoints(ctx, ids); err != nil {
		return nil, fmt.Errorf("free checkpoints: %w", err)
	}
	err := m.cat.Update(func(tx *catalog.Tx) error {
		for _, id := range ids {
			if err := tx.DeleteCheckpoint(id); err != nil && !errors.Is(err, catalog.ErrNotFound) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("free checkpoints: %w", err)
	}
	return ids, nil
}

// Create boots a new box. It is recorded as Creating while its VM boots,
// and deleted if the boot fails.
func (m *Manager) Create(ctx context.Context, req api.CreateRequest) (api.Box, error) {
	spec := catalog.Spec{MemoryMiB: req.MemoryMiB, VCPUs: req.VCPUs, Image: req.Image}
	if spec.MemoryMiB == 0 {
		spec.MemoryMiB = m.defaults.MemoryMiB
	}
	if spec.VCPUs == 0 {
		spec.VCPUs = m.defaults.VCPUs
	}
	if spec.Image == "" {
		spec.Image = m.defaults.Image
	}
	switch {
	case spec.MemoryMiB < MinMemoryMiB || spec.MemoryMiB > MaxMemoryMiB:
		return api.Box{}, fmt.Errorf("create: %w: memory_mib %d is outside [%d, %d]", ErrInvalidArgument, spec.MemoryMiB, MinMemoryMiB, MaxMemoryMiB)
	case spec.VCPUs < 1 || spec.VCPUs > MaxVCPUs:
		return api.Box{}, fmt.Errorf("create: %w: vcpus %d is outside [1, %d]", ErrInvalidArgument, spec.VCPUs, MaxVCPUs)
	case spec.Image != "" && !path.IsAbs(spec.Image):
		return api.Box{}, fmt.Errorf("create: %w: image %q is not an absolute path", ErrInvalidArgument, spec.Image)
	}
	b := catalog.Box{ID: m.newID(), State: lifecycle.Creating, Created: time.Now().UTC(), HostID: m.hostID, Spec: spec}
	unlock := m.lock(b.ID)
	defer unlock()
	if err := m.cat.Update(func(tx *catalog.Tx) error { return tx.CreateBox(b) }); err != nil {
		return api.Box{}, fmt.Errorf("create: %w", err)
	}
	inst, err := m.be.Boot(ctx, b.ID, spec)
	if err == nil {
		b.GuestSchemaVersion = inst.GuestSchemaVersion
		if err = m.save(b); err == nil {
			b, err = m.apply(ctx, b.ID, lifecycle.OpBooted, nil)
		}
	}
	if err != nil {
		if serr := m.be.Stop(context.WithoutCancel(ctx), b.ID); serr != nil {
			m.log.Warn("cannot stop a box whose create failed", "box", b.ID, "err", serr)
		}
		if derr := m.cat.Update(func(tx *catalog.Tx) error { return tx.DeleteBox(b.ID) }); derr != nil {
			m.log.Warn("cannot delete a box whose create failed; the next start does", "box", b.ID, "err", derr)
		}
		return api.Box{}, fmt.Errorf("create box %s: %w", b.ID, err)
	}
	m.log.Info("box created", "box", b.ID, "memory_mib", spec.MemoryMiB, "vcpus", spec.VCPUs, "guest_schema_version", b.GuestSchemaVersion)
	return m.box(b.ID)
}

// box returns box id as the API reports it.
func (m *Manager) box(id string) (api.Box, error) {
	var out api.Box
	err := m.cat.View(func(tx *catalog.Tx) error {
		b, err := tx.Box(id)
		if err != nil {
			return err
		}
		out, err = toAPI(tx, b)
		return err
	})
	if errors.Is(err, catalog.ErrNotFound) {
		return out, fmt.Errorf("box %s: %w", id, ErrNotFound)
	}
	return out, err
}

func toAPI(tx *catalog.Tx, b catalog.Box) (api.Box, error) {
	out := api.Box{
		ID: b.ID, State: b.State, GuestSchemaVersion: b.GuestSchemaVersion, Created: b.Created,
		LastCheckpointID: b.LastCheckpoint, ParentID: b.ParentID, HostID: b.HostID,
		PendingUpgrade: b.PendingUpgrade, MemoryMiB: b.Spec.MemoryMiB, VCPUs: b.Spec.VCPUs,
		Ports: []api.Port{},
	}
	if b.LastCheckpoint != "" {
		ck, err := tx.Checkpoint(b.LastCheckpoint)
		if err != nil {
			return out, fmt.Errorf("box %s: %w", b.ID, err)
		}
		t := ck.Created
		out.LastCheckpoint = &t
	}
	for _, p := range b.Ports {
		out.Ports = append(out.Ports, api.Port(p))
	}
	return out, nil
}

func checkpointToAPI(c catalog.Checkpoint) api.Checkpoint {
	return api.Checkpoint{ID: c.ID, BoxID: c.BoxID, ParentID: c.ParentID, Created: c.Created, Completed: c.Completed}
}

// Get returns box id.
func (m *Manager) Get(ctx context.Context, id string) (api.Box, error) { return m.box(id) }

// ListFilter narrows List.
type ListFilter struct {
	// MaxGuestSchemaVersion, if not nil, keeps boxes whose guest agent
	// reports at most this version: those that still need an upgrade.
	MaxGuestSchemaVersion *int
}

// List returns the boxes that pass f, sorted by ID.
func (m *Manager) List(ctx context.Context, f ListFilter) ([]api.Box, error) {
	out := []api.Box{}
	err := m.cat.View(func(tx *catalog.Tx) error {
		boxes, err := tx.Boxes()
		if err != nil {
			return err
		}
		for _, b := range boxes {
			if f.MaxGuestSchemaVersion != nil && b.GuestSchemaVersion > *f.MaxGuestSchemaVersion {
				continue
			}
			ab, err := toAPI(tx, b)
			if err != nil {
				return err
			}
			out = append(out, ab)
		}
		return nil
	})
	return out, err
}

// Checkpoints returns box id's chain, newest first.
func (m *Manager) Checkpoints(ctx context.Context, id string) ([]api.Checkpoint, error) {
	out := []api.Checkpoint{}
	err := m.cat.View(func(tx *catalog.Tx) error {
		chain, err := tx.Chain(id)
		for _, c := range chain {
			out = append(out, checkpointToAPI(c))
		}
		return err
	})
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, fmt.Errorf("box %s: %w", id, ErrNotFound)
	}
	return out, err
}

// change runs op on box id under its lock.
func (m *Manager) change(ctx context.Context, id string, op lifecycle.Op, out *outcome) (api.Box, error) {
	unlock := m.lock(id)
	defer unlock()
	if _, err := m.apply(ctx, id, op, out); err != nil {
		return api.Box{}, err
	}
	return m.box(id)
}

// Checkpoint takes a live checkpoint of running box id.
func (m *Manager) Checkpoint(ctx context.Context, id string) (api.Checkpoint, error) {
	var out outcome
	if _, err := m.change(ctx, id, lifecycle.OpCheckpoint, &out); err != nil {
		return api.Checkpoint{}, err
	}
	return checkpointToAPI(out.checkpoint), nil
}

// Fork starts a new running box from box id: live from a running box,
// from its last checkpoint (without waking it) from a paused or sleeping
// one.
func (m *Manager) Fork(ctx context.Context, id string) (api.ForkResponse, error) {
	var out outcome
	if _, err := m.change(ctx, id, lifecycle.OpFork, &out); err != nil {
		return api.ForkResponse{}, err
	}
	child, err := m.box(out.child.ID)
	if err != nil {
		return api.ForkResponse{}, err
	}
	return api.ForkResponse{Box: child, Checkpoint: checkpointToAPI(out.checkpoint)}, nil
}

// Pause checkpoints running box id and powers it down until a resume or
// connect.
func (m *Manager) Pause(ctx context.Context, id string) (api.Box, error) {
	return m.change(ctx, id, lifecycle.OpPause, nil)
}

// Sleep checkpoints running box id and powers it down until it is used
// (exec, files, a connection to an exposed port) or resumed.
func (m *Manager) Sleep(ctx context.Context, id string) (api.Box, error) {
	return m.change(ctx, id, lifecycle.OpSleep, nil)
}

// Resume restores paused, sleeping or failed box id.
func (m *Manager) Resume(ctx context.Context, id string) (api.Box, error) {
	return m.change(ctx, id, lifecycle.OpResume, nil)
}

// Connect checks that box id lives on this host, resumes it if it is down
// and returns it.
func (m *Manager) Connect(ctx context.Context, id string) (api.Box, error) {
	b, err := m.record(id)
	if err != nil {
		return api.Box{}, err
	}
	if b.HostID != m.hostID {
		return api.Box{}, fmt.Errorf("box %s: %w: %s", id, ErrWrongHost, b.HostID)
	}
	return m.change(ctx, id, lifecycle.OpConnect, nil)
}

// Upgrade moves box id onto the current guest agent: a running box
// reboots on its disk (true), a box that is down records it for its next
// wake (false), a box already current reports true and is left alone.
func (m *Manager) Upgrade(ctx context.Context, id string) (api.UpgradeResponse, error) {
	unlock := m.lock(id)
	defer unlock()
	b, err := m.record(id)
	if err != nil {
		return api.UpgradeResponse{}, err
	}
	if !lifecycle.Allowed(b.State, lifecycle.OpUpgrade) {
		_, err := lifecycle.Next(b.State, lifecycle.OpUpgrade)
		return api.UpgradeResponse{}, fmt.Errorf("box %s: %w", id, err)
	}
	if b.GuestSchemaVersion >= m.be.GuestSchemaVersion() {
		if b.PendingUpgrade {
			b.PendingUpgrade = false
			if err := m.save(b); err != nil {
				return api.UpgradeResponse{}, err
			}
		}
		ab, err := m.box(id)
		return api.UpgradeResponse{Upgraded: true, Box: ab}, err
	}
	var out outcome
	if _, err := m.apply(ctx, id, lifecycle.OpUpgrade, &out); err != nil {
		return api.UpgradeResponse{}, err
	}
	ab, err := m.box(id)
	return api.UpgradeResponse{Upgraded: out.upgraded, Box: ab}, err
}

// Terminate destroys box id and frees the checkpoints no other box's
// chain references.
func (m *Manager) Terminate(ctx context.Context, id string) (api.TerminateResponse, error) {
	unlock := m.lock(id)
	defer unlock()
	var out outcome
	b, err := m.apply(ctx, id, lifecycle.OpTerminate, &out)
	if err != nil {
		return api.TerminateResponse{}, err
	}
	freed := out.freed
	if freed == nil {
		freed = []string{}
	}
	return api.TerminateResponse{ID: id, State: string(b.State), FreedCheckpoints: freed}, nil
}

// use makes box id ready for op (exec, file, ingress): a running box as
// it is, a sleeping one woken.
func (m *Manager) use(ctx context.Context, id string, op lifecycle.Op) error {
	unlock := m.lock(id)
	defer unlock()
	_, err := m.apply(ctx, id, op, nil)
	return err
}

// Exec runs req in box id's guest, waking a sleeping box first. Output is
// written to stdout and stderr as it arrives. A state change of the box
// while the process runs (a pause, say) cuts it short with an error.
func (m *Manager) Exec(ctx context.Context, id string, req api.ExecRequest, stdout, stderr io.Writer) (api.ExecResult, error) {
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return api.ExecResult{}, fmt.Errorf("exec: %w: argv is empty", ErrInvalidArgument)
	}
	if req.TimeoutMS < 0 {
		return api.ExecResult{}, fmt.Errorf("exec: %w: negative timeout", ErrInvalidArgument)
	}
	if err := m.use(ctx, id, lifecycle.OpExec); err != nil {
		return api.ExecResult{}, err
	}
	res, err := m.be.Exec(ctx, id, req, stdout, stderr)
	if err != nil {
		return res, fmt.Errorf("box %s: exec %q: %w", id, req.Argv[0], err)
	}
	return res, nil
}

func checkGuestPath(p string) error {
	if !path.IsAbs(p) {
		return fmt.Errorf("%w: guest path %q is not absolute", ErrInvalidArgument, p)
	}
	return nil
}

// ReadFile writes the guest file at p of box id to w, waking a sleeping
// box first.
func (m *Manager) ReadFile(ctx context.Context, id, p string, w io.Writer) (int64, error) {
	if err := checkGuestPath(p); err != nil {
		return 0, err
	}
	if err := m.use(ctx, id, lifecycle.OpFile); err != nil {
		return 0, err
	}
	n, err := m.be.ReadFile(ctx, id, p, w)
	if err != nil {
		return n, fmt.Errorf("box %s: read %s: %w", id, p, err)
	}
	return n, nil
}

// WriteFile writes r to the guest file at p of box id, waking a sleeping
// box first.
func (m *Manager) WriteFile(ctx context.Context, id, p string, r io.Reader, opts FileOptions) (int64, error) {
	if err := checkGuestPath(p); err != nil {
		return 0, err
	}
	if opts.Mode > 0o777 {
		return 0, fmt.Errorf("%w: mode %#o has bits beyond 0777", ErrInvalidArgument, opts.Mode)
	}
	if err := m.use(ctx, id, lifecycle.OpFile); err != nil {
		return 0, err
	}
	n, err := m.be.WriteFile(ctx, id, p, r, opts)
	if err != nil {
		return n, fmt.Errorf("box %s: write %s: %w", id, p, err)
	}
	return n, nil
}

// InferenceCall runs call, an upstream inference request made for box id,
// with the box asleep: it is put to sleep first and resumed when call
// returns (unless something else woke or changed it meanwhile).
func (m *Manager) InferenceCall(ctx context.Context, id string, call func(context.Context) error) error {
	if _, err := m.change(ctx, id, lifecycle.OpInference, nil); err != nil {
		return err
	}
	callErr := call(ctx)
	unlock := m.lock(id)
	defer unlock()
	b, err := m.record(id)
	if err != nil {
		return errors.Join(callErr, err)
	}
	if b.State == lifecycle.Sleeping {
		if _, err := m.apply(context.WithoutCancel(ctx), id, lifecycle.OpResume, nil); err != nil {
			return errors.Join(callErr, fmt.Errorf("resume after inference: %w", err))
		}
	}
	return callErr
}
