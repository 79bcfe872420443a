//go:build linux

package guestagent

import (
	"os"
	"path/filepath"
	"testing"
)

// The Linux guest's system writes the machine ID under its root; the test
// gives it a scratch root. Its other methods change the whole machine, and
// are left to the KVM tier, in a guest.
func TestLinuxGuestSetMachineID(t *testing.T) {
	if g, ok := defaultGuestSystem().(*linuxGuest); !ok || g.root != "/" {
		t.Fatalf("defaultGuestSystem() = %#v, want a *linuxGuest with root /", defaultGuestSystem())
	}
	root := t.TempDir()
	g := &linuxGuest{root: root}
	id := NewMachineID()
	if err := g.setMachineID(id); err != nil {
		t.Fatalf("setMachineID: %v", err)
	}
	checkFile(t, filepath.Join(root, "etc", "machine-id"), id+"\n", 0o444)

	// /etc/machine-id is often a symbolic link to a file elsewhere; the
	// link is replaced, and the file it pointed to is left alone.
	target := filepath.Join(root, "old-machine-id")
	os.WriteFile(target, []byte("old\n"), 0o444)
	link := filepath.Join(root, "etc", "machine-id")
	os.Remove(link)
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	id = NewMachineID()
	if err := g.setMachineID(id); err != nil {
		t.Fatalf("setMachineID over a symbolic link: %v", err)
	}
	checkFile(t, link, id+"\n", 0o444)
	if fi, err := os.Lstat(link); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("/etc/machine-id is not a regular file: %v, %v", fi.Mode(), err)
	}
	checkFile(t, target, "old\n", 0o444)
	checkNoDebris(t, filepath.Join(root, "etc"), "machine-id")
}
