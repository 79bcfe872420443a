// Package virtiotest is a fake guest driver for testing virtio devices on
// any machine, without KVM or a guest. It programs a device's virtio.MMIO
// register file the way Linux's virtio_mmio driver does, lays split
// virtqueues out in real guest memory (vmm/memory), offers descriptor
// chains, kicks, and collects the used ones when the device interrupts.
//
// A test of a device through the whole transport:
//
//	d := virtiotest.New(t, dev, 1<<20)
//	if err := d.Start(wantedFeatures, 1); err != nil { // reset ... DRIVER_OK
//		t.Fatal(err)
//	}
//	req := d.Readable(request)      // device-readable buffer holding request
//	resp := d.Writable(512)         // device-writable buffer
//	if _, err := d.Queue(0).Offer(req, resp); err != nil {
//		t.Fatal(err)
//	}
//	d.Kick(0)
//	used, err := d.WaitUsed(0, 1)   // waits for the interrupt, like vm_interrupt
//	reply := d.Bytes(resp)[:used[0].Len]
//
// For tests below the transport, NewRing lays out one ring at an address
// of the test's choosing, and Ring.Queue gives the matching device-side
// virtio.Queue.
//
// The fake driver keeps its own copy of the register layout, written from
// the spec rather than taken from package virtio, so that it checks the
// transport instead of agreeing with it.
package virtiotest

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/devices/virtio"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// Register offsets of the virtio-mmio transport, version 2 (spec §4.2.2).
const (
	RegMagicValue        = 0x000
	RegVersion           = 0x004
	RegDeviceID          = 0x008
	RegVendorID          = 0x00c
	RegDeviceFeatures    = 0x010
	RegDeviceFeaturesSel = 0x014
	RegDriverFeatures    = 0x020
	RegDriverFeaturesSel = 0x024
	RegQueueSel          = 0x030
	RegQueueNumMax       = 0x034
	RegQueueNum          = 0x038
	RegQueueReady        = 0x044
	RegQueueNotify       = 0x050
	RegInterruptStatus   = 0x060
	RegInterruptACK      = 0x064
	RegStatus            = 0x070
	RegQueueDescLow      = 0x080
	RegQueueDescHigh     = 0x084
	RegQueueDriverLow    = 0x090
	RegQueueDriverHigh   = 0x094
	RegQueueDeviceLow    = 0x0a0
	RegQueueDeviceHigh   = 0x0a4
	RegConfigGeneration  = 0x0fc
	RegConfig            = 0x100
)

// Device status bits (spec §2.1).
const (
	StatusAcknowledge      = 1
	StatusDriver           = 2
	StatusDriverOK         = 4
	StatusFeaturesOK       = 8
	StatusDeviceNeedsReset = 64
	StatusFailed           = 128
)

// InterruptStatus bits (spec §4.2.2).
const (
	InterruptUsedBuffer   = 1
	InterruptConfigChange = 2
)

// WaitTimeout bounds how long WaitUsed waits for the device. It only turns
// a hung device into a failed test; no test depends on timing.
const WaitTimeout = 10 * time.Second

// firstBufferAddr is where Alloc starts: page 0 stays unused, so that a
// zeroed descriptor never points at a real buffer.
const firstBufferAddr = 0x1000

// Driver is a fake guest driver for one device behind a virtio.MMIO
// transport. Its methods must be called from the test's goroutine; they
// fail the test (through the testing.TB given to New) only on a broken
// test set-up, and return errors for everything a device under test could
// get wrong.
type Driver struct {
	Mem  *memory.Memory // guest memory, from guest address 0
	IRQ  *Interrupt     // the device's interrupt line
	MMIO *virtio.MMIO   // the transport, mapped nowhere: the driver calls it directly

	tb    testing.TB
	next  uint64  // next free guest address for Alloc
	rings []*Ring // by queue index; nil until SetupQueue
}

// New returns a driver for dev, with memSize bytes of guest memory (a
// multiple of the page size). At the end of the test it resets the device,
// stopping it, then releases the memory.
func New(tb testing.TB, dev virtio.Device, memSize uint64) *Driver {
	tb.Helper()
	mem, err := memory.New(memSize)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { mem.Close() })
	irq := NewInterrupt()
	d := &Driver{Mem: mem, IRQ: irq, MMIO: virtio.NewMMIO(dev, mem, irq), tb: tb, next: firstBufferAddr}
	tb.Cleanup(d.Reset)
	return d
}

// Read32 reads a register, as the driver does: 32 bits at a time.
func (d *Driver) Read32(offset uint64) uint32 {
	var b [4]byte
	d.MMIO.Read(offset, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

// Write32 writes a register.
func (d *Driver) Write32(offset uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.MMIO.Write(offset, b[:])
}

// ReadConfig reads n bytes of the device configuration space at offset,
// in one access (the driver reads each field with its own width).
func (d *Driver) ReadConfig(offset uint64, n int) []byte {
	b := make([]byte, n)
	d.MMIO.Read(RegConfig+offset, b)
	return b
}

// Status reads the Status register.
func (d *Driver) Status() uint32 { return d.Read32(RegStatus) }

// AddStatus sets status bits the way Linux's virtio_add_status does: it
// reads Status and writes it back with bits added.
func (d *Driver) AddStatus(bits uint32) { d.Write32(RegStatus, d.Status()|bits) }

// Reset resets the device by writing 0 to Status, as vm_reset does, and
// forgets the driver's queues.
func (d *Driver) Reset() {
	d.Write32(RegStatus, 0)
	d.rings = nil
}

// DeviceFeatures reads the 64 offered feature bits, high word first, as
// vm_get_features does.
func (d *Driver) DeviceFeatures() uint64 {
	d.Write32(RegDeviceFeaturesSel, 1)
	hi := d.Read32(RegDeviceFeatures)
	d.Write32(RegDeviceFeaturesSel, 0)
	return uint64(hi)<<32 | uint64(d.Read32(RegDeviceFeatures))
}

// SetDriverFeatures writes the 64 accepted feature bits, high word first,
// as vm_finalize_features does.
func (d *Driver) SetDriverFeatures(f uint64) {
	d.Write32(RegDriverFeaturesSel, 1)
	d.Write32(RegDriverFeatures, uint32(f>>32))
	d.Write32(RegDriverFeaturesSel, 0)
	d.Write32(RegDriverFeatures, uint32(f))
}

// Start initialises the device as Linux does (spec §3.1.1): reset,
// ACKNOWLEDGE, DRIVER, accept the offered features among features (plus
// VIRTIO_F_VERSION_1, which the version 2 transport requires), FEATURES_OK
// and check that it stuck, set up queues 0 to queues-1 at their maximum
// size, DRIVER_OK. It fails if the device refuses any step.
func (d *Driver) Start(features uint64, queues int) error {
	d.Reset()
	d.AddStatus(StatusAcknowledge)
	d.AddStatus(StatusDriver)
	offered := d.DeviceFeatures()
	if offered&virtio.FeatureVersion1 == 0 {
		return fmt.Errorf("device offers features %#x, without VIRTIO_F_VERSION_1", offered)
	}
	d.SetDriverFeatures(offered & (features | virtio.FeatureVersion1))
	d.AddStatus(StatusFeaturesOK)
	if d.Status()&StatusFeaturesOK == 0 {
		return fmt.Errorf("device refused features %#x (status %#x)", offered&(features|virtio.FeatureVersion1), d.Status())
	}
	for i := range queues {
		if _, err := d.SetupQueue(i, 0); err != nil {
			return err
		}
	}
	d.AddStatus(StatusDriverOK)
	if s := d.Status(); s&StatusDeviceNeedsReset != 0 {
		return fmt.Errorf("device needs reset after DRIVER_OK (status %#x)", s)
	}
	return nil
}

// SetupQueue sets up queue index as vm_setup_vq does: select it, check it
// is not ready and exists (QueueNumMax != 0), lay out a ring of size
// descriptors (QueueNumMax if size is 0) in guest memory, write QueueNum
// and the ring addresses, then QueueReady = 1.
func (d *Driver) SetupQueue(index int, size uint16) (*Ring, error) {
	d.Write32(RegQueueSel, uint32(index))
	if d.Read32(RegQueueReady) != 0 {
		return nil, fmt.Errorf("queue %d: already ready", index)
	}
	numMax := d.Read32(RegQueueNumMax)
	if numMax == 0 {
		return nil, fmt.Errorf("queue %d: not available (QueueNumMax 0)", index)
	}
	if size == 0 {
		size = uint16(numMax)
	}
	if uint32(size) > numMax {
		return nil, fmt.Errorf("queue %d: size %d beyond QueueNumMax %d", index, size, numMax)
	}
	r, err := NewRing(d.Mem, d.Alloc(RingBytes(size), 4096), size)
	if err != nil {
		return nil, fmt.Errorf("queue %d: %w", index, err)
	}
	d.Write32(RegQueueNum, uint32(size))
	for _, a := range []struct {
		low  uint64
		addr uint64
	}{{RegQueueDescLow, r.DescTable}, {RegQueueDriverLow, r.AvailRing}, {RegQueueDeviceLow, r.UsedRing}} {
		d.Write32(a.low, uint32(a.addr))
		d.Write32(a.low+4, uint32(a.addr>>32))
	}
	d.Write32(RegQueueReady, 1)
	for len(d.rings) <= index {
		d.rings = append(d.rings, nil)
	}
	d.rings[index] = r
	return r, nil
}

// Queue returns the ring of queue index, set up by Start or SetupQueue.
func (d *Driver) Queue(index int) *Ring {
	d.tb.Helper()
	if index >= len(d.rings) || d.rings[index] == nil {
		d.tb.Fatalf("virtiotest: queue %d is not set up", index)
	}
	return d.rings[index]
}

// Kick notifies the device that queue index has new buffers (QueueNotify).
func (d *Driver) Kick(index int) { d.Write32(RegQueueNotify, uint32(index)) }

// HandleInterrupt does what Linux's vm_interrupt does with the device's
// interrupt: read InterruptStatus and acknowledge every bit it reports. It
// returns the bits.
func (d *Driver) HandleInterrupt() uint32 {
	status := d.Read32(RegInterruptStatus)
	d.Write32(RegInterruptACK, status)
	return status
}

// WaitUsed collects used elements of queue index until there are at least
// n, waiting for the device's used-buffer interrupts in between. It fails
// after WaitTimeout without progress.
func (d *Driver) WaitUsed(index int, n int) ([]Used, error) {
	r := d.Queue(index)
	var all []Used
	for {
		used, err := r.Used()
		all = append(all, used...)
		if err != nil || len(all) >= n {
			return all, err
		}
		if !d.IRQ.Wait(WaitTimeout) {
			return all, fmt.Errorf("queue %d: %d of %d used buffers after %v without an interrupt", index, len(all), n, WaitTimeout)
		}
		switch status := d.HandleInterrupt(); {
		case status == 0:
			// A trigger whose status an earlier HandleInterrupt already
			// acknowledged (the device raised it between that call's
			// Wait and its read of InterruptStatus): nothing is lost.
		case status&InterruptUsedBuffer == 0:
			return all, fmt.Errorf("queue %d: interrupt without a used buffer notification (InterruptStatus %#x)", index, status)
		}
	}
}

// Alloc reserves n bytes of guest memory aligned to align (a power of two)
// and returns their address. Memory is never reused within a test, so a
// fresh allocation reads as zeros.
func (d *Driver) Alloc(n, align uint64) uint64 {
	d.tb.Helper()
	addr := (d.next + align - 1) &^ (align - 1)
	if addr+n > d.Mem.Size() || addr+n < addr {
		d.tb.Fatalf("virtiotest: out of guest memory allocating %d bytes (%#x of %#x used)", n, d.next, d.Mem.Size())
	}
	d.next = addr + n
	return addr
}

// Readable allocates a device-readable buffer holding data.
func (d *Driver) Readable(data []byte) Buf {
	d.tb.Helper()
	addr := d.Alloc(uint64(len(data)), 8)
	if _, err := d.Mem.WriteAt(data, int64(addr)); err != nil {
		d.tb.Fatal(err)
	}
	return Buf{Addr: addr, Len: uint32(len(data))}
}

// Writable allocates a zeroed device-writable buffer of n bytes.
func (d *Driver) Writable(n uint32) Buf {
	d.tb.Helper()
	return Buf{Addr: d.Alloc(uint64(n), 8), Len: n, Writable: true}
}

// Bytes reads the contents of b.
func (d *Driver) Bytes(b Buf) []byte {
	d.tb.Helper()
	p := make([]byte, b.Len)
	if _, err := d.Mem.ReadAt(p, int64(b.Addr)); err != nil {
		d.tb.Fatal(err)
	}
	return p
}
