package main

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// imageRootMarker is in the test image's /etc/os-release, and nowhere in
// the initramfs.
const imageRootMarker = "sailbox-image-root-test"

// A box whose kernel command line names its disk as its root
// (sailbox.root=/dev/vda) runs every exec and file op in the disk's tree,
// with the file systems a distribution expects mounted, exec as the
// image's users, its own hostname and machine ID in the image's /etc; a
// checkpoint forked into a new VM has the same root, its files and its
// mounts, with a new identity written to the fork's disk.
func TestKVMImageRoot(t *testing.T) {
	kvmtest.Require(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "root.ext4")
	kvmtest.RootImage(t, img, 32<<20, map[string]string{
		"etc/os-release": "PRETTY_NAME=\"Sailbox test image\"\nID=" + imageRootMarker + "\n",
		"etc/passwd":     "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
		"etc/group":      "root:x:0:\nusers:x:100:app\napp:x:1000:\n",
		"etc/hostname":   "image-default\n",
	})
	store := filepath.Join(dir, "store")
	p := startVMM(t, "-store", store, "-disk", img+",layered,id=vda",
		"-cmdline", "sailbox.root=/dev/vda sailbox.hostname=imgbox")
	agent := p.waitAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	run := func(c *guestagent.Client, argv ...string) string {
		t.Helper()
		out, errOut, code, err := c.Run(ctx, argv...)
		if err != nil || code != 0 {
			t.Fatalf("%q: exit %d, %v: %s%s", argv, code, err, out, errOut)
		}
		return string(out)
	}

	// The image's tree, not the initramfs's.
	if got := run(agent, "cat", "/etc/os-release"); !strings.Contains(got, imageRootMarker) {
		t.Fatalf("/etc/os-release = %q, want the image's", got)
	}
	if got := run(agent, "ls", "/"); strings.Contains(got, "init\n") || strings.Contains(got, "sysroot") {
		t.Errorf("/ holds %q: the initramfs shows through", got)
	}
	checkRootMounts(t, run(agent, "cat", "/proc/mounts"))
	if got := run(agent, "df", "/"); !strings.Contains(got, "/dev/vda") {
		t.Errorf("df / = %q, want /dev/vda", got)
	}
	run(agent, "sh", "-c", "test -c /dev/null && test -c /dev/urandom && test -d /sys/kernel && test -e /dev/fd/0 && "+
		"echo x > /dev/null && exec 3<>/dev/ptmx && test -d /dev/pts")
	if got := run(agent, "stat", "-c", "%a", "/tmp"); got != "1777\n" {
		t.Errorf("/tmp has mode %q, want 1777", got)
	}

	// The image's environment: its users, the request's env and dir.
	for argv, want := range map[string]string{
		"id -u": "1000\n", "id -g": "1000\n", "id -G": "1000 100\n", "echo $HOME": "/home/app\n",
	} {
		var out strings.Builder
		res, err := agent.Exec(ctx, guestagent.ExecRequest{Argv: []string{"sh", "-c", argv}, User: "app"}, nil, &out, nil)
		if err != nil || res.ExitCode != 0 || out.String() != want {
			t.Errorf("%s as app = %q, %+v, %v; want %q", argv, out.String(), res, err, want)
		}
	}
	var out strings.Builder
	res, err := agent.Exec(ctx, guestagent.ExecRequest{
		Argv: []string{"sh", "-c", `pwd; echo "$GREETING"; echo "$PATH"`}, Env: []string{"GREETING=hello"}, Dir: "/root",
	}, nil, &out, nil)
	if want := "/root\nhello\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"; err != nil || res.ExitCode != 0 || out.String() != want {
		t.Errorf("env and dir: %q, %+v, %v; want %q", out.String(), res, err, want)
	}

	// Identity in the image's /etc.
	if got := run(agent, "hostname"); got != "imgbox\n" {
		t.Errorf("hostname = %q", got)
	}
	if got := run(agent, "cat", "/etc/hostname"); got != "imgbox\n" {
		t.Errorf("/etc/hostname = %q, want the box's hostname", got)
	}
	parentID := strings.TrimSpace(run(agent, "cat", "/etc/machine-id"))
	if len(parentID) != 32 {
		t.Errorf("/etc/machine-id = %q, want a new machine ID", parentID)
	}

	// The files API writes the image's files.
	const note = "written through the files API"
	if _, err := agent.WriteFile(ctx, "/root/note.txt", strings.NewReader(note), guestagent.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := run(agent, "cat", "/root/note.txt"); got != note {
		t.Fatalf("/root/note.txt = %q", got)
	}
	run(agent, "sync")
	if _, err := agent.Stat(ctx, "/sysroot"); err == nil {
		t.Error("the files API sees /sysroot, which only the initramfs has")
	}

	// A checkpoint, forked into a new VMM: same root, files and mounts,
	// a new identity on the fork's disk.
	api := vmmapi.NewClient(p.api)
	if _, err := api.Checkpoint(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	kid, childAPI := startForkChild(t, ctx, store, "c1", dir)
	if got := run(kid, "cat", "/root/note.txt"); got != note {
		t.Errorf("fork's /root/note.txt = %q", got)
	}
	if got := run(kid, "cat", "/etc/os-release"); !strings.Contains(got, imageRootMarker) {
		t.Errorf("fork's /etc/os-release = %q", got)
	}
	checkRootMounts(t, run(kid, "cat", "/proc/mounts"))
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if run(kid, "hostname") == "sbx-kid\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fork's hostname still %q", run(kid, "hostname"))
		}
	}
	if got := run(kid, "cat", "/etc/hostname"); got != "sbx-kid\n" {
		t.Errorf("fork's /etc/hostname = %q", got)
	}
	if id := strings.TrimSpace(run(kid, "cat", "/etc/machine-id")); len(id) != 32 || id == parentID {
		t.Errorf("fork's machine ID %q, parent's %q: want a new one", id, parentID)
	}
	if err := vmmapi.NewClient(childAPI).Shutdown(ctx); err != nil {
		t.Errorf("child shutdown: %v", err)
	}
	// The parent's disk is its own.
	if got := run(agent, "cat", "/etc/hostname"); got != "imgbox\n" {
		t.Errorf("parent's /etc/hostname after the fork = %q", got)
	}
}

// checkRootMounts checks /proc/mounts of a box with an image root: the
// disk on /, the pseudo file systems where a distribution has them, and
// nothing of the initramfs.
func checkRootMounts(t *testing.T, mounts string) {
	t.Helper()
	want := map[string]string{
		"/": "/dev/vda ext4 rw", "/proc": "proc proc", "/sys": "sysfs sysfs", "/dev": "devtmpfs devtmpfs",
		"/dev/pts": "devpts devpts", "/dev/shm": "tmpfs tmpfs", "/tmp": "tmpfs tmpfs", "/run": "tmpfs tmpfs",
	}
	got := map[string]string{}
	for line := range strings.Lines(mounts) {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		opts := ""
		if f[3] == "rw" || strings.HasPrefix(f[3], "rw,") {
			opts = " rw"
		}
		got[f[1]] = f[0] + " " + f[2]
		if f[1] == "/" {
			got[f[1]] += opts
		}
		if f[2] == "rootfs" {
			t.Errorf("/proc/mounts shows the initramfs: %q", line)
		}
	}
	for mp, w := range want {
		if got[mp] != w {
			t.Errorf("mounted on %s: %q, want %q; /proc/mounts:\n%s", mp, got[mp], w, mounts)
		}
	}
}

// A box whose root device is missing still comes up, at most a few
// seconds late, and its agent refuses exec and the file ops with an
// error that names the root's problem.
func TestKVMImageRootMissing(t *testing.T) {
	p := startVMM(t, "-cmdline", "sailbox.root=/dev/vda")
	agent := p.waitAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, _, _, err := agent.Run(ctx, "true")
	var ae *guestagent.Error
	if !errors.As(err, &ae) || ae.Code != guestagent.CodeRootUnavailable || !strings.Contains(ae.Message, "/dev/vda") {
		t.Fatalf("exec = %v, want an *Error with code %q naming /dev/vda", err, guestagent.CodeRootUnavailable)
	}
	t.Logf("exec: %v", err)
	if _, err := agent.Stat(ctx, "/"); !errors.As(err, &ae) || ae.Code != guestagent.CodeRootUnavailable {
		t.Errorf("stat = %v, want code %q", err, guestagent.CodeRootUnavailable)
	}
	if !strings.Contains(p.console.String(), "root file system is unavailable") {
		t.Errorf("console lacks the agent's report of the root:\n%s", p.console.String())
	}
}
