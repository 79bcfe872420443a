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
		{"kvm_mp_state", unsafe.Sizeof(mpState{}), sizeofMPState},
		{"kvm_msrs head", unsafe.Offsetof(msrs{}.Entries), sizeofMSRsHeader},
		{"kvm_xsave", unsafe.Sizeof(xsave{}), sizeofXSave},
		{"kvm_xcr", unsafe.Sizeof(XCR{}), 16},
		{"kvm_xcrs", unsafe.Sizeof(XCRs{}), sizeofXCRs},
		{"kvm_debugregs", unsafe.Sizeof(DebugRegs{}), sizeofDebugRegs},
		{"kvm_vcpu_events", unsafe.Sizeof(VCPUEvents{}), sizeofVCPUEvents},
		{"kvm_vcpu_events.exception", unsafe.Sizeof(EventException{}), 8},
		{"kvm_vcpu_events.interrupt", unsafe.Sizeof(EventInterrupt{}), 4},
		{"kvm_vcpu_events.nmi", unsafe.Sizeof(EventNMI{}), 4},
		{"kvm_vcpu_events.smi", unsafe.Sizeof(EventSMI{}), 4},
		{"kvm_irqchip", unsafe.Sizeof(IRQChip{}), sizeofIRQChip},
		{"kvm_pic_state", unsafe.Sizeof(PICState{}), sizeofPICState},
		{"kvm_ioapic_state", unsafe.Sizeof(IOAPICState{}), sizeofIOAPICState},
		{"kvm_pit_channel_state", unsafe.Sizeof(PITChannelState{}), 24},
		{"kvm_pit_state2", unsafe.Sizeof(PITState{}), sizeofPITState2},
		{"kvm_clock_data", unsafe.Sizeof(ClockData{}), sizeofClockData},
		{"kvm_enable_cap", unsafe.Sizeof(enableCap{}), sizeofEnableCap},
		{"kvm_dirty_log", unsafe.Sizeof(dirtyLog{}), sizeofDirtyLog},
		{"kvm_clear_dirty_log", unsafe.Sizeof(clearDirtyLog{}), sizeofClearDirtyLog},
		{"kvm_pre_fault_memory", unsafe.Sizeof(preFaultMemory{}), sizeofPreFaultMemory},
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

// Field offsets where Go's layout could drift from C's: after runs of
// bytes, and before 64-bit fields. Also from the C compiler (offsetof).
func TestABIOffsets(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"kvm_vcpu_events.sipi_vector", unsafe.Offsetof(VCPUEvents{}.SIPIVector), 16},
		{"kvm_vcpu_events.flags", unsafe.Offsetof(VCPUEvents{}.Flags), 20},
		{"kvm_vcpu_events.smi", unsafe.Offsetof(VCPUEvents{}.SMI), 24},
		{"kvm_vcpu_events.triple_fault", unsafe.Offsetof(VCPUEvents{}.TripleFaultPending), 28},
		{"kvm_vcpu_events.exception_has_payload", unsafe.Offsetof(VCPUEvents{}.ExceptionHasPayload), 55},
		{"kvm_vcpu_events.exception_payload", unsafe.Offsetof(VCPUEvents{}.ExceptionPayload), 56},
		{"kvm_xcrs.xcrs", unsafe.Offsetof(XCRs{}.XCRs), 8},
		{"kvm_debugregs.flags", unsafe.Offsetof(DebugRegs{}.Flags), 48},
		{"kvm_irqchip.chip", unsafe.Offsetof(IRQChip{}.Chip), 8},
		{"kvm_ioapic_state.redirtbl", unsafe.Offsetof(IOAPICState{}.RedirTbl), 24},
		{"kvm_pit_channel_state.count_load_time", unsafe.Offsetof(PITChannelState{}.CountLoadTime), 16},
		{"kvm_pit_state2.flags", unsafe.Offsetof(PITState{}.Flags), 72},
		{"kvm_clock_data.realtime", unsafe.Offsetof(ClockData{}.Realtime), 16},
		{"kvm_clock_data.host_tsc", unsafe.Offsetof(ClockData{}.HostTSC), 24},
		{"kvm_enable_cap.args", unsafe.Offsetof(enableCap{}.Args), 8},
		{"kvm_dirty_log.dirty_bitmap", unsafe.Offsetof(dirtyLog{}.Bitmap), 8},
		{"kvm_clear_dirty_log.first_page", unsafe.Offsetof(clearDirtyLog{}.FirstPage), 8},
		{"kvm_clear_dirty_log.dirty_bitmap", unsafe.Offsetof(clearDirtyLog{}.Bitmap), 16},
	} {
		if c.got != c.want {
			t.Errorf("offsetof %s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

// The ioctl numbers as the kernel headers spell them out in hex (printed
// by a C program including <linux/kvm.h> from Linux 6.1).
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
		{"KVM_GET_MSR_INDEX_LIST", ioctlGetMSRIndexList, 0xC004AE02},
		{"KVM_GET_MSR_FEATURE_INDEX_LIST", ioctlGetMSRFeatureIndexList, 0xC004AE0A},
		{"KVM_GET_MSRS", ioctlGetMSRs, 0xC008AE88},
		{"KVM_GET_CPUID2", ioctlGetCPUID2, 0xC008AE91},
		{"KVM_GET_MP_STATE", ioctlGetMPState, 0x8004AE98},
		{"KVM_SET_MP_STATE", ioctlSetMPState, 0x4004AE99},
		{"KVM_GET_VCPU_EVENTS", ioctlGetVCPUEvents, 0x8040AE9F},
		{"KVM_SET_VCPU_EVENTS", ioctlSetVCPUEvents, 0x4040AEA0},
		{"KVM_GET_DEBUGREGS", ioctlGetDebugRegs, 0x8080AEA1},
		{"KVM_SET_DEBUGREGS", ioctlSetDebugRegs, 0x4080AEA2},
		{"KVM_GET_XSAVE", ioctlGetXSave, 0x9000AEA4},
		{"KVM_SET_XSAVE", ioctlSetXSave, 0x5000AEA5},
		{"KVM_GET_XSAVE2", ioctlGetXSave2, 0x9000AECF},
		{"KVM_GET_XCRS", ioctlGetXCRs, 0x8188AEA6},
		{"KVM_SET_XCRS", ioctlSetXCRs, 0x4188AEA7},
		{"KVM_SET_TSC_KHZ", ioctlSetTSCKHz, 0xAEA2},
		{"KVM_GET_TSC_KHZ", ioctlGetTSCKHz, 0xAEA3},
		{"KVM_KVMCLOCK_CTRL", ioctlKVMClockCtrl, 0xAEAD},
		{"KVM_GET_IRQCHIP", ioctlGetIRQChip, 0xC208AE62},
		{"KVM_SET_IRQCHIP", ioctlSetIRQChip, 0x8208AE63},
		{"KVM_PRE_FAULT_MEMORY", ioctlPreFaultMemory, 0xC040AED5},
		{"KVM_GET_PIT2", ioctlGetPIT2, 0x8070AE9F},
		{"KVM_SET_PIT2", ioctlSetPIT2, 0x4070AEA0},
		{"KVM_GET_CLOCK", ioctlGetClock, 0x8030AE7C},
		{"KVM_SET_CLOCK", ioctlSetClock, 0x4030AE7B},
		{"KVM_ENABLE_CAP", ioctlEnableCap, 0x4068AEA3},
		{"KVM_GET_DIRTY_LOG", ioctlGetDirtyLog, 0x4010AE42},
		{"KVM_CLEAR_DIRTY_LOG", ioctlClearDirtyLog, 0xC018AEC0},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}
