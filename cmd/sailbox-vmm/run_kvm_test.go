package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
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
		// run is this test process: a filter would stay on it and kill
		// its next exec. The VMMs tests start as processes have one
		// (TestKVMSeccompFilter).
		"-seccomp", "off",
		// Landlock would stay on it too, and keep the tests that follow
		// from their files; TestKVMDaemonUnprivileged and every VMM
		// started as a process run under it.
		"-landlock=false",
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
			if t.Failed() {
				// Where the vCPUs are tells a guest the lab's emulated
				// SVM broke (stuck at a lab-kernel address, a sign the
				// runner knows) from one of ours.
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				d, err := vmmapi.NewClient(p.api).DescribeVCPUs(ctx)
				cancel()
				t.Logf("vCPUs (%v):\n%s", err, d)
			}
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

// A sailbox-vmm process runs its guest with the seccomp filter on every
// thread, and lives through what a box does: exec over vsock, the control
// API, pause and resume, a checkpoint into the store; then a restore of
// it in a new process, which renews the guest, records its working set
// and checkpoints again. Both end with status 0 when shut down: a call
// off the list would have killed them with SIGSYS (run the VMM with
// -seccomp trap to see which).
func TestKVMSeccompFilter(t *testing.T) {
	kvmtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	base := filepath.Join(dir, "base.ext4")
	kvmtest.Ext4Image(t, base, 32<<20)
	booted := startChildVMM(t, filepath.Join(dir, "booted"), "-store", store, "-disk", base+",layered,id=vda")
	if vcpus, err := booted.waitAgent(ctx); err != nil {
		t.Fatalf("%s: agent not ready: %v; vCPUs:\n%s", booted.name, err, vcpus)
	}
	requireFiltered(t, booted.cmd.Process.Pid)
	if out, _, code, err := booted.agent.Run(ctx, "sh", "-c", "echo -n kept > /tmp/kept; sync"); err != nil || code != 0 {
		t.Fatalf("exec: %q, %d, %v", out, code, err)
	}
	api := vmmapi.NewClient(booted.api)
	if _, err := api.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := api.DescribeVCPUs(ctx); err != nil {
		t.Fatal(err)
	}
	if err := api.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := api.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := api.Checkpoint(ctx, "c1"); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	if out, _, code, err := booted.agent.Run(ctx, "cat", "/tmp/kept"); err != nil || code != 0 || string(out) != "kept" {
		t.Fatalf("exec after the checkpoint: %q, %d, %v", out, code, err)
	}
	requireFiltered(t, booted.cmd.Process.Pid) // threads started since too
	if err := api.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := booted.wait(); err != nil {
		t.Fatalf("booted VMM after shutdown: %v", err)
	}

	t.Setenv(asMain, "1")
	restored := vmmapi.Launch{
		MemoryMiB: vmmapi.DefaultMemoryMiB, VCPUs: vmmapi.DefaultVCPUs, Store: store, Restore: "c1",
		APISocket: filepath.Join(dir, "restored.api"), VsockUDS: filepath.Join(dir, "restored.vsock"),
		Log: filepath.Join(dir, "restored.log"),
	}
	cmd, err := restored.Start(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	agent := guestagent.NewHybridClient(restored.VsockUDS)
	if _, err := agent.WaitHealthy(ctx, 100*time.Millisecond, nil); err != nil {
		log, _ := os.ReadFile(restored.Log)
		t.Fatalf("restored agent: %v; log:\n%s", err, log)
	}
	requireFiltered(t, cmd.Process.Pid)
	if out, _, _, err := agent.Run(ctx, "cat", "/tmp/kept"); err != nil || string(out) != "kept" {
		t.Fatalf("restored guest: %q, %v", out, err)
	}
	api = vmmapi.NewClient(restored.APISocket)
	if _, err := api.SaveWorkingSet(ctx); err != nil {
		// A host without write tracking refuses; a dead VMM fails below.
		t.Logf("working set: %v", err)
	}
	if _, err := api.Checkpoint(ctx, "c2"); err != nil {
		t.Fatalf("checkpoint of the restored VM: %v", err)
	}
	if err := api.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			log, _ := os.ReadFile(restored.Log)
			t.Fatalf("restored VMM after shutdown: %v; log:\n%s", err, log)
		}
	case <-ctx.Done():
		t.Fatal("restored VMM did not end")
	}
}

// requireFiltered checks /proc: every thread of process pid is in seccomp
// filter mode, with no_new_privs and at least one filter (where the kernel
// counts them: Linux 5.9).
func requireFiltered(t *testing.T, pid int) {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		if err != nil {
			continue // the thread has exited
		}
		status := string(b)
		filters := 1 // if not counted
		for _, line := range strings.Split(status, "\n") {
			if v, ok := strings.CutPrefix(line, "Seccomp_filters:"); ok {
				filters, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if !strings.Contains(status, "Seccomp:\t2\n") || !strings.Contains(status, "NoNewPrivs:\t1\n") || filters < 1 {
			t.Fatalf("thread %s of VMM %d is not filtered (want Seccomp 2, NoNewPrivs 1, Seccomp_filters >= 1):\n%s", task.Name(), pid, status)
		}
	}
}
