package virtiotest

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"testing"

	"github.com/sailbox-dev/sailbox/devices/virtio"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// Snapshot is what a VM snapshot holds of the driver's side: guest memory
// and the driver's own bookkeeping of its rings (which a real guest keeps
// in guest memory, and this fake driver in the test's).
type Snapshot struct {
	mem   []byte
	next  uint64
	rings []*Ring // copies, with Mem unset
}

// Save saves the transport as a VMM does: it pauses it (the vCPU, here
// the test's goroutine, is not running), saves its state, runs whilePaused
// (nil for none: to copy a disk image, say), snapshots the driver's side,
// and resumes. It fails the test if the transport cannot be saved.
func (d *Driver) Save(whilePaused func()) (virtio.MMIOState, *Snapshot) {
	d.tb.Helper()
	if err := d.MMIO.Pause(); err != nil {
		d.tb.Fatal(err)
	}
	defer d.MMIO.Resume()
	st, err := d.MMIO.Save()
	if err != nil {
		d.tb.Fatal(err)
	}
	if whilePaused != nil {
		whilePaused()
	}
	return st, d.Snapshot()
}

// Snapshot copies guest memory and the driver's bookkeeping.
func (d *Driver) Snapshot() *Snapshot {
	s := &Snapshot{mem: slices.Clone(d.Mem.Host()), next: d.next}
	for _, r := range d.rings {
		var c *Ring
		if r != nil {
			cp := *r
			cp.Mem = nil
			cp.free = slices.Clone(r.free)
			cp.outstanding = maps.Clone(r.outstanding)
			for k, v := range cp.outstanding {
				cp.outstanding[k] = slices.Clone(v)
			}
			c = &cp
		}
		s.rings = append(s.rings, c)
	}
	return s
}

// Restore returns a driver on a copy of the snapshot's guest memory, with
// a new interrupt line and the transport restore builds (virtio.RestoreMMIO
// around a restored device), picking up where the snapshotted driver was.
// It returns restore's error. Like New, it arranges for the device to be
// reset and the memory released when the test ends.
func (s *Snapshot) Restore(tb testing.TB, restore func(mem *memory.Memory, irq *Interrupt) (*virtio.MMIO, error)) (*Driver, error) {
	tb.Helper()
	mem, err := memory.New(uint64(len(s.mem)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { mem.Close() })
	copy(mem.Host(), s.mem)
	irq := NewInterrupt()
	m, err := restore(mem, irq)
	if err != nil {
		return nil, err
	}
	d := &Driver{Mem: mem, IRQ: irq, MMIO: m, tb: tb, next: s.next}
	for _, r := range s.rings {
		var c *Ring
		if r != nil {
			cp := *r
			cp.Mem = mem
			cp.free = slices.Clone(r.free)
			cp.outstanding = maps.Clone(r.outstanding)
			c = &cp
		}
		d.rings = append(d.rings, c)
	}
	tb.Cleanup(d.Reset)
	return d, nil
}

// InvalidMMIOStates are damaged transport states for devicetest's suite,
// made from the state of an active device whose queue 0 is ready, in
// guest memory of memSize bytes: a restore must refuse each of them.
func InvalidMMIOStates(memSize uint64) map[string]func(*virtio.MMIOState) {
	const (
		driverOK   = StatusDriverOK
		featuresOK = StatusFeaturesOK
	)
	return map[string]func(*virtio.MMIOState){
		"version":                  func(s *virtio.MMIOState) { s.Version++ },
		"device type":              func(s *virtio.MMIOState) { s.DeviceType++ },
		"offered features":         func(s *virtio.MMIOState) { s.OfferedFeatures ^= 1 << 40 },
		"unknown status bit":       func(s *virtio.MMIOState) { s.Status |= 0x10 },
		"DRIVER_OK without FEAT":   func(s *virtio.MMIOState) { s.Status &^= featuresOK },
		"active without DRIVER_OK": func(s *virtio.MMIOState) { s.Status &^= driverOK },
		"active needing reset":     func(s *virtio.MMIOState) { s.Status |= StatusDeviceNeedsReset },
		"DRIVER_OK not active":     func(s *virtio.MMIOState) { s.Activated = false },
		"feature not offered":      func(s *virtio.MMIOState) { s.DriverFeatures |= 1 << 63 },
		"no VERSION_1":             func(s *virtio.MMIOState) { s.DriverFeatures &^= virtio.FeatureVersion1 },
		"interrupt status":         func(s *virtio.MMIOState) { s.InterruptStatus |= 4 },
		"queue missing":            func(s *virtio.MMIOState) { s.Queues = s.Queues[:len(s.Queues)-1] },
		"queue extra":              func(s *virtio.MMIOState) { s.Queues = append(s.Queues, s.Queues[0]) },
		"queue max size":           func(s *virtio.MMIOState) { s.Queues[0].MaxSize /= 2 },
		"queue size zero":          func(s *virtio.MMIOState) { s.Queues[0].Size = 0 },
		"queue size 3":             func(s *virtio.MMIOState) { s.Queues[0].Size = 3 },
		"queue size beyond max":    func(s *virtio.MMIOState) { s.Queues[0].Size = s.Queues[0].MaxSize * 2 },
		"descriptors outside":      func(s *virtio.MMIOState) { s.Queues[0].DescTable = memSize },
		"descriptors wrap":         func(s *virtio.MMIOState) { s.Queues[0].DescTable = math.MaxUint64 &^ 15 },
		"available ring unaligned": func(s *virtio.MMIOState) { s.Queues[0].AvailRing |= 1 },
		"used ring unaligned":      func(s *virtio.MMIOState) { s.Queues[0].UsedRing += 2 },
		"used ring across the end": func(s *virtio.MMIOState) { s.Queues[0].UsedRing = memSize - 8 },
		"device state missing":     func(s *virtio.MMIOState) { s.Device = nil },
		"device state a string":    func(s *virtio.MMIOState) { s.Device = json.RawMessage(`"x"`) },
		"device state unknown field": func(s *virtio.MMIOState) {
			s.Device = append(s.Device[:len(s.Device)-1:len(s.Device)-1], []byte(`,"Unknown":1}`)...)
		},
		"device state trailing data": func(s *virtio.MMIOState) {
			s.Device = append(s.Device[:len(s.Device):len(s.Device)], []byte(` {}`)...)
		},
	}
}

// EditDevice returns a change to a transport state's device state, which
// it decodes as a T, changes with edit and encodes again; for
// InvalidMMIOStates' device-specific companions.
func EditDevice[T any](edit func(*T)) func(*virtio.MMIOState) {
	return func(s *virtio.MMIOState) {
		var v T
		if err := json.Unmarshal(s.Device, &v); err != nil {
			panic(fmt.Sprintf("virtiotest: device state %s: %v", s.Device, err))
		}
		edit(&v)
		b, err := json.Marshal(v)
		if err != nil {
			panic(fmt.Sprintf("virtiotest: device state %+v: %v", v, err))
		}
		s.Device = b
	}
}
