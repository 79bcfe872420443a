package vmm

import (
	"bytes"
	"context"
	"testing"

	"github.com/sailbox-dev/sailbox/internal/kvmtest"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// TestKVMProbeSerialAndHalt runs the real-mode probe guest on real KVM and
// checks the exact bytes it wrote to COM1 and that it ended in HLT.
func TestKVMProbeSerialAndHalt(t *testing.T) {
	sys := kvmtest.Require(t)
	var console bytes.Buffer
	res, err := Probe(context.Background(), sys, &console)
	if err != nil {
		t.Fatalf("Probe: %v (serial so far %q)", err, res.Serial)
	}
	if got := string(res.Serial); got != ProbeMessage {
		t.Errorf("serial = %q, want %q", got, ProbeMessage)
	}
	if console.String() != ProbeMessage {
		t.Errorf("streamed serial = %q, want %q", console.String(), ProbeMessage)
	}
	if res.Exit != kvm.ExitHLT {
		t.Errorf("final exit = %v, want %v", res.Exit, kvm.ExitHLT)
	}
	// One exit per byte written plus the halt; EINTR returns may add more.
	if res.Exits < len(ProbeMessage)+1 {
		t.Errorf("exits = %d, want at least %d", res.Exits, len(ProbeMessage)+1)
	}
	t.Logf("probe: %d exits, ended in %v", res.Exits, res.Exit)
}

// TestKVMCapabilities checks that the KVM under test offers what later
// milestones depend on, so a host that lacks them fails early and by name.
func TestKVMCapabilities(t *testing.T) {
	sys := kvmtest.Require(t)
	for _, c := range []struct {
		name string
		cap  kvm.Capability
	}{
		{"KVM_CAP_USER_MEMORY", kvm.CapUserMemory},
		{"KVM_CAP_IRQCHIP", kvm.CapIRQChip},
		{"KVM_CAP_IMMEDIATE_EXIT", kvm.CapImmediateExit},
		{"KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", kvm.CapManualDirtyLogProtect2},
	} {
		v, err := sys.CheckExtension(c.cap)
		if err != nil {
			t.Fatal(err)
		}
		if v == 0 {
			t.Errorf("%s not offered", c.name)
		}
		t.Logf("%s = %d", c.name, v)
	}
}

// The probe code is hand-assembled; check its layout without KVM.
func TestProbeCodeLayout(t *testing.T) {
	code := probeCode("hi")
	if len(code) != 15+3 || code[len(code)-1] != 0 || string(code[15:17]) != "hi" {
		t.Fatalf("probe code = % x", code)
	}
	if code[14] != 0xF4 {
		t.Fatalf("byte 14 = %#x, want hlt", code[14])
	}
	// mov si, imm16 must point at the message.
	if si := int(code[4]) | int(code[5])<<8; si != probeEntry+15 {
		t.Fatalf("message address %#x, want %#x", si, probeEntry+15)
	}
}
