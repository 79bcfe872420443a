package kvmtest

import (
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Busybox is Debian's static busybox (package busybox-static, which
// build/deps.sh installs): the guest initramfs's shell and tools
// (guestagent/initramfs.sh), and RootImage's.
const Busybox = "/bin/busybox"

// rootDirs are the directories of RootImage's tree besides /bin, with
// their modes: the mount points the guest agent mounts on when it makes
// the image its root, and the homes a distribution has.
var rootDirs = map[string]os.FileMode{
	"dev": 0o755, "etc": 0o755, "proc": 0o555, "sys": 0o555, "run": 0o755,
	"tmp": 0o1777, "root": 0o700, "home": 0o755, "var": 0o755,
	"usr/bin": 0o755, "usr/sbin": 0o755, "sbin": 0o755,
}

// RootImage makes an ext4 file system of size bytes at path that holds a
// minimal Linux root, as an image a box boots with sailbox.root= would
// be: Busybox as /bin/busybox with a symbolic link in /bin for each of its
// applets (sh, cat, id, df, mount...), the directories of rootDirs, an
// /etc/passwd and /etc/group that know root, and files, which maps paths
// relative to the root ("etc/os-release") to contents and may replace
// those two. It uses mkfs.ext4 -d (e2fsprogs 1.43 or later). Files keep
// their owner on the host, except the root directory, which is root's,
// and their permission bits, but not the sticky bit (of /tmp: the agent
// mounts a tmpfs over it).
// Without Busybox the test fails under `make test` and is skipped
// elsewhere.
func RootImage(t testing.TB, path string, size int64, files map[string]string) {
	t.Helper()
	if _, err := os.Stat(Busybox); err != nil {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("%s: %v (install busybox-static: build/deps.sh)", Busybox, err)
		}
		t.Skipf("%s: %v; install busybox-static (build/deps.sh)", Busybox, err)
	}
	dir := t.TempDir()
	for _, d := range slices.Sorted(maps.Keys(rootDirs)) {
		p := filepath.Join(dir, d)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, rootDirs[d]); err != nil { // not subject to the umask
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile(Busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command(Busybox, "--list").Output()
	if err != nil {
		t.Fatalf("%s --list: %v", Busybox, err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(bin, applet)); err != nil {
			t.Fatal(err)
		}
	}
	all := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":  "root:x:0:\n",
	}
	maps.Copy(all, files)
	for name, data := range all {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", dir, "-E", "root_owner=0:0", path).CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4 -d (e2fsprogs, installed by build/deps.sh): %v: %s", err, out)
	}
}
