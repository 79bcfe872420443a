package kvm

import (
	"testing"
	"unsafe"
)

// The sizes below are those of the C structs on x86-64, from pahole on
// include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h. A mismatch
// means a Go mirror drifted from the kernel ABI.
func TestABISizes(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"kvm_userspace_memory_region", unsafe.Sizeof(UserspaceMemoryRegion{}), sizeofUserspaceMemoryRegion},
		{"kvm_regs", unsafe.Sizeof(Regs{}), sizeofRegs},
		{"kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"kvm_dtable", unsafe.Sizeof(DTable{}), 16},
		{"kvm_sregs", unsafe.Sizeof(Sregs{}), sizeofSregs},
		{"kvm_run head", unsafe.Sizeof(runHeader{}), sizeofRunHeader},
		{"kvm_run.io", unsafe.Sizeof(runIO{}), 16},
		{"kvm_run.internal", unsafe.Sizeof(runInternal{}), 136},
	} {
		if c.got != c.want {
			t.Errorf("sizeof %s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if off := unsafe.Offsetof(runHeader{}.ExitReason); off != 8 {
		t.Errorf("kvm_run.exit_reason at %d, want 8", off)
	}
	if off := unsafe.Offsetof(runMMIO{}.Len); off != 16 {
		t.Errorf("kvm_run.mmio.len at %d, want 16", off)
	}
}

// The ioctl numbers as the kernel headers spell them out in hex.
func TestIoctlNumbers(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"KVM_GET_API_VERSION", ioctlGetAPIVersion, 0xAE00},
		{"KVM_CREATE_VM", ioctlCreateVM, 0xAE01},
		{"KVM_CREATE_VCPU", ioctlCreateVCPU, 0xAE41},
		{"KVM_SET_USER_MEMORY_REGION", ioctlSetUserMemoryRegion, 0x4020AE46},
		{"KVM_RUN", ioctlRun, 0xAE80},
		{"KVM_GET_REGS", ioctlGetRegs, 0x8090AE81},
		{"KVM_SET_REGS", ioctlSetRegs, 0x4090AE82},
		{"KVM_GET_SREGS", ioctlGetSregs, 0x8138AE83},
		{"KVM_SET_SREGS", ioctlSetSregs, 0x4138AE84},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}
