package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Lifecycle effects: how a transition of the state machine
// (api/lifecycle) is carried out on the backend and recorded, with the
// record written before the act and undone if the act fails.

// outcome carries what an op produced besides the box's new state, and
// what the forks take besides the op.
type outcome struct {
	forkCount  int                // in: the forks' number of children; 0 means 1
	checkpoint catalog.Checkpoint // ActCheckpoint, ActForkLive, ActForkFromCheckpoint
	children   []catalog.Box      // the forks
	upgraded   bool               // ActReboot
	freed      []string           // ActDestroy
}

// apply runs op on box id, whose lock the caller holds: the lifecycle
// decides, the Action is done to the VM, and the next state is recorded.
// It returns the box as recorded afterwards. When the Action fails, the
// record is left as it was (except for a reboot that lost the VM: see
// reboot).
func (m *Manager) apply(ctx context.Context, id string, op lifecycle.Op, out *outcome) (catalog.Box, error) {
	// A change runs to its end once begun, whoever stops waiting for it:
	// a VM started, or a checkpoint the VMM committed, must not be left
	// unknown to the record because a client disconnected. The backend
	// bounds its own waits.
	ctx = context.WithoutCancel(ctx)
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
		if out.children, out.checkpoint, err = m.fork(ctx, &b, eff.Action, max(out.forkCount, 1)); err != nil {
			return b, err
		}
	case lifecycle.ActRestore:
		release, err := m.admit(fmt.Sprintf("box %s: %s", id, op), b.Spec.MemoryMiB)
		if err != nil {
			return b, err
		}
		defer release() // once b is recorded Running, or the wake failed
		if err := m.wake(ctx, &b); err != nil {
			return b, err
		}
		m.obs.Woke(wakeReason(ctx, op))
	case lifecycle.ActReboot:
		if out.upgraded, err = m.reboot(ctx, &b); err != nil {
			return b, err
		}
	case lifecycle.ActRecordUpgrade:
		b.PendingUpgrade = true
	case lifecycle.ActDestroy:
		b.Terminating = true
		if err := m.save(b); err != nil {
			return b, fmt.Errorf("box %s: terminate: %w", id, err)
		}
		if err := m.be.Stop(ctx, id); err != nil {
			return b, fmt.Errorf("box %s: terminate: stop: %w", id, err)
		}
		m.fwd.closeBox(id)
		if err := m.cat.Update(func(tx *catalog.Tx) error { return tx.DeleteBox(id) }); err != nil {
			return b, fmt.Errorf("box %s: terminate: %w", id, err)
		}
		m.disarmPolicies(id)
		m.exitsMu.Lock()
		delete(m.exits, id)
		m.exitsMu.Unlock()
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
		// A box's idle timer runs while it runs (see idle.go).
		if b.State == lifecycle.Running {
			m.armIdle(id, b.IdleTimeoutSeconds)
		} else {
			m.disarmIdle(id)
		}
	}
	if eff.Action == lifecycle.ActCheckpointStop {
		// Recorded paused or asleep, the box runs no VM: its chain may
		// be compacted (compact.go).
		m.compactChain(ctx, &b)
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

// beginCheckpoint records a new, not yet completed checkpoint of b, on
// b's chain.
func (m *Manager) beginCheckpoint(b *catalog.Box) (catalog.Checkpoint, error) {
	return m.beginCheckpointOn(b, b.Head())
}

// beginCheckpointOn records a new, not yet completed checkpoint of b
// whose parent is parent.
func (m *Manager) beginCheckpointOn(b *catalog.Box, parent string) (catalog.Checkpoint, error) {
	next := *b
	next.CheckpointSeq++
	ck := catalog.Checkpoint{
		ID:       fmt.Sprintf("%s-c%d", b.ID, next.CheckpointSeq),
		BoxID:    b.ID,
		ParentID: parent,
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

// fork starts count children of b from one checkpoint: live from a new
// checkpoint of running b, or from b's last completed checkpoint for a
// box that is down. Each child is recorded as Creating first; if any
// does not start, every child is stopped and deleted.
func (m *Manager) fork(ctx context.Context, b *catalog.Box, act lifecycle.Action, count int) ([]catalog.Box, catalog.Checkpoint, error) {
	if act == lifecycle.ActForkLive && count == 1 {
		// One child: the backend checkpoints and restores in one call.
		child, ck, err := m.forkLive(ctx, b)
		if err != nil {
			return nil, ck, err
		}
		return []catalog.Box{child}, ck, nil
	}
	var ck catalog.Checkpoint
	var err error
	if act == lifecycle.ActForkLive {
		if ck, err = m.checkpoint(ctx, b); err != nil {
			return nil, ck, err
		}
	} else {
		if b.LastCheckpoint == "" {
			return nil, ck, fmt.Errorf("box %s: fork: %w: no completed checkpoint", b.ID, ErrConflict)
		}
		err = m.cat.View(func(tx *catalog.Tx) error {
			ck, err = tx.Checkpoint(b.LastCheckpoint)
			return err
		})
		if err != nil {
			return nil, ck, fmt.Errorf("box %s: fork: %w", b.ID, err)
		}
	}
	children, err := m.restoreChildren(ctx, b, ck, count)
	return children, ck, err
}

// newChild returns a new fork of b, based on checkpoint ck, recorded as
// Creating (admitted against the host's limits).
func (m *Manager) newChild(b *catalog.Box, ck string) (catalog.Box, error) {
	child := catalog.Box{
		ID:                 m.newID(),
		State:              lifecycle.Creating,
		GuestSchemaVersion: b.GuestSchemaVersion,
		Created:            m.clock.Now().UTC(),
		ParentID:           b.ID,
		HostID:             m.hostID,
		PendingUpgrade:     b.PendingUpgrade,
		Spec:               b.Spec,
		BaseCheckpoint:     ck,
	}
	inherited(*b).setOn(&child)
	release, err := m.admit(fmt.Sprintf("box %s: fork", b.ID), child.Spec.MemoryMiB)
	if err != nil {
		return child, err
	}
	err = m.cat.Update(func(tx *catalog.Tx) error { return tx.CreateBox(child) })
	release() // recorded Creating: the catalog counts it now
	if err != nil {
		return child, fmt.Errorf("box %s: fork: %w", b.ID, err)
	}
	return child, nil
}

// forkLive starts a child of running b from a new checkpoint of it,
// taken and restored by the backend's Fork.
func (m *Manager) forkLive(ctx context.Context, b *catalog.Box) (catalog.Box, catalog.Checkpoint, error) {
	ck, err := m.beginCheckpoint(b)
	if err != nil {
		return catalog.Box{}, ck, err
	}
	child, err := m.newChild(b, ck.ID)
	if err != nil {
		m.abortCheckpoint(ck.ID)
		return child, ck, err
	}
	undo := func(err error) (catalog.Box, catalog.Checkpoint, error) {
		m.discardNewBox(ctx, child.ID)
		m.abortCheckpoint(ck.ID)
		return child, ck, fmt.Errorf("box %s: fork: %w", b.ID, err)
	}
	info, inst, err := m.be.Fork(ctx, b.ID, ck.ID, child.ID, child.Spec)
	if err != nil {
		return undo(err)
	}
	child.State = lifecycle.Running
	child.GuestSchemaVersion = inst.GuestSchemaVersion
	if ck, err = m.completeCheckpoint(b, ck, info, &child); err != nil {
		return undo(err)
	}
	m.armPolicies(child)
	m.log.Info("box forked", "parent", b.ID, "child", child.ID, "checkpoint", ck.ID, "live", true)
	return child, ck, nil
}

// restoreChildren starts count children of b from its completed
// checkpoint ck, concurrently: all of them, or (an error) none.
func (m *Manager) restoreChildren(ctx context.Context, b *catalog.Box, ck catalog.Checkpoint, count int) ([]catalog.Box, error) {
	children := make([]catalog.Box, 0, count)
	discard := func() {
		for _, c := range children {
			m.discardNewBox(ctx, c.ID)
		}
	}
	for range count {
		child, err := m.newChild(b, ck.ID)
		if err != nil {
			discard()
			return nil, err
		}
		children = append(children, child)
	}
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i := range children {
		wg.Go(func() {
			c := &children[i]
			inst, err := m.be.Restore(ctx, c.ID, c.Spec, ck.ID, true)
			if err == nil {
				c.State = lifecycle.Running
				c.GuestSchemaVersion = inst.GuestSchemaVersion
				err = m.save(*c)
			}
			if err != nil {
				errs[i] = fmt.Errorf("box %s: fork: child %s: %w", b.ID, c.ID, err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		discard()
		return nil, err
	}
	for _, c := range children {
		m.armPolicies(c)
		m.log.Info("box forked", "parent", b.ID, "child", c.ID, "checkpoint", ck.ID)
	}
	return children, nil
}

// wake starts a VM for b from its most recent completed checkpoint; with an
// upgrade pending, or an agent too old to resume, it boots the current
// agent on that checkpoint's disks instead.
func (m *Manager) wake(ctx context.Context, b *catalog.Box) error {
	// A fork that never took a checkpoint of its own comes back as it
	// was born: from the checkpoint it was forked from, as a new machine
	// of its name again.
	head, fork := b.Head(), b.LastCheckpoint == ""
	if head == "" {
		return fmt.Errorf("box %s: wake: %w: no completed checkpoint to restore", b.ID, ErrConflict)
	}
	var inst Instance
	var err error
	restore := true
	if b.PendingUpgrade || b.GuestSchemaVersion < m.minSchema {
		inst, err = m.be.Reboot(ctx, b.ID, b.Spec, head)
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
		inst, err = m.be.Restore(startingAs(ctx, StartRestore), b.ID, b.Spec, head, fork)
	}
	if err != nil {
		return fmt.Errorf("box %s: restore %s: %w", b.ID, head, err)
	}
	b.GuestSchemaVersion = inst.GuestSchemaVersion
	return nil
}

// reboot upgrades running box b onto the current agent: a checkpoint
// seals its disk, its VM stops, and the current agent boots on that disk.
// It reports true, without rebooting, when the agent is already current
// (the mission's upgrade() answers True then too), and true once the new
// boot is up. If the new boot fails, b is restored from the checkpoint; if
// that fails too, b is recorded Failed.
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
	if _, rerr := m.be.Restore(ctx, b.ID, b.Spec, ck.ID, false); rerr != nil {
		b.State = lifecycle.Failed
		if serr := m.save(*b); serr != nil {
			m.log.Error("cannot record a failed box", "box", b.ID, "err", serr)
		}
		return false, errors.Join(err, fmt.Errorf("restore after failed upgrade: %w", rerr))
	}
	return false, err
}

// discardNewBox undoes box id, recorded Creating (a create or a fork)
// when its VM did not come up: it stops whatever VM the box has and
// deletes its record. What fails here is logged; the next start removes
// boxes still Creating.
func (m *Manager) discardNewBox(ctx context.Context, id string) {
	if err := m.be.Stop(context.WithoutCancel(ctx), id); err != nil {
		m.log.Warn("cannot stop a box whose creation failed", "box", id, "err", err)
	}
	if err := m.cat.Update(func(tx *catalog.Tx) error { return tx.DeleteBox(id) }); err != nil {
		m.log.Warn("cannot delete a box whose creation failed; the next start does", "box", id, "err", err)
	}
}
