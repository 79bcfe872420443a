package main

import (
	"slices"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// Boxes booted on the previous release's guest agent (schema 2, built
// from git by `make test`) are found by list's max_guest_schema_version
// and upgraded as the lifecycle says: a running box reboots on its disk
// onto the current agent (true); a sleeping box records the upgrade
// (false) and applies it when it wakes; a current box is left alone
// (true). With -min-resumable-schema, an outdated box is upgraded when it
// wakes without being asked.
func TestKVMDaemonUpgrade(t *testing.T) {
	old := kvmtest.Artifact(t, "SAILBOX_OLD_GUEST_INITRAMFS")
	h := newHost(t)
	ctx := ctxFor(t, 20*time.Minute)
	c := h.c

	// The host's agent was the previous one when these boxes were made.
	h.stop()
	current := h.initrd
	h.initrd = old
	h.start()
	outdated := map[string]api.Box{}
	for _, name := range []string{"running", "sleeping", "auto"} {
		b, err := c.Create(ctx, api.CreateRequest{})
		if err != nil {
			t.Fatalf("create on the old agent: %v", err)
		}
		if b.GuestSchemaVersion >= guestagent.GuestSchemaVersion {
			t.Fatalf("box on the old agent reports schema %d", b.GuestSchemaVersion)
		}
		outdated[name] = b
		// Something on the disk (kept by an upgrade) and in memory (not).
		h.run(b.ID, "sh", "-c", "mkdir -p /mnt && mount /dev/vda /mnt && echo -n "+name+" > /mnt/keep && sync && echo -n mem > /tmp/mem")
	}
	for _, name := range []string{"sleeping", "auto"} {
		if _, err := c.Sleep(ctx, outdated[name].ID); err != nil {
			t.Fatal(err)
		}
	}

	// The host's agent is upgraded; the boxes keep running or sleeping.
	h.stop()
	h.initrd = current
	h.start()
	fresh, err := c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	h.run(fresh.ID, "sh", "-c", "echo -n mem > /tmp/mem")

	oldSchema := outdated["running"].GuestSchemaVersion
	list, err := c.List(ctx, client.ListOptions{MaxGuestSchemaVersion: &oldSchema})
	if err != nil {
		t.Fatal(err)
	}
	var ids, want []string
	for _, b := range list {
		ids = append(ids, b.ID)
	}
	for _, b := range outdated {
		want = append(want, b.ID)
	}
	slices.Sort(ids)
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Errorf("list max_guest_schema_version=%d: %v, want the outdated boxes %v", oldSchema, ids, want)
	}

	// Running: rebooted on its disk onto the current agent.
	run := outdated["running"].ID
	up, err := c.Upgrade(ctx, run)
	if err != nil || !up.Upgraded || up.Box.GuestSchemaVersion != guestagent.GuestSchemaVersion || up.Box.State != lifecycle.Running {
		t.Fatalf("upgrade of a running box: %+v, %v", up, err)
	}
	if out := h.run(run, "sh", "-c", "mkdir -p /mnt && mount /dev/vda /mnt && cat /mnt/keep"); out != "running" {
		t.Errorf("upgraded box's disk has %q", out)
	}
	if _, code, _ := h.exec(run, "cat", "/tmp/mem"); code == 0 {
		t.Error("upgraded box kept its memory: it was not rebooted")
	}

	// Sleeping: recorded, applied at the next wake (an exec here).
	sleep := outdated["sleeping"].ID
	up, err = c.Upgrade(ctx, sleep)
	if err != nil || up.Upgraded || !up.Box.PendingUpgrade || up.Box.State != lifecycle.Sleeping {
		t.Fatalf("upgrade of a sleeping box: %+v, %v", up, err)
	}
	if out := h.run(sleep, "sh", "-c", "mkdir -p /mnt && mount /dev/vda /mnt && cat /mnt/keep"); out != "sleeping" {
		t.Errorf("box upgraded at wake has %q on its disk", out)
	}
	if b, _ := c.Get(ctx, sleep); b.GuestSchemaVersion != guestagent.GuestSchemaVersion || b.PendingUpgrade || b.State != lifecycle.Running {
		t.Errorf("box after its deferred upgrade: %+v", b)
	}

	// Current: nothing to do, no reboot.
	up, err = c.Upgrade(ctx, fresh.ID)
	if err != nil || !up.Upgraded {
		t.Errorf("upgrade of a current box: %+v, %v", up, err)
	}
	if out := h.run(fresh.ID, "cat", "/tmp/mem"); out != "mem" {
		t.Errorf("current box lost its memory (%q): it was rebooted", out)
	}

	// An agent too old to resume safely is upgraded when it wakes.
	h.stop()
	h.args = append(h.args, "-min-resumable-schema", "3")
	h.start()
	auto := outdated["auto"].ID
	if out := h.run(auto, "sh", "-c", "mkdir -p /mnt && mount /dev/vda /mnt && cat /mnt/keep"); out != "auto" {
		t.Errorf("box upgraded automatically at wake has %q on its disk", out)
	}
	if b, _ := c.Get(ctx, auto); b.GuestSchemaVersion != guestagent.GuestSchemaVersion {
		t.Errorf("box too old to resume woke on schema %d", b.GuestSchemaVersion)
	}
	if list, _ := c.List(ctx, client.ListOptions{MaxGuestSchemaVersion: &oldSchema}); len(list) != 0 {
		t.Errorf("outdated boxes left: %d", len(list))
	}
}
