package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// checkRootMount fails unless box id's / is /dev/vda, ext4.
func checkRootMount(h *host, id string) {
	h.t.Helper()
	mounts := h.run(id, "cat", "/proc/mounts")
	for _, line := range strings.Split(mounts, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "/dev/vda" && f[1] == "/" && f[2] == "ext4" {
			return
		}
	}
	h.t.Errorf("box %s: no /dev/vda on / as ext4 in /proc/mounts:\n%s", id, mounts)
}

// The default Debian image (image/build.sh, with its rootfs.json) is a
// box's root file system: its python3 runs, execs get its environment,
// and what a box writes there survives a host crash from its checkpoint.
func TestKVMRootImageDebian(t *testing.T) {
	img := kvmtest.Artifact(t, "SAILBOX_DEFAULT_IMAGE")
	h := newHost(t, "-image", img)
	ctx := ctxFor(t, 10*time.Minute)
	b, err := h.c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if out := h.run(b.ID, "python3", "-c", "import sqlite3, json, platform; print(platform.python_version())"); !strings.HasPrefix(out, "3.") {
		t.Errorf("python3 printed %q", out)
	}
	checkRootMount(h, b.ID)
	if out := h.run(b.ID, "pwd"); out != "/root\n" {
		t.Errorf("pwd %q, want the image's working directory /root", out)
	}
	h.run(b.ID, "sh", "-c", "echo -n kept > /root/f && sync")
	if _, err := h.c.Checkpoint(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	h.kill()
	if n := h.killVMMs(); n != 1 {
		t.Errorf("killed %d VMMs, want 1", n)
	}
	h.start()
	if out := h.run(b.ID, "cat", "/root/f"); out != "kept" {
		t.Errorf("after the crash /root/f holds %q, want kept", out)
	}
	checkRootMount(h, b.ID)
	h.run(b.ID, "python3", "-c", "import sqlite3, json")
}

// An OCI image layout in an image directory: a box made from it runs with
// the image's Env, WorkingDir and User, and two boxes share its one base.
func TestKVMRootImageOCI(t *testing.T) {
	kvmtest.Require(t)
	imgs := t.TempDir()
	writeBusyboxLayout(t, filepath.Join(imgs, "bb"))
	h := newHost(t, "-image-dir", imgs)
	ctx := ctxFor(t, 10*time.Minute)
	var ids []string
	for range 2 {
		b, err := h.c.Create(ctx, api.CreateRequest{Image: "bb"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, b.ID)
	}
	for _, id := range ids {
		checkRootMount(h, id)
		if out := h.run(id, "env"); !strings.Contains(out, "FOO=bar\n") {
			t.Errorf("env in %s: %q lacks FOO=bar", id, out)
		}
		if out := h.run(id, "pwd"); out != "/work\n" {
			t.Errorf("pwd in %s: %q, want /work", id, out)
		}
		if out := h.run(id, "id", "-u"); out != "1000\n" {
			t.Errorf("id -u in %s: %q, want 1000", id, out)
		}
		if out := h.run(id, "cat", "/etc/hello"); out != "from the image\n" {
			t.Errorf("/etc/hello in %s: %q", id, out)
		}
	}
	// A request's own user and directory win over the image's.
	var out bytes.Buffer
	res, err := h.c.Exec(ctx, ids[0], api.ExecRequest{Argv: []string{"sh", "-c", "id -u; pwd; echo $FOO"}, User: "0", Dir: "/", Env: []string{"FOO=baz"}}, &out, io.Discard)
	if err != nil || res.ExitCode != 0 || out.String() != "0\n/\nbaz\n" {
		t.Errorf("exec with user, dir and env: %q, %+v, %v", out.String(), res, err)
	}
	bases, _ := filepath.Glob(filepath.Join(h.stateDir, "images", "*.ext4"))
	if len(bases) != 1 {
		t.Errorf("image store holds %d bases, want the one both boxes share: %v", len(bases), bases)
	}
}

// writeBusyboxLayout writes an OCI image layout at dir: the host's static
// busybox with a few links, a user sailor (1000), and a config with Env
// FOO=bar, WorkingDir /work and User sailor.
func writeBusyboxLayout(t *testing.T, dir string) {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("the host's static busybox (busybox-static): %v", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) {
		h.Size = int64(len(body))
		h.ModTime = time.Unix(1767225600, 0)
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"bin", "etc", "dev", "proc", "sys", "run", "root"} {
		add(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	}
	add(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, nil)
	add(&tar.Header{Name: "work/", Typeflag: tar.TypeDir, Mode: 0o755, Uid: 1000, Gid: 1000}, nil)
	add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bb)
	for _, l := range []string{"sh", "cat", "env", "pwd", "id", "echo"} {
		add(&tar.Header{Name: "bin/" + l, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil)
	}
	add(&tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("root:x:0:0:root:/root:/bin/sh\nsailor:x:1000:1000:sailor:/work:/bin/sh\n"))
	add(&tar.Header{Name: "etc/group", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("root:x:0:\nsailor:x:1000:\n"))
	add(&tar.Header{Name: "etc/hello", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("from the image\n"))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{Env: []string{"FOO=bar"}, WorkingDir: "/work", User: "sailor", Cmd: []string{"/bin/sh"}}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
}
