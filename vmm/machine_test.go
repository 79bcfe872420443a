package vmm

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// syncBuffer is a console that tests can read while the guest writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls the console until it contains want or the deadline passes.
func (b *syncBuffer) waitFor(want string, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if strings.Contains(b.String(), want) {
			return true
		}
	}
	return false
}

// TestKVMBootLinuxToInit boots the project's guest kernel and initramfs and
// checks that the kernel came up with every vCPU and ran /init.
func TestKVMBootLinuxToInit(t *testing.T) {
	sys := kvmtest.Require(t)
	kernel := kvmtest.Artifact(t, "SAILBOX_GUEST_KERNEL")
	initrd := kvmtest.Artifact(t, "SAILBOX_GUEST_INITRAMFS")
	console := &syncBuffer{}
	m, err := New(sys, Config{KernelPath: kernel, InitrdPath: initrd, MemoryMiB: 256, VCPUs: 2, Serial: console})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	done := make(chan error, 1)
	go func() {
		_, err := m.Run(context.Background())
		done <- err
	}()
	ok := console.waitFor("Run /init as init process", 3*time.Minute)
	m.Stop()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	out := console.String()
	if !ok {
		t.Fatalf("the kernel did not reach /init; console:\n%s", out)
	}
	for _, want := range []string{"Linux version 6.1", "smp: Brought up 1 node, 2 CPUs", "clocksource: Switched to clocksource kvm-clock"} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	t.Logf("console:\n%s", out)
}
