package daemon_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
	"github.com/sailbox-dev/sailbox/internal/images"
)

// A create's disk size is checked against its image and recorded, rounded
// up to whole blocks, in the box's spec: forks inherit it, and it
// survives sleep, wake and a restart of the daemon. A size for no image,
// for a data disk, below the image's or above the maximum is refused.
func TestCreateDiskSize(t *testing.T) {
	dir := t.TempDir()
	imgs, state := filepath.Join(dir, "images"), filepath.Join(dir, "state")
	os.MkdirAll(imgs, 0o755)
	os.MkdirAll(state, 0o700)
	const imageSize = 300 << 20
	for _, name := range []string{"rootfs.ext4", "data.ext4"} {
		if err := os.WriteFile(filepath.Join(imgs, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(imgs, name), imageSize); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(imgs, "rootfs.json"), []byte(`{"digest":"sha256:bb","config":{"working_dir":"/root"}}`), 0o644)
	dirs, err := images.NewDirs([]string{imgs}, state)
	if err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(state, "catalog.db")
	cat, err := catalog.Open(dbPath, &catalog.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cat.Close() }()
	fake := fakebackend.New(2)
	cfg := daemon.Config{Catalog: cat, Backend: fake, HostID: "h", Images: dirs,
		Defaults: catalog.Spec{MemoryMiB: 128, VCPUs: 1}, Limits: daemon.Limits{MaxRunning: 100}}
	m, err := daemon.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { m.Close() }()
	ctx := t.Context()
	spec := func(id string) catalog.Spec {
		t.Helper()
		var b catalog.Box
		if err := cat.View(func(tx *catalog.Tx) (err error) { b, err = tx.Box(id); return err }); err != nil {
			t.Fatal(err)
		}
		return b.Spec
	}

	b, err := m.Create(ctx, api.CreateRequest{Image: "rootfs.ext4", DiskSizeBytes: 2 << 30})
	if err != nil {
		t.Fatal(err)
	}
	if b.DiskSizeBytes != 2<<30 || spec(b.ID).DiskSizeBytes != 2<<30 {
		t.Errorf("box %+v, spec %+v: want a 2 GiB disk", b, spec(b.ID))
	}
	// Not a whole number of blocks: rounded up.
	odd, err := m.Create(ctx, api.CreateRequest{Image: "rootfs.ext4", DiskSizeBytes: 1<<30 + 1})
	if err != nil || odd.DiskSizeBytes != 1<<30+4096 {
		t.Errorf("create with 1 GiB + 1 byte: %+v, %v; want 1 GiB + 4096", odd, err)
	}
	// Exactly the image's size, or none: the image's size.
	for _, size := range []int64{imageSize, 0} {
		if got, err := m.Create(ctx, api.CreateRequest{Image: "rootfs.ext4", DiskSizeBytes: size}); err != nil || got.DiskSizeBytes != size {
			t.Errorf("create with %d bytes: %+v, %v", size, got, err)
		}
	}

	// A fork inherits the size; sleep and wake keep it.
	f, err := m.Fork(ctx, b.ID, api.ForkRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if f.Box.DiskSizeBytes != 2<<30 || spec(f.Box.ID).DiskSizeBytes != 2<<30 {
		t.Errorf("fork %+v: want its parent's 2 GiB disk", f.Box)
	}
	if _, err := m.Sleep(ctx, f.Box.ID); err != nil {
		t.Fatal(err)
	}
	if w, err := m.Resume(ctx, f.Box.ID); err != nil || w.DiskSizeBytes != 2<<30 {
		t.Errorf("fork after sleep and wake: %+v, %v", w, err)
	}
	// So does a restart of the daemon.
	m.Close()
	if m, err = daemon.New(cfg); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{b.ID, f.Box.ID} {
		if got, err := m.Get(ctx, id); err != nil || got.DiskSizeBytes != 2<<30 {
			t.Errorf("%s after a restart: %+v, %v", id, got, err)
		}
	}

	running := fake.RunningCount()
	for _, c := range []struct {
		req  api.CreateRequest
		want string
	}{
		{api.CreateRequest{Image: "rootfs.ext4", DiskSizeBytes: 100 << 20}, "smaller than the image's 314572800 bytes (300 MiB)"},
		{api.CreateRequest{Image: "rootfs.ext4", DiskSizeBytes: imageSize - 4096}, "smaller than the image's"},
		{api.CreateRequest{Image: "rootfs.ext4", DiskSizeBytes: daemon.MaxDiskSizeBytes + 1}, "above the maximum"},
		{api.CreateRequest{Image: "rootfs.ext4", DiskSizeBytes: -1}, "negative"},
		{api.CreateRequest{Image: "data.ext4", DiskSizeBytes: 2 << 30}, "root file system"},
		{api.CreateRequest{DiskSizeBytes: 2 << 30}, "needs an image"},
	} {
		_, err := m.Create(ctx, c.req)
		if !errors.Is(err, daemon.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("create %+v: %v; want an invalid argument saying %q", c.req, err, c.want)
		}
	}
	if n := fake.RunningCount(); n != running {
		t.Errorf("refused creates left %d VMs running, want %d", n, running)
	}
}
