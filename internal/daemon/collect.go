package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/sailbox-dev/sailbox/internal/catalog"
)

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
