// Package boot lays out an x86-64 guest for Linux's 64-bit boot protocol
// (Documentation/arch/x86/boot.rst): the protected-mode kernel of a bzImage,
// the initrd, the command line, the zero page with its e820 map, identity
// page tables and a GDT, and an MP table that lists the vCPUs and the IOAPIC.
// It writes guest memory and returns the register state the boot vCPU
// starts with; it never touches KVM.
package boot

// Guest-physical layout of the low megabyte and above, chosen like other
// microVM monitors so that a reader can compare: everything the boot needs
// sits below the EBDA, the kernel at 1 MiB, devices above RAM.
const (
	GDTAddr         = 0x500
	IDTAddr         = 0x520
	ZeroPageAddr    = 0x7000 // struct boot_params
	BootStackAddr   = 0x8ff0 // initial RSP/RBP
	PML4Addr        = 0x9000
	PDPTEAddr       = 0xa000
	PDEAddr         = 0xb000
	CmdlineAddr     = 0x20000
	MaxCmdline      = 4096
	EBDAStart       = 0x9fc00 // the MP table lives here
	HighMemoryStart = 0x100000
	KernelLoadAddr  = HighMemoryStart // the bzImage's protected-mode part

	// MaxRAM keeps guest RAM below the 32-bit device hole: MMIO devices,
	// the IOAPIC (0xfec00000) and the local APIC (0xfee00000) live above.
	MaxRAM = 0xc0000000

	// MMIOStart is where virtio-mmio devices are placed, one 4 KiB window each.
	MMIOStart = 0xd0000000

	// IOAPICAddr and LAPICAddr are the in-kernel irqchip's fixed addresses.
	IOAPICAddr = 0xfec00000
	LAPICAddr  = 0xfee00000

	// KVM needs three pages for the VMX TSS and one for the identity map,
	// outside RAM and devices (Intel only; harmless on AMD).
	TSSAddr         = 0xfffbd000
	IdentityMapAddr = 0xfffbc000
)

// e820 entry types.
const (
	e820RAM      = 1
	e820Reserved = 2
)
