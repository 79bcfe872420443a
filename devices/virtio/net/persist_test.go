package net

import (
	"bytes"
	"errors"
	"maps"
	"testing"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/devicetest"
	"github.com/sailbox-dev/sailbox/devices/virtio"
	vt "github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// persistMem is the guest memory of the conformance suite's devices,
// which copies it at every restore.
const persistMem = 1 << 20

// netDev is a virtio-net device under the conformance suite: the device,
// its fake driver with receive buffers posted, and its peer.
type netDev struct{ g *guest }

// startNet leaves the device active, having carried a frame each way,
// with three receive buffers posted.
func startNet(t *testing.T) devicetest.Instance[virtio.MMIOState] {
	return startNetDev(t, true)
}

// startNetDev is startNet for a device that offers the transmit
// offloads or not.
func startNetDev(t *testing.T, offloads bool) devicetest.Instance[virtio.MMIOState] {
	g := newGuestDev(t, persistMem, testLogger(t), offloads)
	g.postRx(4, rxBufSize)
	out, in := frameOf(200, 1), frameOf(300, 2)
	g.send(out)
	if got := g.peerRead(); !bytes.Equal(got, out) {
		t.Fatalf("peer read %x", got)
	}
	g.peerWrite(in)
	if got := g.receiveFrame(); !bytes.Equal(got, in) {
		t.Fatalf("guest got %x", got)
	}
	return &netDev{g}
}

func (n *netDev) Save(t *testing.T) (virtio.MMIOState, devicetest.Restorer[virtio.MMIOState]) {
	st, snap := n.g.drv.Save(nil)
	rxBufs := maps.Clone(n.g.rxBufs)
	return st, func(t *testing.T, st virtio.MMIOState) (devicetest.Instance[virtio.MMIOState], error) {
		var ns State
		if err := devices.DecodeState("virtio-net", st.Device, &ns); err != nil {
			return nil, err
		}
		conn, peer := seqpacketPair(t)
		dev, err := restoreOn(ns, conn, testLogger(t))
		if err != nil {
			conn.Close()
			return nil, err
		}
		drv, err := snap.Restore(t, func(mem *memory.Memory, irq *vt.Interrupt) (*virtio.MMIO, error) {
			return virtio.RestoreMMIO(st, dev, mem, irq)
		})
		if err != nil {
			dev.Close()
			return nil, err
		}
		t.Cleanup(func() { dev.Close() })
		return &netDev{&guest{t: t, dev: dev, drv: drv, peer: peer, rxBufs: maps.Clone(rxBufs)}}, nil
	}
}

// Mutate transmits another frame, which moves the transmit queue.
func (n *netDev) Mutate(t *testing.T) {
	f := frameOf(400, 3)
	n.g.send(f)
	if got := n.g.peerRead(); !bytes.Equal(got, f) {
		t.Fatalf("peer read %x", got)
	}
}

// Check carries a frame each way over the restored device's new link: in
// a receive buffer posted before the save, out on the transmit queue
// where the saved driver left it.
func (n *netDev) Check(t *testing.T) {
	in := frameOf(500, 4)
	n.g.peerWrite(in)
	if got := n.g.receiveFrame(); !bytes.Equal(got, in) {
		t.Fatalf("restored device: guest got %d bytes, want the new peer's frame", len(got))
	}
	out := frameOf(600, 5)
	n.g.send(out)
	if got := n.g.peerRead(); !bytes.Equal(got, out) {
		t.Fatalf("restored device: new peer read %d bytes", len(got))
	}
	// The writer counts a frame once its write returns, which may be
	// after the peer has read it.
	n.g.waitStats("restored device: one frame each way", func(s Stats) bool { return s.RxFrames == 1 && s.TxFrames == 1 })
	// The driver keeps the features it negotiated: a device that
	// offered the offloads takes a TSO packet, one that did not
	// refuses it.
	want, tso := tsoPacket(t, 5000, 6)
	n.g.transmit(n.g.drv.Readable(tso))
	if n.g.dev.Features()&offloadFeatures == 0 {
		n.g.waitStats("restored device without offloads: the TSO packet refused", func(s Stats) bool { return s.TxInvalid == 1 })
		return
	}
	if got := n.g.peerRead(); !bytes.Equal(got, want) {
		t.Fatalf("restored device: new peer read %d bytes, want the %d-byte TSO packet", len(got), len(want))
	}
}

func TestPersist(t *testing.T) {
	invalid := vt.InvalidMMIOStates(persistMem)
	maps.Copy(invalid, map[string]func(*virtio.MMIOState){
		"net version":                 vt.EditDevice(func(s *State) { s.Version = 0 }),
		"net version 3":               vt.EditDevice(func(s *State) { s.Version = 3 }),
		"net version 1 with offloads": vt.EditDevice(func(s *State) { s.Version = 1; s.Offloads = true }),
		// The transport checks the offered features against the saved.
		"net offloads lost": vt.EditDevice(func(s *State) { s.Offloads = false }),
		"net MAC missing":   vt.EditDevice(func(s *State) { s.MAC = "" }),
		"net MAC malformed": vt.EditDevice(func(s *State) { s.MAC = "5a:94:ef:e4:0c" }),
		"net MAC multicast": vt.EditDevice(func(s *State) { s.MAC = "01:00:5e:00:00:01" }),
		"net MAC EUI-64":    vt.EditDevice(func(s *State) { s.MAC = "02:00:00:00:00:00:00:01" }),
	})
	devicetest.Conformance(t, devicetest.Harness[virtio.MMIOState]{
		Start:   startNet,
		Invalid: invalid,
	})
}

// A device restored from a state without offloads (as every version 1
// state is) offers none, and passes the suite so.
func TestPersistWithoutOffloads(t *testing.T) {
	invalid := vt.InvalidMMIOStates(persistMem)
	maps.Copy(invalid, map[string]func(*virtio.MMIOState){
		"net offloads gained": vt.EditDevice(func(s *State) { s.Offloads = true }),
	})
	devicetest.Conformance(t, devicetest.Harness[virtio.MMIOState]{
		Start:   func(t *testing.T) devicetest.Instance[virtio.MMIOState] { return startNetDev(t, false) },
		Invalid: invalid,
	})
}

// A checkpoint taken before the offloads existed (device state version
// 1, the transport's offered features without them) restores: the
// device offers what it offered then, and the driver's negotiated
// features stay valid.
func TestRestoreVersion1State(t *testing.T) {
	g := newGuestDev(t, persistMem, testLogger(t), false)
	f := frameOf(200, 1)
	g.send(f)
	g.peerRead()
	st, snap := g.drv.Save(nil)
	if st.OfferedFeatures&offloadFeatures != 0 {
		t.Fatalf("offered %#x", st.OfferedFeatures)
	}
	st.Device = []byte(`{"Version":1,"MAC":"5a:94:ef:e4:0c:ee"}`) // as version 1 wrote it
	var ns State
	if err := devices.DecodeState("virtio-net", st.Device, &ns); err != nil {
		t.Fatal(err)
	}
	conn, peer := seqpacketPair(t)
	dev, err := restoreOn(ns, conn, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	if dev.Features() != baseFeatures {
		t.Errorf("restored from version 1: features %#x, want %#x", dev.Features(), uint64(baseFeatures))
	}
	drv, err := snap.Restore(t, func(mem *memory.Memory, irq *vt.Interrupt) (*virtio.MMIO, error) {
		return virtio.RestoreMMIO(st, dev, mem, irq)
	})
	if err != nil {
		t.Fatalf("restore of a version 1 checkpoint: %v", err)
	}
	r := &guest{t: t, dev: dev, drv: drv, peer: peer, rxBufs: map[uint16]vt.Buf{}}
	f = frameOf(300, 2)
	r.send(f)
	if got := r.peerRead(); !bytes.Equal(got, f) {
		t.Fatalf("restored device: peer read %d bytes", len(got))
	}
	pst, err := func() (State, error) {
		if err := dev.Pause(); err != nil {
			return State{}, err
		}
		defer dev.Resume()
		return dev.Save()
	}()
	if err != nil || pst != (State{Version: StateVersion, MAC: "5a:94:ef:e4:0c:ee"}) {
		t.Errorf("saved again: %+v, %v", pst, err)
	}
}

// Save needs a paused device; a restored device offers the saved MAC.
func TestSaveNeedsPause(t *testing.T) {
	g := newGuest(t)
	if _, err := g.dev.Save(); !errors.Is(err, virtio.ErrNotPaused) {
		t.Fatalf("save of a running device: %v", err)
	}
	if err := g.dev.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := g.dev.Pause(); err != nil {
		t.Fatalf("pause of a paused device: %v", err)
	}
	st, err := g.dev.Save()
	if err != nil || st != (State{Version: StateVersion, MAC: "5a:94:ef:e4:0c:ee", Offloads: true}) {
		t.Fatalf("save = %+v, %v", st, err)
	}
	g.dev.Resume()
	g.dev.Resume()
	conn, _ := seqpacketPair(t)
	mac := MAC{0x02, 1, 2, 3, 4, 5}
	r, err := restoreOn(State{Version: StateVersion, MAC: mac.String()}, conn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var got [6]byte
	r.ReadConfig(cfgMAC, got[:])
	if MAC(got) != mac {
		t.Errorf("restored device offers MAC %x, want %v", got, mac)
	}
	// A closed device cannot be paused.
	r.Close()
	if err := r.Pause(); err == nil {
		t.Error("pause of a closed device succeeded")
	}
}
