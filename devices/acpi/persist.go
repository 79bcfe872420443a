package acpi

import (
	"fmt"

	"github.com/sailbox-dev/sailbox/devices"
)

// StateVersion is the version of State that Save writes and Restore
// accepts.
const StateVersion = 1

// State is the PM1a registers' state. No status or enable bit is
// modelled, and PM1_CNT always reads SCI_EN, so what remains is the
// soft-off sleep type and whether the guest entered it.
type State struct {
	Version uint32 // StateVersion
	// S5 is the SLP_TYP value that means soft-off (0 to 7), as given to
	// New.
	S5 uint16
	// PoweredOff reports that the guest entered soft-off: a restored PM
	// does not call its power-off function again.
	PoweredOff bool
}

// Save returns the registers' state.
func (p *PM) Save() State {
	return State{Version: StateVersion, S5: p.s5, PoweredOff: p.fired.Load()}
}

// Restore returns PM1a registers in state st that call powerOff when the
// guest enters soft-off, unless it already did before the save.
func Restore(st State, powerOff func()) (*PM, error) {
	if err := devices.CheckStateVersion("acpi-pm", st.Version, StateVersion); err != nil {
		return nil, err
	}
	if st.S5 > slpTypeMask {
		return nil, fmt.Errorf("acpi-pm: restore: sleep type %d beyond the 3-bit SLP_TYP field: %w", st.S5, devices.ErrInvalidState)
	}
	p := New(st.S5, powerOff)
	p.fired.Store(st.PoweredOff)
	return p, nil
}
