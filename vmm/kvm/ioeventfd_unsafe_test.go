package kvm

import (
	"testing"
	"unsafe"
)

// The layout of struct kvm_ioeventfd on x86-64 (pahole): the kernel
// reads the fields at these offsets.
func TestIOEventFDLayout(t *testing.T) {
	var e ioeventfd
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof", unsafe.Sizeof(e), sizeofIOEventFD},
		{"datamatch", unsafe.Offsetof(e.Datamatch), 0},
		{"addr", unsafe.Offsetof(e.Addr), 8},
		{"len", unsafe.Offsetof(e.Len), 16},
		{"fd", unsafe.Offsetof(e.FD), 20},
		{"flags", unsafe.Offsetof(e.Flags), 24},
		{"pad", unsafe.Offsetof(e.Pad), 28},
	} {
		if c.got != c.want {
			t.Errorf("kvm_ioeventfd %s = %d, want %d", c.name, c.got, c.want)
		}
	}
	// _IOW(KVMIO, 0x79, struct kvm_ioeventfd)
	if ioctlIOEventFD != 0x4040ae79 {
		t.Errorf("KVM_IOEVENTFD = %#x, want 0x4040ae79", ioctlIOEventFD)
	}
}
