package imagestore

import (
	"context"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Reading a base without mounting it: debugfs (e2fsprogs) lists every
// directory with `ls -p` (inode, st_mode, uid, gid: what rdump would
// lose, as its chown clears setuid bits), `rdump` copies the tree out
// for contents, link targets and times, `ea_list` shows xattrs.

type got struct {
	want
	ino   uint64
	mtime time.Time
}

func debugfs(t testing.TB, image, request string) string {
	t.Helper()
	bin, err := toolPath("debugfs")
	if err != nil {
		t.Skip(err)
	}
	out, err := exec.Command(bin, "-R", request, image).Output()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v", request, err)
	}
	return string(out)
}

// readBase returns every path of the base but lost+found (mke2fs's).
func readBase(t testing.TB, image string) map[string]got {
	t.Helper()
	dump := t.TempDir()
	debugfs(t, image, "rdump / "+dump)
	tree := map[string]got{}
	dirs := []string{""}
	for len(dirs) > 0 {
		dir := dirs[0]
		dirs = dirs[1:]
		for _, line := range strings.Split(debugfs(t, image, "ls -p /"+dir), "\n") {
			// /inode/mode/uid/gid/name/size/
			f := strings.Split(line, "/")
			if len(f) < 7 || f[5] == "." || f[5] == ".." || (dir == "" && f[5] == "lost+found") {
				continue
			}
			p := path.Join(dir, f[5])
			ino, _ := strconv.ParseUint(f[1], 10, 64)
			mode, _ := strconv.ParseUint(f[2], 8, 32)
			uid, _ := strconv.Atoi(f[3])
			gid, _ := strconv.Atoi(f[4])
			g := got{want: want{mode: uint32(mode), uid: uid, gid: gid}, ino: ino}
			local := filepath.Join(dump, p)
			switch mode & 0o170000 {
			case sIFDIR:
				dirs = append(dirs, p)
			case sIFREG:
				body, err := os.ReadFile(local)
				if err != nil {
					t.Fatal(err)
				}
				g.body = string(body)
				g.xattrs = eaList(t, image, p)
			case sIFLNK:
				target, err := os.Readlink(local)
				if err != nil {
					t.Fatal(err)
				}
				g.target = target
			}
			if st, err := os.Lstat(local); err == nil {
				g.mtime = st.ModTime()
			}
			tree[p] = g
		}
	}
	return tree
}

// eaList returns the xattrs of p as debugfs prints their values.
func eaList(t testing.TB, image, p string) map[string]string {
	out := debugfs(t, image, "ea_list /"+p)
	var attrs map[string]string
	for _, line := range strings.Split(out, "\n") {
		name, value, ok := strings.Cut(strings.TrimSpace(line), " = ")
		if !ok {
			continue
		}
		name, _, _ = strings.Cut(name, " (")
		if attrs == nil {
			attrs = map[string]string{}
		}
		attrs[name] = strings.TrimSpace(value)
	}
	return attrs
}

// checkTree compares a base with the tree it should hold, exactly.
func checkTree(t *testing.T, image string, wantTree map[string]want) map[string]got {
	t.Helper()
	tree := readBase(t, image)
	for p, w := range wantTree {
		g, ok := tree[p]
		if !ok {
			t.Errorf("%s: missing from the base", p)
			continue
		}
		if g.mode != w.mode || g.uid != w.uid || g.gid != w.gid {
			t.Errorf("%s: mode %o uid %d gid %d, want %o %d %d", p, g.mode, g.uid, g.gid, w.mode, w.uid, w.gid)
		}
		if g.body != w.body || g.target != w.target {
			t.Errorf("%s: body %q target %q, want %q %q", p, g.body, g.target, w.body, w.target)
		}
		if len(g.xattrs) != len(w.xattrs) {
			t.Errorf("%s: xattrs %v, want %v", p, g.xattrs, w.xattrs)
		}
		for k, v := range w.xattrs {
			if g.xattrs[k] != v {
				t.Errorf("%s: xattr %s = %s, want %s", p, k, g.xattrs[k], v)
			}
		}
	}
	for p := range tree {
		if _, ok := wantTree[p]; !ok {
			t.Errorf("%s: in the base, not in the image", p)
		}
	}
	return tree
}

func fsck(t testing.TB, image string) {
	t.Helper()
	if err := run(context.Background(), "e2fsck", "-f", "-n", image); err != nil {
		t.Fatal(err)
	}
}
