package vmm

import (
	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// interruptLine returns an edge-triggered interrupt line of the in-kernel
// irqchip for a device: an irqfd, so that a device raising it from a
// vCPU's exit handler has the kernel deliver it on a later entry, as
// hardware would. The machine closes it.
func (m *Machine) interruptLine(gsi uint32) (devices.Interrupt, error) {
	f, err := m.vm.NewIRQFD(gsi)
	if err != nil {
		return nil, err
	}
	m.irqfds = append(m.irqfds, f)
	return f, nil
}

var _ devices.Interrupt = (*kvm.IRQFD)(nil)
