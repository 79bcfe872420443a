package virtio

import (
	"testing"

	"github.com/sailbox-dev/sailbox/devices"
)

type idleDevice struct{}

func (idleDevice) Type() uint32                           { return TypeEntropy }
func (idleDevice) Features() uint64                       { return 0 }
func (idleDevice) QueueSizes() []uint16                   { return []uint16{8} }
func (idleDevice) ReadConfig(offset uint64, data []byte)  {}
func (idleDevice) WriteConfig(offset uint64, data []byte) {}
func (idleDevice) Activate(devices.GuestMemory, uint64, []*Queue, func() error) error {
	return nil
}
func (idleDevice) Notify(int) {}
func (idleDevice) Reset()     {}

type countingIRQ struct{ n int }

func (c *countingIRQ) Trigger() error { c.n++; return nil }

// RaisePending raises the interrupt exactly when a status bit is set.
func TestRaisePending(t *testing.T) {
	irq := &countingIRQ{}
	m := NewMMIO(idleDevice{}, nil, irq)
	if err := m.RaisePending(); err != nil || irq.n != 0 {
		t.Fatalf("nothing pending: %v, %d interrupts", err, irq.n)
	}
	m.interruptStatus.Store(interruptUsedBuffer)
	if err := m.RaisePending(); err != nil || irq.n != 1 {
		t.Fatalf("used buffer pending: %v, %d interrupts, want 1", err, irq.n)
	}
}
