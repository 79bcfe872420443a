package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
	"github.com/sailbox-dev/sailbox/snapshot"
)

// asMain makes the test binary run sailbox-vmm's main when a test starts
// it as a fork's child VMM.
const asMain = "SAILBOX_VMM_TEST_AS_MAIN"

// startForkChild starts a sailbox-vmm process (this test binary as main)
// restored from checkpoint ckpt of store as a fork named "kid", its
// sockets and log in dir, as the daemon's backend does, and returns its
// agent once it answers and its control socket. It is killed at cleanup.
func startForkChild(t *testing.T, ctx context.Context, store, ckpt, dir string) (*guestagent.Client, string) {
	t.Helper()
	t.Setenv(asMain, "1")
	child := vmmapi.Launch{
		MemoryMiB: vmmapi.DefaultMemoryMiB, VCPUs: vmmapi.DefaultVCPUs,
		Store: store, Restore: ckpt, ForkName: "kid",
		APISocket: filepath.Join(dir, "child.api"),
		VsockUDS:  filepath.Join(dir, "child.vsock"),
		Log:       filepath.Join(dir, "child.log"),
	}
	cmd, err := child.Start(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	t.Cleanup(func() { cmd.Process.Kill() })
	kid := guestagent.NewHybridClient(child.VsockUDS)
	if _, err := kid.WaitHealthy(ctx, 100*time.Millisecond, nil); err != nil {
		log, _ := os.ReadFile(child.Log)
		t.Fatalf("child agent: %v; child log:\n%s", err, log)
	}
	return kid, child.APISocket
}

func TestMain(m *testing.M) {
	if os.Getenv(asMain) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The control socket pauses, resumes and checkpoints a running VM, and a
// fork is a new sailbox-vmm process restored from a checkpoint, with the
// parent's memory and its own identity; the parent runs on.
func TestKVMCheckpointAndForkOverSocket(t *testing.T) {
	kvmtest.Require(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.ext4")
	kvmtest.Ext4Image(t, base, 32<<20)
	p := startVMM(t, "-store", filepath.Join(dir, "store"), "-disk", base+",layered,id=vda")
	agent := p.waitAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, _, code, err := agent.Run(ctx, "sh", "-c", "echo -n parent > /tmp/who"); code != 0 || err != nil {
		t.Fatalf("exec: %d, %v", code, err)
	}
	api := vmmapi.NewClient(p.api)

	if err := api.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := api.Status(ctx); st.State != "paused" {
		t.Errorf("status after pause: %q", st.State)
	}
	if err := api.Pause(ctx); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("pause of a paused VM: %v, want 409", err)
	}
	if err := api.Resume(ctx); err != nil {
		t.Fatal(err)
	}

	cp, err := api.Checkpoint(ctx, "c1")
	if err != nil || cp.ID != "c1" || cp.Pages == 0 {
		t.Fatalf("checkpoint = %+v, %v", cp, err)
	}
	if _, err := api.Checkpoint(ctx, "c1"); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("second checkpoint c1: %v, want 409", err)
	}

	// A fork: a checkpoint, then a new sailbox-vmm process restored from
	// it as a fork (the daemon's backend does the same).
	fc, err := api.Checkpoint(ctx, "f1")
	if err != nil {
		t.Fatal(err)
	}
	if fc.Parent != "c1" {
		t.Errorf("fork checkpoint's parent %q, want c1", fc.Parent)
	}
	kid, childAPI := startForkChild(t, ctx, filepath.Join(dir, "store"), "f1", dir)
	out, _, _, err := kid.Run(ctx, "cat", "/tmp/who")
	if err != nil || string(out) != "parent" {
		t.Errorf("child /tmp/who = %q, %v; want the parent's memory", out, err)
	}
	// The child VMM renews the guest's identity right after restoring.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		out, _, _, _ := kid.Run(ctx, "hostname")
		if strings.TrimSpace(string(out)) == "sbx-kid" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child hostname still %q", out)
		}
	}
	if err := vmmapi.NewClient(childAPI).Shutdown(ctx); err != nil {
		t.Errorf("child shutdown: %v", err)
	}
	// The parent runs on.
	if out, _, _, err := agent.Run(ctx, "cat", "/tmp/who"); err != nil || string(out) != "parent" {
		t.Errorf("parent after fork: %q, %v", out, err)
	}
}

// A kernel boots afresh on the disks of a checkpoint (-disks-from), as an
// upgrade does: the new guest reads what the old one wrote to /dev/vda,
// and its own checkpoints chain onto the old checkpoint's disk layers.
func TestKVMBootOnCheckpointDisks(t *testing.T) {
	kvmtest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(base, 8<<20); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// Raw sectors of /dev/vda, written through to the device.
	const before, after = "written before the checkpoint", "written after the reboot"
	const beforeSector, afterSector = 2048, 6144
	write := func(agent *guestagent.Client, sector int, data string) {
		t.Helper()
		script := fmt.Sprintf("printf %%s '%s' | dd of=/dev/vda bs=512 seek=%d count=1 conv=notrunc,sync,fsync", data, sector)
		if out, errOut, code, err := agent.Run(ctx, "sh", "-c", script); code != 0 || err != nil {
			t.Fatalf("write sector %d: exit %d, %v: %s%s", sector, code, err, out, errOut)
		}
	}
	read := func(agent *guestagent.Client, sector, n int) string {
		t.Helper()
		script := fmt.Sprintf("dd if=/dev/vda bs=512 skip=%d count=1 2>/dev/null | head -c %d", sector, n)
		out, errOut, code, err := agent.Run(ctx, "sh", "-c", script)
		if code != 0 || err != nil {
			t.Fatalf("read sector %d: exit %d, %v: %s", sector, code, err, errOut)
		}
		return string(out)
	}

	p := startVMM(t, "-store", store, "-disk", base+",layered,id=vda")
	write(p.waitAgent(t), beforeSector, before)
	api := vmmapi.NewClient(p.api)
	if _, err := api.Checkpoint(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if err := api.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t); err != nil {
		t.Fatalf("first VM: %v", err)
	}

	p2 := startVMM(t, "-store", store, "-disks-from", "c1")
	agent := p2.waitAgent(t)
	if got := read(agent, beforeSector, len(before)); got != before {
		t.Fatalf("after a boot on c1's disks, sector %d holds %q, want %q", beforeSector, got, before)
	}
	write(agent, afterSector, after)
	if _, err := vmmapi.NewClient(p2.api).Checkpoint(ctx, "c2"); err != nil {
		t.Fatal(err)
	}

	root, err := snapshot.OpenRoot(store, nil)
	if err != nil {
		t.Fatal(err)
	}
	c1, err := root.Load("c1")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := root.Load("c2")
	if err != nil {
		t.Fatal(err)
	}
	old, chained := c1.Disks["vda"], c2.Disks["vda"]
	if len(old.Layers) == 0 || len(chained.Layers) != len(old.Layers)+1 || !slices.Equal(chained.Layers[:len(old.Layers)], old.Layers) ||
		chained.Base != old.Base || chained.Size != old.Size || len(c2.Disks) != 1 {
		t.Fatalf("c2's disks %+v, want vda as c1's %+v plus one layer", c2.Disks, old)
	}
	// The chain reads as the rebooted guest's disk: both writes.
	disk, err := root.OpenDisk(c2, "vda", root.TopPath("test-vda.top"))
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	for _, w := range []struct {
		sector int
		data   string
	}{{beforeSector, before}, {afterSector, after}} {
		buf := make([]byte, len(w.data))
		if _, err := disk.ReadAt(buf, int64(w.sector)*512); err != nil || string(buf) != w.data {
			t.Errorf("c2's vda at sector %d: %q, %v; want %q", w.sector, buf, err, w.data)
		}
	}
}
