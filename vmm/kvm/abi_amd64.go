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
	ioctlGetMSRIndexList    = iocWR(0x02, 4)
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
	ioctlGetMPState         = iocR(0x98, 4)
	ioctlSetMPState         = iocW(0x99, 4)
	ioctlGetTSCKHz          = iocNoArg(0xa3)
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

// Memory region flags (KVM_MEM_*).
const (
	MemLogDirtyPages = 1 << 0
	MemReadonly      = 1 << 1
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
