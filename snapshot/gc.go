package snapshot

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/sailbox-dev/sailbox/snapshot/layerstore"
)

// RemoveCheckpoints frees the storage of completed checkpoints ids: every
// layer they held that no other checkpoint holds, then their manifests,
// then the store's debris (Clean). An ID the store does not hold is not
// an error. The manifests go last so that a call cut short (the process
// killed, a layer that cannot be deleted) leaves each checkpoint still
// listing its layers, and the same call again finishes the job: the other
// way round, the layers of a manifest already gone would be left to no
// one. It runs under the root's lock, so no checkpoint begins and no
// Clean runs meanwhile; a checkpoint already in progress must not build
// on the ones removed (the caller's to ensure: the daemon removes only
// checkpoints no box references). It returns the layers it deleted.
func (r *Root) RemoveCheckpoints(ids []string) ([]string, error) {
	rl, err := r.lockRoot(unix.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("remove checkpoints: %w", err)
	}
	defer rl.Close()
	removing := map[string]bool{}
	candidates := map[string]bool{}
	for _, id := range ids {
		m, err := r.Load(id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("remove checkpoints: %w", err)
		}
		removing[id] = true
		for _, l := range m.layerIDs() {
			candidates[l] = true
		}
	}
	all, err := r.List()
	if err != nil {
		return nil, fmt.Errorf("remove checkpoints: %w", err)
	}
	for _, id := range all {
		if removing[id] {
			continue
		}
		m, err := r.Load(id)
		if err != nil {
			return nil, fmt.Errorf("remove checkpoints: %w", err)
		}
		for _, l := range m.layerIDs() {
			delete(candidates, l)
		}
	}
	var deleted []string
	for _, l := range slices.Sorted(maps.Keys(candidates)) {
		if err := r.layers.Delete(l); err != nil && !errors.Is(err, layerstore.ErrNotFound) {
			return deleted, fmt.Errorf("remove checkpoints: %w", err)
		}
		deleted = append(deleted, l)
	}
	for _, id := range ids {
		if !removing[id] {
			continue
		}
		if err := r.remove(id, "RemoveCheckpoints: the caller's to free"); err != nil && !errors.Is(err, ErrNotFound) {
			return deleted, err
		}
	}
	if _, err := r.clean(); err != nil {
		return deleted, err
	}
	return deleted, nil
}

// layerIDs are the layers m's memory and disks are made of.
func (m *Manifest) layerIDs() []string {
	var out []string
	for _, l := range m.Memory {
		out = append(out, l.ID)
	}
	for _, d := range m.Disks {
		for _, l := range d.Layers {
			out = append(out, l.ID)
		}
	}
	return out
}

// Sweep frees everything the store holds beyond what the caller still
// needs, whatever crashed before: completed checkpoints for which keep is
// false, then layers that no remaining checkpoint references and for
// which live is false (a layer a running VM put for a checkpoint whose
// commit failed: its disk builds on it, and its next checkpoint will
// reference it), then the debris Clean removes. It runs under the root's
// exclusive lock and returns what it removed: checkpoint IDs and layer
// IDs. Call it when no checkpoint is in progress: a checkpoint being
// written has put layers no manifest references yet.
func (r *Root) Sweep(keep, live func(id string) bool) ([]string, error) {
	rl, err := r.lockRoot(unix.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("sweep checkpoint store: %w", err)
	}
	defer rl.Close()
	ids, err := r.List()
	if err != nil {
		return nil, fmt.Errorf("sweep checkpoint store: %w", err)
	}
	var removed []string
	referenced := map[string]bool{}
	for _, id := range ids {
		if !keep(id) {
			if err := r.remove(id, "Sweep: not among those the caller keeps"); err != nil {
				return removed, fmt.Errorf("sweep checkpoint store: %w", err)
			}
			removed = append(removed, id)
			continue
		}
		m, err := r.Load(id)
		if err != nil {
			return removed, fmt.Errorf("sweep checkpoint store: %w", err)
		}
		for _, l := range m.layerIDs() {
			referenced[l] = true
		}
	}
	layers, err := r.layers.List()
	if err != nil {
		return removed, fmt.Errorf("sweep checkpoint store: %w", err)
	}
	for _, l := range layers {
		if referenced[l.ID] || live(l.ID) {
			continue
		}
		if err := r.layers.Delete(l.ID); err != nil && !errors.Is(err, layerstore.ErrNotFound) {
			return removed, fmt.Errorf("sweep checkpoint store: %w", err)
		}
		removed = append(removed, l.ID)
	}
	if _, err := r.clean(); err != nil {
		return removed, fmt.Errorf("sweep checkpoint store: %w", err)
	}
	return removed, nil
}
