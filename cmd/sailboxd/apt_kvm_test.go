package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/debtest"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// The mission's example end to end: a box installs a package with
// apt-get from a repository the test serves on the host's loopback, over
// its own network; a checkpoint; the host fails (SIGKILL of the daemon,
// every VMM and every box's network); the restarted daemon brings the
// box back from that checkpoint, not by booting it again, with the
// package installed and its program running, and nothing is replayed:
// the repository hears nothing more. A fork of the restored box then
// installs a second package from the same repository with the lists its
// parent fetched before the checkpoint: its one request is the .deb.
//
// The box's only apt source is the test's (the image's, naming Debian's
// mirrors, is replaced with the files API) and its policy (no internet,
// the host allowed) lets it reach only the host: apt dials nothing but
// the repository, and the one name it looks up, the SRV record
// _http._tcp.192.168.127.254, is answered by the box's DNS without
// asking the host's.
func TestKVMAptInstallCheckpointHostFailure(t *testing.T) {
	img := kvmtest.Artifact(t, "SAILBOX_DEFAULT_IMAGE")
	first := debtest.Package{Name: "sailbox-apt-a", Version: "1.0-1"}
	second := debtest.Package{Name: "sailbox-apt-b", Version: "2.0-1"}
	repo := debtest.NewRepo(t, first, second)
	h := newHost(t, "-image", img)
	ctx := ctxFor(t, 20*time.Minute)
	c := h.c
	aptGet := func(id string, args ...string) string {
		t.Helper()
		return h.run(id, append([]string{"env", "DEBIAN_FRONTEND=noninteractive", "apt-get"}, args...)...)
	}

	b, err := c.Create(ctx, api.CreateRequest{NoInternet: true, Allow: []string{hostIP}})
	if err != nil {
		t.Fatal(err)
	}
	putFile(h, b.ID, "/etc/apt/sources.list", []byte(repo.SourcesLine(hostIP)))
	if out := h.run(b.ID, "ls", "-A", "/etc/apt/sources.list.d"); out != "" {
		t.Fatalf("the image has apt sources of its own, which apt-get update would dial: %q", out)
	}
	if out := aptGet(b.ID, "update"); strings.Contains(out, "Err:") || strings.Contains(out, "W:") || !slices.Contains(repo.Requests(), "/Release") {
		t.Errorf("apt-get update in the box (the repository heard %v):\n%s", repo.Requests(), out)
	}
	out := aptGet(b.ID, "install", "-y", first.Name)
	if !strings.Contains(out, "Setting up "+first.Name+" ("+first.Version+")") {
		t.Errorf("apt-get install -y %s:\n%s", first.Name, out)
	}
	checkInstalled(h, b.ID, first.Name, first.Version)
	if got := repo.Requests(); (!slices.Contains(got, "/Packages") && !slices.Contains(got, "/Packages.gz")) ||
		count(got, "/"+debtest.PoolPath(first)) != 1 || slices.Contains(got, "/"+debtest.PoolPath(second)) {
		t.Errorf("the repository's requests: %v; want its index and %s once", got, first.Name)
	}

	// What only the guest's memory holds: its boot's id, and a file on
	// its tmpfs.
	bootID := h.run(b.ID, "cat", "/proc/sys/kernel/random/boot_id")
	h.run(b.ID, "sh", "-c", "echo -n checkpointed > /tmp/mem")
	ck, err := c.Checkpoint(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	heard := repo.Requests()
	// Lost with the host: it ran after the checkpoint.
	h.run(b.ID, "sh", "-c", "echo -n after > /tmp/mem")

	h.kill()
	if n := h.killVMMs(); n != 1 {
		t.Errorf("killed %d VMMs, want 1", n)
	}
	h.start()

	got, err := c.Get(ctx, b.ID)
	if err != nil || got.State != lifecycle.Running || got.LastCheckpointID != ck.ID {
		t.Fatalf("the box after the host failure: %+v, %v; want it running from checkpoint %s", got, err, ck.ID)
	}
	if id := h.run(b.ID, "cat", "/proc/sys/kernel/random/boot_id"); id != bootID {
		t.Errorf("boot id %q after the host failure, %q before: the box was booted again, not restored", id, bootID)
	}
	if out := h.run(b.ID, "cat", "/tmp/mem"); out != "checkpointed" {
		t.Errorf("/tmp/mem holds %q after the host failure, want the checkpoint's", out)
	}
	checkInstalled(h, b.ID, first.Name, first.Version)
	checkNotInstalled(h, b.ID, second.Name)
	if now := repo.Requests(); len(now) != len(heard) {
		t.Errorf("the repository heard %v after the checkpoint: the install was replayed", now[len(heard):])
	}
	if n := len(h.netPIDsOf(b.ID)); n != 1 {
		t.Errorf("the restored box has %d networks, want 1", n)
	}

	// A fork of the restored box installs the second package without an
	// apt-get update: the lists are its parent's, from before the
	// checkpoint.
	fr, err := c.Fork(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	kid := fr.Box.ID
	before := len(repo.Requests())
	out = aptGet(kid, "install", "-y", second.Name)
	if !strings.Contains(out, "Setting up "+second.Name+" ("+second.Version+")") {
		t.Errorf("apt-get install -y %s in the fork:\n%s", second.Name, out)
	}
	if now := repo.Requests()[before:]; !slices.Equal(now, []string{"/" + debtest.PoolPath(second)}) {
		t.Errorf("the fork's install asked the repository for %v, want only %s's .deb", now, second.Name)
	}
	checkInstalled(h, kid, first.Name, first.Version)
	checkInstalled(h, kid, second.Name, second.Version)
	checkNotInstalled(h, b.ID, second.Name)
}

// count is how many times s occurs in list.
func count(list []string, s string) int {
	n := 0
	for _, e := range list {
		if e == s {
			n++
		}
	}
	return n
}
