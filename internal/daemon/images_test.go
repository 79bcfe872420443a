package daemon_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
	"github.com/sailbox-dev/sailbox/internal/images"
)

// A client names images inside the image directories only: no other host
// file, and nothing of the daemon's state, becomes a box's disk, and the
// refusal does not tell whether the file exists.
func TestCreateImagesOnlyFromImageDirs(t *testing.T) {
	dir := t.TempDir()
	imgs, state := filepath.Join(dir, "images"), filepath.Join(dir, "state")
	os.MkdirAll(imgs, 0o755)
	os.MkdirAll(state, 0o700)
	os.WriteFile(filepath.Join(imgs, "debian.ext4"), []byte("img"), 0o644)
	os.WriteFile(filepath.Join(state, "catalog.db"), nil, 0o600)
	os.Symlink(filepath.Join(state, "catalog.db"), filepath.Join(imgs, "sneaky"))
	dirs, err := images.NewDirs([]string{imgs}, state)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Open(filepath.Join(dir, "catalog.db"), &catalog.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	fake := fakebackend.New(2)
	m, err := daemon.New(daemon.Config{Catalog: cat, Backend: fake, HostID: "h", Images: dirs, Defaults: catalog.Spec{Image: "/operator/default.raw"}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := t.Context()

	b, err := m.Create(ctx, api.CreateRequest{Image: "debian.ext4"})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := fake.ReadFile(ctx, b.ID, "/etc/image", &out); err != nil || out.String() != filepath.Join(imgs, "debian.ext4") {
		t.Errorf("box's image %q, %v", out.String(), err)
	}
	for _, name := range []string{"/etc/shadow", filepath.Join(state, "catalog.db"), "../state/catalog.db", "sneaky", "missing.ext4", "/no/such/file"} {
		_, err := m.Create(ctx, api.CreateRequest{Image: name})
		if !errors.Is(err, daemon.ErrInvalidArgument) || !errors.Is(err, images.ErrNotImage) {
			t.Errorf("create with image %q: %v", name, err)
		}
	}
	if n := fake.RunningCount(); n != 1 {
		t.Errorf("%d VMs, want the one box made from an image", n)
	}
	// Without a request image, the operator's default is used as is.
	b, err = m.Create(ctx, api.CreateRequest{})
	out.Reset()
	if _, rerr := fake.ReadFile(ctx, b.ID, "/etc/image", &out); err != nil || rerr != nil || out.String() != "/operator/default.raw" {
		t.Errorf("default image %q, %v %v", out.String(), err, rerr)
	}
}
