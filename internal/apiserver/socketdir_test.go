package apiserver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sharedTemp is a directory anyone may write to, standing in for /tmp.
func sharedTemp(t *testing.T) string {
	t.Helper()
	tmp := t.TempDir()
	if err := os.Chmod(tmp, 0o1777); err != nil {
		t.Fatal(err)
	}
	return tmp
}

func TestSocketDirInSharedDir(t *testing.T) {
	tmp := sharedTemp(t)
	uid := os.Geteuid()
	dir := filepath.Join(tmp, "sailbox-1")
	if err := makeSocketDir(dir, uid); err != nil {
		t.Fatalf("make: %v", err)
	}
	if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("made %v, %v; want a 0700 directory", fi.Mode(), err)
	}
	if err := makeSocketDir(dir, uid); err != nil {
		t.Errorf("make again, over our own private directory: %v", err)
	}
	if err := MakeSocketDir(filepath.Join(dir, "sailboxd.sock")); err != nil {
		t.Errorf("MakeSocketDir: %v", err)
	}

	// What another user could have put there first is refused, naming
	// the path.
	open := filepath.Join(tmp, "open")
	os.Mkdir(open, 0o700)
	os.Chmod(open, 0o755)
	file := filepath.Join(tmp, "file")
	os.WriteFile(file, nil, 0o600)
	link := filepath.Join(tmp, "link")
	os.Symlink(dir, link) // to a directory that would pass
	for _, tc := range []struct {
		name, dir string
		uid       int
		want      string
	}{
		{"group and other bits", open, uid, "mode"},
		{"a file", file, uid, "not a directory"},
		{"a symlink", link, uid, "not a directory"},
		{"another owner", dir, uid + 1, "owned by"},
	} {
		err := makeSocketDir(tc.dir, tc.uid)
		if err == nil || !strings.Contains(err.Error(), tc.dir) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an error naming %s and saying %q", tc.name, err, tc.dir, tc.want)
		}
	}
	if fi, _ := os.Lstat(open); fi.Mode().Perm() != 0o755 {
		t.Errorf("a refused directory was changed to %v", fi.Mode())
	}
}

func TestSocketDirInPrivateDir(t *testing.T) {
	// Where only we can create things, the directory is made as it
	// always was: with its parents, and readable by others (a socket
	// shared with a group must be reachable).
	base := t.TempDir()
	dir := filepath.Join(base, "a", "sailbox")
	if err := makeSocketDir(dir, os.Geteuid()); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	if err := makeSocketDir(dir, os.Geteuid()); err != nil {
		t.Errorf("an existing 0755 directory outside a shared one: %v", err)
	}
}
