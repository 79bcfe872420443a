package vmm

import (
	"testing"

	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

func TestGuestCPUID(t *testing.T) {
	in := []kvm.CPUIDEntry{
		{Function: leafFeatures, EBX: 0xff00_1234, ECX: 0x1, EDX: 0x2},
		{Function: leafPerfMon, EAX: 0x7300_0403},
		{Function: leafTopology, Index: 0, EDX: 99},
		{Function: leafTopology, Index: 1, EDX: 99},
		{Function: leafKVMFeatures, EAX: 0x1234 | kvmAsyncPFFeature},
	}
	out := guestCPUID(in, 2, 4)
	if len(out) != len(in) {
		t.Fatalf("%d entries, want %d", len(out), len(in))
	}
	f := out[0]
	if f.ECX&ecxHypervisor == 0 || f.EBX>>24 != 2 || f.EBX>>16&0xff != 4 || f.EBX&0xffff != 0x1234 || f.EDX&edxHTT == 0 {
		t.Errorf("leaf 1 = %+v", f)
	}
	if out[1].EAX != 0 {
		t.Errorf("PMU leaf not cleared: %+v", out[1])
	}
	if out[2].EDX != 2 || out[3].EDX != 2 || out[3].EBX != 4 || out[3].EAX != 2 {
		t.Errorf("topology leaves = %+v %+v", out[2], out[3])
	}
	if want := (kvm.CPUIDEntry{Function: leafKVMFeatures, EAX: 0x1234 &^ kvmAsyncPF}); out[4] != want {
		t.Errorf("KVM paravirt leaf = %+v, want %+v: every feature but async page faults", out[4], want)
	}
	if in[0].ECX&ecxHypervisor != 0 {
		t.Error("input modified")
	}
}

func TestWithTSCDeadline(t *testing.T) {
	in := []kvm.CPUIDEntry{{Function: 0}, {Function: leafFeatures, ECX: 0x1}}
	out := withTSCDeadline(in)
	if out[1].ECX != 0x1|ecxTSCDeadline || out[0] != in[0] {
		t.Errorf("withTSCDeadline = %+v; want leaf 1 ECX %#x and the rest unchanged", out, 0x1|ecxTSCDeadline)
	}
	if in[1].ECX != 0x1 {
		t.Error("input modified")
	}
	if g := guestCPUID(out, 0, 1); g[1].ECX&ecxTSCDeadline == 0 {
		t.Error("guestCPUID dropped the TSC-deadline bit")
	}
}
