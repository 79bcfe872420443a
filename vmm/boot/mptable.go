package boot

import (
	"encoding/binary"
	"fmt"
)

// MaxCPUs is the most vCPUs the MP table (in the 1 KiB below 640 KiB) and
// the guest kernel (CONFIG_NR_CPUS) describe.
const MaxCPUs = 32

// MP table entry types and constants (Intel MultiProcessor Specification
// 1.4, chapter 4; Linux arch/x86/include/asm/mpspec_def.h).
const (
	mpProcessor = 0
	mpBus       = 1
	mpIOAPIC    = 2
	mpIntSrc    = 3
	mpLIntSrc   = 4

	mpIRQTypeINT    = 0
	mpIRQTypeNMI    = 1
	mpIRQTypeExtINT = 3

	cpuEnabled   = 1
	cpuBSP       = 2
	apicVersion  = 0x14
	ioapicVer    = 0x11
	cpuSignature = 0x600 // family 6
	cpuFeatures  = 0x201 // FPU | APIC
	ioapicPins   = 24

	mpFloatSize  = 16
	mpHeaderSize = 44
)

// MPTableSize is the size of the table for n CPUs.
func MPTableSize(n int) int {
	return mpFloatSize + mpHeaderSize + 20*n + 8 + 8 + 8*ioapicPins + 8*2
}

// WriteMPTable writes an MP floating pointer and configuration table at
// EBDAStart describing cpus processors (APIC IDs 0..cpus-1, CPU 0 the BSP),
// one ISA bus, the IOAPIC (ID cpus) with ISA IRQ i wired to pin i, and the
// local interrupts (ExtINT on LINT0, NMI on LINT1). Linux finds it by
// scanning the last KiB of base memory.
func WriteMPTable(mem Memory, cpus int) error {
	if cpus < 1 || cpus > MaxCPUs {
		return fmt.Errorf("mp table: %d CPUs, want 1 to %d", cpus, MaxCPUs)
	}
	le := binary.LittleEndian
	b := make([]byte, MPTableSize(cpus))
	if len(b) > HighMemoryStart-EBDAStart {
		return fmt.Errorf("mp table: %d bytes do not fit below 640 KiB", len(b))
	}

	// Floating pointer structure.
	copy(b, "_MP_")
	le.PutUint32(b[4:], EBDAStart+mpFloatSize)
	b[8] = 1 // length in 16-byte units
	b[9] = 4 // spec revision 1.4
	b[10] = checksum(b[:mpFloatSize])

	// Configuration table: header, then entries.
	t := b[mpFloatSize:]
	e := t[mpHeaderSize:]
	n := 0
	for i := 0; i < cpus; i++ {
		e[0] = mpProcessor
		e[1] = byte(i)
		e[2] = apicVersion
		e[3] = cpuEnabled
		if i == 0 {
			e[3] |= cpuBSP
		}
		le.PutUint32(e[4:], cpuSignature)
		le.PutUint32(e[8:], cpuFeatures)
		e, n = e[20:], n+1
	}
	e[0], e[1] = mpBus, 0
	copy(e[2:8], "ISA   ")
	e, n = e[8:], n+1

	ioapicID := byte(cpus)
	e[0], e[1], e[2], e[3] = mpIOAPIC, ioapicID, ioapicVer, 1
	le.PutUint32(e[4:], IOAPICAddr)
	e, n = e[8:], n+1

	for irq := 0; irq < ioapicPins; irq++ {
		e[0], e[1] = mpIntSrc, mpIRQTypeINT // irqflag 0: conforms to the bus
		e[4], e[5], e[6], e[7] = 0, byte(irq), ioapicID, byte(irq)
		e, n = e[8:], n+1
	}
	for _, l := range []struct{ typ, dest, lint byte }{
		{mpIRQTypeExtINT, 0, 0}, // LINT0 of the BSP: the PIC
		{mpIRQTypeNMI, 0xff, 1}, // LINT1 of every CPU: NMI
	} {
		e[0], e[1], e[6], e[7] = mpLIntSrc, l.typ, l.dest, l.lint
		e, n = e[8:], n+1
	}
	if len(e) != 0 {
		return fmt.Errorf("mp table: layout mismatch, %d bytes left", len(e))
	}

	copy(t, "PCMP")
	le.PutUint16(t[4:], uint16(len(t)))
	t[6] = 4
	copy(t[8:16], "SAILBOX ")
	copy(t[16:28], "MICROVM     ")
	le.PutUint16(t[34:], uint16(n))
	le.PutUint32(t[36:], LAPICAddr)
	t[7] = checksum(t)

	if _, err := mem.WriteAt(b, EBDAStart); err != nil {
		return fmt.Errorf("mp table: %w", err)
	}
	return nil
}

// checksum returns the byte that makes b sum to zero (b's checksum field
// must be zero when called).
func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}
