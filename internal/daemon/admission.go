package daemon

import (
	"errors"
	"fmt"

	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Admission control: a create, fork or wake that would start a VM beyond
// the host's configured limits is refused with ErrCapacity, before it
// starts anything, rather than let the host swap or its disk fill.

// ErrCapacity reports a call refused because the host is at a configured
// limit: boxes running, guest memory, or free disk.
var ErrCapacity = errors.New("host at capacity")

// Limits bound what the host runs. Zero fields are unlimited.
type Limits struct {
	// MaxRunning is the most boxes with a VM at once.
	MaxRunning int
	// MaxMemoryMiB is the most guest memory of those boxes together.
	MaxMemoryMiB int
	// MinFreeDiskMiB is the free space the checkpoint store's file
	// system keeps: a VM start that finds less is refused (its disk
	// writes and checkpoints would need more).
	MinFreeDiskMiB int64
	// FreeDiskMiB measures that free space; needed with MinFreeDiskMiB.
	FreeDiskMiB func() (int64, error)
}

// admission is the state of admission control: starts admitted whose box
// is not yet recorded as having a VM.
type admission struct {
	pendingBoxes, pendingMiB int
}

// admit reserves room for a VM of memMiB for op, or refuses it with
// ErrCapacity. Call release once the box is recorded Creating or Running
// (the catalog then counts it) or the start failed.
func (m *Manager) admit(op string, memMiB int) (release func(), err error) {
	lim := m.limits
	if lim.MaxRunning == 0 && lim.MaxMemoryMiB == 0 && lim.MinFreeDiskMiB == 0 {
		return func() {}, nil
	}
	m.admitMu.Lock()
	defer m.admitMu.Unlock()
	var running, mem int
	if err := m.cat.View(func(tx *catalog.Tx) error {
		boxes, err := tx.Boxes()
		for _, b := range boxes {
			if b.State == lifecycle.Running || b.State == lifecycle.Creating {
				running++
				mem += b.Spec.MemoryMiB
			}
		}
		return err
	}); err != nil {
		return nil, fmt.Errorf("%s: admission: %w", op, err)
	}
	running += m.adm.pendingBoxes
	mem += m.adm.pendingMiB
	switch {
	case lim.MaxRunning > 0 && running+1 > lim.MaxRunning:
		return nil, fmt.Errorf("%s: %w: %d boxes run, the limit is %d (sailboxd -max-running)", op, ErrCapacity, running, lim.MaxRunning)
	case lim.MaxMemoryMiB > 0 && mem+memMiB > lim.MaxMemoryMiB:
		return nil, fmt.Errorf("%s: %w: running boxes have %d MiB of guest memory, %d more would pass the limit of %d MiB (sailboxd -max-memory)", op, ErrCapacity, mem, memMiB, lim.MaxMemoryMiB)
	}
	if lim.MinFreeDiskMiB > 0 && lim.FreeDiskMiB != nil {
		free, err := lim.FreeDiskMiB()
		if err != nil {
			return nil, fmt.Errorf("%s: admission: free disk: %w", op, err)
		}
		if free < lim.MinFreeDiskMiB {
			return nil, fmt.Errorf("%s: %w: %d MiB of disk free, the host keeps %d MiB (sailboxd -min-free-disk)", op, ErrCapacity, free, lim.MinFreeDiskMiB)
		}
	}
	m.adm.pendingBoxes++
	m.adm.pendingMiB += memMiB
	released := false
	return func() {
		m.admitMu.Lock()
		defer m.admitMu.Unlock()
		if !released {
			released = true
			m.adm.pendingBoxes--
			m.adm.pendingMiB -= memMiB
		}
	}, nil
}
