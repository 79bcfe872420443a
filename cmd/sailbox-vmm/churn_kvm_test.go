package main

import (
	"context"
	"errors"
	"fmt"
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
	"github.com/sailbox-dev/sailbox/vmm"
)

// VMs come and go as they do on a busy host: three sailbox-vmm processes
// with two vCPUs each boot at once; one is killed with SIGKILL while its
// guest is still booting, one while both its vCPUs spin in the guest
// (inside KVM_RUN), and the third, whose guest also spins, goes on
// answering and then shuts down cleanly. A fresh VM boots after. KVM frees
// what a killed VMM held, and nothing of one VM reaches another. This is
// also the lab's soak test (make soak): it creates and destroys VMs the
// ways that once crashed the lab. A boot the lab's emulated SVM breaks is
// replaced, in the lab only (answering).
func TestKVMChurn(t *testing.T) {
	kvmtest.Require(t)
	dir := t.TempDir()
	vmms := make([]*childVMM, 3)
	for i := range vmms {
		vmms[i] = startChildVMM(t, filepath.Join(dir, fmt.Sprint(i)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// Killed while booting: its vCPUs are busy in KVM_RUN from the start.
	vmms[0].kill(t)

	spin := "for i in 1 2; do (while :; do :; done) </dev/null >/dev/null 2>&1 & done; echo started"
	for i := 1; i < len(vmms); i++ {
		vmms[i] = vmms[i].answering(ctx, t)
		v := vmms[i]
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

	fresh := startChildVMM(t, filepath.Join(dir, "fresh")).answering(ctx, t)
	if out, _, code, err := fresh.agent.Run(ctx, "true"); err != nil || code != 0 {
		t.Fatalf("a VM booted after the others went: %q, %d, %v", out, code, err)
	}
}

// childVMM is a sailbox-vmm process (this test binary as its main).
type childVMM struct {
	dir, name, api string
	vsock          string
	extra          []string // the flags it was started with beyond the machine's
	cmd            *exec.Cmd
	agent          *guestagent.Client
	done           chan struct{} // closed when the process has been waited for
	err            error
}

func startChildVMM(t *testing.T, dir string, extra ...string) *childVMM {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	v := &childVMM{dir: dir, extra: extra, name: "vmm " + filepath.Base(dir), api: filepath.Join(dir, "api"), vsock: filepath.Join(dir, "vsock"), done: make(chan struct{})}
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

// bootAttempts is how many VMs answering boots, in the lab, for one that
// answers.
const bootAttempts = 3

// answering returns v once its agent answers. In the lab only, a VM whose
// guest the lab broke while it booted (vmm.HostRIP) is killed and another,
// with the same flags, boots in its place, each counted in the log, up to
// bootAttempts in all: a test that boots VMs over and over meets that in
// many lab runs. Any other failure, and the sign on a host's real KVM,
// fails the test.
func (v *childVMM) answering(ctx context.Context, t *testing.T) *childVMM {
	t.Helper()
	for attempt := 1; ; attempt++ {
		vcpus, err := v.waitAgent(ctx)
		if err == nil {
			return v
		}
		if !kvmtest.InLab() || !strings.Contains(vcpus, vmm.HostRIP) || attempt == bootAttempts {
			t.Fatalf("%s: agent not ready: %v; vCPUs:\n%s", v.name, err, vcpus)
		}
		t.Logf("%s: the lab broke its guest while it booted (boot %d of at most %d); booting another in its place. vCPUs:\n%s", v.name, attempt, bootAttempts, vcpus)
		v.kill(t)
		v = startChildVMM(t, fmt.Sprintf("%s-again%d", v.dir, attempt), v.extra...)
	}
}

// waitAgent waits, up to 3 minutes (a hang detector: a boot takes
// seconds), for the agent to answer. If it does not, it returns why and
// where the vCPUs are, which tells a guest the lab's emulated SVM broke
// (stuck at a lab-kernel address) from one of ours.
func (v *childVMM) waitAgent(ctx context.Context) (vcpus string, err error) {
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if _, err := v.agent.WaitHealthy(wctx, 200*time.Millisecond, v.done); err != nil {
		dctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		vcpus, derr := vmmapi.NewClient(v.api).DescribeVCPUs(dctx)
		if derr != nil {
			vcpus += fmt.Sprintf("(describe: %v)", derr)
		}
		return vcpus, err
	}
	return "", nil
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
