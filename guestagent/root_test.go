package guestagent

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRootFromCmdline(t *testing.T) {
	const base = "console=ttyS0 reboot=k panic=-1 virtio_mmio.device=4K@0xd0000000:5 "
	for _, tc := range []struct {
		cmdline string
		want    rootSpec
		ok, err bool
	}{
		{"", rootSpec{}, false, false},
		{base + "root=/dev/vda\n", rootSpec{}, false, false}, // the kernel's own, not the agent's
		{base + "sailbox.rootfstype=xfs sailbox.rootflags=ro", rootSpec{}, false, false},
		{base + "sailbox.root=", rootSpec{}, false, false},
		{base + "sailbox.root=/dev/vda\n", rootSpec{Device: "/dev/vda", FSType: "ext4"}, true, false},
		{"sailbox.root=/dev/vdb sailbox.root=/dev/vda", rootSpec{Device: "/dev/vda", FSType: "ext4"}, true, false},
		{"sailbox.root=/dev/vda sailbox.root=", rootSpec{}, false, false},
		{"sailbox.root=/dev/vda\tsailbox.rootfstype=ext2", rootSpec{Device: "/dev/vda", FSType: "ext2"}, true, false},
		{"sailbox.root=/dev/vda sailbox.rootfstype=", rootSpec{Device: "/dev/vda", FSType: "ext4"}, true, false},
		{"sailbox.root=/dev/vda sailbox.rootflags=ro,noatime,discard,commit=30",
			rootSpec{Device: "/dev/vda", FSType: "ext4", Flags: msRdonly | msNoatime, Data: "discard,commit=30"}, true, false},
		{"sailbox.root=/dev/vda sailbox.rootflags=ro,rw,defaults,,nosuid",
			rootSpec{Device: "/dev/vda", FSType: "ext4", Flags: msNosuid}, true, false},
		{"sailbox.root=/dev/mapper/root", rootSpec{Device: "/dev/mapper/root", FSType: "ext4"}, true, false},
		{"sailbox.root=vda", rootSpec{}, false, true},
		{"sailbox.root=/dev/", rootSpec{}, false, true},
		{"sailbox.root=/dev/../etc/passwd", rootSpec{}, false, true},
		{"sailbox.root=/dev//vda", rootSpec{}, false, true},
		{"sailbox.root=LABEL=root", rootSpec{}, false, true},
		{"sailbox.root=/tmp/disk.img", rootSpec{}, false, true},
		{`sailbox.root="/dev/vda"`, rootSpec{}, false, true},
		{"sailbox.root=/dev/vda sailbox.rootfstype=EXT4", rootSpec{}, false, true},
		{"sailbox.root=/dev/vda sailbox.rootfstype=ext4,ro", rootSpec{}, false, true},
		{"sailbox.root=/dev/vda sailbox.rootfstype=" + strings.Repeat("x", 33), rootSpec{}, false, true},
	} {
		got, ok, err := rootFromCmdline(tc.cmdline)
		if got != tc.want || ok != tc.ok || (err != nil) != tc.err {
			t.Errorf("rootFromCmdline(%q) = %+v, %v, %v; want %+v, %v, error %v", tc.cmdline, got, ok, err, tc.want, tc.ok, tc.err)
		}
	}
}

// The file systems mounted in the box's root are what a distribution
// expects, each under a mount point that exists by the time it is mounted.
func TestRootMounts(t *testing.T) {
	var targets []string
	for _, m := range rootMounts {
		if !filepath.IsAbs(m.Target) || filepath.Clean(m.Target) != m.Target || m.Target == "/" {
			t.Errorf("mount target %q: want a clean absolute path below /", m.Target)
		}
		if slices.Contains(targets, m.Target) {
			t.Errorf("%s mounted twice", m.Target)
		}
		// A mount inside another comes after it, or it would be hidden.
		for _, later := range rootMounts[len(targets)+1:] {
			if strings.HasPrefix(m.Target, later.Target+"/") {
				t.Errorf("%s is mounted before %s, which hides it", m.Target, later.Target)
			}
		}
		targets = append(targets, m.Target)
	}
	for _, want := range []string{"/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/tmp", "/run"} {
		if !slices.Contains(targets, want) {
			t.Errorf("nothing is mounted on %s", want)
		}
	}
	for _, l := range devLinks {
		if !strings.HasPrefix(l.Name, "/dev/") || !strings.HasPrefix(l.Target, "/proc/self/fd") {
			t.Errorf("link %s -> %s", l.Name, l.Target)
		}
	}
}

func TestEnsureMachineID(t *testing.T) {
	root := t.TempDir()
	path := filepath.Join(root, "etc", "machine-id")
	// No /etc at all, as in a minimal image.
	wrote, err := ensureMachineID(root)
	if err != nil || !wrote {
		t.Fatalf("ensureMachineID without /etc = %v, %v; want true, nil", wrote, err)
	}
	b, _ := os.ReadFile(path)
	id := strings.TrimSpace(string(b))
	if !validMachineID(id) {
		t.Fatalf("wrote machine ID %q", b)
	}
	// A valid one stays.
	if wrote, err := ensureMachineID(root); err != nil || wrote {
		t.Fatalf("ensureMachineID over a valid ID = %v, %v; want false, nil", wrote, err)
	}
	if b, _ := os.ReadFile(path); strings.TrimSpace(string(b)) != id {
		t.Errorf("machine ID changed to %q", b)
	}
	// Empty (Debian's images), "uninitialized" (systemd's first boot) and
	// garbage are replaced.
	for _, old := range []string{"", "uninitialized\n", strings.Repeat("0", 32) + "\n", "not hex"} {
		os.Remove(path)
		os.WriteFile(path, []byte(old), 0o444)
		if wrote, err := ensureMachineID(root); err != nil || !wrote {
			t.Errorf("ensureMachineID over %q = %v, %v; want true, nil", old, wrote, err)
		}
		b, _ := os.ReadFile(path)
		if !validMachineID(strings.TrimSpace(string(b))) {
			t.Errorf("over %q: wrote %q", old, b)
		}
	}
}
