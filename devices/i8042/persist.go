package i8042

import "github.com/sailbox-dev/sailbox/devices"

// StateVersion is the version of State that Save writes and Restore
// accepts.
const StateVersion = 1

// State is the controller's state. The controller models no buffers; it
// only remembers whether the guest has pulsed the reset line.
type State struct {
	Version uint32 // StateVersion
	// ResetRequested reports that the guest pulsed the CPU reset line: a
	// restored controller does not call its reset function again.
	ResetRequested bool
}

// Save returns the controller's state.
func (d *Device) Save() State {
	return State{Version: StateVersion, ResetRequested: d.fired.Load()}
}

// Restore returns a controller in state st that calls reset when the
// guest resets the CPU, unless it already did before the save.
func Restore(st State, reset func()) (*Device, error) {
	if err := devices.CheckStateVersion("i8042", st.Version, StateVersion); err != nil {
		return nil, err
	}
	d := New(reset)
	d.fired.Store(st.ResetRequested)
	return d, nil
}
