package blk

import (
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/devicetest"
	"github.com/sailbox-dev/sailbox/devices/virtio"
	vt "github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// disk is a block device under the conformance suite: the device, its
// fake driver and its image file.
type disk struct {
	b    *Block
	d    *vt.Driver
	path string
	id   string // the device ID the guest read at the start
}

var (
	savedData   = bytes.Repeat([]byte("saved..."), SectorSize/8)
	mutatedData = bytes.Repeat([]byte("mutated!"), SectorSize/8)
)

func startDisk(t *testing.T) devicetest.Instance[virtio.MMIOState] {
	b, d, path := newDevice(t, false, featureFlush)
	k := &disk{b: b, d: d, path: path}
	if r := writeSectors(t, d, 3, savedData); r.status != statusOK {
		t.Fatalf("write: status %d", r.status)
	}
	r := submit(t, d, d.Readable(header(typeGetID, 0)), d.Writable(idBytes))
	if r.status != statusOK {
		t.Fatalf("get ID: status %d", r.status)
	}
	k.id = string(r.data)
	return k
}

func (k *disk) Save(t *testing.T) (virtio.MMIOState, devicetest.Restorer[virtio.MMIOState]) {
	var img []byte
	st, snap := k.d.Save(func() {
		var err error
		if img, err = os.ReadFile(k.path); err != nil {
			t.Fatal(err)
		}
	})
	return st, func(t *testing.T, st virtio.MMIOState) (devicetest.Instance[virtio.MMIOState], error) {
		path := filepath.Join(t.TempDir(), "restored.img")
		if err := os.WriteFile(path, img, 0o600); err != nil {
			t.Fatal(err)
		}
		be := openImage(t, path, os.O_RDWR)
		var bs State
		if err := devices.DecodeState("virtio-blk", st.Device, &bs); err != nil {
			be.Close()
			return nil, err
		}
		b, err := Restore(bs, be)
		if err != nil {
			be.Close()
			return nil, err
		}
		d, err := snap.Restore(t, func(mem *memory.Memory, irq *vt.Interrupt) (*virtio.MMIO, error) {
			return virtio.RestoreMMIO(st, b, mem, irq)
		})
		if err != nil {
			b.Close()
			return nil, err
		}
		t.Cleanup(func() { b.Close() })
		return &disk{b: b, d: d, path: path, id: k.id}, nil
	}
}

// Mutate overwrites the sector written before the save.
func (k *disk) Mutate(t *testing.T) {
	if r := writeSectors(t, k.d, 3, mutatedData); r.status != statusOK {
		t.Fatalf("write: status %d", r.status)
	}
}

// Check reads the image as saved, the device ID of the original image,
// and writes.
func (k *disk) Check(t *testing.T) {
	if r := readSectors(t, k.d, 3, SectorSize); r.status != statusOK || !bytes.Equal(r.data, savedData) {
		t.Errorf("read sector 3: status %d, %q...; want the data written before the save", r.status, r.data[:16])
	}
	r := submit(t, k.d, k.d.Readable(header(typeGetID, 0)), k.d.Writable(idBytes))
	if r.status != statusOK || string(r.data) != k.id {
		t.Errorf("get ID: status %d, %q; want %q", r.status, r.data, k.id)
	}
	if r := writeSectors(t, k.d, 9, mutatedData); r.status != statusOK {
		t.Fatalf("write: status %d", r.status)
	}
	if r := readSectors(t, k.d, 9, SectorSize); r.status != statusOK || !bytes.Equal(r.data, mutatedData) {
		t.Errorf("read back: status %d", r.status)
	}
	if r := submit(t, k.d, k.d.Readable(header(typeFlush, 0))); r.status != statusOK {
		t.Errorf("flush: status %d", r.status)
	}
}

func TestPersist(t *testing.T) {
	invalid := vt.InvalidMMIOStates(4 << 20)
	maps.Copy(invalid, map[string]func(*virtio.MMIOState){
		"blk version":  vt.EditDevice(func(s *State) { s.Version++ }),
		"blk capacity": vt.EditDevice(func(s *State) { s.Capacity++ }),
		"blk huge":     vt.EditDevice(func(s *State) { s.Capacity = 1 << 63 }),
		"blk ID":       vt.EditDevice(func(s *State) { s.ID = "\x00" }),
	})
	devicetest.Conformance(t, devicetest.Harness[virtio.MMIOState]{Start: startDisk, Invalid: invalid})
}

// TestPauseDrains checks that Pause returns only after the requests the
// driver made available are done, and that a paused device takes no new
// ones until Resume.
func TestPauseDrains(t *testing.T) {
	_, d, _ := newDevice(t, false, featureFlush)
	const n = 16
	for i := range n {
		if _, err := d.Queue(0).Offer(d.Readable(header(typeIn, uint64(i))), d.Writable(SectorSize), d.Writable(1)); err != nil {
			t.Fatal(err)
		}
	}
	d.Kick(0)
	if err := d.MMIO.Pause(); err != nil {
		t.Fatal(err)
	}
	if used, err := d.Queue(0).Used(); err != nil || len(used) != n {
		t.Fatalf("paused with %d of %d requests done (%v)", len(used), n, err)
	}
	if _, err := d.Queue(0).Offer(d.Readable(header(typeFlush, 0)), d.Writable(1)); err != nil {
		t.Fatal(err)
	}
	d.Kick(0)
	if used, _ := d.Queue(0).Used(); len(used) != 0 {
		t.Fatal("a paused device served a request")
	}
	if err := d.MMIO.Pause(); err != nil { // pausing twice is harmless
		t.Fatal(err)
	}
	d.MMIO.Resume()
	if _, err := d.WaitUsed(0, 1); err != nil {
		t.Fatalf("the request kicked while paused: %v", err)
	}
}
