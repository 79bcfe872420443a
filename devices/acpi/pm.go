// Package acpi models the ACPI fixed-hardware power-management registers a
// microVM needs (ACPI 6.4, §4.8.3): the PM1a event block (status and
// enable) and the PM1a control block, whose SLP_TYP and SLP_EN fields the
// guest writes to enter a sleep state. Soft-off (S5) is how `poweroff` ends
// a microVM.
package acpi

import (
	"encoding/binary"
	"sync/atomic"
)

const (
	// Size spans PM1a_STS (offset 0), PM1a_EN (2) and PM1a_CNT (4).
	Size = 6

	offsetControl = 4
	sciEnable     = 1 << 0  // PM1_CNT.SCI_EN: always set, the platform is in ACPI mode
	slpTypeShift  = 10      // PM1_CNT.SLP_TYP, bits 10-12
	slpTypeMask   = 0x7     //
	slpEnable     = 1 << 13 // PM1_CNT.SLP_EN
)

// PM is the PM1a register blocks. PowerOff is called once, on the writing
// vCPU's goroutine, when the guest enters the soft-off state. Status and
// enable bits are not modelled: no fixed event ever fires.
type PM struct {
	s5       uint16
	powerOff func()
	fired    atomic.Bool
}

// New returns PM1a registers for which SLP_TYP s5 means soft-off (the value
// the DSDT's \_S5 object gives).
func New(s5 uint16, powerOff func()) *PM {
	return &PM{s5: s5 & slpTypeMask, powerOff: powerOff}
}

// Read implements devices.BusDevice.
func (p *PM) Read(offset uint64, data []byte) {
	clear(data)
	if offset == offsetControl && len(data) >= 2 {
		binary.LittleEndian.PutUint16(data, sciEnable)
	}
}

// Write implements devices.BusDevice.
func (p *PM) Write(offset uint64, data []byte) {
	if offset != offsetControl || len(data) != 2 {
		return
	}
	v := binary.LittleEndian.Uint16(data)
	if v&slpEnable != 0 && v>>slpTypeShift&slpTypeMask == p.s5 && p.fired.CompareAndSwap(false, true) {
		p.powerOff()
	}
}
