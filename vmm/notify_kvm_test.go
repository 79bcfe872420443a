package vmm_test

import (
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
	"github.com/sailbox-dev/sailbox/vmm"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// The guest's queue notifications reach the devices without a vCPU exit:
// KVM catches the QueueNotify writes on ioeventfds, for a booted machine
// and for one restored from its checkpoint (which binds its own). The
// guest uses the disk, the entropy device and vsock (the exec itself).
func TestKVMQueueNotifiesSkipExits(t *testing.T) {
	sys := kvmtest.Require(t)
	if n, err := sys.CheckExtension(kvm.CapIOEventFD); err != nil || n == 0 {
		t.Skipf("KVM_CAP_IOEVENTFD = %d, %v: kicks exit to the VMM on this kernel", n, err)
	}
	const work = mountVDA + " && echo -n data > /mnt/file && sync && head -c 64 /dev/hwrng | wc -c"
	caughtOnly := func(g *guest, what string) {
		t.Helper()
		if out := g.sh(t, work); strings.TrimSpace(out) != "64" {
			t.Fatalf("%s: %q, want 64 bytes from /dev/hwrng", what, out)
		}
		c := g.m.QueueNotifies()
		t.Logf("%s: queue notifications %+v", what, c)
		if c.Exits != 0 || c.Caught == 0 {
			t.Errorf("%s: %d queue notifications exited to the VMM and %d were caught by KVM; want none and some", what, c.Exits, c.Caught)
		}
	}
	b := bootBox(t)
	caughtOnly(b.guest, "booted")
	// What an exec round trip costs in kicks (each an exit before).
	const execs = 10
	before := b.m.QueueNotifies()
	for range execs {
		b.run(t, "true")
	}
	after := b.m.QueueNotifies()
	t.Logf("%d exec round trips: %d queue notifications caught, %d exits", execs, after.Caught-before.Caught, after.Exits-before.Exits)
	if _, _, err := b.m.Checkpoint(vmm.CheckpointOptions{Root: b.root, ID: "c1", GuestSchemaVersion: guestagent.GuestSchemaVersion}); err != nil {
		t.Fatal(err)
	}
	caughtOnly(b.guest, "after its checkpoint")
	b.stop()
	caughtOnly(restoreBox(t, b, "c1"), "restored")
}
