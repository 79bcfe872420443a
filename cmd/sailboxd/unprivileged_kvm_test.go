package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// unprivilegedUID is the ordinary user the daemon runs as: nobody.
const unprivilegedUID = 65534

// sailboxd, and so every VMM it starts, runs as an ordinary user who may
// open /dev/kvm and owns the state directory, nothing more: create,
// exec, checkpoint, fork, sleep, wake (a restore and a checkpoint under
// Landlock, with the working set recorded) and terminate all work, and
// every VMM runs as that user. The test runs as root (the KVM lab's
// steps do) to set the user up: the daemon, the VMM, the guest kernel,
// initramfs and image are copied where that user can read them, and
// /dev/kvm is opened to others until the test ends.
func TestKVMDaemonUnprivileged(t *testing.T) {
	kvmtest.Require(t)
	if os.Geteuid() != 0 {
		msg := "this test becomes another user: run it as root (the KVM lab does)"
		if os.Getenv(kvmtest.RequireEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	kernel := kvmtest.Artifact(t, "SAILBOX_GUEST_KERNEL")
	initrd := kvmtest.Artifact(t, "SAILBOX_GUEST_INITRAMFS")
	vmmBin := kvmtest.Artifact(t, "SAILBOX_VMM")
	netBin := kvmtest.Artifact(t, "SAILBOX_NET")

	dir, err := os.MkdirTemp("", "sbu")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// What the user runs and reads, owned by root, readable by all.
	h := &host{
		t: t, dir: dir,
		exe:    copyFile(t, os.Args[0], filepath.Join(dir, "sailboxd"), 0o755),
		initrd: copyFile(t, initrd, filepath.Join(dir, "initramfs.cpio"), 0o644),
		image:  filepath.Join(dir, "base.ext4"),
		cred:   &syscall.Credential{Uid: unprivilegedUID, Gid: unprivilegedUID},
	}
	h.args = []string{
		"-vmm", copyFile(t, vmmBin, filepath.Join(dir, "sailbox-vmm"), 0o755),
		"-sailbox-net", copyFile(t, netBin, filepath.Join(dir, "sailbox-net"), 0o755),
		"-kernel", copyFile(t, kernel, filepath.Join(dir, "bzImage"), 0o644),
	}
	kvmtest.Ext4Image(t, h.image, 32<<20)
	// What the user owns: its state directory and its socket.
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, unprivilegedUID, unprivilegedUID); err != nil {
		t.Fatal(err)
	}
	h.stateDir, h.sock = filepath.Join(home, "state"), filepath.Join(home, "d.sock")
	openKVMToOthers(t)
	t.Cleanup(h.tearDown)
	h.start()
	requireUID(t, "sailboxd", h.cmd.Process.Pid)
	requireVMMUIDs := func(want int) {
		t.Helper()
		pids := h.vmmPIDs()
		if len(pids) != want {
			t.Fatalf("%d VMMs run, want %d", len(pids), want)
		}
		for _, pid := range pids {
			requireUID(t, "sailbox-vmm", pid)
		}
	}

	ctx := ctxFor(t, 15*time.Minute)
	c := h.c
	a, err := c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	h.run(a.ID, "sh", "-c", "mkdir -p /mnt && mount /dev/vda /mnt && echo -n one > /mnt/disk && echo -n one > /tmp/mem && sync")
	requireVMMUIDs(1)
	if _, err := c.Checkpoint(ctx, a.ID); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	fr, err := c.Fork(ctx, a.ID)
	if err != nil {
		t.Fatalf("fork: %v", err)
	}
	kid := fr.Box.ID
	if out := h.run(kid, "cat", "/mnt/disk", "/tmp/mem"); out != "oneone" {
		t.Errorf("the fork sees %q, want oneone", out)
	}
	requireVMMUIDs(2)
	if b, err := c.Sleep(ctx, a.ID); err != nil || b.State != lifecycle.Sleeping {
		t.Fatalf("sleep: %+v, %v", b, err)
	}
	requireVMMUIDs(1)
	// An exec wakes it: a restore, whose VMM records the working set in
	// the checkpoint it came from once the guest ran, through Landlock.
	if out := h.run(a.ID, "cat", "/mnt/disk", "/tmp/mem"); out != "oneone" {
		t.Errorf("the woken box sees %q, want oneone", out)
	}
	requireVMMUIDs(2)
	box, err := c.Get(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	ws := filepath.Join(h.stateDir, "store", "checkpoints", box.LastCheckpointID, "workingset")
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(ws); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("no working set recorded in %s a minute after the wake", box.LastCheckpointID)
			break
		}
	}
	h.run(a.ID, "sh", "-c", "echo -n two > /mnt/disk && sync")
	if _, err := c.Checkpoint(ctx, a.ID); err != nil {
		t.Errorf("checkpoint of the woken box: %v", err)
	}
	// The kernel that runs this test has Landlock, so every VMM applied
	// its rules without a word; a VMM that could not would have exited.
	if abi, err := llsys.LandlockGetABIVersion(); err == nil && abi >= 2 {
		for _, id := range []string{a.ID, kid} {
			b, _ := os.ReadFile(filepath.Join(h.stateDir, "run", id, "vmm.log"))
			if bytes.Contains(b, []byte("landlock")) {
				t.Errorf("box %s's VMM (Landlock ABI %d here):\n%s", id, abi, b)
			}
		}
		t.Logf("Landlock ABI %d", abi)
	}

	for _, id := range []string{a.ID, kid} {
		if _, err := c.Terminate(ctx, id); err != nil {
			t.Errorf("terminate %s: %v", id, err)
		}
	}
	requireVMMUIDs(0)
	if left := h.storeFiles(); len(left) != 0 {
		t.Errorf("files left in the checkpoint store after every box was terminated: %s", strings.Join(left, " "))
	}
}

// copyFile copies src to dst with mode perm and returns dst.
func copyFile(t *testing.T, src, dst string, perm os.FileMode) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// openKVMToOthers lets every user open /dev/kvm until the test ends, as
// membership of its group (kvm, on Debian) does on a host.
func openKVMToOthers(t *testing.T) {
	t.Helper()
	fi, err := os.Stat("/dev/kvm")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod("/dev/kvm", fi.Mode().Perm()|0o006); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod("/dev/kvm", fi.Mode().Perm()) })
}

// requireUID fails the test unless process pid runs as unprivilegedUID,
// every one of its user and group IDs.
func requireUID(t *testing.T, what string, pid int) {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("%s %d: %v", what, pid, err)
	}
	want := fmt.Sprintf("%d\t%d\t%d\t%d", unprivilegedUID, unprivilegedUID, unprivilegedUID, unprivilegedUID)
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		if (k == "Uid" || k == "Gid") && strings.TrimSpace(v) != want {
			t.Errorf("%s %d runs with %s %s, want %s", what, pid, k, strings.TrimSpace(v), want)
		}
	}
}
