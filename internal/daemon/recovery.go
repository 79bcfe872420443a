package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Recovery: what a starting daemon does with what the previous one left,
// and what it does when a box's VM goes away on its own.

// Start recovers from whatever the previous daemon left, in an order that
// never takes from a VM that still runs what it builds on:
//
//  1. It takes back the VMs of running boxes that are still alive (the
//     backend's Attach returns once a VMM has finished any call the
//     previous daemon had begun), so nothing is in flight afterwards.
//  2. It reconciles the checkpoints the catalog had not recorded as
//     completed with the store: one the store holds completed is a
//     completed checkpoint (the VMM committed it; the daemon died before
//     recording it) and becomes its box's last; the others are deleted.
//  3. It forgets templates left unmade or made for another boot (see
//     templates.go), stops and deletes boxes still creating, finishes off boxes
//     whose terminate had begun, and stops any VM of a box that is down
//     (left by a wake that did not finish).
//  4. It restores running boxes whose VM is gone from their most recent
//     completed checkpoint (or marks them failed).
//  5. It frees unreferenced checkpoints, sweeps the store of everything
//     the catalog does not reference, reopens exposed ports, and re-arms
//     the boxes' TTLs from their stored expiry (terminating those that
//     expired meanwhile) and the idle timeouts of running boxes.
func (m *Manager) Start(ctx context.Context) error {
	m.be.Watch(m.vmLost)
	boxes, err := m.boxes()
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	var lost []string
	for _, b := range boxes {
		if b.State != lifecycle.Running || b.Terminating {
			continue
		}
		alive, err := m.be.Attach(ctx, b.ID)
		if err != nil {
			m.log.Warn("attach to box failed", "box", b.ID, "err", err)
		}
		if !alive {
			lost = append(lost, b.ID)
		}
	}
	if err := m.reconcile(ctx); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	if err := m.settleTemplates(ctx); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	for _, b := range boxes {
		switch {
		case b.State == lifecycle.Creating || b.Terminating:
			if err := m.finishOff(ctx, b); err != nil {
				return fmt.Errorf("start: %w", err)
			}
		case b.State != lifecycle.Running:
			// A box that is down runs no VM, but a wake the previous
			// daemon did not see through may have left one.
			if err := m.be.Stop(ctx, b.ID); err != nil {
				return fmt.Errorf("start: stop the VM of box %s, which is %s: %w", b.ID, b.State, err)
			}
		}
	}
	for _, id := range lost {
		m.log.Warn("box's VM is gone; restoring it from its last checkpoint", "box", id)
		unlock := m.lock(id)
		_, err = m.lost(ctx, id)
		unlock()
		if err != nil {
			m.log.Error("box not restored", "box", id, "err", err)
		}
	}
	if _, err := m.collect(ctx); err != nil {
		m.log.Warn("freeing unreferenced checkpoints failed", "err", err)
	}
	if err := m.sweep(ctx); err != nil {
		m.log.Warn("sweeping the checkpoint store failed", "err", err)
	}
	if boxes, err = m.boxes(); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	for _, b := range boxes {
		for _, p := range b.Ports {
			if err := m.fwd.open(b.ID, p); err != nil {
				m.log.Warn("cannot reopen exposed port", "box", b.ID, "addr", p.HostAddr, "err", err)
			}
		}
		m.armPolicies(b)
	}
	return nil
}

// boxes returns every box's record.
func (m *Manager) boxes() ([]catalog.Box, error) {
	var boxes []catalog.Box
	err := m.cat.View(func(tx *catalog.Tx) error {
		var err error
		boxes, err = tx.Boxes()
		return err
	})
	return boxes, err
}

// reconcile settles the checkpoints the catalog records as not completed
// against the store, which has the last word: a checkpoint whose manifest
// is in place completed. It is promoted, and becomes its box's last
// checkpoint when it is the newest of the box's chain (a live checkpoint
// or a live fork's); the others are deleted, record and debris.
func (m *Manager) reconcile(ctx context.Context) error {
	var incomplete []catalog.Checkpoint
	if err := m.cat.View(func(tx *catalog.Tx) error {
		var err error
		incomplete, err = tx.Incomplete()
		return err
	}); err != nil {
		return err
	}
	var unfinished []string
	for _, c := range incomplete {
		info, done, err := m.be.Completed(ctx, c.ID)
		if err != nil {
			return fmt.Errorf("checkpoint %s: %w", c.ID, err)
		}
		if !done {
			unfinished = append(unfinished, c.ID)
			continue
		}
		m.log.Warn("promoting a checkpoint the store holds completed", "box", c.BoxID, "checkpoint", c.ID)
		c.Completed = true
		if !info.Created.IsZero() {
			c.Created = info.Created.UTC()
		}
		err = m.cat.Update(func(tx *catalog.Tx) error {
			if err := tx.PutCheckpoint(c); err != nil {
				return err
			}
			b, err := tx.Box(c.BoxID)
			if errors.Is(err, catalog.ErrNotFound) {
				return nil // its box is gone: collect frees it
			}
			if err != nil || b.Head() != c.ParentID {
				return err
			}
			b.LastCheckpoint = c.ID
			return tx.PutBox(b)
		})
		if err != nil {
			return fmt.Errorf("checkpoint %s: %w", c.ID, err)
		}
	}
	if len(unfinished) == 0 {
		return nil
	}
	m.log.Warn("removing checkpoints that did not complete", "checkpoints", unfinished)
	if err := m.be.RemoveCheckpoints(ctx, unfinished); err != nil {
		return err
	}
	return m.cat.Update(func(tx *catalog.Tx) error {
		for _, id := range unfinished {
			if err := tx.DeleteCheckpoint(id); err != nil {
				return err
			}
		}
		return nil
	})
}

// finishOff stops the VM of box b, left creating or terminating by a
// crash, and deletes its record.
func (m *Manager) finishOff(ctx context.Context, b catalog.Box) error {
	if b.Terminating {
		m.log.Warn("finishing a terminate that did not finish", "box", b.ID)
	} else {
		m.log.Warn("removing a box whose create did not finish", "box", b.ID)
	}
	if err := m.be.Stop(ctx, b.ID); err != nil {
		return fmt.Errorf("stop box %s: %w", b.ID, err)
	}
	m.fwd.closeBox(b.ID)
	return m.cat.Update(func(tx *catalog.Tx) error { return tx.DeleteBox(b.ID) })
}

// sweep has the backend free whatever its store holds beyond the
// checkpoints the catalog records.
func (m *Manager) sweep(ctx context.Context) error {
	var keep []string
	if err := m.cat.View(func(tx *catalog.Tx) error {
		all, err := tx.Checkpoints()
		for _, c := range all {
			keep = append(keep, c.ID)
		}
		return err
	}); err != nil {
		return err
	}
	removed, err := m.be.Sweep(ctx, keep)
	if len(removed) > 0 {
		m.log.Warn("freed what the catalog did not reference", "removed", removed)
	}
	return err
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
	if m.crashLooping(id) {
		m.log.Error("box's VM keeps exiting right after its restores; marking it failed (resume restores it again)",
			"box", id, "exits", crashLoopExits, "within", crashLoopWindow)
		if _, err := m.apply(ctx, id, lifecycle.OpFail, nil); err != nil {
			m.log.Error("cannot mark a crash-looping box failed", "box", id, "err", err)
		}
		return
	}
	m.log.Warn("box's VM exited on its own; restoring it from its last checkpoint", "box", id)
	if _, err := m.lost(ctx, id); err != nil {
		m.log.Error("box not restored", "box", id, "err", err)
	}
}

// A box whose VM exits on its own crashLoopExits times within
// crashLoopWindow is not restored again: its checkpoint, its guest or
// the host makes it die, and restoring it at once would only spin.
const (
	crashLoopExits  = 3
	crashLoopWindow = time.Minute
)

// crashLooping records that box id's VM exited on its own and reports
// whether it has done so crashLoopExits times within crashLoopWindow.
func (m *Manager) crashLooping(id string) bool {
	m.exitsMu.Lock()
	defer m.exitsMu.Unlock()
	now := time.Now()
	recent := []time.Time{now}
	for _, t := range m.exits[id] {
		if now.Sub(t) < crashLoopWindow {
			recent = append(recent, t)
		}
	}
	if len(recent) >= crashLoopExits {
		delete(m.exits, id)
		return true
	}
	m.exits[id] = recent
	return false
}
