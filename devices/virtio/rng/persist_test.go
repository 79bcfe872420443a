package rng

import (
	"bytes"
	"maps"
	"testing"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/devicetest"
	"github.com/sailbox-dev/sailbox/devices/virtio"
	vt "github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

const persistMem = 1 << 20

// entropy is an entropy device under the conformance suite.
type entropy struct{ d *vt.Driver }

func (e *entropy) Save(t *testing.T) (virtio.MMIOState, devicetest.Restorer[virtio.MMIOState]) {
	st, snap := e.d.Save(nil)
	return st, func(t *testing.T, st virtio.MMIOState) (devicetest.Instance[virtio.MMIOState], error) {
		var rs State
		if err := devices.DecodeState("virtio-rng", st.Device, &rs); err != nil {
			return nil, err
		}
		dev, err := Restore(rs)
		if err != nil {
			return nil, err
		}
		d, err := snap.Restore(t, func(mem *memory.Memory, irq *vt.Interrupt) (*virtio.MMIO, error) {
			return virtio.RestoreMMIO(st, dev, mem, irq)
		})
		if err != nil {
			return nil, err
		}
		return &entropy{d}, nil
	}
}

// Mutate fills two more requests.
func (e *entropy) Mutate(t *testing.T) {
	fill(t, e.d, e.d.Writable(32))
	fill(t, e.d, e.d.Writable(32))
}

// Check fills a request, without the driver starting again.
func (e *entropy) Check(t *testing.T) {
	b := e.d.Writable(64)
	if n := fill(t, e.d, b); n != 64 || bytes.Equal(e.d.Bytes(b), make([]byte, 64)) {
		t.Errorf("restored device: used length %d, bytes %x", n, e.d.Bytes(b))
	}
}

func TestPersist(t *testing.T) {
	invalid := vt.InvalidMMIOStates(persistMem)
	maps.Copy(invalid, map[string]func(*virtio.MMIOState){
		"rng version": vt.EditDevice(func(s *State) { s.Version = 0 }),
	})
	devicetest.Conformance(t, devicetest.Harness[virtio.MMIOState]{
		Start: func(t *testing.T) devicetest.Instance[virtio.MMIOState] {
			d := start(t)
			fill(t, d, d.Writable(16), d.Writable(16))
			fill(t, d, d.Writable(100))
			return &entropy{d}
		},
		Invalid: invalid,
	})
}
