package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/internal/imagestore/imagetest"
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

// imagetest's Busybox image (several layers, whiteouts, an opaque
// directory, symlinks, files of uids other than root's, an Env and a
// WorkingDir) served the three ways: an OCI layout and a docker-save
// tarball in an image directory, and a registry on loopback. A box from
// each holds exactly the flattened image and runs with its config, and
// all three share one base: the store keys a base by the image's config
// digest, which is the same however the image travelled.
func TestKVMRootImageOCI(t *testing.T) {
	kvmtest.Require(t)
	img := imagetest.Busybox(t)
	imgs := t.TempDir()
	imagetest.WriteLayout(t, filepath.Join(imgs, "bb"), map[string]v1.Image{imagetest.Tag: img})
	imagetest.WriteTarball(t, filepath.Join(imgs, "bb.tar"), img)
	reg := imagetest.Push(t, imagetest.ServeRegistry(t, nil), "sailbox/busybox", img)
	h := newHost(t, "-image-dir", imgs)
	ctx := ctxFor(t, 10*time.Minute)
	sources := []struct{ kind, ref string }{
		{"oci-layout", "bb"},
		{"docker-archive", "bb.tar"},
		{"registry", reg},
	}
	var ids []string
	for _, s := range sources {
		b, err := h.c.Create(ctx, api.CreateRequest{Image: s.ref})
		if err != nil {
			t.Fatalf("create from the %s %s: %v", s.kind, s.ref, err)
		}
		t.Logf("box %s from the %s %s", b.ID, s.kind, s.ref)
		ids = append(ids, b.ID)
	}
	tree := imagetest.BusyboxTree(t)
	for i, id := range ids {
		kind := sources[i].kind
		checkRootMount(h, id)
		checkImageTree(t, h, id, tree)
		env := h.run(id, "env")
		for _, kv := range imagetest.BusyboxConfig.Env {
			if !strings.Contains(env, kv+"\n") {
				t.Errorf("%s box %s: env lacks the image's %s:\n%s", kind, id, kv, env)
			}
		}
		if out := h.run(id, "pwd"); out != "/work\n" {
			t.Errorf("%s box %s: pwd %q, want the image's WorkingDir /work", kind, id, out)
		}
		if out := h.run(id, "id"); !strings.HasPrefix(out, "uid=1000(sailor) gid=1000(sailor)") {
			t.Errorf("%s box %s: id %q, want the image's User sailor (1000)", kind, id, out)
		}
		if out := h.run(id, "cat", "/etc/motd"); out != "from the image\n" {
			t.Errorf("%s box %s: /etc/motd (a link to the middle layer's hello) holds %q", kind, id, out)
		}
		if out := h.run(id, "cat", "/home/sailor/notes.txt"); out != "sailor's notes\n" {
			t.Errorf("%s box %s: sailor's notes (0640, 1000:1000) read by sailor: %q", kind, id, out)
		}
		if out, code, err := h.exec(id, "ls", "/root"); code == 0 || err != nil {
			t.Errorf("%s box %s: sailor listed /root (0700, root's): %q, exit %d, %v", kind, id, out, code, err)
		}
	}
	// A request's own user and directory win over the image's.
	var out bytes.Buffer
	res, err := h.c.Exec(ctx, ids[0], api.ExecRequest{Argv: []string{"sh", "-c", "id -u; pwd; echo $FOO"}, User: "0", Dir: "/", Env: []string{"FOO=baz"}}, &out, io.Discard)
	if err != nil || res.ExitCode != 0 || out.String() != "0\n/\nbaz\n" {
		t.Errorf("exec with user, dir and env: %q, %+v, %v", out.String(), res, err)
	}
	checkSharedBase(t, h, ids)
}

// treeScript prints every path of the box's root file system (a
// non-recursive bind mount of / shows the disk alone, with the mount
// points of /proc, /dev, /tmp and the like as the image made them):
// "PATH MODE UID GID [TARGET|SHA256]", st_mode in hex, a symlink's target
// or a regular file's digest. Busybox by its full path: the image's PATH
// is the image's business.
const treeScript = `set -e
bb=/bin/busybox
$bb mkdir -p /tmp/img
$bb mount -o bind / /tmp/img
cd /tmp/img
$bb find . -xdev | $bb sort | while read -r p; do
	extra=
	if [ -L "$p" ]; then
		extra=$($bb readlink "$p")
	elif [ -f "$p" ]; then
		extra=$($bb sha256sum "$p")
		extra=${extra%% *}
	fi
	echo "$p $($bb stat -c '%f %u %g' "$p") $extra"
done
cd /
$bb umount /tmp/img
`

// boxAdded is what a box's root holds beyond its image: mke2fs's
// lost+found, the machine ID the agent writes and the resolver file it
// writes for the box's network when the image has none (their content
// the box's own).
var boxAdded = map[string]imagetest.Node{
	".":               {Mode: imagetest.TypeDir | 0o755},
	"lost+found":      {Mode: imagetest.TypeDir | 0o700},
	"etc/machine-id":  {Mode: imagetest.TypeReg | 0o444},
	"etc/resolv.conf": {Mode: imagetest.TypeReg | 0o644},
}

// checkImageTree fails unless box id's root file system is exactly tree
// (and boxAdded): the same paths, each of the same type, mode, owner,
// and content or link target.
func checkImageTree(t *testing.T, h *host, id string, tree map[string]imagetest.Node) {
	t.Helper()
	t.Logf("box %s: comparing its root with the image's %d paths", id, len(tree))
	var stdout, stderr bytes.Buffer
	res, err := h.c.Exec(ctxFor(t, 2*time.Minute), id, api.ExecRequest{Argv: []string{"/bin/sh", "-c", treeScript}, User: "0", Dir: "/"}, &stdout, &stderr)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("listing the tree of %s: %+v, %v; stderr %q", id, res, err, stderr.String())
	}
	compareTree(t, stdout.String(), tree)
}

// compareTree compares treeScript's listing with tree and boxAdded.
func compareTree(t *testing.T, listing string, tree map[string]imagetest.Node) {
	t.Helper()
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSuffix(listing, "\n"), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			t.Errorf("tree line %q", line)
			continue
		}
		p := strings.TrimPrefix(f[0], "./")
		mode, err1 := strconv.ParseUint(f[1], 16, 32)
		uid, err2 := strconv.Atoi(f[2])
		gid, err3 := strconv.Atoi(f[3])
		if err := errors.Join(err1, err2, err3); err != nil {
			t.Errorf("tree line %q: %v", line, err)
			continue
		}
		extra := strings.Join(f[4:], " ")
		seen[p] = true
		w, fromImage := tree[p]
		if !fromImage {
			var ok bool
			if w, ok = boxAdded[p]; !ok {
				t.Errorf("%s: in the box, not in the image (%s)", p, line)
				continue
			}
		}
		if uint32(mode) != w.Mode || uid != w.UID || gid != w.GID {
			t.Errorf("%s: mode %o uid %d gid %d, want %o %d %d", p, mode, uid, gid, w.Mode, w.UID, w.GID)
		}
		switch w.Mode & imagetest.TypeMask {
		case imagetest.TypeSymlink:
			if extra != w.Target {
				t.Errorf("%s: links to %q, want %q", p, extra, w.Target)
			}
		case imagetest.TypeReg:
			if sum := fmt.Sprintf("%x", sha256.Sum256([]byte(w.Body))); fromImage && extra != sum {
				t.Errorf("%s: content sha256 %s, want %s (%.40q)", p, extra, sum, w.Body)
			}
		}
	}
	for p := range tree {
		if !seen[p] {
			t.Errorf("%s: in the image, not in the box", p)
		}
	}
}

// checkSharedBase fails unless the image store holds one base (and its
// record) and the VMM of every box in ids has that file open.
func checkSharedBase(t *testing.T, h *host, ids []string) {
	t.Helper()
	dir := filepath.Join(h.stateDir, "images")
	bases, _ := filepath.Glob(filepath.Join(dir, "*.ext4"))
	records, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	if len(bases) != 1 || len(records) != 1 {
		t.Fatalf("image store holds %v and %v, want one base and its record", bases, records)
	}
	for _, id := range ids {
		pids := h.vmmPIDsOf(id)
		if len(pids) != 1 {
			t.Errorf("box %s: VMMs %v, want one", id, pids)
			continue
		}
		fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pids[0]))
		open := false
		for _, fd := range fds {
			if target, err := os.Readlink(fd); err == nil && target == bases[0] {
				open = true
			}
		}
		if !open {
			t.Errorf("box %s: its VMM (pid %d) does not have the base %s open", id, pids[0], bases[0])
		}
	}
	t.Logf("boxes %v: one base, %s", ids, filepath.Base(bases[0]))
}

// Each bad image is refused at create with a 4xx (a full disk: 507) whose
// message names the problem, before any VM starts, and leaves nothing in
// the image store. The store is on a 96 MiB tmpfs, so that a 72 MiB
// layer finds the disk full (the store keeps 64 MiB free): it is refused
// by its entry's declared size, before a byte of it is written.
func TestKVMRootImageRefused(t *testing.T) {
	kvmtest.Require(t)
	imgs := t.TempDir()
	bin := imagetest.Dir("bin", 0o755, 0, 0)
	sh := imagetest.File("bin/sh", "#!/bin/busybox sh\n", 0o755, 0, 0)
	layout := func(name string, layers ...v1.Layer) string {
		imagetest.WriteLayout(t, filepath.Join(imgs, name), map[string]v1.Image{imagetest.Tag: imagetest.Image(t, v1.Config{}, layers...)})
		return name
	}
	good := imagetest.Image(t, v1.Config{}, imagetest.Layer(t, bin, sh))
	imagetest.WriteLayout(t, filepath.Join(imgs, "good"), map[string]v1.Image{imagetest.Tag: good})
	reg := imagetest.ServeRegistry(t, nil)
	imagetest.Push(t, reg, "sailbox/good", good)

	// A layer blob with bytes flipped in its middle.
	data := imagetest.Layer(t, imagetest.File("data", strings.Repeat("sailbox ", 2000), 0o644, 0, 0))
	corrupt := layout("corrupt", imagetest.Layer(t, bin, sh), data)
	dd, err := data.Digest()
	if err != nil {
		t.Fatal(err)
	}
	diffID, err := data.DiffID()
	if err != nil {
		t.Fatal(err)
	}
	blob := filepath.Join(imgs, corrupt, "blobs", dd.Algorithm, dd.Hex)
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(b) / 3; i < len(b)/3+8; i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}

	h := newHost(t, "-image-dir", imgs)
	store := filepath.Join(h.stateDir, "images")
	h.stop()
	full := true
	if err := unix.Mount("tmpfs", store, "tmpfs", 0, "size=96m,mode=0700"); err != nil {
		full = false
		t.Logf("no tmpfs for the image store (%v): the full disk case is left to imagestore's TestRefuseFullDisk", err)
	} else {
		t.Cleanup(func() {
			if h.cmd != nil {
				h.kill()
			}
			unix.Unmount(store, unix.MNT_DETACH)
		})
	}
	h.start()

	ctx := ctxFor(t, 5*time.Minute)
	for _, c := range []struct {
		name, ref string
		status    int
		mention   []string
	}{
		{"unknown repository", reg + "/sailbox/nosuch:v1", 400, []string{reg + "/sailbox/nosuch:v1", "NAME_UNKNOWN"}},
		{"unknown tag", reg + "/sailbox/good:v9", 400, []string{reg + "/sailbox/good:v9", "MANIFEST_UNKNOWN"}},
		{"unknown tag in a layout", "good:v9", 400, []string{"holds no image :v9"}},
		{"corrupt layer", corrupt, 400, []string{"unusable image", "layer 2 of 2 (" + diffID.String() + ")"}},
		{"../ entry", layout("dotdot", imagetest.Layer(t, bin, sh, imagetest.File("../evil", "x", 0o644, 0, 0))), 400,
			[]string{"entry escapes the image root", `"../evil"`}},
		{"entry through an absolute symlink", layout("abslink", imagetest.Layer(t, bin, sh, imagetest.Symlink("etc", "/etc"), imagetest.File("etc/passwd", "pwned\n", 0o644, 0, 0))), 400,
			[]string{"entry escapes the image root", `"etc/passwd"`}},
		{"no shell", layout("noshell", imagetest.Layer(t, imagetest.Dir("etc", 0o755, 0, 0), imagetest.File("etc/hello", "hi\n", 0o644, 0, 0))), 400,
			[]string{"image has no shell"}},
		{"neither a path nor a reference", "::bad::", 400, []string{`"::bad::"`, "not a regular file inside the image directories"}},
		{"huge layer on a full disk", layout("huge", imagetest.Layer(t, bin, sh), imagetest.ZeroLayer(t, "big", 72<<20)), 507,
			[]string{"no space for the image"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.status == 507 && !full {
				t.Skip("no tmpfs to fill")
			}
			_, err := h.c.Create(ctx, api.CreateRequest{Image: c.ref})
			var e *client.Error
			switch {
			case !errors.As(err, &e):
				t.Fatalf("create from %s: %v, want a refusal", c.ref, err)
			case e.Status != c.status:
				t.Errorf("create from %s: %v, want status %d", c.ref, err, c.status)
			}
			for _, m := range c.mention {
				if !strings.Contains(e.Message, m) {
					t.Errorf("refusal %q does not name %q", e.Message, m)
				}
			}
			t.Log(e.Message)
			checkStoreEmpty(t, store)
		})
	}
	if bs, err := h.c.List(ctx, client.ListOptions{}); err != nil || len(bs) != 0 {
		t.Errorf("boxes after the refusals: %+v, %v; want none", bs, err)
	}
	if pids := h.vmmPIDs(); len(pids) != 0 {
		t.Errorf("VMMs after the refusals: %v, want none", pids)
	}
}

// checkStoreEmpty fails unless the image store at dir holds nothing but
// its empty work directory: no base, record or half-made file.
func checkStoreEmpty(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			t.Error(err)
			return nil
		}
		if rel, _ := filepath.Rel(dir, p); rel != "." && rel != ".tmp" {
			t.Errorf("left in the image store: %s", rel)
		}
		return nil
	})
}
