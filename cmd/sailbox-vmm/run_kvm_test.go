package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// lockedBuffer collects run's output while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Bad machines are refused with an error that names the problem, before
// anything runs.
func TestKVMRunRejectsBadMachines(t *testing.T) {
	kvmtest.Require(t)
	kernel := kvmtest.Artifact(t, "SAILBOX_GUEST_KERNEL")
	dir := t.TempDir()
	corrupt := filepath.Join(dir, "corrupt")
	os.WriteFile(corrupt, bytes.Repeat([]byte{0xcc}, 64<<10), 0o644)
	truncated := filepath.Join(dir, "truncated")
	b, _ := os.ReadFile(kernel)
	os.WriteFile(truncated, b[:600], 0o644)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"missing kernel", []string{"-kernel", filepath.Join(dir, "nope")}, "no such file"},
		{"corrupt kernel", []string{"-kernel", corrupt}, "not a bzImage"},
		{"truncated kernel", []string{"-kernel", truncated}, "bzimage"},
		{"memory too small", []string{"-kernel", kernel, "-mem", "16"}, "guest memory too small"},
		{"missing disk", []string{"-kernel", kernel, "-disk", filepath.Join(dir, "disk.img")}, "disk 0"},
		{"too many vCPUs", []string{"-kernel", kernel, "-cpus", "64"}, "vCPUs"},
	} {
		err := run(context.Background(), append(c.args, "-console=false"), &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one containing %q", c.name, err, c.want)
		}
	}
}

// vmmProcess is run() serving one VM, as the sailbox-vmm process would.
type vmmProcess struct {
	api, vsock string
	stderr     *lockedBuffer
	console    *lockedBuffer
	exited     chan struct{} // closed when run returns, after err is set
	err        error
}

func startVMM(t *testing.T, extra ...string) *vmmProcess {
	t.Helper()
	kvmtest.Require(t)
	dir := t.TempDir()
	p := &vmmProcess{
		api: filepath.Join(dir, "api"), vsock: filepath.Join(dir, "vsock"),
		stderr: &lockedBuffer{}, console: &lockedBuffer{}, exited: make(chan struct{}),
	}
	args := []string{
		"-kernel", kvmtest.Artifact(t, "SAILBOX_GUEST_KERNEL"),
		"-initrd", kvmtest.Artifact(t, "SAILBOX_GUEST_INITRAMFS"),
		"-mem", "256", "-vsock-cid", "3", "-vsock-uds", p.vsock, "-api-sock", p.api,
	}
	args = append(args, extra...)
	go func() {
		p.err = run(context.Background(), args, p.console, p.stderr)
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			vmmapi.NewClient(p.api).Shutdown(context.Background())
			<-p.exited
		}
		if t.Failed() {
			t.Logf("console:\n%s", p.console.String())
		}
	})
	return p
}

// waitAgent returns a client once the guest agent answers.
func (p *vmmProcess) waitAgent(t *testing.T) *guestagent.Client {
	t.Helper()
	c := guestagent.NewHybridClient(p.vsock)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := c.WaitHealthy(ctx, 200*time.Millisecond, p.exited); err != nil {
		t.Fatalf("agent not ready: %v", err)
	}
	return c
}

// wait returns run's result once the VM ends on its own.
func (p *vmmProcess) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(5 * time.Minute):
		t.Fatal("sailbox-vmm did not end")
		return nil
	}
}

// The control socket reports the VM and stops it on request; sailbox-vmm
// then exits 0 (run returns nil).
func TestKVMControlSocket(t *testing.T) {
	p := startVMM(t)
	p.waitAgent(t)
	api := vmmapi.NewClient(p.api)
	st, err := api.Status(context.Background())
	if err != nil || st.State != "running" || st.VCPUs != 1 || st.MemoryMiB != 256 || st.PID != os.Getpid() {
		t.Fatalf("status = %+v, %v", st, err)
	}
	if err := api.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t); err != nil {
		t.Fatalf("run after shutdown: %v", err)
	}
	if _, err := os.Stat(p.api); !os.IsNotExist(err) {
		t.Errorf("api socket left behind: %v", err)
	}
}

// A guest `poweroff` ends sailbox-vmm with success; so does `reboot`
// (reported as such, for the caller to restart the box if it wants).
func TestKVMGuestPowerOffAndReboot(t *testing.T) {
	for _, c := range []struct{ cmd, want string }{
		{"poweroff", "guest poweroff"},
		{"reboot", "guest reset"},
	} {
		t.Run(c.cmd, func(t *testing.T) {
			p := startVMM(t)
			agent := p.waitAgent(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			go agent.Run(ctx, c.cmd, "-f") // does not return normally: the guest goes away
			if err := p.wait(t); err != nil {
				t.Fatalf("run after guest %s: %v", c.cmd, err)
			}
			if !strings.Contains(p.stderr.String(), c.want) {
				t.Errorf("stderr %q lacks %q", p.stderr.String(), c.want)
			}
		})
	}
}
