package virtio_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/virtio"
	vt "github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
)

// fakeDevice records what the transport asks of it. The transport
// serializes its calls, and the tests call the transport from one
// goroutine, so it needs no lock.
type fakeDevice struct {
	features    uint64
	sizes       []uint16
	activateErr error

	config      [8]byte
	activations int
	acked       uint64
	queues      []*virtio.Queue
	signal      func() error
	notified    []int
	resets      int
}

func newFakeDevice() *fakeDevice {
	return &fakeDevice{
		features: 1<<0 | 1<<35, // a low and a high device-specific bit
		sizes:    []uint16{16, 8},
		config:   [8]byte{1, 2, 3, 4, 5, 6, 7, 8},
	}
}

func (f *fakeDevice) Type() uint32         { return virtio.TypeEntropy }
func (f *fakeDevice) Features() uint64     { return f.features }
func (f *fakeDevice) QueueSizes() []uint16 { return f.sizes }

func (f *fakeDevice) ReadConfig(offset uint64, data []byte) {
	clear(data)
	if offset < uint64(len(f.config)) {
		copy(data, f.config[offset:])
	}
}

func (f *fakeDevice) WriteConfig(offset uint64, data []byte) {
	if offset < uint64(len(f.config)) {
		copy(f.config[offset:], data)
	}
}

func (f *fakeDevice) Activate(mem devices.GuestMemory, acked uint64, queues []*virtio.Queue, signal func() error) error {
	if f.activateErr != nil {
		return f.activateErr
	}
	f.activations++
	f.acked, f.queues, f.signal = acked, queues, signal
	return nil
}

func (f *fakeDevice) Notify(index int) {
	f.notified = append(f.notified, index)
}

func (f *fakeDevice) Reset() {
	f.resets++
}

func TestMMIOIdentity(t *testing.T) {
	d := vt.New(t, newFakeDevice(), 1<<20)
	for _, r := range []struct {
		name string
		off  uint64
		want uint32
	}{
		{"MagicValue", vt.RegMagicValue, 0x74726976},
		{"Version", vt.RegVersion, 2},
		{"DeviceID", vt.RegDeviceID, virtio.TypeEntropy},
		{"VendorID", vt.RegVendorID, 0x53424f58},
		{"ConfigGeneration", vt.RegConfigGeneration, 0},
		{"QueueNotify (write-only)", vt.RegQueueNotify, 0},
		{"unknown register", 0x0f0, 0},
	} {
		if got := d.Read32(r.off); got != r.want {
			t.Errorf("%s = %#x, want %#x", r.name, got, r.want)
		}
	}
	// Registers only answer aligned 32-bit accesses.
	for _, n := range []int{1, 2, 8} {
		b := make([]byte, n)
		for i := range b {
			b[i] = 0xff
		}
		d.MMIO.Read(vt.RegMagicValue, b)
		if slices.ContainsFunc(b, func(x byte) bool { return x != 0 }) {
			t.Errorf("%d-byte read of MagicValue = %x, want zeros", n, b)
		}
	}
	if got := d.Read32(vt.RegMagicValue + 1); got != 0 {
		t.Errorf("unaligned read = %#x, want 0", got)
	}
	if got := virtio.KernelCmdline(0xd0000000, 5); got != "virtio_mmio.device=4K@0xd0000000:5" {
		t.Errorf("KernelCmdline = %q", got)
	}
}

func TestMMIOFeatureNegotiation(t *testing.T) {
	dev := newFakeDevice()
	d := vt.New(t, dev, 1<<20)
	offered := dev.features | virtio.FeatureVersion1
	if got := d.DeviceFeatures(); got != offered {
		t.Fatalf("DeviceFeatures = %#x, want %#x", got, offered)
	}
	d.Write32(vt.RegDeviceFeaturesSel, 2)
	if got := d.Read32(vt.RegDeviceFeatures); got != 0 {
		t.Errorf("DeviceFeatures word 2 = %#x, want 0", got)
	}

	// The driver accepts a subset: bit 35 and VERSION_1.
	if err := d.Start(1<<35, 2); err != nil {
		t.Fatal(err)
	}
	if want := uint64(1<<35) | virtio.FeatureVersion1; dev.acked != want {
		t.Errorf("Activate got features %#x, want %#x", dev.acked, want)
	}

	// Feature writes outside negotiation (before DRIVER, after
	// FEATURES_OK) do not change what was accepted.
	d.Reset()
	d.AddStatus(vt.StatusAcknowledge)
	d.SetDriverFeatures(offered)
	d.AddStatus(vt.StatusDriver)
	d.SetDriverFeatures(1<<0 | virtio.FeatureVersion1)
	d.AddStatus(vt.StatusFeaturesOK)
	d.SetDriverFeatures(offered)
	d.AddStatus(vt.StatusDriverOK)
	if want := uint64(1<<0) | virtio.FeatureVersion1; dev.acked != want {
		t.Errorf("after renegotiation Activate got %#x, want %#x", dev.acked, want)
	}
}

func TestMMIORefusesFeatures(t *testing.T) {
	dev := newFakeDevice()
	for _, tc := range []struct {
		name     string
		features uint64
	}{
		{"without VERSION_1 (a legacy driver)", 1 << 0},
		{"with a bit not offered", virtio.FeatureVersion1 | 1<<1},
	} {
		d := vt.New(t, dev, 1<<20)
		d.Reset()
		d.AddStatus(vt.StatusAcknowledge)
		d.AddStatus(vt.StatusDriver)
		d.SetDriverFeatures(tc.features)
		d.AddStatus(vt.StatusFeaturesOK)
		if s := d.Status(); s != vt.StatusAcknowledge|vt.StatusDriver {
			t.Errorf("%s: status after FEATURES_OK = %#x, want FEATURES_OK refused (%#x)", tc.name, s, vt.StatusAcknowledge|vt.StatusDriver)
		}
		// Nor can the device be started without it.
		d.AddStatus(vt.StatusDriverOK)
		if s := d.Status(); s&vt.StatusDriverOK != 0 || dev.activations != 0 {
			t.Errorf("%s: DRIVER_OK without FEATURES_OK: status %#x, %d activations", tc.name, s, dev.activations)
		}
	}
}

func TestMMIOStatusOrder(t *testing.T) {
	d := vt.New(t, newFakeDevice(), 1<<20)
	d.Write32(vt.RegStatus, vt.StatusDriver) // before ACKNOWLEDGE
	if s := d.Status(); s != 0 {
		t.Errorf("DRIVER before ACKNOWLEDGE: status %#x, want 0", s)
	}
	d.Write32(vt.RegStatus, vt.StatusAcknowledge|vt.StatusDriver) // both at once, in order
	if s := d.Status(); s != vt.StatusAcknowledge|vt.StatusDriver {
		t.Errorf("ACKNOWLEDGE|DRIVER: status %#x", s)
	}
	d.Write32(vt.RegStatus, vt.StatusAcknowledge) // clearing DRIVER
	if s := d.Status(); s != vt.StatusAcknowledge|vt.StatusDriver {
		t.Errorf("clearing a bit: status %#x, want it ignored", s)
	}
	d.AddStatus(vt.StatusDeviceNeedsReset)
	if s := d.Status(); s&vt.StatusDeviceNeedsReset != 0 {
		t.Errorf("driver set DEVICE_NEEDS_RESET: status %#x", s)
	}
	d.AddStatus(vt.StatusFailed)
	if s := d.Status(); s != vt.StatusAcknowledge|vt.StatusDriver|vt.StatusFailed {
		t.Errorf("FAILED: status %#x", s)
	}
}

func TestMMIOQueueSetup(t *testing.T) {
	dev := newFakeDevice()
	d := vt.New(t, dev, 1<<20)
	for i, want := range []uint32{16, 8, 0} {
		d.Write32(vt.RegQueueSel, uint32(i))
		if got := d.Read32(vt.RegQueueNumMax); got != want {
			t.Errorf("queue %d: QueueNumMax = %d, want %d", i, got, want)
		}
	}

	// Queue registers are ignored before FEATURES_OK.
	d.Write32(vt.RegQueueSel, 0)
	d.Write32(vt.RegQueueReady, 1)
	if d.Read32(vt.RegQueueReady) != 0 {
		t.Error("QueueReady set before feature negotiation")
	}

	d.Reset()
	d.AddStatus(vt.StatusAcknowledge)
	d.AddStatus(vt.StatusDriver)
	d.SetDriverFeatures(virtio.FeatureVersion1)
	d.AddStatus(vt.StatusFeaturesOK)
	r0, err := d.SetupQueue(0, 4)
	if err != nil {
		t.Fatal(err)
	}
	// With the queue ready, its size and addresses are frozen.
	d.Write32(vt.RegQueueNum, 2)
	d.Write32(vt.RegQueueDescLow, 0x8000)
	if _, err := d.SetupQueue(2, 0); err == nil {
		t.Error("set up queue 2, which does not exist")
	}
	d.AddStatus(vt.StatusDriverOK)
	if dev.activations != 1 {
		t.Fatalf("%d activations after DRIVER_OK", dev.activations)
	}
	q0, q1 := dev.queues[0], dev.queues[1]
	if !q0.Ready || q0.Size != 4 || q0.DescTable != r0.DescTable || q0.AvailRing != r0.AvailRing || q0.UsedRing != r0.UsedRing {
		t.Errorf("queue 0 = %+v, want ready, size 4, rings of %+v", q0, r0)
	}
	if q1.Ready {
		t.Error("queue 1 ready, but the driver never set it up")
	}

	// After DRIVER_OK the queues are the device's.
	d.Write32(vt.RegQueueSel, 1)
	d.Write32(vt.RegQueueReady, 1)
	if q1.Ready {
		t.Error("QueueReady written after DRIVER_OK")
	}
}

func TestMMIOActivationFailure(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(d *vt.Driver, dev *fakeDevice)
	}{
		{"misaligned descriptor table", func(d *vt.Driver, dev *fakeDevice) {
			d.Write32(vt.RegQueueDescLow, 0x1008)
		}},
		{"size not a power of two", func(d *vt.Driver, dev *fakeDevice) {
			d.Write32(vt.RegQueueNum, 3)
		}},
		{"size beyond 16 bits", func(d *vt.Driver, dev *fakeDevice) {
			d.Write32(vt.RegQueueNum, 0x10004)
		}},
		{"used ring outside memory", func(d *vt.Driver, dev *fakeDevice) {
			d.Write32(vt.RegQueueDeviceHigh, 1)
		}},
		{"device refuses", func(d *vt.Driver, dev *fakeDevice) {
			dev.activateErr = errors.New("no")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := newFakeDevice()
			d := vt.New(t, dev, 1<<20)
			d.Reset()
			d.AddStatus(vt.StatusAcknowledge)
			d.AddStatus(vt.StatusDriver)
			d.SetDriverFeatures(virtio.FeatureVersion1)
			d.AddStatus(vt.StatusFeaturesOK)
			d.Write32(vt.RegQueueSel, 0)
			d.Write32(vt.RegQueueNum, 4)
			d.Write32(vt.RegQueueDescLow, 0x1000)
			d.Write32(vt.RegQueueDriverLow, 0x2000)
			d.Write32(vt.RegQueueDeviceLow, 0x3000)
			tc.setup(d, dev)
			d.Write32(vt.RegQueueReady, 1)
			d.AddStatus(vt.StatusDriverOK)

			if s := d.Status(); s&vt.StatusDeviceNeedsReset == 0 {
				t.Errorf("status %#x, want DEVICE_NEEDS_RESET", s)
			}
			if dev.activations != 0 {
				t.Errorf("device activated")
			}
			if d.IRQ.Count() != 1 || d.HandleInterrupt() != vt.InterruptConfigChange {
				t.Errorf("want one configuration change interrupt, got %d interrupts", d.IRQ.Count())
			}
			d.Kick(0)
			if len(dev.notified) != 0 {
				t.Error("a device that failed to activate was notified")
			}
			// A reset clears it all.
			d.Reset()
			if s := d.Status(); s != 0 {
				t.Errorf("status after reset %#x", s)
			}
		})
	}
}

func TestMMIONotify(t *testing.T) {
	dev := newFakeDevice()
	d := vt.New(t, dev, 1<<20)
	d.Kick(0) // before DRIVER_OK
	if err := d.Start(0, 2); err != nil {
		t.Fatal(err)
	}
	d.Kick(1)
	d.Kick(0)
	d.Kick(2)       // no such queue
	d.Kick(1 << 16) // not an index
	if want := []int{1, 0}; !slices.Equal(dev.notified, want) {
		t.Errorf("notified %v, want %v", dev.notified, want)
	}
}

// A kick the kernel caught (MMIO.Kick) goes where the same write to
// QueueNotify would: nowhere before DRIVER_OK or for a queue the device
// does not have, and, while the transport is paused, to the device only
// on Resume, once per queue however many kicks came.
func TestMMIOCaughtKicks(t *testing.T) {
	dev := newFakeDevice()
	d := vt.New(t, dev, 1<<20)
	if got := d.MMIO.Queues(); got != 2 {
		t.Fatalf("Queues() = %d, want 2", got)
	}
	d.MMIO.Kick(0) // before DRIVER_OK
	if err := d.Start(0, 2); err != nil {
		t.Fatal(err)
	}
	d.MMIO.Kick(1)
	d.MMIO.Kick(2) // no such queue
	if want := []int{1}; !slices.Equal(dev.notified, want) {
		t.Fatalf("notified %v, want %v", dev.notified, want)
	}
	dev.notified = nil

	if err := d.MMIO.Pause(); err != nil {
		t.Fatal(err)
	}
	d.MMIO.Kick(1)
	d.MMIO.Kick(1)
	d.Kick(0) // the register's kicks wait the same way
	d.MMIO.Kick(5)
	if len(dev.notified) != 0 {
		t.Fatalf("notified %v while paused, want nothing", dev.notified)
	}
	d.MMIO.Resume()
	if want := []int{0, 1}; !slices.Equal(dev.notified, want) {
		t.Errorf("notified %v on resume, want %v", dev.notified, want)
	}
	if got, want := d.MMIO.KickCounts(), (virtio.KickCounts{Register: 1, Caught: 6}); got != want {
		t.Errorf("KickCounts = %+v, want %+v", got, want)
	}
}

func TestMMIOInterrupts(t *testing.T) {
	dev := newFakeDevice()
	d := vt.New(t, dev, 1<<20)
	if err := d.Start(0, 2); err != nil {
		t.Fatal(err)
	}
	if err := dev.signal(); err != nil {
		t.Fatal(err)
	}
	if d.IRQ.Count() != 1 {
		t.Errorf("%d interrupts after signal, want 1", d.IRQ.Count())
	}
	if got := d.Read32(vt.RegInterruptStatus); got != vt.InterruptUsedBuffer {
		t.Errorf("InterruptStatus = %#x, want used buffer", got)
	}
	// Asserted until acknowledged: a second notification before the
	// driver's ACK raises nothing more (its handler will see both).
	if err := dev.signal(); err != nil {
		t.Fatal(err)
	}
	if d.IRQ.Count() != 1 {
		t.Errorf("%d interrupts after a second signal before the ACK, want still 1", d.IRQ.Count())
	}
	d.Write32(vt.RegInterruptACK, vt.InterruptUsedBuffer)
	if got := d.Read32(vt.RegInterruptStatus); got != 0 {
		t.Errorf("InterruptStatus after ACK = %#x", got)
	}
	// After the ACK the next notification is a new interrupt.
	if err := dev.signal(); err != nil {
		t.Fatal(err)
	}
	if d.IRQ.Count() != 2 {
		t.Errorf("%d interrupts after a signal following the ACK, want 2", d.IRQ.Count())
	}
	// A reset clears a pending status.
	dev.signal()
	d.Reset()
	if got := d.Read32(vt.RegInterruptStatus); got != 0 {
		t.Errorf("InterruptStatus after reset = %#x", got)
	}
}

func TestMMIOReset(t *testing.T) {
	dev := newFakeDevice()
	d := vt.New(t, dev, 1<<20)
	if err := d.Start(0, 2); err != nil {
		t.Fatal(err)
	}
	queues := dev.queues
	d.Reset()
	if dev.resets != 1 {
		t.Errorf("%d device resets, want 1", dev.resets)
	}
	if s := d.Status(); s != 0 {
		t.Errorf("status after reset %#x", s)
	}
	for i, q := range queues {
		if q.Ready || q.Size != q.MaxSize || q.DescTable != 0 || q.AvailRing != 0 || q.UsedRing != 0 {
			t.Errorf("queue %d after reset: %+v", i, q)
		}
	}
	// A device that was never activated is not reset; one can start again.
	d.Reset()
	if dev.resets != 1 {
		t.Errorf("%d device resets after resetting an inactive device, want 1", dev.resets)
	}
	if err := d.Start(0, 2); err != nil {
		t.Fatal(err)
	}
	if dev.activations != 2 {
		t.Errorf("%d activations, want 2", dev.activations)
	}
}

func TestMMIOConfigSpace(t *testing.T) {
	dev := newFakeDevice()
	d := vt.New(t, dev, 1<<20)
	for _, tc := range []struct {
		off  uint64
		n    int
		want []byte
	}{
		{0, 8, []byte{1, 2, 3, 4, 5, 6, 7, 8}},
		{3, 1, []byte{4}},
		{4, 2, []byte{5, 6}},
		{6, 4, []byte{7, 8, 0, 0}},
		{0x100, 4, []byte{0, 0, 0, 0}},
	} {
		if got := d.ReadConfig(tc.off, tc.n); !slices.Equal(got, tc.want) {
			t.Errorf("config [%#x,+%d) = %v, want %v", tc.off, tc.n, got, tc.want)
		}
	}
	d.MMIO.Write(vt.RegConfig+2, []byte{0xaa, 0xbb})
	if got := d.ReadConfig(0, 4); !slices.Equal(got, []byte{1, 2, 0xaa, 0xbb}) {
		t.Errorf("config after a 2-byte write = %v", got)
	}
}

// Describe tells where each queue is: a chain the driver made available
// shows as the driver's available index ahead of the device's next.
func TestMMIODescribe(t *testing.T) {
	d := vt.New(t, newFakeDevice(), 1<<20)
	if err := d.Start(0, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Queue(0).Offer(d.Writable(16)); err != nil {
		t.Fatal(err)
	}
	d.Kick(0)
	want := "type=4 status=0xf activated=true paused=false interrupt_status=0x0 kicks=1+0 deferred=[false false]\n" +
		"  q0 size=16 next_avail=0 next_used=0 avail.idx=1 avail.flags=0x0 used.idx=0\n" +
		"  q1 size=8 next_avail=0 next_used=0 avail.idx=0 avail.flags=0x0 used.idx=0"
	if got := d.MMIO.Describe(); got != want {
		t.Errorf("Describe:\n%s\nwant\n%s", got, want)
	}
}
