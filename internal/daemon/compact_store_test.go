package daemon_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
	"github.com/sailbox-dev/sailbox/snapshot"
)

// storeBackend is the fake with the real checkpoint store beside it, for
// the daemon's concurrency to run into the store's: each checkpoint the
// fake takes is also committed to a snapshot.Root as the VMM commits one
// (a manifest naming its parent, no layers), a compaction is the store's
// CompactOnto, removals are its RemoveCheckpoints and Sweep, and a
// restore first loads the checkpoint's manifest, as sailbox-vmm does.
type storeBackend struct {
	*fakebackend.Backend
	root *snapshot.Root

	mu   sync.Mutex
	last map[string]string // box → the checkpoint its VM builds on
}

func (s *storeBackend) parent(box string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last[box]
}

func (s *storeBackend) builds(box, ckpt string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last[box] = ckpt
}

// commit writes checkpoint id of box with do (the fake's checkpoint)
// between the store's Begin and Commit.
func (s *storeBackend) commit(box, id string, do func() error) error {
	p, err := s.root.Begin(id)
	if err != nil {
		return err
	}
	if err := do(); err != nil {
		p.Abort()
		return err
	}
	if err := p.Commit(&snapshot.Manifest{ID: id, Parent: s.parent(box), MemorySize: 4096, VCPUs: 1}); err != nil {
		p.Abort()
		return err
	}
	s.builds(box, id)
	return nil
}

func (s *storeBackend) Restore(ctx context.Context, box string, spec catalog.Spec, ckpt string, fork bool) (daemon.Instance, error) {
	if _, err := s.root.Load(ckpt); err != nil {
		return daemon.Instance{}, err
	}
	s.builds(box, ckpt)
	return s.Backend.Restore(ctx, box, spec, ckpt, fork)
}

func (s *storeBackend) Reboot(ctx context.Context, box string, spec catalog.Spec, ckpt string) (daemon.Instance, error) {
	if _, err := s.root.Load(ckpt); err != nil {
		return daemon.Instance{}, err
	}
	s.builds(box, "")
	return s.Backend.Reboot(ctx, box, spec, ckpt)
}

func (s *storeBackend) Checkpoint(ctx context.Context, box, id string) (info daemon.CheckpointInfo, err error) {
	err = s.commit(box, id, func() error {
		info, err = s.Backend.Checkpoint(ctx, box, id)
		return err
	})
	return info, err
}

func (s *storeBackend) Fork(ctx context.Context, parent, ckpt, child string, spec catalog.Spec) (info daemon.CheckpointInfo, inst daemon.Instance, err error) {
	err = s.commit(parent, ckpt, func() error {
		info, inst, err = s.Backend.Fork(ctx, parent, ckpt, child, spec)
		return err
	})
	if err == nil {
		s.builds(child, ckpt)
	}
	return info, inst, err
}

func (s *storeBackend) Compact(ctx context.Context, from, id, base string) (daemon.CheckpointInfo, error) {
	if _, err := s.root.CompactOnto(from, id, base); err != nil {
		return daemon.CheckpointInfo{}, err
	}
	return s.Backend.Compact(ctx, from, id, base)
}

func (s *storeBackend) RemoveCheckpoints(ctx context.Context, ids []string) error {
	if _, err := s.root.RemoveCheckpoints(ids); err != nil {
		return err
	}
	return s.Backend.RemoveCheckpoints(ctx, ids)
}

func (s *storeBackend) Sweep(ctx context.Context, keep []string) ([]string, error) {
	if _, err := s.root.Sweep(func(id string) bool { return slices.Contains(keep, id) }, func(string) bool { return true }); err != nil {
		return nil, err
	}
	return s.Backend.Sweep(ctx, keep)
}

// Boxes that sleep and wake side by side, each compacting its chain every
// few sleeps, never lose a checkpoint their chain holds: every wake finds
// its checkpoint in the store, and at the end every chain is whole there.
// In the KVM lab, a wake once found its compacted checkpoint gone: another
// box's collection cleaned the store while the compaction committed, and
// took the new checkpoint's directory for debris. That window is a few
// system calls wide and this test seldom hits it on a fast host
// (snapshot's TestCleanWhileCommitFinishes pins it); it runs the daemon's
// compactions, collections and wakes against the real store, side by
// side, for what else they might do to each other.
func TestCompactionBesideCollections(t *testing.T) {
	dir := t.TempDir()
	root, err := snapshot.OpenRoot(filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	be := &storeBackend{Backend: fakebackend.New(2), root: root, last: map[string]string{}}
	cat, err := catalog.Open(filepath.Join(dir, "catalog.db"), &catalog.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	m, err := daemon.New(daemon.Config{Catalog: cat, Backend: be, HostID: "host-a", Templates: true, CompactAfter: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := t.Context()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	const boxes, cycles = 8, 12
	errs := make(chan error, boxes)
	for range boxes {
		go func() {
			errs <- func() error {
				b, err := m.Create(ctx, api.CreateRequest{})
				if err != nil {
					return err
				}
				for i := range cycles {
					if _, err := m.Exec(ctx, b.ID, api.ExecRequest{Argv: []string{"write", "/f", fmt.Sprint(i)}}, nil, nil); err != nil {
						return fmt.Errorf("box %s cycle %d: exec: %w", b.ID, i, err)
					}
					s, err := m.Sleep(ctx, b.ID)
					if err != nil {
						return fmt.Errorf("box %s cycle %d: sleep: %w", b.ID, i, err)
					}
					if _, err := m.Resume(ctx, b.ID); err != nil {
						return fmt.Errorf("box %s cycle %d: wake from %s: %w", b.ID, i, s.LastCheckpointID, err)
					}
				}
				return nil
			}()
		}()
	}
	for range boxes {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	compactions := 0
	for _, c := range be.Calls() {
		if strings.HasPrefix(c, "Compact ") {
			compactions++
		}
	}
	if compactions < boxes*(cycles/3) {
		t.Errorf("%d compactions in %d sleeps with -compact-after 2", compactions, boxes*cycles)
	}
	if err := cat.View(func(tx *catalog.Tx) error {
		all, err := tx.Boxes()
		if err != nil {
			return err
		}
		for _, b := range all {
			chain, err := tx.Chain(b.ID)
			if err != nil {
				return err
			}
			for _, c := range chain {
				if _, err := root.Load(c.ID); err != nil {
					t.Errorf("box %s's chain holds %s, which the store lost: %v", b.ID, c.ID, err)
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
