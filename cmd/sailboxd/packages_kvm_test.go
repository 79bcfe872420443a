package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/debtest"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// A package installed without network (a .deb put with the files API,
// then dpkg -i) on the default Debian image lives on the box's disk like
// any other file: a fork has it, the fork's own installs stay its own,
// sleep and wake keep it, and an upgrade, which swaps the agent and keeps
// the disk, keeps it too.
//
// An upgrade reboots only a box on an older agent, and the previous
// release's agent (schema 2, SAILBOX_OLD_GUEST_INITRAMFS) predates root
// images: it ignores sailbox.root= and serves from its initramfs with the
// image as an unmounted /dev/vda. So the box that is upgraded gets its
// package with dpkg -i in a chroot into that disk, the only way it can,
// and the upgrade is what first boots it with the image as /: there dpkg
// must find the package installed and the program must run. The box that
// was made, forked and slept on the current agent is upgraded too, which
// for it is nothing: it must keep its memory as well as its package.
func TestKVMInstallPackageForkSleepUpgrade(t *testing.T) {
	img := kvmtest.Artifact(t, "SAILBOX_DEFAULT_IMAGE")
	old := kvmtest.Artifact(t, "SAILBOX_OLD_GUEST_INITRAMFS")
	h := newHost(t, "-image", img)
	ctx := ctxFor(t, 20*time.Minute)
	c := h.c
	debA := debtest.Package{Name: "sailbox-hello-a", Version: "1.0-1"}.Deb(t)
	debB := debtest.Package{Name: "sailbox-hello-b", Version: "2.0-1"}.Deb(t)
	last := time.Now()
	lap := func(what string) {
		t.Helper()
		t.Logf("%s: %s", what, time.Since(last).Round(time.Millisecond))
		last = time.Now()
	}

	// A box on the previous agent, its package installed into its disk.
	h.stop()
	current := h.initrd
	h.initrd = old
	h.start()
	ob, err := c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatalf("create on the old agent: %v", err)
	}
	if ob.GuestSchemaVersion >= guestagent.GuestSchemaVersion {
		t.Fatalf("box on the old agent reports schema %d", ob.GuestSchemaVersion)
	}
	// The image's working directory (/root) is not in the initramfs.
	inRoot := func(script string) string {
		t.Helper()
		out, code, err := h.execIn(ob.ID, "/", "sh", "-c", script)
		if err != nil || code != 0 {
			t.Fatalf("old-agent box: %q: exit %d, %v; stdout %q", script, code, err, out)
		}
		return out
	}
	if out := inRoot("grep -c '^/dev/vda / ' /proc/mounts || true"); out != "0\n" {
		t.Fatalf("the old agent mounted the image as / (%q): this box would not test an upgrade onto the root", out)
	}
	inRoot("mkdir -p /mnt && mount /dev/vda /mnt")
	putFile(h, ob.ID, "/mnt/tmp/a.deb", debA)
	// Full paths: the initramfs's busybox runs its own dpkg applet for a
	// bare "dpkg", even in the chroot.
	out := inRoot("mount -t proc proc /mnt/proc && mount -o bind /dev /mnt/dev && " +
		"chroot /mnt /usr/bin/dpkg -i /tmp/a.deb && chroot /mnt /usr/bin/dpkg -s sailbox-hello-a; " +
		"rc=$?; umount /mnt/dev /mnt/proc && umount /mnt && sync && exit $rc")
	checkInstalledStatus(t, "old-agent box, in a chroot", out, "1.0-1")

	lap("old-agent box made, its package installed in a chroot")

	// The host's agent is the current one from here on.
	h.stop()
	h.initrd = current
	h.start()

	// Installed on a box's own root.
	b, err := c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	checkRootMount(h, b.ID)
	putFile(h, b.ID, "/tmp/a.deb", debA)
	if out := h.run(b.ID, "dpkg", "-i", "/tmp/a.deb"); !strings.Contains(out, "Setting up sailbox-hello-a (1.0-1)") {
		t.Errorf("dpkg -i a.deb printed %q", out)
	}
	checkInstalled(h, b.ID, "sailbox-hello-a", "1.0-1")
	h.run(b.ID, "sh", "-c", "echo -n mem > /tmp/mem")

	lap("box made on the current agent, its package installed")

	// Checkpoint, fork: the child has it; what the child installs is the
	// child's.
	if _, err := c.Checkpoint(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	fr, err := c.Fork(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	child := fr.Box.ID
	checkInstalled(h, child, "sailbox-hello-a", "1.0-1")
	putFile(h, child, "/tmp/b.deb", debB)
	h.run(child, "dpkg", "-i", "/tmp/b.deb")
	checkInstalled(h, child, "sailbox-hello-b", "2.0-1")
	checkNotInstalled(h, b.ID, "sailbox-hello-b")

	lap("checkpoint, fork, the child's install")

	// Sleep and wake, by an exec for the parent and by resume for the
	// child: the disks are their own still.
	for _, id := range []string{b.ID, child} {
		if _, err := c.Sleep(ctx, id); err != nil {
			t.Fatalf("sleep %s: %v", id, err)
		}
		if s := h.state(id); s != string(lifecycle.Sleeping) {
			t.Fatalf("box %s is %s after sleep", id, s)
		}
	}
	checkInstalled(h, b.ID, "sailbox-hello-a", "1.0-1")
	checkNotInstalled(h, b.ID, "sailbox-hello-b")
	if s := h.state(b.ID); s != string(lifecycle.Running) {
		t.Errorf("parent is %s after an exec woke it", s)
	}
	if _, err := c.Resume(ctx, child); err != nil {
		t.Fatalf("resume the child: %v", err)
	}
	checkInstalled(h, child, "sailbox-hello-a", "1.0-1")
	checkInstalled(h, child, "sailbox-hello-b", "2.0-1")

	lap("sleep and wake of parent and child")

	// Upgrade of a current box: nothing to do, nothing lost.
	up, err := c.Upgrade(ctx, b.ID)
	if err != nil || !up.Upgraded || up.Box.GuestSchemaVersion != guestagent.GuestSchemaVersion || up.Box.State != lifecycle.Running {
		t.Fatalf("upgrade of a current box: %+v, %v", up, err)
	}
	if out := h.run(b.ID, "cat", "/tmp/mem"); out != "mem" {
		t.Errorf("current box's /tmp/mem holds %q after upgrade: it was rebooted", out)
	}
	checkInstalled(h, b.ID, "sailbox-hello-a", "1.0-1")

	lap("upgrade of the current box")

	// Upgrade of the old box: it reboots onto the current agent, which
	// mounts its disk as /; the package is installed there and dpkg
	// still installs.
	up, err = c.Upgrade(ctx, ob.ID)
	if err != nil || !up.Upgraded || up.Box.GuestSchemaVersion != guestagent.GuestSchemaVersion || up.Box.State != lifecycle.Running {
		t.Fatalf("upgrade of the old-agent box: %+v, %v", up, err)
	}
	if b, err := c.Get(ctx, ob.ID); err != nil || b.GuestSchemaVersion != guestagent.GuestSchemaVersion {
		t.Errorf("upgraded box: %+v, %v", b, err)
	}
	checkRootMount(h, ob.ID)
	checkInstalled(h, ob.ID, "sailbox-hello-a", "1.0-1")
	putFile(h, ob.ID, "/tmp/b.deb", debB)
	h.run(ob.ID, "dpkg", "-i", "/tmp/b.deb")
	checkInstalled(h, ob.ID, "sailbox-hello-b", "2.0-1")
	lap("upgrade of the old-agent box, an install after it")
}

// execIn execs argv in box id with working directory dir.
func (h *host) execIn(id, dir string, argv ...string) (string, int, error) {
	var stdout, stderr bytes.Buffer
	res, err := h.c.Exec(ctxFor(h.t, 2*time.Minute), id, api.ExecRequest{Argv: argv, Dir: dir}, &stdout, &stderr)
	if err != nil {
		return stdout.String(), -1, fmt.Errorf("%w (stderr %q)", err, stderr.String())
	}
	if res.ExitCode != 0 {
		return stdout.String(), res.ExitCode, fmt.Errorf("stderr %q", stderr.String())
	}
	return stdout.String(), res.ExitCode, nil
}

// putFile writes data to path in box id with the files API.
func putFile(h *host, id, path string, data []byte) {
	h.t.Helper()
	n, err := h.c.WriteFile(ctxFor(h.t, 2*time.Minute), id, path, bytes.NewReader(data), client.WriteOptions{CreateDirs: true})
	if err != nil || n != int64(len(data)) {
		h.t.Fatalf("write %s in %s: wrote %d of %d bytes, %v", path, id, n, len(data), err)
	}
}

// checkInstalled fails unless box id has package pkg at version
// installed: dpkg says so, its postinst ran, its copyright file is there
// and its program prints its line.
func checkInstalled(h *host, id, pkg, version string) {
	h.t.Helper()
	checkInstalledStatus(h.t, "box "+id, h.run(id, "dpkg", "-s", pkg), version)
	if out, want := h.run(id, pkg), (debtest.Package{Name: pkg, Version: version}).Hello(); out != want {
		h.t.Errorf("box %s: %s printed %q, want %q", id, pkg, out, want)
	}
	if out := h.run(id, "cat", "/var/lib/"+pkg+"/postinst"); out != "configure\n" {
		h.t.Errorf("box %s: %s's postinst left %q, want its configure", id, pkg, out)
	}
	h.run(id, "test", "-f", "/usr/share/doc/"+pkg+"/copyright")
}

// checkInstalledStatus fails unless out, dpkg -s's, says version is
// installed.
func checkInstalledStatus(t *testing.T, where, out, version string) {
	t.Helper()
	if !strings.Contains(out, "Status: install ok installed\n") || !strings.Contains(out, "Version: "+version+"\n") {
		t.Errorf("%s: dpkg -s says:\n%s\nwant install ok installed, version %s", where, out, version)
	}
}

// checkNotInstalled fails unless box id knows nothing of package pkg:
// dpkg -s fails and its program is absent.
func checkNotInstalled(h *host, id, pkg string) {
	h.t.Helper()
	if out, code, err := h.exec(id, "dpkg", "-s", pkg); err != nil || code == 0 {
		h.t.Errorf("box %s: dpkg -s %s: exit %d, %v, want a failure; it says:\n%s", id, pkg, code, err, out)
	}
	if _, code, err := h.exec(id, "test", "-e", "/usr/bin/"+pkg); err != nil || code == 0 {
		h.t.Errorf("box %s: test -e /usr/bin/%s: exit %d, %v, want it absent", id, pkg, code, err)
	}
}
