package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// asMain makes the test binary run sailbox-vmm's main when started as a
// fork's child VMM (the parent execs its own executable).
const asMain = "SAILBOX_VMM_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMain) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The control socket pauses, resumes, checkpoints and forks a running VM:
// the fork is a new sailbox-vmm process restored from the checkpoint, with
// the parent's memory and its own identity; the parent runs on.
func TestKVMCheckpointAndForkOverSocket(t *testing.T) {
	kvmtest.Require(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.ext4")
	if err := os.WriteFile(base, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(base, 32<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", base).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
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

	t.Setenv(asMain, "1")
	child := vmmapi.ForkRequest{
		CheckpointID:   "f1",
		Name:           "kid",
		ChildAPISocket: filepath.Join(dir, "child.api"),
		ChildVsockUDS:  filepath.Join(dir, "child.vsock"),
	}
	fr, err := api.Fork(ctx, child)
	if err != nil {
		t.Fatal(err)
	}
	if fr.Checkpoint.Parent != "c1" {
		t.Errorf("fork checkpoint's parent %q, want c1", fr.Checkpoint.Parent)
	}
	t.Cleanup(func() { syscall.Kill(fr.ChildPID, syscall.SIGKILL) })
	kid := &guestagent.Client{Dial: func(ctx context.Context) (net.Conn, error) {
		return guestagent.DialHybridVsock(ctx, child.ChildVsockUDS, guestagent.Port)
	}}
	if _, err := kid.WaitHealthy(ctx, 100*time.Millisecond, nil); err != nil {
		log, _ := os.ReadFile(child.ChildAPISocket + ".log")
		t.Fatalf("child agent: %v; child log:\n%s", err, log)
	}
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
	if err := vmmapi.NewClient(child.ChildAPISocket).Shutdown(ctx); err != nil {
		t.Errorf("child shutdown: %v", err)
	}
	// The parent runs on.
	if out, _, _, err := agent.Run(ctx, "cat", "/tmp/who"); err != nil || string(out) != "parent" {
		t.Errorf("parent after fork: %q, %v", out, err)
	}
}
