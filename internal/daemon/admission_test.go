package daemon_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
)

// A create, fork or wake past the host's limits is refused with
// ErrCapacity before anything starts; a box going down makes room.
func TestAdmission(t *testing.T) {
	free := int64(1000)
	cat, err := catalog.Open(filepath.Join(t.TempDir(), "catalog.db"), &catalog.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	fake := fakebackend.New(2)
	m, err := daemon.New(daemon.Config{Catalog: cat, Backend: fake, HostID: "h", Limits: daemon.Limits{
		MaxRunning: 2, MaxMemoryMiB: 640, MinFreeDiskMiB: 100,
		FreeDiskMiB: func() (int64, error) { return free, nil },
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := t.Context()
	refused := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, daemon.ErrCapacity) {
			t.Errorf("%s: %v, want ErrCapacity", what, err)
		}
	}

	a, err := m.Create(ctx, api.CreateRequest{MemoryMiB: 256})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Create(ctx, api.CreateRequest{MemoryMiB: 512})
	refused("create past the memory limit", err)
	b, err := m.Create(ctx, api.CreateRequest{MemoryMiB: 256})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Create(ctx, api.CreateRequest{MemoryMiB: 64})
	refused("create past the box limit", err)
	_, err = m.Fork(ctx, a.ID, api.ForkRequest{})
	refused("fork past the box limit", err)
	if _, err := m.Sleep(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	free = 50
	_, err = m.Fork(ctx, a.ID, api.ForkRequest{})
	refused("fork with the disk nearly full", err)
	_, err = m.Resume(ctx, b.ID)
	refused("wake with the disk nearly full", err)
	free = 1000
	f, err := m.Fork(ctx, a.ID, api.ForkRequest{})
	if err != nil {
		t.Fatalf("fork with room: %v", err)
	}
	_, err = m.Resume(ctx, b.ID)
	refused("wake past the box limit", err)
	if got, _ := m.Get(ctx, b.ID); got.State != lifecycle.Sleeping {
		t.Errorf("refused wake left the box %s", got.State)
	}
	if fake.RunningCount() != 2 {
		t.Errorf("%d VMs run, the limit is 2", fake.RunningCount())
	}
	if _, err := m.Terminate(ctx, f.Box.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Resume(ctx, b.ID); err != nil {
		t.Errorf("wake after a terminate made room: %v", err)
	}
	boxes, _ := m.List(ctx, daemon.ListFilter{})
	if len(boxes) != 2 {
		t.Errorf("%d boxes after the refusals, want 2", len(boxes))
	}
}
