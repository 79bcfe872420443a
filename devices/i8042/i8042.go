// Package i8042 models the one part of the PC keyboard controller a microVM
// needs: the CPU reset line. Linux reboots with reboot=k by writing 0xfe to
// the command port; the VMM treats that as the guest asking to reset.
package i8042

import "sync/atomic"

const (
	// DataPort and CommandPort are the controller's ports.
	DataPort    = 0x60
	CommandPort = 0x64
	// Size spans both ports: the device is inserted at DataPort.
	Size = CommandPort - DataPort + 1

	cmdResetCPU = 0xfe
)

// Device is the controller. Reset is called once, from the writing vCPU's
// goroutine, the first time the guest pulses the reset line.
type Device struct {
	reset func()
	fired atomic.Bool
}

// New returns a controller that calls reset when the guest resets the CPU.
func New(reset func()) *Device { return &Device{reset: reset} }

// Read implements devices.BusDevice: an empty controller (no output byte,
// input buffer empty) so that the kernel's wait loops end at once.
func (d *Device) Read(offset uint64, data []byte) { clear(data) }

// Write implements devices.BusDevice.
func (d *Device) Write(offset uint64, data []byte) {
	if offset == CommandPort-DataPort && len(data) == 1 && data[0] == cmdResetCPU {
		if d.fired.CompareAndSwap(false, true) {
			d.reset()
		}
	}
}
