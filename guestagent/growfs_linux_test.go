package guestagent

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// ioc is the kernel's _IOC(dir, type, nr, size) (<asm-generic/ioctl.h>).
func ioc(dir, typ, nr, size uintptr) uintptr { return dir<<30 | size<<16 | typ<<8 | nr }

func TestGrowIoctlNumbers(t *testing.T) {
	const iocWrite, iocRead = 1, 2
	if want := ioc(iocWrite, 'f', 16, 8); ext4IocResizeFS != want {
		t.Errorf("EXT4_IOC_RESIZE_FS = %#x, _IOW('f', 16, __u64) is %#x", ext4IocResizeFS, want)
	}
	if want := ioc(iocRead, 0x12, 114, 8); blkGetSize64 != want {
		t.Errorf("BLKGETSIZE64 = %#x, _IOR(0x12, 114, size_t) is %#x", blkGetSize64, want)
	}
}

// A file system smaller than its device grows to fill it, mounted, and
// says so; on a device it fills, nothing is done. This needs root, loop
// devices and ext4 in the host's kernel; the guest does the same with
// its root at every boot (the kvm tier's TestKVMDiskSize).
func TestGrowExt4Loop(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a loop device and a mount); the kvm tier's TestKVMDiskSize grows a guest's root")
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Skip("losetup not found (util-linux)")
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "disk"), filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	mkfsExt4(t, img, 64<<20, "-b", "4096")
	if err := os.Truncate(img, 256<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(losetup, "--find", "--show", img).Output()
	if err != nil {
		t.Skipf("no loop device (losetup --find: %v): run as root on a host with loop devices", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command(losetup, "-d", dev).Run() })
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		t.Skipf("mount %s as ext4: %v (the host kernel must have ext4 and allow mounts here)", dev, err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, 0) })

	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	spec := rootSpec{Device: dev, FSType: "ext4"}
	growRootFS(log, spec, mnt)
	if strings.Contains(logs.String(), unix.EPERM.Error()) {
		t.Skipf("EXT4_IOC_RESIZE_FS refused: it takes CAP_SYS_RESOURCE, which a container's root often lacks (run as root with all capabilities):\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "file system grown to fill its disk") || !strings.Contains(logs.String(), "to_bytes=268435456") {
		t.Errorf("log: %s", logs.String())
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if total := st.Blocks * uint64(st.Bsize); total < 240<<20 {
		t.Errorf("after growing, statfs says %d bytes, want about 256 MiB", total)
	}
	// The data stays: write, grow again (nothing to do), read.
	if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	from, to, err := growExt4(dev, mnt)
	if err != nil || from != 256<<20 || to != from {
		t.Errorf("second grow: %d → %d, %v; want nothing to do at 256 MiB", from, to, err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil || string(b) != "kept" {
		t.Errorf("file after growing: %q, %v", b, err)
	}
	// Not ext4, or read-only: not touched, nothing logged.
	logs.Reset()
	growRootFS(log, rootSpec{Device: dev, FSType: "xfs"}, mnt)
	growRootFS(log, rootSpec{Device: dev, FSType: "ext4", Flags: msRdonly}, mnt)
	if logs.Len() != 0 {
		t.Errorf("logged %s", logs.String())
	}
	// A failure is logged, not fatal.
	growRootFS(log, rootSpec{Device: filepath.Join(dir, "nodev"), FSType: "ext4"}, mnt)
	if !strings.Contains(logs.String(), "runs on the file system as it was") {
		t.Errorf("a failure logged %q", logs.String())
	}
}
