package boot

import (
	"encoding/binary"
	"testing"
)

// TestACPITables walks the tables from the RSDP as a guest kernel does and
// checks every checksum, the FADT's sleep register and the MADT entries.
func TestACPITables(t *testing.T) {
	mem := newMem(t, 2<<20)
	if err := WriteACPI(mem, 3); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	rsdp := read(t, mem, RSDPAddr, 36)
	if string(rsdp[:8]) != "RSD PTR " || checksum(rsdp[:20]) != 0 || checksum(rsdp) != 0 || rsdp[15] != 2 {
		t.Fatalf("RSDP % x", rsdp)
	}
	table := func(addr uint64, sig string) []byte {
		h := read(t, mem, addr, sdtHeaderSize)
		b := read(t, mem, addr, int(le.Uint32(h[4:])))
		if string(b[:4]) != sig || checksum(b) != 0 {
			t.Fatalf("table at %#x: signature %q checksum %#x, want %q and 0", addr, b[:4], checksum(b), sig)
		}
		return b
	}
	xsdt := table(le.Uint64(rsdp[24:]), "XSDT")
	fadt := table(le.Uint64(xsdt[36:]), "FACP")
	madt := table(le.Uint64(xsdt[44:]), "APIC")
	if len(fadt) != fadtSize || le.Uint32(fadt[64:]) != PM1Port+4 || fadt[89] != 2 {
		t.Errorf("FADT length %d PM1a_CNT_BLK %#x len %d", len(fadt), le.Uint32(fadt[64:]), fadt[89])
	}
	if fadt[172] != gasSystemIO || le.Uint64(fadt[176:]) != PM1Port+4 || fadt[173] != 16 {
		t.Errorf("X_PM1a_CNT_BLK % x", fadt[172:184])
	}
	facsAddr := le.Uint64(fadt[132:])
	if facs := read(t, mem, facsAddr, facsSize); string(facs[:4]) != "FACS" || facsAddr%64 != 0 {
		t.Errorf("FACS at %#x: % x", facsAddr, facs[:8])
	}
	dsdt := table(le.Uint64(fadt[140:]), "DSDT")
	if string(dsdt[sdtHeaderSize+1:sdtHeaderSize+5]) != "_S5_" {
		t.Errorf("DSDT body % x", dsdt[sdtHeaderSize:])
	}
	// Three local APICs, the IOAPIC, the NMI entry: lengths walk the table exactly.
	var types []byte
	for e := madt[44:]; len(e) > 0; e = e[e[1]:] {
		if e[1] < 2 || int(e[1]) > len(e) {
			t.Fatalf("MADT entry length %d", e[1])
		}
		types = append(types, e[0])
	}
	if string(types) != string([]byte{0, 0, 0, 1, 4}) {
		t.Errorf("MADT entry types %v", types)
	}
}
