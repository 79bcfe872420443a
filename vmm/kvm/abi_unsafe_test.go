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
		{"kvm_cpuid_entry2", unsafe.Sizeof(CPUIDEntry{}), sizeofCPUIDEntry},
		{"kvm_msr_entry", unsafe.Sizeof(MSREntry{}), sizeofMSREntry},
		{"kvm_fpu", unsafe.Sizeof(FPU{}), sizeofFPU},
		{"kvm_lapic_state", unsafe.Sizeof(LAPICState{}), sizeofLAPICState},
		{"kvm_pit_config", unsafe.Sizeof(pitConfig{}), sizeofPITConfig},
		{"kvm_irq_level", unsafe.Sizeof(irqLevel{}), sizeofIRQLevel},
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
		{"KVM_GET_SUPPORTED_CPUID", ioctlGetSupportedCPUID, 0xC008AE05},
		{"KVM_SET_CPUID2", ioctlSetCPUID2, 0x4008AE90},
		{"KVM_CREATE_IRQCHIP", ioctlCreateIRQChip, 0xAE60},
		{"KVM_IRQ_LINE", ioctlIRQLine, 0x4008AE61},
		{"KVM_CREATE_PIT2", ioctlCreatePIT2, 0x4040AE77},
		{"KVM_SET_MSRS", ioctlSetMSRs, 0x4008AE89},
		{"KVM_SET_FPU", ioctlSetFPU, 0x41A0AE8D},
		{"KVM_GET_LAPIC", ioctlGetLAPIC, 0x8400AE8E},
		{"KVM_SET_IDENTITY_MAP_ADDR", ioctlSetIdentityMapAddr, 0x4008AE48},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}
