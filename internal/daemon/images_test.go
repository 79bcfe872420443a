package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
	"github.com/sailbox-dev/sailbox/internal/images"
	"github.com/sailbox-dev/sailbox/internal/imagestore"
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

// fakeStore is an image store that records what it is asked to import.
type fakeStore struct {
	paths, remotes []string
	err            error
}

var fakeImage = imagestore.Image{
	Digest: "sha256:aa", Path: "/store/sha256-aa.ext4",
	Config: imagestore.Config{Env: []string{"PATH=/img/bin", "FOO=bar"}, WorkingDir: "/work", User: "sailor", Entrypoint: []string{"echo", "entry"}, Cmd: []string{"cmd"}},
}

func (s *fakeStore) ImportPath(ctx context.Context, path, selector string) (imagestore.Image, error) {
	s.paths = append(s.paths, path+selector)
	return fakeImage, s.err
}

func (s *fakeStore) ImportRemote(ctx context.Context, ref string) (imagestore.Image, error) {
	s.remotes = append(s.remotes, ref)
	return fakeImage, s.err
}

// Images become a box's root file system: OCI layouts and tarballs in the
// image directories are imported, a raw disk with a record beside it is a
// root as it is, registry references are imported from the registry; the
// image's config reaches every exec, under the request's own; and no
// client REF reaches a host file outside the image directories.
func TestCreateRootImages(t *testing.T) {
	dir := t.TempDir()
	imgs, state := filepath.Join(dir, "images"), filepath.Join(dir, "state")
	os.MkdirAll(filepath.Join(imgs, "lay"), 0o755)
	os.MkdirAll(filepath.Join(imgs, "plain"), 0o755)
	os.MkdirAll(state, 0o700)
	os.WriteFile(filepath.Join(imgs, "lay", "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	os.WriteFile(filepath.Join(imgs, "saved.tar"), []byte("tar"), 0o644)
	os.WriteFile(filepath.Join(imgs, "data.ext4"), []byte("img"), 0o644)
	os.WriteFile(filepath.Join(imgs, "rootfs.ext4"), []byte("img"), 0o644)
	os.WriteFile(filepath.Join(imgs, "rootfs.json"), []byte(`{"digest":"sha256:bb","config":{"env":["PATH=/deb/bin"],"working_dir":"/root"}}`), 0o644)
	os.WriteFile(filepath.Join(state, "catalog.db"), nil, 0o600)
	dirs, err := images.NewDirs([]string{imgs}, state)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Open(filepath.Join(state, "catalog.db"), &catalog.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	fake, store := fakebackend.New(2), &fakeStore{}
	m, err := daemon.New(daemon.Config{Catalog: cat, Backend: fake, HostID: "h", Images: dirs, Store: store,
		Defaults: catalog.Spec{MemoryMiB: 128, VCPUs: 1}, Limits: daemon.Limits{MaxRunning: 100}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := t.Context()
	exec := func(id string, req api.ExecRequest) string {
		t.Helper()
		var out bytes.Buffer
		if _, err := m.Exec(ctx, id, req, &out, io.Discard); err != nil {
			t.Fatalf("exec %v in %s: %v", req.Argv, id, err)
		}
		return out.String()
	}
	create := func(ref string) string {
		t.Helper()
		b, err := m.Create(ctx, api.CreateRequest{Image: ref})
		if err != nil {
			t.Fatalf("create %q: %v", ref, err)
		}
		return b.ID
	}
	disk := func(id string) string {
		var out bytes.Buffer
		fake.ReadFile(ctx, id, "/etc/image", &out)
		return out.String()
	}

	for _, ref := range []string{"lay", "lay:v1", filepath.Join(imgs, "saved.tar"), "saved.tar:repo:tag", "docker.io/library/debian:12"} {
		id := create(ref)
		if d := disk(id); d != fakeImage.Path {
			t.Errorf("%q: disk %q, want the store's base", ref, d)
		}
		if got := exec(id, api.ExecRequest{Argv: []string{"env"}, Env: []string{"FOO=mine", "X=1"}}); got != "PATH=/img/bin\nFOO=mine\nX=1\n" {
			t.Errorf("%q: env %q", ref, got)
		}
		if got := exec(id, api.ExecRequest{Argv: []string{"pwd"}}) + exec(id, api.ExecRequest{Argv: []string{"whoami"}}); got != "/work\nsailor\n" {
			t.Errorf("%q: dir and user %q", ref, got)
		}
		if got := exec(id, api.ExecRequest{Argv: []string{"pwd"}, Dir: "/tmp"}) + exec(id, api.ExecRequest{Argv: []string{"whoami"}, User: "0"}); got != "/tmp\n0\n" {
			t.Errorf("%q: the request's dir and user %q", ref, got)
		}
		// No argv: the image's Entrypoint and Cmd.
		if got := exec(id, api.ExecRequest{}); got != "entry cmd\n" {
			t.Errorf("%q: exec without argv printed %q, want the image's entrypoint and cmd", ref, got)
		}
	}
	wantPaths := []string{filepath.Join(imgs, "lay"), filepath.Join(imgs, "lay") + ":v1", filepath.Join(imgs, "saved.tar"), filepath.Join(imgs, "saved.tar") + ":repo:tag"}
	if !slices.Equal(store.paths, wantPaths) || !slices.Equal(store.remotes, []string{"docker.io/library/debian:12"}) {
		t.Errorf("imports: paths %q, remotes %q", store.paths, store.remotes)
	}

	// A raw disk with its record is a root as it is; a fork keeps it.
	id := create("rootfs.ext4")
	if d := disk(id); d != filepath.Join(imgs, "rootfs.ext4") {
		t.Errorf("rootfs.ext4: disk %q", d)
	}
	if got := exec(id, api.ExecRequest{Argv: []string{"env"}}) + exec(id, api.ExecRequest{Argv: []string{"pwd"}}); got != "PATH=/deb/bin\n/root\n" {
		t.Errorf("rootfs.ext4: env and dir %q", got)
	}
	f, err := m.Fork(ctx, id, api.ForkRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := exec(f.Box.ID, api.ExecRequest{Argv: []string{"pwd"}}); got != "/root\n" {
		t.Errorf("fork of a root image box: dir %q", got)
	}
	// A data disk: execs as before; without argv, nothing to run.
	id = create("data.ext4")
	if got := exec(id, api.ExecRequest{Argv: []string{"env"}}) + exec(id, api.ExecRequest{Argv: []string{"pwd"}}); got != "\n" {
		t.Errorf("data disk: env and dir %q", got)
	}
	if _, err := m.Exec(ctx, id, api.ExecRequest{}, io.Discard, io.Discard); !errors.Is(err, daemon.ErrInvalidArgument) {
		t.Errorf("exec without argv in a box with no image config: %v", err)
	}

	// Host paths, existing or not, and directories that are not layouts:
	// one answer, and nothing reaches the store.
	store.paths, store.remotes = nil, nil
	for _, ref := range []string{"/etc/passwd", "/etc/no-such-file", filepath.Join(state, "catalog.db"), filepath.Join(state, "nothing.db"),
		"../state/catalog.db", "../state/nothing.db", "./catalog.db", filepath.Join(imgs, "plain"), "data.ext4:tag", "/", "."} {
		_, err := m.Create(ctx, api.CreateRequest{Image: ref})
		if !errors.Is(err, daemon.ErrInvalidArgument) || !errors.Is(err, images.ErrNotImage) {
			t.Errorf("create with image %q: %v", ref, err)
		}
	}
	if len(store.paths)+len(store.remotes) != 0 {
		t.Errorf("refused REFs reached the store: %q %q", store.paths, store.remotes)
	}

	// Import failures: the image's fault is the request's, a full disk
	// the host's capacity.
	store.err = fmt.Errorf("import: %w", imagestore.ErrBadImage)
	if _, err := m.Create(ctx, api.CreateRequest{Image: "lay"}); !errors.Is(err, daemon.ErrInvalidArgument) || !errors.Is(err, imagestore.ErrBadImage) {
		t.Errorf("bad image: %v", err)
	}
	store.err = fmt.Errorf("import: %w", imagestore.ErrNoSpace)
	if _, err := m.Create(ctx, api.CreateRequest{Image: "example.com/x:1"}); !errors.Is(err, daemon.ErrCapacity) {
		t.Errorf("full disk: %v", err)
	}
}
