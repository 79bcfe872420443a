// Package devices holds Sailbox's device models and the small contracts
// they are built on. A device sees three things and nothing else:
//
//   - guest memory (GuestMemory), bounds-checked, because a guest chooses
//     the addresses a device is asked to touch;
//   - an interrupt line (Interrupt) into the guest's interrupt controller;
//   - a bus (Bus) on which the VMM's vCPU loops dispatch the guest's port
//     and MMIO accesses to it.
//
// Devices never import KVM; that is what lets every device be tested on any
// machine, against fake memory and a fake interrupt line.
//
// Concurrency: bus accesses arrive on vCPU goroutines, several at once on an
// SMP guest, and device back ends (a disk, a socket) run on goroutines of
// their own. Every device guards its state with its own lock.
//
// # Saving and restoring
//
// Every device package has a persist.go holding its State type and its
// save/restore pair: a Save method on the device and a Restore constructor
// that builds a new device from a State and explicit dependencies (an
// interrupt line, a disk, a socket path). Restore never mutates a live
// device. Package devicetest is the conformance suite every device passes.
//
// A State is plain data: exported fields, JSON-encodable, no pointers into
// the device. Each carries a Version, the StateVersion constant of its
// package, and Restore accepts exactly that version: a change that older
// readers could misread bumps it; a field added so that its zero value
// means the old behaviour does not. (The snapshot format versions and
// checksums the sections these states are stored in.)
//
// Save is called while every vCPU is paused, so no bus access runs during
// it. Devices with goroutines of their own (virtio-blk's request loop,
// virtio-vsock's event loop) are quiesced first, and stay so while guest
// memory and disks are snapshotted: see virtio.MMIO.Pause.
//
// A State comes from a file, so Restore treats it as hostile: a state no
// device could have produced, or one that does not fit the dependencies it
// is given, is an error wrapping ErrInvalidState, never a panic.
package devices

import "io"

// GuestMemory is a device's view of guest RAM, addressed by guest-physical
// address. Accesses outside RAM return an error (memory.ErrOutOfRange);
// they never touch host memory. Writes through WriteAt are visible to the
// VMM's dirty tracking, so devices write guest memory only through it.
type GuestMemory interface {
	io.ReaderAt
	io.WriterAt
}

// Interrupt is an edge-triggered interrupt line into the guest (an ISA IRQ
// or an IOAPIC GSI of the in-kernel irqchip). Trigger may be called from
// any goroutine.
type Interrupt interface {
	Trigger() error
}

// BusDevice is a device mapped on a bus. offset is relative to the base the
// device was inserted at; len(data) is the access width (1, 2, 4 or 8).
// Read fills data; a device fills unimplemented registers with zeros (or
// 0xff, as the hardware it models would). Neither may block for long: the
// calling vCPU is stopped until they return.
type BusDevice interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}
