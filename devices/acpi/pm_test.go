package acpi

import (
	"encoding/binary"
	"testing"
)

func write16(p *PM, off uint64, v uint16) {
	b := make([]byte, 2)
	binary.LittleEndian.PutUint16(b, v)
	p.Write(off, b)
}

// Linux enters S5 by writing SLP_TYP, then SLP_TYP|SLP_EN, to PM1a_CNT.
func TestSoftOff(t *testing.T) {
	n := 0
	p := New(5, func() { n++ })
	write16(p, offsetControl, 5<<slpTypeShift|sciEnable)           // SLP_TYP alone
	write16(p, offsetControl, 3<<slpTypeShift|slpEnable|sciEnable) // S3, not soft-off
	write16(p, 0, 5<<slpTypeShift|slpEnable)                       // the status register
	p.Write(offsetControl, []byte{0x00})                           // a byte access
	if n != 0 {
		t.Fatal("power off on a write that is not S5 entry")
	}
	write16(p, offsetControl, 5<<slpTypeShift|slpEnable|sciEnable)
	write16(p, offsetControl, 5<<slpTypeShift|slpEnable|sciEnable)
	if n != 1 {
		t.Errorf("power off called %d times, want 1", n)
	}
	b := []byte{0xff, 0xff}
	p.Read(offsetControl, b)
	if binary.LittleEndian.Uint16(b) != sciEnable {
		t.Errorf("PM1_CNT reads %#x, want SCI_EN", b)
	}
	p.Read(0, b)
	if b[0] != 0 || b[1] != 0 {
		t.Errorf("PM1_STS reads % x", b)
	}
}
