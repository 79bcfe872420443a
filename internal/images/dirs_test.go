package images

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Only regular files inside the image directories resolve, whatever a
// client sends, and every refusal reads the same, so that a client learns
// nothing about the rest of the host.
func TestResolve(t *testing.T) {
	root := t.TempDir()
	imgs, state := filepath.Join(root, "images"), filepath.Join(root, "state")
	for _, d := range []string{imgs + "/sub", imgs + "/dir", state} {
		must(t, os.MkdirAll(d, 0o755))
	}
	for _, f := range []string{imgs + "/a.raw", imgs + "/sub/b.raw", root + "/outside.raw", state + "/catalog.db"} {
		must(t, os.WriteFile(f, []byte("x"), 0o644))
	}
	must(t, os.Symlink("a.raw", imgs+"/link-in"))
	must(t, os.Symlink(root+"/outside.raw", imgs+"/link-out"))
	must(t, os.Symlink("../state/catalog.db", imgs+"/link-state"))
	must(t, os.Symlink("/", imgs+"/sub/slash"))

	d, err := NewDirs([]string{imgs}, state)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"a.raw":                imgs + "/a.raw",
		imgs + "/a.raw":        imgs + "/a.raw",
		"sub/b.raw":            imgs + "/sub/b.raw",
		"sub/../a.raw":         imgs + "/a.raw",
		"link-in":              imgs + "/a.raw",
		imgs + "/sub/../a.raw": imgs + "/a.raw",
	} {
		got, err := d.Resolve(name)
		if err != nil || got != want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", name, got, err, want)
		}
	}
	var refusals []string
	for _, name := range []string{
		"", "../outside.raw", root + "/outside.raw", "/etc/passwd", "link-out", "link-state",
		"sub/slash/etc/passwd", "dir", "sub", ".", "nope.raw", state + "/catalog.db", "../state/catalog.db",
		"/proc/self/root/etc/passwd", "a.raw\x00",
	} {
		got, err := d.Resolve(name)
		if !errors.Is(err, ErrNotImage) {
			t.Errorf("Resolve(%q) = %q, %v; want ErrNotImage", name, got, err)
			continue
		}
		refusals = append(refusals, strings.Replace(err.Error(), fmt.Sprintf("%q", name), "NAME", 1))
	}
	for _, r := range refusals {
		if r != refusals[0] {
			t.Errorf("refusals differ: %q vs %q", r, refusals[0])
		}
	}
}

// Image directories never overlap the daemon's private directories.
func TestNewDirsRefusesPrivateOverlap(t *testing.T) {
	root := t.TempDir()
	state := filepath.Join(root, "state")
	must(t, os.MkdirAll(state+"/images", 0o755))
	for _, dirs := range [][]string{{state}, {state + "/images"}, {root}, {root + "/missing"}} {
		if _, err := NewDirs(dirs, state); err == nil {
			t.Errorf("NewDirs(%v) with private %s succeeded", dirs, state)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
