package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Recovery: what a starting daemon does with what the previous one left,
// and what it does when a box's VM goes away on its own.

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
