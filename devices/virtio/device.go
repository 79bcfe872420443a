// Package virtio implements virtio 1.x devices over the MMIO transport
// (virtio spec v1.2, §4.2) with split virtqueues (§2.7).
//
// The layers, from the guest inward:
//
//   - MMIO (mmio.go) is the transport: the register file a guest driver
//     programs (feature negotiation, queue addresses, status, interrupts).
//     It is a devices.BusDevice and owns the device's interrupt line.
//   - Queue (queue.go) is one split virtqueue: it walks descriptor chains
//     the guest offers and returns used buffers. Every address and length in
//     a chain comes from the guest and is validated; a malformed chain is an
//     error for that request, never a panic or an access outside guest
//     memory.
//   - Device is a device type (block, entropy, vsock, network): it
//     consumes chains from its queues.
//
// persist.go saves and restores all three together (MMIO.Save,
// RestoreMMIO), with the devices' help (Persistent, Pauser).
package virtio

import "github.com/sailbox-dev/sailbox/devices"

// Device types (virtio spec §5).
const (
	TypeNet     = 1
	TypeBlock   = 2
	TypeEntropy = 4
	TypeVsock   = 19
)

// Feature bits common to all devices (spec §6).
const (
	FeatureVersion1 = 1 << 32 // VIRTIO_F_VERSION_1: required, offered by the transport
)

// Device is one virtio device type behind the MMIO transport.
//
// The transport calls Activate once the driver sets DRIVER_OK, Notify when
// the driver kicks a queue, and Reset when the driver resets the device.
// Activate, Notify and Reset are called from vCPU goroutines (Notify also
// from the goroutine that delivers kicks the kernel caught) and must not
// block for long; devices with slow back ends hand work to goroutines of
// their own.
type Device interface {
	Type() uint32
	// Features are the device-specific feature bits offered; the transport
	// adds FeatureVersion1.
	Features() uint64
	// QueueSizes lists each queue's maximum size (a power of two).
	QueueSizes() []uint16
	// ReadConfig and WriteConfig access the device configuration space
	// (offset from its start, 0x100 in the MMIO register file).
	ReadConfig(offset uint64, data []byte)
	WriteConfig(offset uint64, data []byte)
	// Activate starts the device with the features the driver accepted and
	// its queues, configured by the driver. signal raises the device's
	// used-buffer interrupt.
	Activate(mem devices.GuestMemory, acked uint64, queues []*Queue, signal func() error) error
	// Notify tells the device that the driver made buffers available in
	// queue index.
	Notify(index int)
	// Reset stops the device; it may be activated again later.
	Reset()
}
