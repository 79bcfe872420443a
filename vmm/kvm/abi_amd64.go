package kvm

// KVM ioctl numbers, from include/uapi/linux/kvm.h. They are computed from
// the C _IO/_IOR/_IOW macros so that a reader can check them against the
// header line by line.
const kvmio = 0xAE

const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

// ioc is the kernel's _IOC(dir, KVMIO, nr, size).
func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | kvmio<<8 | nr }

func iocNoArg(nr uintptr) uintptr    { return ioc(iocNone, nr, 0) }             // _IO
func iocW(nr, size uintptr) uintptr  { return ioc(iocWrite, nr, size) }         // _IOW
func iocR(nr, size uintptr) uintptr  { return ioc(iocRead, nr, size) }          // _IOR
func iocWR(nr, size uintptr) uintptr { return ioc(iocWrite|iocRead, nr, size) } // _IOWR

var (
	ioctlGetAPIVersion       = iocNoArg(0x00)
	ioctlCreateVM            = iocNoArg(0x01)
	ioctlCheckExtension      = iocNoArg(0x03)
	ioctlGetVCPUMmapSize     = iocNoArg(0x04)
	ioctlCreateVCPU          = iocNoArg(0x41)
	ioctlSetUserMemoryRegion = iocW(0x46, sizeofUserspaceMemoryRegion)
	ioctlSetTSSAddr          = iocNoArg(0x47)
	ioctlRun                 = iocNoArg(0x80)
	ioctlGetRegs             = iocR(0x81, sizeofRegs)
	ioctlSetRegs             = iocW(0x82, sizeofRegs)
	ioctlGetSregs            = iocR(0x83, sizeofSregs)
	ioctlSetSregs            = iocW(0x84, sizeofSregs)

	ioctlGetSupportedCPUID  = iocWR(0x05, sizeofCPUID2Header)
	ioctlGetMSRIndexList    = iocWR(0x02, sizeofMSRListHeader)
	ioctlSetIdentityMapAddr = iocW(0x48, 8)
	ioctlCreateIRQChip      = iocNoArg(0x60)
	ioctlIRQLine            = iocW(0x61, sizeofIRQLevel)
	ioctlCreatePIT2         = iocW(0x77, sizeofPITConfig)
	ioctlGetMSRs            = iocWR(0x88, sizeofMSRsHeader)
	ioctlSetMSRs            = iocW(0x89, sizeofMSRsHeader)
	ioctlSetCPUID2          = iocW(0x90, sizeofCPUID2Header)
	ioctlGetFPU             = iocR(0x8c, sizeofFPU)
	ioctlSetFPU             = iocW(0x8d, sizeofFPU)
	ioctlGetLAPIC           = iocR(0x8e, sizeofLAPICState)
	ioctlSetLAPIC           = iocW(0x8f, sizeofLAPICState)
	ioctlGetMPState         = iocR(0x98, sizeofMPState)
	ioctlSetMPState         = iocW(0x99, sizeofMPState)
	ioctlGetTSCKHz          = iocNoArg(0xa3)

	// Saving and restoring a vCPU.
	ioctlGetCPUID2              = iocWR(0x91, sizeofCPUID2Header)
	ioctlGetVCPUEvents          = iocR(0x9f, sizeofVCPUEvents)
	ioctlSetVCPUEvents          = iocW(0xa0, sizeofVCPUEvents)
	ioctlGetDebugRegs           = iocR(0xa1, sizeofDebugRegs)
	ioctlSetDebugRegs           = iocW(0xa2, sizeofDebugRegs)
	ioctlGetXSave               = iocR(0xa4, sizeofXSave)
	ioctlSetXSave               = iocW(0xa5, sizeofXSave)
	ioctlGetXSave2              = iocR(0xcf, sizeofXSave) // writes KVM_CAP_XSAVE2 bytes, not sizeof
	ioctlGetXCRs                = iocR(0xa6, sizeofXCRs)
	ioctlSetXCRs                = iocW(0xa7, sizeofXCRs)
	ioctlSetTSCKHz              = iocNoArg(0xa2)
	ioctlKVMClockCtrl           = iocNoArg(0xad)
	ioctlGetMSRFeatureIndexList = iocWR(0x0a, sizeofMSRListHeader)

	// Saving and restoring a VM, and tracking the pages its guest dirties.
	ioctlGetIRQChip    = iocWR(0x62, sizeofIRQChip)
	ioctlSetIRQChip    = iocR(0x63, sizeofIRQChip) // sic: kvm.h declares KVM_SET_IRQCHIP with _IOR
	ioctlGetPIT2       = iocR(0x9f, sizeofPITState2)
	ioctlSetPIT2       = iocW(0xa0, sizeofPITState2)
	ioctlSetClock      = iocW(0x7b, sizeofClockData)
	ioctlGetClock      = iocR(0x7c, sizeofClockData)
	ioctlEnableCap     = iocW(0xa3, sizeofEnableCap)
	ioctlGetDirtyLog   = iocW(0x42, sizeofDirtyLog) // sic: _IOW, though KVM writes the bitmap
	ioctlClearDirtyLog = iocWR(0xc0, sizeofClearDirtyLog)

	// Mapping guest memory before the guest touches it.
	ioctlPreFaultMemory = iocWR(0xd5, sizeofPreFaultMemory)
)

// APIVersion is the only KVM_GET_API_VERSION value the kernel has ever
// returned; anything else is not a KVM we know how to drive.
const APIVersion = 12

// Capability numbers for KVM_CHECK_EXTENSION.
type Capability uintptr

const (
	CapIRQChip                Capability = 0
	CapUserMemory             Capability = 3
	CapSetTSSAddr             Capability = 4
	CapImmediateExit          Capability = 136
	CapManualDirtyLogProtect2 Capability = 168
	CapDirtyLogRing           Capability = 192
	CapNrMemslots             Capability = 10
	CapMaxVCPUs               Capability = 66
	CapNrVCPUs                Capability = 9
	CapAdjustClock            Capability = 39
	CapExtCPUID               Capability = 7
	CapXSave                  Capability = 55
	CapXCRS                   Capability = 56
	CapPIT2                   Capability = 33
	CapVCPUEvents             Capability = 41
	CapDebugRegs              Capability = 50
	CapTSCControl             Capability = 60
	CapGetTSCKHz              Capability = 61
	CapKVMClockCtrl           Capability = 76
	CapSetIdentityMapAddr     Capability = 37
	CapMPState                Capability = 14

	// Saving and restoring state, and dirty-page tracking.
	CapPITState2           Capability = 35  // KVM_GET/SET_PIT2
	CapEnableCapVM         Capability = 98  // KVM_ENABLE_CAP on a VM fd
	CapCheckExtensionVM    Capability = 105 // KVM_CHECK_EXTENSION on a VM fd
	CapGetMSRFeatures      Capability = 153 // KVM_GET_MSR_FEATURE_INDEX_LIST, KVM_GET_MSRS on /dev/kvm
	CapExceptionPayload    Capability = 164 // KVM_VCPUEVENT_VALID_PAYLOAD, once enabled
	CapXSave2              Capability = 208 // value: bytes of KVM_GET_XSAVE2 (>= 4096)
	CapVMTSCControl        Capability = 214 // KVM_SET_TSC_KHZ on a VM fd
	CapPreFaultMemory      Capability = 236 // KVM_PRE_FAULT_MEMORY (Linux 6.10)
	CapX86TripleFaultEvent Capability = 218 // KVM_VCPUEVENT_VALID_TRIPLE_FAULT, once enabled
	CapTSCDeadlineTimer    Capability = 72  // the LAPIC emulates TSC-deadline mode (not in KVM_GET_SUPPORTED_CPUID)
)

// ExitReason is kvm_run.exit_reason (KVM_EXIT_*).
type ExitReason uint32

const (
	ExitUnknown       ExitReason = 0
	ExitException     ExitReason = 1
	ExitIO            ExitReason = 2
	ExitHypercall     ExitReason = 3
	ExitDebug         ExitReason = 4
	ExitHLT           ExitReason = 5
	ExitMMIO          ExitReason = 6
	ExitIRQWindowOpen ExitReason = 7
	ExitShutdown      ExitReason = 8
	ExitFailEntry     ExitReason = 9
	ExitIntr          ExitReason = 10
	ExitInternalError ExitReason = 17
	ExitSystemEvent   ExitReason = 24
)

var exitNames = map[ExitReason]string{
	ExitUnknown: "UNKNOWN", ExitException: "EXCEPTION", ExitIO: "IO",
	ExitHypercall: "HYPERCALL", ExitDebug: "DEBUG", ExitHLT: "HLT",
	ExitMMIO: "MMIO", ExitIRQWindowOpen: "IRQ_WINDOW_OPEN", ExitShutdown: "SHUTDOWN",
	ExitFailEntry: "FAIL_ENTRY", ExitIntr: "INTR", ExitInternalError: "INTERNAL_ERROR",
	ExitSystemEvent: "SYSTEM_EVENT",
}

func (r ExitReason) String() string {
	if n, ok := exitNames[r]; ok {
		return "KVM_EXIT_" + n
	}
	return "KVM_EXIT_" + itoa(uint64(r))
}

func itoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

// Direction of a port I/O exit (kvm_run.io.direction).
const (
	IODirectionIn  = 0
	IODirectionOut = 1
)

// UserspaceMemoryRegion mirrors struct kvm_userspace_memory_region.
type UserspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

const sizeofUserspaceMemoryRegion = 32

// Memory region flags (KVM_MEM_*), for MapMemory.
const (
	// MemLogDirtyPages (KVM_MEM_LOG_DIRTY_PAGES) makes KVM record which
	// pages of the slot the guest writes; read them with VM.GetDirtyLog.
	MemLogDirtyPages = 1 << 0
	MemReadonly      = 1 << 1 // KVM_MEM_READONLY: guest writes exit as MMIO
)

// Regs mirrors struct kvm_regs (x86).
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

const sizeofRegs = 144

// Segment mirrors struct kvm_segment.
type Segment struct {
	Base                           uint64
	Limit                          uint32
	Selector                       uint16
	Type                           uint8
	Present, DPL, DB, S, L, G, AVL uint8
	Unusable                       uint8
	_                              uint8
}

// DTable mirrors struct kvm_dtable (GDTR/IDTR).
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs mirrors struct kvm_sregs (x86).
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	InterruptBitmap        [4]uint64 // (KVM_NR_INTERRUPTS + 63) / 64
}

const sizeofSregs = 312

// runIO mirrors the io member of struct kvm_run's exit union.
type runIO struct {
	Direction  uint8
	Size       uint8
	Port       uint16
	Count      uint32
	DataOffset uint64 // from the start of kvm_run
}

// runMMIO mirrors the mmio member of struct kvm_run's exit union.
type runMMIO struct {
	PhysAddr uint64
	Data     [8]uint8
	Len      uint32
	IsWrite  uint8
}

// runInternal mirrors the internal member of struct kvm_run's exit union.
type runInternal struct {
	Suberror uint32
	NData    uint32
	Data     [16]uint64
}

// runHeader mirrors the fixed head of struct kvm_run up to the exit union,
// which starts at byte 32.
type runHeader struct {
	RequestInterruptWindow     uint8
	ImmediateExit              uint8
	_                          [6]uint8
	ExitReason                 uint32
	ReadyForInterruptInjection uint8
	IFFlag                     uint8
	Flags                      uint16
	CR8                        uint64
	APICBase                   uint64
}

const (
	sizeofRunHeader = 32
	runExitUnion    = 32 // offset of the exit union in struct kvm_run
)

// CPUIDEntry mirrors struct kvm_cpuid_entry2.
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	Flags    uint32 // KVM_CPUID_FLAG_*
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the entry depends on Index (ECX).
const CPUIDFlagSignificantIndex = 1 << 0

// sizeofCPUID2Header is sizeof(struct kvm_cpuid2) without its flexible
// array of entries: nent, padding.
const (
	sizeofCPUID2Header = 8
	sizeofCPUIDEntry   = 40
	maxCPUIDEntries    = 256 // more than any KVM returns (KVM_MAX_CPUID_ENTRIES)
)

// MSREntry mirrors struct kvm_msr_entry.
type MSREntry struct {
	Index    uint32
	Reserved uint32
	Data     uint64
}

const (
	sizeofMSRsHeader = 8 // struct kvm_msrs: nmsrs, pad
	sizeofMSREntry   = 16
)

// FPU mirrors struct kvm_fpu.
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

const sizeofFPU = 416

// LAPICState mirrors struct kvm_lapic_state: the local APIC's register page.
type LAPICState struct {
	Regs [1024]uint8
}

const sizeofLAPICState = 1024

// pitConfig mirrors struct kvm_pit_config.
type pitConfig struct {
	Flags uint32
	_     [15]uint32
}

const (
	sizeofPITConfig = 64
	pitSpeakerDummy = 1 // KVM_PIT_SPEAKER_DUMMY: port 0x61 reads as a dummy speaker
)

// irqLevel mirrors struct kvm_irq_level.
type irqLevel struct {
	IRQ   uint32
	Level uint32
}

const sizeofIRQLevel = 8

// runSystemEvent mirrors the system_event member of struct kvm_run's exit union.
type runSystemEvent struct {
	Type  uint32
	NData uint32
	Data  [16]uint64
}

// sizeofMPState is sizeof(struct kvm_mp_state): one __u32.
const sizeofMPState = 4

// mpState mirrors struct kvm_mp_state.
type mpState struct {
	State MPState
}

// MPState is kvm_mp_state.mp_state (KVM_MP_STATE_*): where a vCPU is in
// the INIT/SIPI protocol, or whether it is halted.
type MPState uint32

const (
	MPStateRunnable      MPState = 0
	MPStateUninitialized MPState = 1 // an AP waiting for INIT
	MPStateInitReceived  MPState = 2 // an AP waiting for SIPI
	MPStateHalted        MPState = 3
	MPStateSIPIReceived  MPState = 4
)

// sizeofMSRListHeader is sizeof(struct kvm_msr_list) without its flexible
// array of indices: nmsrs.
const sizeofMSRListHeader = 4

// maxIOMSRs is how many entries one KVM_GET_MSRS or KVM_SET_MSRS takes:
// KVM refuses nmsrs >= MAX_IO_MSRS (256) with E2BIG.
const maxIOMSRs = 255

// sizeofXSave is sizeof(struct kvm_xsave) without its flexible tail. The
// struct holds the vCPU's FPU, SSE, AVX and other XSAVE-managed state in
// the standard (non-compacted) XSAVE layout, at the component offsets of
// the host's CPUID leaf 0xD. KVM_GET_XSAVE2 returns more than these 4096
// bytes (KVM_CAP_XSAVE2 of them) when the process has been granted dynamic
// features such as AMX.
const sizeofXSave = 4096

// xsave mirrors the fixed part of struct kvm_xsave (region[1024]); the
// flexible extra[] that follows it is handled as raw bytes.
type xsave struct {
	Region [1024]uint32
}

// XCR mirrors struct kvm_xcr: one extended control register.
type XCR struct {
	XCR   uint32 // register number: 0 is XCR0, the XSAVE feature mask
	_     uint32
	Value uint64
}

// XCRs mirrors struct kvm_xcrs (KVM_GET_XCRS, KVM_SET_XCRS).
type XCRs struct {
	NrXCRs uint32 // valid entries in XCRs
	Flags  uint32 // must be zero
	XCRs   [16]XCR
	_      [16]uint64
}

const sizeofXCRs = 392

// DebugRegs mirrors struct kvm_debugregs (KVM_GET/SET_DEBUGREGS).
type DebugRegs struct {
	DB    [4]uint64 // DR0-DR3
	DR6   uint64
	DR7   uint64
	Flags uint64 // must be zero
	_     [9]uint64
}

const sizeofDebugRegs = 128

// EventException mirrors the exception member of struct kvm_vcpu_events.
type EventException struct {
	Injected     uint8
	Nr           uint8
	HasErrorCode uint8
	Pending      uint8 // meaningful only with VCPUEventValidPayload
	ErrorCode    uint32
}

// EventInterrupt mirrors the interrupt member of struct kvm_vcpu_events.
type EventInterrupt struct {
	Injected uint8
	Nr       uint8
	Soft     uint8
	Shadow   uint8 // KVM_X86_SHADOW_INT_*: STI or MOV SS blocking
}

// EventNMI mirrors the nmi member of struct kvm_vcpu_events.
type EventNMI struct {
	Injected uint8
	Pending  uint8
	Masked   uint8
	_        uint8
}

// EventSMI mirrors the smi member of struct kvm_vcpu_events.
type EventSMI struct {
	SMM          uint8
	Pending      uint8
	SMMInsideNMI uint8
	LatchedInit  uint8
}

// VCPUEvents mirrors struct kvm_vcpu_events (KVM_GET/SET_VCPU_EVENTS): the
// exception, interrupt, NMI and SMI a vCPU has pending or half-delivered.
// Flags says which optional members KVM_SET_VCPU_EVENTS should apply;
// KVM_GET_VCPU_EVENTS fills it with the ones it reported.
type VCPUEvents struct {
	Exception           EventException
	Interrupt           EventInterrupt
	NMI                 EventNMI
	SIPIVector          uint32
	Flags               uint32 // VCPUEventValid*
	SMI                 EventSMI
	TripleFaultPending  uint8 // the triple_fault member
	_                   [26]uint8
	ExceptionHasPayload uint8
	ExceptionPayload    uint64
}

const sizeofVCPUEvents = 64

// VCPUEvents.Flags (KVM_VCPUEVENT_VALID_*).
const (
	VCPUEventValidNMIPending  = 0x01
	VCPUEventValidSIPIVector  = 0x02
	VCPUEventValidShadow      = 0x04
	VCPUEventValidSMM         = 0x08
	VCPUEventValidPayload     = 0x10 // needs KVM_CAP_EXCEPTION_PAYLOAD enabled
	VCPUEventValidTripleFault = 0x20 // needs KVM_CAP_X86_TRIPLE_FAULT_EVENT enabled
)

// IRQChipID is kvm_irqchip.chip_id (KVM_IRQCHIP_*).
type IRQChipID uint32

const (
	IRQChipPICMaster IRQChipID = 0
	IRQChipPICSlave  IRQChipID = 1
	IRQChipIOAPIC    IRQChipID = 2
)

// IRQChip mirrors struct kvm_irqchip (KVM_GET/SET_IRQCHIP). Chip is the
// kernel's 512-byte union, kept as raw bytes so that a save/restore copies
// it exactly; PIC and IOAPIC decode it for inspection.
type IRQChip struct {
	ChipID IRQChipID
	_      uint32
	Chip   [512]byte // struct kvm_pic_state or struct kvm_ioapic_state
}

const sizeofIRQChip = 520

// PICState mirrors struct kvm_pic_state: one 8259A.
type PICState struct {
	LastIRR                uint8 // edge detection
	IRR                    uint8 // interrupt request register
	IMR                    uint8 // interrupt mask register
	ISR                    uint8 // in-service register
	PriorityAdd            uint8
	IRQBase                uint8
	ReadRegSelect          uint8
	Poll                   uint8
	SpecialMask            uint8
	InitState              uint8
	AutoEOI                uint8
	RotateOnAutoEOI        uint8
	SpecialFullyNestedMode uint8
	Init4                  uint8
	ELCR                   uint8 // edge/level control (PIIX)
	ELCRMask               uint8
}

const sizeofPICState = 16

// IOAPICState mirrors struct kvm_ioapic_state. Each RedirTbl entry is the
// 64-bit redirection register as the guest sees it.
type IOAPICState struct {
	BaseAddress uint64
	IORegSel    uint32
	ID          uint32
	IRR         uint32
	_           uint32
	RedirTbl    [24]uint64 // KVM_IOAPIC_NUM_PINS
}

const sizeofIOAPICState = 216

// PITChannelState mirrors struct kvm_pit_channel_state: one i8254 counter.
type PITChannelState struct {
	Count         uint32 // initial count; 0x10000 for a written 0
	LatchedCount  uint16
	CountLatched  uint8
	StatusLatched uint8
	Status        uint8
	ReadState     uint8
	WriteState    uint8
	WriteLatch    uint8
	RWMode        uint8
	Mode          uint8
	BCD           uint8
	Gate          uint8
	// CountLoadTime is the host's CLOCK_MONOTONIC (ns) when Count was
	// loaded. It means nothing on another host or after a reboot, and
	// KVM_SET_PIT2 ignores it: every channel restarts counting from Count
	// at the moment of the restore.
	CountLoadTime int64
}

// PITState mirrors struct kvm_pit_state2 (KVM_GET/SET_PIT2).
type PITState struct {
	Channels [3]PITChannelState
	Flags    uint32 // PITFlags*
	_        [9]uint32
}

const sizeofPITState2 = 112

// PITState.Flags (KVM_PIT_FLAGS_*).
const (
	PITFlagsHPETLegacy    = 0x1 // the HPET has taken over IRQ0
	PITFlagsSpeakerDataOn = 0x2
)

// ClockData mirrors struct kvm_clock_data (KVM_GET/SET_CLOCK): the VM's
// kvmclock, the nanosecond clock every vCPU's pvclock is derived from.
type ClockData struct {
	Clock    uint64 // kvmclock, ns
	Flags    uint32 // ClockTSCStable, ClockRealtime, ClockHostTSC
	_        uint32
	Realtime uint64 // host CLOCK_REALTIME (ns) at Clock; valid with ClockRealtime
	HostTSC  uint64 // host TSC at Clock; valid with ClockHostTSC
	_        [4]uint32
}

const sizeofClockData = 48

// ClockData.Flags (KVM_CLOCK_*).
const (
	// ClockTSCStable (KVM_GET_CLOCK): the host uses a stable TSC and the
	// "master clock", so every vCPU's kvmclock reads the same value at the
	// same instant. Ignored by KVM_SET_CLOCK.
	ClockTSCStable = 1 << 1
	// ClockRealtime (KVM_GET_CLOCK): Realtime is the host's wall-clock time
	// at the instant Clock was read. Passed back to KVM_SET_CLOCK it makes
	// KVM advance Clock by the wall-clock time elapsed since Realtime, so
	// a restored guest sees the time it spent saved (never a step back).
	// Clear it to resume the clock exactly where it was saved.
	ClockRealtime = 1 << 2
	// ClockHostTSC (KVM_GET_CLOCK): HostTSC is the host TSC at Clock.
	// Ignored by KVM_SET_CLOCK.
	ClockHostTSC = 1 << 3
)

// enableCap mirrors struct kvm_enable_cap (KVM_ENABLE_CAP).
type enableCap struct {
	Cap   uint32 // a Capability
	Flags uint32
	Args  [4]uint64
	_     [64]uint8
}

const sizeofEnableCap = 104

// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 options (KVM_DIRTY_LOG_*).
const (
	DirtyLogManualProtectEnable = 1 << 0
	DirtyLogInitiallySet        = 1 << 1
)

// dirtyLog mirrors struct kvm_dirty_log (KVM_GET_DIRTY_LOG). The bitmap is
// a typed pointer, not a uintptr, so that the Go runtime keeps it alive
// and up to date should it live on a goroutine stack that moves.
type dirtyLog struct {
	Slot   uint32
	_      uint32
	Bitmap *uint64 // dirty_bitmap: one bit per page, bit i of word i/64
}

const sizeofDirtyLog = 16

// clearDirtyLog mirrors struct kvm_clear_dirty_log (KVM_CLEAR_DIRTY_LOG).
type clearDirtyLog struct {
	Slot      uint32
	NumPages  uint32
	FirstPage uint64
	Bitmap    *uint64 // bit i stands for page FirstPage+i
}

const sizeofClearDirtyLog = 24

// preFaultMemory mirrors struct kvm_pre_fault_memory (KVM_PRE_FAULT_MEMORY).
// KVM advances GPA and shrinks Size as it maps.
type preFaultMemory struct {
	GPA   uint64
	Size  uint64
	Flags uint64 // must be 0
	_     [5]uint64
}

const sizeofPreFaultMemory = 64
