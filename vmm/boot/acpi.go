package boot

import (
	"encoding/binary"
	"fmt"
)

// ACPI tables (ACPI 6.4): just enough for Linux to enumerate CPUs and the
// IOAPIC (MADT) and to power off by writing the FADT's PM1a control block,
// an I/O port range the VMM watches. The fixed hardware is minimal: PM1a
// event and control blocks, an SCI line that never fires, no PM timer, no
// GPEs, and no AML beyond \_S5. (Hardware-reduced ACPI would be smaller, but
// x86 Linux then drops the legacy PIC and the ISA interrupts with it.)
const (
	RSDPAddr   = 0xe0000 // Linux scans 0xe0000-0xfffff for "RSD PTR "
	acpiTables = RSDPAddr + 0x40

	// PM1Port is the PM1a event block (status, enable: 2 bytes each),
	// followed at +4 by the PM1a control block (2 bytes).
	PM1Port = 0x3c0
	// SleepTypeS5 is the SLP_TYP value \_S5 gives for soft-off.
	SleepTypeS5 = 5
	sciIRQ      = 9

	acpiOEMID             = "SBOX  "
	acpiOEMTableID        = "SAILBOX "
	fadtFlagWBINVD        = 1 << 0
	fadtFlagPowerButton   = 1 << 4 // no fixed-feature power button
	fadtFlagSleepButton   = 1 << 5 // no fixed-feature sleep button
	facsSize              = 64
	iapcBootArchNoVGA     = 1 << 2
	iapcBootArchNoCMOSRTC = 1 << 5
	gasSystemIO           = 1
	madtPCATCompat        = 1
	madtTypeLAPIC         = 0
	madtTypeIOAPIC        = 1
	madtTypeLAPICNMI      = 4
	madtLAPICEnabled      = 1
	sdtHeaderSize         = 36
	fadtSize              = 276
)

// dsdtAML is the DSDT's body: Name (_S5_, Package (4) { 5, 0, 0, 0 }).
var dsdtAML = []byte{0x08, '_', 'S', '5', '_', 0x12, 0x07, 0x04, 0x0a, SleepTypeS5, 0x00, 0x00, 0x00}

// sdt returns a table of the given length with its header filled in; the
// checksum is set by seal once the body is written.
func sdt(sig string, length int, rev byte) []byte {
	t := make([]byte, length)
	copy(t, sig)
	binary.LittleEndian.PutUint32(t[4:], uint32(length))
	t[8] = rev
	copy(t[10:16], acpiOEMID)
	copy(t[16:24], acpiOEMTableID)
	binary.LittleEndian.PutUint32(t[24:], 1)
	copy(t[28:32], "SBOX")
	binary.LittleEndian.PutUint32(t[32:], 1)
	return t
}

func seal(t []byte) []byte {
	t[9] = 0
	t[9] = checksum(t)
	return t
}

// gas encodes a Generic Address Structure for an I/O port range of the
// given width in bits.
func gas(b []byte, port uint64, bits byte) {
	b[0], b[1], b[2], b[3] = gasSystemIO, bits, 0, 0
	binary.LittleEndian.PutUint64(b[4:], port)
}

// WriteACPI writes the RSDP, XSDT, FADT, FACS, DSDT and MADT for cpus vCPUs.
func WriteACPI(mem Memory, cpus int) error {
	if cpus < 1 || cpus > MaxCPUs {
		return fmt.Errorf("acpi: %d CPUs, want 1 to %d", cpus, MaxCPUs)
	}
	le := binary.LittleEndian
	addr := uint64(acpiTables)
	place := func(t []byte) uint64 {
		a := addr
		addr += (uint64(len(t)) + 15) &^ 15
		return a
	}

	facs := make([]byte, facsSize) // no checksum; must be 64-byte aligned
	copy(facs, "FACS")
	le.PutUint32(facs[4:], facsSize)
	facs[32] = 2 // version
	facsAddr := place(facs)
	addr = (addr + 63) &^ 63

	dsdt := sdt("DSDT", sdtHeaderSize+len(dsdtAML), 2)
	copy(dsdt[sdtHeaderSize:], dsdtAML)
	dsdtAddr := place(seal(dsdt))

	fadt := sdt("FACP", fadtSize, 6)
	le.PutUint32(fadt[40:], uint32(dsdtAddr)) // DSDT
	le.PutUint16(fadt[46:], sciIRQ)           // SCI_INT
	// SMI_CMD (48) stays 0: the platform is always in ACPI mode.
	le.PutUint32(fadt[56:], PM1Port)   // PM1a_EVT_BLK
	le.PutUint32(fadt[64:], PM1Port+4) // PM1a_CNT_BLK
	fadt[88] = 4                       // PM1_EVT_LEN
	fadt[89] = 2                       // PM1_CNT_LEN
	le.PutUint16(fadt[109:], iapcBootArchNoVGA|iapcBootArchNoCMOSRTC)
	le.PutUint32(fadt[112:], fadtFlagWBINVD|fadtFlagPowerButton|fadtFlagSleepButton)
	fadt[131] = 4                      // minor version: 6.4
	le.PutUint64(fadt[132:], facsAddr) // X_FIRMWARE_CTRL
	le.PutUint64(fadt[140:], dsdtAddr) // X_DSDT
	gas(fadt[148:160], PM1Port, 32)    // X_PM1a_EVT_BLK
	gas(fadt[172:184], PM1Port+4, 16)  // X_PM1a_CNT_BLK
	copy(fadt[268:276], "SAILBOX\x00") // hypervisor vendor identity
	fadtAddr := place(seal(fadt))

	madtLen := sdtHeaderSize + 8 + 8*cpus + 12 + 6
	madt := sdt("APIC", madtLen, 5)
	le.PutUint32(madt[36:], LAPICAddr)
	le.PutUint32(madt[40:], madtPCATCompat)
	e := madt[44:]
	for i := 0; i < cpus; i++ {
		e[0], e[1], e[2], e[3] = madtTypeLAPIC, 8, byte(i), byte(i) // UID i, APIC ID i
		le.PutUint32(e[4:], madtLAPICEnabled)
		e = e[8:]
	}
	e[0], e[1], e[2] = madtTypeIOAPIC, 12, byte(cpus) // IOAPIC ID after the CPUs', as in the MP table
	le.PutUint32(e[4:], IOAPICAddr)
	le.PutUint32(e[8:], 0) // GSI base
	e = e[12:]
	e[0], e[1], e[2] = madtTypeLAPICNMI, 6, 0xff // every processor: NMI on LINT1
	le.PutUint16(e[3:], 0)
	e[5] = 1
	madtAddr := place(seal(madt))

	xsdt := sdt("XSDT", sdtHeaderSize+16, 1)
	le.PutUint64(xsdt[36:], fadtAddr)
	le.PutUint64(xsdt[44:], madtAddr)
	xsdtAddr := place(seal(xsdt))

	if addr > HighMemoryStart {
		return fmt.Errorf("acpi: tables end at %#x, past the BIOS area", addr)
	}
	rsdp := make([]byte, 36)
	copy(rsdp, "RSD PTR ")
	copy(rsdp[9:15], acpiOEMID)
	rsdp[15] = 2 // ACPI 2.0+
	le.PutUint32(rsdp[20:], 36)
	le.PutUint64(rsdp[24:], xsdtAddr)
	rsdp[8] = checksum(rsdp[:20])
	rsdp[32] = checksum(rsdp)

	for _, w := range []struct {
		addr uint64
		b    []byte
	}{{RSDPAddr, rsdp}, {facsAddr, facs}, {dsdtAddr, dsdt}, {fadtAddr, fadt}, {madtAddr, madt}, {xsdtAddr, xsdt}} {
		if _, err := mem.WriteAt(w.b, int64(w.addr)); err != nil {
			return fmt.Errorf("acpi: write %q at %#x: %w", w.b[:4], w.addr, err)
		}
	}
	return nil
}
