package vmm

import "github.com/sailbox-dev/sailbox/vmm/kvm"

// irqLine is an edge-triggered interrupt line of the in-kernel irqchip,
// given to devices as a devices.Interrupt.
type irqLine struct {
	vm  *kvm.VM
	gsi uint32
}

// Trigger pulses the line: the IOAPIC latches the rising edge.
func (l irqLine) Trigger() error {
	if err := l.vm.SetIRQLine(l.gsi, true); err != nil {
		return err
	}
	return l.vm.SetIRQLine(l.gsi, false)
}
