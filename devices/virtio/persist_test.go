package virtio_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"maps"
	"testing"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/devicetest"
	"github.com/sailbox-dev/sailbox/devices/virtio"
	vt "github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// counter is a persistent fake device: on a kick it writes a running
// count into each chain of queue 0 and returns it, as rng does with random
// bytes; queue 1 is never used. Its state is the count and its
// configuration space, which the driver may write. Like rng it serves
// kicks on the vCPU, under the transport's lock, so it needs no Pauser.
type counter struct {
	count  uint32
	config [4]byte

	mem         devices.GuestMemory
	queue       *virtio.Queue // nil when not active
	signal      func() error
	acked       uint64
	activations int
}

type counterState struct {
	Version uint32
	Count   uint32
	Config  [4]byte
}

func (c *counter) Type() uint32         { return virtio.TypeEntropy }
func (c *counter) Features() uint64     { return 1 << 3 }
func (c *counter) QueueSizes() []uint16 { return []uint16{8, 4} }

func (c *counter) ReadConfig(offset uint64, data []byte) {
	clear(data)
	if offset < uint64(len(c.config)) {
		copy(data, c.config[offset:])
	}
}

func (c *counter) WriteConfig(offset uint64, data []byte) {
	if offset < uint64(len(c.config)) {
		copy(c.config[offset:], data)
	}
}

func (c *counter) Activate(mem devices.GuestMemory, acked uint64, queues []*virtio.Queue, signal func() error) error {
	if !queues[0].Ready {
		return errors.New("counter: queue 0 not ready")
	}
	c.mem, c.queue, c.signal, c.acked = mem, queues[0], signal, acked
	c.activations++
	return nil
}

func (c *counter) Notify(index int) {
	if c.queue == nil || index != 0 {
		return
	}
	returned := false
	for {
		ch, ok, err := c.queue.Pop(c.mem)
		if !ok {
			break
		}
		returned = true
		var written uint32
		if err == nil {
			c.count++
			var b [4]byte
			binary.LittleEndian.PutUint32(b[:], c.count)
			w := ch.Writer(c.mem)
			w.Write(b[:])
			written = w.Written()
		}
		c.queue.PushUsed(c.mem, ch.Head, written)
	}
	if returned && c.queue.NeedsInterrupt(c.mem) {
		c.signal()
	}
}

func (c *counter) Reset() { c.queue = nil }

func (c *counter) SaveState() (json.RawMessage, error) {
	return json.Marshal(counterState{Version: 1, Count: c.count, Config: c.config})
}

func restoreCounter(st json.RawMessage) (*counter, error) {
	var cs counterState
	if err := devices.DecodeState("counter", st, &cs); err != nil {
		return nil, err
	}
	if err := devices.CheckStateVersion("counter", cs.Version, 1); err != nil {
		return nil, err
	}
	return &counter{count: cs.Count, config: cs.Config}, nil
}

const persistMem = 64 << 10

// transport is the counter behind the transport, under the conformance
// suite.
type transport struct {
	c *counter
	d *vt.Driver
}

func (tr *transport) Save(t *testing.T) (virtio.MMIOState, devicetest.Restorer[virtio.MMIOState]) {
	st, snap := tr.d.Save(nil)
	return st, func(t *testing.T, st virtio.MMIOState) (devicetest.Instance[virtio.MMIOState], error) {
		c, err := restoreCounter(st.Device)
		if err != nil {
			return nil, err
		}
		d, err := snap.Restore(t, func(mem *memory.Memory, irq *vt.Interrupt) (*virtio.MMIO, error) {
			return virtio.RestoreMMIO(st, c, mem, irq)
		})
		if err != nil {
			return nil, err
		}
		return &transport{c, d}, nil
	}
}

// next has the device count one more chain and returns the count.
func (tr *transport) next(t testing.TB) uint32 {
	t.Helper()
	b := tr.d.Writable(4)
	if _, err := tr.d.Queue(0).Offer(b); err != nil {
		t.Fatal(err)
	}
	tr.d.Kick(0)
	if _, err := tr.d.WaitUsed(0, 1); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint32(tr.d.Bytes(b))
}

func (tr *transport) Mutate(t *testing.T) {
	tr.next(t)
	tr.d.MMIO.Write(vt.RegConfig, []byte{9, 9, 9, 9})
	tr.d.Write32(vt.RegQueueSel, 0)
}

// Check expects the count, configuration and registers at the save, and
// the device active without a new negotiation.
func (tr *transport) Check(t *testing.T) {
	if got := tr.d.ReadConfig(0, 4); string(got) != "\x01\x02\x03\x04" {
		t.Errorf("config % x, want 01 02 03 04", got)
	}
	if s := tr.d.Status(); s != vt.StatusAcknowledge|vt.StatusDriver|vt.StatusFeaturesOK|vt.StatusDriverOK {
		t.Errorf("status %#x", s)
	}
	if q := tr.d.Read32(vt.RegQueueReady); q != 1 { // QueueSel 1, ready
		t.Errorf("queue 1 ready %d", q)
	}
	if tr.c.activations != 1 || tr.c.acked != 1<<3|virtio.FeatureVersion1 {
		t.Errorf("%d activations, acked %#x", tr.c.activations, tr.c.acked)
	}
	if n := tr.next(t); n != 4 {
		t.Errorf("count %d after the restore, want 4", n)
	}
}

// newTransport returns an active counter.
func newTransport(tb testing.TB) *transport {
	c := &counter{}
	tr := &transport{c: c, d: vt.New(tb, c, persistMem)}
	if err := tr.d.Start(1<<3, 2); err != nil {
		tb.Fatal(err)
	}
	return tr
}

func startTransport(t *testing.T) devicetest.Instance[virtio.MMIOState] {
	tr := newTransport(t)
	tr.d.MMIO.Write(vt.RegConfig, []byte{1, 2, 3, 4})
	for range 3 {
		tr.next(t)
	}
	tr.d.Write32(vt.RegQueueSel, 1)
	return tr
}

func TestPersist(t *testing.T) {
	invalid := vt.InvalidMMIOStates(persistMem)
	maps.Copy(invalid, map[string]func(*virtio.MMIOState){
		"counter version": vt.EditDevice(func(s *counterState) { s.Version = 7 }),
	})
	devicetest.Conformance(t, devicetest.Harness[virtio.MMIOState]{Start: startTransport, Invalid: invalid})
}

// TestRestoreMidNegotiation saves a transport whose driver has not
// finished: the restored one takes the rest of the negotiation.
func TestRestoreMidNegotiation(t *testing.T) {
	c := &counter{}
	d := vt.New(t, c, persistMem)
	d.AddStatus(vt.StatusAcknowledge)
	d.AddStatus(vt.StatusDriver)
	d.SetDriverFeatures(1<<3 | virtio.FeatureVersion1)
	d.AddStatus(vt.StatusFeaturesOK)
	if _, err := d.SetupQueue(0, 4); err != nil {
		t.Fatal(err)
	}
	d.Write32(vt.RegQueueSel, 1)
	d.Write32(vt.RegQueueNum, 3) // not a valid size, but the driver may write it before DRIVER_OK

	st, snap := d.Save(nil)
	if st.Activated || st.Queues[0] != (virtio.QueueState{MaxSize: 8, Size: 4, Ready: true,
		DescTable: d.Queue(0).DescTable, AvailRing: d.Queue(0).AvailRing, UsedRing: d.Queue(0).UsedRing}) || st.Queues[1].Size != 3 {
		t.Fatalf("saved %+v", st)
	}
	c2 := &counter{}
	d2, err := snap.Restore(t, func(mem *memory.Memory, irq *vt.Interrupt) (*virtio.MMIO, error) {
		return virtio.RestoreMMIO(st, c2, mem, irq)
	})
	if err != nil {
		t.Fatal(err)
	}
	if c2.activations != 0 {
		t.Fatal("a device restored before DRIVER_OK was activated")
	}
	d2.Write32(vt.RegQueueNum, 4)
	d2.Write32(vt.RegQueueReady, 1)
	d2.AddStatus(vt.StatusDriverOK)
	if c2.activations != 1 || c2.acked != 1<<3|virtio.FeatureVersion1 {
		t.Fatalf("after DRIVER_OK: %d activations, acked %#x", c2.activations, c2.acked)
	}
	tr := &transport{c2, d2}
	if n := tr.next(t); n != 1 {
		t.Fatalf("count %d", n)
	}
}

// TestSaveNeedsPause checks that Save refuses an unpaused transport and a
// device that does not save its state, and that kicks wait for Resume.
func TestSaveNeedsPause(t *testing.T) {
	tr := startTransport(t).(*transport)
	if _, err := tr.d.MMIO.Save(); !errors.Is(err, virtio.ErrNotPaused) {
		t.Fatalf("unpaused save: %v, want ErrNotPaused", err)
	}
	if err := tr.d.MMIO.Pause(); err != nil {
		t.Fatal(err)
	}
	b := tr.d.Writable(4)
	if _, err := tr.d.Queue(0).Offer(b); err != nil {
		t.Fatal(err)
	}
	tr.d.Kick(0)
	if tr.c.count != 3 {
		t.Fatalf("a paused device served a kick (count %d)", tr.c.count)
	}
	tr.d.MMIO.Resume()
	if tr.c.count != 4 {
		t.Fatalf("count %d after Resume, want the kick delivered", tr.c.count)
	}

	plain := vt.New(t, newFakeDevice(), 1<<20)
	if err := plain.MMIO.Pause(); err != nil {
		t.Fatal(err)
	}
	if _, err := plain.MMIO.Save(); err == nil {
		t.Fatal("saved a device that is not Persistent")
	}
}

// TestRestoreActivationError checks that a device refusing activation
// fails the restore.
func TestRestoreActivationError(t *testing.T) {
	tr := startTransport(t).(*transport)
	st, snap := tr.d.Save(nil)
	_, err := snap.Restore(t, func(mem *memory.Memory, irq *vt.Interrupt) (*virtio.MMIO, error) {
		f := newFakeDevice()
		f.features, f.sizes, f.activateErr = 1<<3, []uint16{8, 4}, errors.New("no")
		return virtio.RestoreMMIO(st, f, mem, irq)
	})
	if err == nil {
		t.Fatal("restore succeeded")
	}
}

// FuzzRestoreMMIO restores arbitrary JSON states around a counter: the
// transport must refuse them or work, never panic, whatever the driver
// does next.
func FuzzRestoreMMIO(f *testing.F) {
	// Seeds: the states of an active transport, of one mid-negotiation,
	// and of one just created.
	active := newTransport(f)
	for range 3 {
		active.next(f)
	}
	mid := vt.New(f, &counter{}, persistMem)
	mid.AddStatus(vt.StatusAcknowledge)
	mid.AddStatus(vt.StatusDriver)
	mid.SetDriverFeatures(1<<3 | virtio.FeatureVersion1)
	mid.AddStatus(vt.StatusFeaturesOK)
	if _, err := mid.SetupQueue(0, 4); err != nil {
		f.Fatal(err)
	}
	for _, d := range []*vt.Driver{active.d, mid, vt.New(f, &counter{}, persistMem)} {
		st, _ := d.Save(nil)
		b, err := json.Marshal(st)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var st virtio.MMIOState
		if json.Unmarshal(data, &st) != nil {
			return
		}
		mem, err := memory.New(persistMem)
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		c, err := restoreCounter(st.Device)
		if err != nil {
			c = &counter{}
		}
		m, err := virtio.RestoreMMIO(st, c, mem, vt.NewInterrupt())
		if err != nil {
			return
		}
		reg := func(off uint64, v uint32) uint32 {
			var b [4]byte
			binary.LittleEndian.PutUint32(b[:], v)
			m.Write(off, b[:])
			m.Read(off, b[:])
			return binary.LittleEndian.Uint32(b[:])
		}
		for q := range uint32(3) {
			reg(vt.RegQueueSel, q)
			reg(vt.RegQueueNotify, q)
			reg(vt.RegQueueReady, 1)
		}
		reg(vt.RegInterruptACK, ^uint32(0))
		var b [4]byte
		m.Read(vt.RegStatus, b[:])
		reg(vt.RegStatus, binary.LittleEndian.Uint32(b[:])|vt.StatusDriverOK)
		if err := m.Pause(); err != nil {
			t.Fatal(err)
		}
		again, err := m.Save()
		if err != nil {
			t.Fatal(err)
		}
		m.Resume()
		if _, err := virtio.RestoreMMIO(again, &counter{count: c.count, config: c.config}, mem, vt.NewInterrupt()); err != nil {
			t.Fatalf("a saved state does not restore: %v\n%+v", err, again)
		}
		reg(vt.RegStatus, 0)
	})
}

// TestRestoreRaisesPendingInterrupt checks that an interrupt the driver
// had not acknowledged at the save is raised again.
func TestRestoreRaisesPendingInterrupt(t *testing.T) {
	tr := newTransport(t)
	if _, err := tr.d.Queue(0).Offer(tr.d.Writable(4)); err != nil {
		t.Fatal(err)
	}
	tr.d.Kick(0) // served at once; the interrupt is not handled
	st, snap := tr.d.Save(nil)
	if st.InterruptStatus != vt.InterruptUsedBuffer {
		t.Fatalf("saved interrupt status %#x", st.InterruptStatus)
	}
	d, err := snap.Restore(t, func(mem *memory.Memory, irq *vt.Interrupt) (*virtio.MMIO, error) {
		return virtio.RestoreMMIO(st, &counter{count: 1}, mem, irq)
	})
	if err != nil {
		t.Fatal(err)
	}
	if d.IRQ.Count() != 1 || d.HandleInterrupt() != vt.InterruptUsedBuffer {
		t.Fatalf("%d interrupts after the restore", d.IRQ.Count())
	}
	if used, err := d.Queue(0).Used(); err != nil || len(used) != 1 {
		t.Fatalf("used %v, %v", used, err)
	}
}
