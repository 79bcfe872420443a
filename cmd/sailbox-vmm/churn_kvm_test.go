package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// VMs come and go as they do on a busy host: three sailbox-vmm processes
// with two vCPUs each boot at once; one is killed with SIGKILL while its
// guest is still booting, one while both its vCPUs spin in the guest
// (inside KVM_RUN), and the third, whose guest also spins, goes on
// answering and then shuts down cleanly. A fresh VM boots after. KVM frees
// what a killed VMM held, and nothing of one VM reaches another. This is
// also the lab's soak test (make soak): it creates and destroys VMs the
// ways that once crashed the lab.
func TestKVMChurn(t *testing.T) {
	kvmtest.Require(t)
	dir := t.TempDir()
	vmms := make([]*childVMM, 3)
	for i := range vmms {
		vmms[i] = startChildVMM(t, filepath.Join(dir, fmt.Sprint(i)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Killed while booting: its vCPUs are busy in KVM_RUN from the start.
	vmms[0].kill(t)

	spin := "for i in 1 2; do (while :; do :; done) </dev/null >/dev/null 2>&1 & done; echo started"
	for _, v := range vmms[1:] {
		v.waitAgent(ctx, t)
		if out, _, code, err := v.agent.Run(ctx, "sh", "-c", spin); err != nil || code != 0 {
			t.Fatalf("%s: start spinners: %q, %d, %v", v.name, out, code, err)
		}
	}
	vmms[1].kill(t)

	survivor := vmms[2]
	if out, _, code, err := survivor.agent.Run(ctx, "cat", "/proc/loadavg"); err != nil || code != 0 {
		t.Fatalf("the VM that was not killed: %q, %d, %v", out, code, err)
	}
	if err := vmmapi.NewClient(survivor.api).Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if err := survivor.wait(); err != nil {
		t.Errorf("%s after a clean shutdown: %v", survivor.name, err)
	}

	fresh := startChildVMM(t, filepath.Join(dir, "fresh"))
	fresh.waitAgent(ctx, t)
	if out, _, code, err := fresh.agent.Run(ctx, "true"); err != nil || code != 0 {
		t.Fatalf("a VM booted after the others went: %q, %d, %v", out, code, err)
	}
}

// childVMM is a sailbox-vmm process (this test binary as its main).
type childVMM struct {
	name, api, vsock string
	cmd              *exec.Cmd
	agent            *guestagent.Client
	done             chan struct{} // closed when the process has been waited for
	err              error
}

func startChildVMM(t *testing.T, dir string, extra ...string) *childVMM {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	v := &childVMM{name: "vmm " + filepath.Base(dir), api: filepath.Join(dir, "api"), vsock: filepath.Join(dir, "vsock"), done: make(chan struct{})}
	log, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	v.cmd = exec.Command(os.Args[0], append([]string{"-kernel", kvmtest.Artifact(t, "SAILBOX_GUEST_KERNEL"),
		"-initrd", kvmtest.Artifact(t, "SAILBOX_GUEST_INITRAMFS"), "-mem", "128", "-cpus", "2",
		"-vsock-cid", "3", "-vsock-uds", v.vsock, "-api-sock", v.api, "-console=false"}, extra...)...)
	v.cmd.Env = append(os.Environ(), asMain+"=1")
	v.cmd.Stdout, v.cmd.Stderr = log, log
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		v.err = v.cmd.Wait()
		log.Close()
		close(v.done)
	}()
	v.agent = guestagent.NewHybridClient(v.vsock)
	t.Cleanup(func() {
		v.cmd.Process.Kill()
		<-v.done
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "log"))
			t.Logf("%s log:\n%s", v.name, b)
		}
	})
	return v
}

func (v *childVMM) waitAgent(ctx context.Context, t *testing.T) {
	t.Helper()
	if _, err := v.agent.WaitHealthy(ctx, 200*time.Millisecond, v.done); err != nil {
		// Where the vCPUs are tells a guest the lab's emulated SVM
		// broke (stuck at a lab-kernel address) from one of ours.
		dctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		vcpus, derr := vmmapi.NewClient(v.api).DescribeVCPUs(dctx)
		t.Fatalf("%s: agent not ready: %v; vCPUs (%v):\n%s", v.name, err, derr, vcpus)
	}
}

// kill sends SIGKILL and checks that it is what ended the process.
func (v *childVMM) kill(t *testing.T) {
	t.Helper()
	if err := v.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("%s: kill: %v", v.name, err)
	}
	var exit *exec.ExitError
	if err := v.wait(); !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("%s: ended with %v, want killed by SIGKILL", v.name, err)
	}
}

func (v *childVMM) wait() error {
	select {
	case <-v.done:
		return v.err
	case <-time.After(5 * time.Minute):
		return errors.New("did not end within five minutes")
	}
}
