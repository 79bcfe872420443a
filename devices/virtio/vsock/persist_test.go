package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/devicetest"
	"github.com/sailbox-dev/sailbox/devices/virtio"
	vt "github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

const persistMem = 1 << 20

// vsockDev is a vsock device under the conformance suite: the device, its
// fake driver, the guest's rx buffers and a host client.
type vsockDev struct {
	dev    *Device
	g      *mmioGuest
	path   string        // where the device listens
	dir    string        // for the sockets of restored devices
	n      *atomic.Int32 // numbers those sockets
	client *net.UnixConn // connected to guest port 1234 (the original only)
	hport  uint32        // its host-side port
}

// tempSocketDir returns a directory for Unix sockets, whose paths are
// short (108 bytes): not t.TempDir, whose name holds the test's.
func tempSocketDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "vsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// takeRx returns the next packet the device put in an rx buffer, without
// posting another (unlike mmioGuest.recv), and the size of that buffer.
func (g *mmioGuest) takeRx() (header, []byte, uint32) {
	g.t.Helper()
	if len(g.rxUsed) == 0 {
		used, err := g.drv.WaitUsed(rxQueue, 1)
		if err != nil {
			g.t.Fatal(err)
		}
		g.rxUsed = used
	}
	u := g.rxUsed[0]
	g.rxUsed = g.rxUsed[1:]
	buf := g.rxBufs[u.Head]
	delete(g.rxBufs, u.Head)
	b := g.drv.Bytes(buf)[:u.Len]
	h, err := decodeHeader(b)
	if err != nil {
		g.t.Fatal(err)
	}
	return h, b[headerSize:], buf.Len
}

// postRxOf posts one rx buffer of n bytes.
func (g *mmioGuest) postRxOf(n uint32) {
	g.t.Helper()
	b := g.drv.Writable(n)
	head, err := g.drv.Queue(rxQueue).Offer(b)
	if err != nil {
		g.t.Fatal(err)
	}
	g.rxBufs[head] = b
	g.drv.Kick(rxQueue)
}

// startVsock leaves the device active with an established connection that
// carried data both ways, and holding an rx buffer too small for the data
// the host sent since (its header only): Pause must give it back.
func startVsock(t *testing.T) devicetest.Instance[virtio.MMIOState] {
	dir := tempSocketDir(t)
	v := &vsockDev{path: filepath.Join(dir, "v.sock"), dir: dir, n: new(atomic.Int32)}
	var err error
	v.dev, err = New(Config{GuestCID: testCID, UDSPath: v.path, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.dev.Close() })
	drv := vt.New(t, v.dev, persistMem)
	if err := drv.Start(0, numQueues); err != nil {
		t.Fatal(err)
	}
	v.g = &mmioGuest{t: t, drv: drv, rxBufs: make(map[uint16]vt.Buf)}
	v.g.postRxOf(rxBufSize)
	v.g.postRxOf(rxBufSize)

	v.client = hostConnect(t, v.path, "CONNECT 1234\n")
	h, _, _ := v.g.takeRx()
	if h.op != opRequest || h.dstPort != 1234 {
		t.Fatalf("device sent %s, want REQUEST to port 1234", h)
	}
	v.hport = h.srcPort
	v.g.send(guestHeader(opResponse, 1234, v.hport), nil)
	v.client.SetReadDeadline(time.Now().Add(testTimeout))
	if line, err := readLine(v.client); err != nil || line != fmt.Sprintf("OK %d\n", v.hport) {
		t.Fatalf("client read %q, %v", line, err)
	}
	v.g.send(guestHeader(opRW, 1234, v.hport), []byte("hello"))
	expectRead(t, v.client, "hello")
	v.write(t, "world")
	if h, p, _ := v.g.takeRx(); h.op != opRW || string(p) != "world" {
		t.Fatalf("guest got %s %q, want RW \"world\"", h, p)
	}

	// No rx buffer left. The guest posts one with room for a header only;
	// the device takes it for the host's next data, which does not fit.
	v.g.postRxOf(headerSize)
	v.write(t, "again")
	deadline := time.Now().Add(testTimeout)
	for !v.holdsRx(t) {
		if time.Now().After(deadline) {
			t.Fatal("the device does not hold the header-sized rx buffer")
		}
		time.Sleep(time.Millisecond)
	}
	return v
}

func (v *vsockDev) holdsRx(t *testing.T) bool {
	var held bool
	if err := v.dev.m.call(func(m *muxer) error {
		held = m.q.(*virtqueues).held != nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return held
}

func (v *vsockDev) write(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(v.client, s); err != nil {
		t.Fatal(err)
	}
}

func expectRead(t *testing.T, c *net.UnixConn, want string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, len(want))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != want {
		t.Fatalf("client read %q, %v; want %q", buf, err, want)
	}
}

func (v *vsockDev) Save(t *testing.T) (virtio.MMIOState, devicetest.Restorer[virtio.MMIOState]) {
	st, snap := v.g.drv.Save(nil)
	rxBufs := maps.Clone(v.g.rxBufs)
	return st, func(t *testing.T, st virtio.MMIOState) (devicetest.Instance[virtio.MMIOState], error) {
		var vs State
		if err := devices.DecodeState("vsock", st.Device, &vs); err != nil {
			return nil, err
		}
		r := &vsockDev{path: filepath.Join(v.dir, fmt.Sprintf("r%d.sock", v.n.Add(1))), dir: v.dir, n: v.n}
		var err error
		if r.dev, err = Restore(vs, r.path, testLogger(t)); err != nil {
			return nil, err
		}
		drv, err := snap.Restore(t, func(mem *memory.Memory, irq *vt.Interrupt) (*virtio.MMIO, error) {
			return virtio.RestoreMMIO(st, r.dev, mem, irq)
		})
		if err != nil {
			r.dev.Close()
			return nil, err
		}
		t.Cleanup(func() { r.dev.Close() })
		r.g = &mmioGuest{t: t, drv: drv, rxBufs: maps.Clone(rxBufs)}
		return r, nil
	}
}

// Mutate lets the original go on: the guest asks for credit, which the
// device answers in the header-sized buffer, then posts a buffer the
// host's data fits in.
func (v *vsockDev) Mutate(t *testing.T) {
	v.g.postRxOf(rxBufSize)
	v.g.send(guestHeader(opCreditRequest, 1234, v.hport), nil)
	if h, _, size := v.g.takeRx(); h.op != opCreditUpdate || size != headerSize {
		t.Fatalf("guest got %s in a %d-byte buffer, want CREDIT_UPDATE in the %d-byte one", h, size, headerSize)
	}
	if h, p, _ := v.g.takeRx(); h.op != opRW || string(p) != "again" {
		t.Fatalf("guest got %s %q, want RW \"again\"", h, p)
	}
}

// Check expects the transport reset, then a working device: a new host
// client's REQUEST arrives in the header-sized buffer the saved device
// held (so it was not lost), and the connection carries data.
func (v *vsockDev) Check(t *testing.T) {
	event := v.g.drv.Writable(eventSize)
	if _, err := v.g.drv.Queue(eventQueue).Offer(event); err != nil {
		t.Fatal(err)
	}
	v.g.drv.Kick(eventQueue)
	used, err := v.g.drv.WaitUsed(eventQueue, 1)
	if err != nil {
		t.Fatal(err)
	}
	if id := binary.LittleEndian.Uint32(v.g.drv.Bytes(event)); used[0].Len != eventSize || id != eventTransportReset {
		t.Fatalf("event %d of %d bytes, want TRANSPORT_RESET (0) of %d", id, used[0].Len, eventSize)
	}
	// The driver handled the reset and posts an event buffer again, as
	// Linux does; only then do new connections go ahead.
	if _, err := v.g.drv.Queue(eventQueue).Offer(v.g.drv.Writable(eventSize)); err != nil {
		t.Fatal(err)
	}
	v.g.drv.Kick(eventQueue)

	client := hostConnect(t, v.path, "CONNECT 1234\n")
	h, _, size := v.g.takeRx()
	if h.op != opRequest || h.dstPort != 1234 || size != headerSize {
		t.Fatalf("device sent %s in a %d-byte buffer, want REQUEST to port 1234 in the %d-byte one", h, size, headerSize)
	}
	if h.srcPort == v.hport || h.srcPort < firstLocalPort {
		t.Errorf("new connection's host port %d, saved connection's %d", h.srcPort, v.hport)
	}
	v.g.postRxOf(rxBufSize)
	v.g.send(guestHeader(opResponse, 1234, h.srcPort), nil)
	client.SetReadDeadline(time.Now().Add(testTimeout))
	if line, err := readLine(client); err != nil || line != fmt.Sprintf("OK %d\n", h.srcPort) {
		t.Fatalf("client read %q, %v", line, err)
	}
	v.g.send(guestHeader(opRW, 1234, h.srcPort), []byte("restored"))
	expectRead(t, client, "restored")
	if _, err := io.WriteString(client, "hi"); err != nil {
		t.Fatal(err)
	}
	if h, p, _ := v.g.takeRx(); h.op != opRW || string(p) != "hi" {
		t.Fatalf("guest got %s %q, want RW \"hi\"", h, p)
	}
}

func TestPersist(t *testing.T) {
	invalid := vt.InvalidMMIOStates(persistMem)
	maps.Copy(invalid, map[string]func(*virtio.MMIOState){
		"vsock version":        vt.EditDevice(func(s *State) { s.Version = 2 }),
		"vsock host CID":       vt.EditDevice(func(s *State) { s.GuestCID = hostCID }),
		"vsock CID any":        vt.EditDevice(func(s *State) { s.GuestCID = 1<<32 - 1 }),
		"vsock CID 64 bits":    vt.EditDevice(func(s *State) { s.GuestCID = 1 << 40 }),
		"vsock low local port": vt.EditDevice(func(s *State) { s.NextLocalPort = 1024 }),
		"vsock port any":       vt.EditDevice(func(s *State) { s.NextLocalPort = portAny }),
	})
	devicetest.Conformance(t, devicetest.Harness[virtio.MMIOState]{Start: startVsock, Invalid: invalid})
}

// TestPauseHoldsHostData checks that a paused device writes nothing into
// guest memory, however much the host sends, and catches up on Resume.
func TestPauseHoldsHostData(t *testing.T) {
	v := startVsock(t).(*vsockDev)
	v.g.postRxOf(rxBufSize)
	v.g.postRxOf(rxBufSize)
	if err := v.g.drv.MMIO.Pause(); err != nil {
		t.Fatal(err)
	}
	if v.holdsRxPaused(t) {
		t.Fatal("a paused device holds an rx buffer")
	}
	if _, err := v.dev.Save(); err != nil {
		t.Fatal(err)
	}
	v.write(t, "more")
	var hb [headerSize]byte
	h := guestHeader(opCreditRequest, 1234, v.hport)
	h.encode(hb[:])
	if _, err := v.g.drv.Queue(txQueue).Offer(v.g.drv.Readable(hb[:])); err != nil {
		t.Fatal(err)
	}
	v.g.drv.Kick(txQueue) // deferred until Resume
	time.Sleep(50 * time.Millisecond)
	if used, err := v.g.drv.Queue(txQueue).Used(); err != nil || len(used) != 0 {
		t.Fatalf("a paused device took %d tx buffers (%v)", len(used), err)
	}
	if used, err := v.g.drv.Queue(rxQueue).Used(); err != nil || len(used) != 0 {
		t.Fatalf("a paused device returned %d rx buffers (%v)", len(used), err)
	}
	v.g.drv.MMIO.Resume()
	// CREDIT_UPDATE goes into the header-sized buffer, "againmore" (or
	// "again", then "more") into the other.
	var data []byte
	for len(data) < len("againmore") {
		h, p, _ := v.g.takeRx()
		if h.op == opRW {
			data = append(data, p...)
		}
	}
	if string(data) != "againmore" {
		t.Fatalf("guest got %q after Resume", data)
	}
}

func (v *vsockDev) holdsRxPaused(t *testing.T) bool {
	var held bool
	p := &v.dev.paused
	p.mu.Lock()
	defer p.mu.Unlock()
	done := make(chan struct{})
	p.ctl <- func(m *muxer) { held = m.q.(*virtqueues).held != nil; close(done) }
	<-done
	return held
}

// TestSaveNeedsPause checks that Save refuses an unpaused device, and that
// Close ends a pause.
func TestSaveNeedsPause(t *testing.T) {
	dir := tempSocketDir(t)
	d, err := New(Config{GuestCID: testCID, UDSPath: filepath.Join(dir, "v.sock"), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Save(); !errors.Is(err, virtio.ErrNotPaused) {
		t.Fatalf("unpaused save: %v, want ErrNotPaused", err)
	}
	if err := d.Pause(); err != nil {
		t.Fatal(err)
	}
	st, err := d.Save()
	if err != nil || st != (State{Version: StateVersion, GuestCID: testCID, NextLocalPort: firstLocalPort}) {
		t.Fatalf("save: %+v, %v", st, err)
	}
	d.Close()
	if _, err := d.Save(); err == nil {
		t.Fatal("save of a closed device succeeded")
	}
}

// TestRestoreInactive checks that a device restored for a driver that was
// not active owes it no TRANSPORT_RESET once it starts.
func TestRestoreInactive(t *testing.T) {
	dir := tempSocketDir(t)
	d, err := restore(State{Version: StateVersion, GuestCID: testCID, NextLocalPort: firstLocalPort}, filepath.Join(dir, "v.sock"), testLogger(t), defaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	var pending bool
	d.m.call(func(m *muxer) error { pending = m.eventPending; return nil })
	if pending {
		t.Fatal("a TRANSPORT_RESET is owed to a driver that was not active")
	}
	if _, err := restore(State{Version: StateVersion, GuestCID: testCID, NextLocalPort: firstLocalPort}, filepath.Join(dir, "v.sock"), testLogger(t), defaultLimits); err == nil {
		t.Fatal("restore onto a socket path in use succeeded")
	}
}

// A paused device says what it owes the driver: here, a guest's
// connection and the transport reset a restored device sends first.
func TestDescribe(t *testing.T) {
	d, g, path := startDevice(t, defaultLimits)
	establish(t, g, path, 5000, 64<<10)
	if s := d.Describe(); s != "vsock: not paused" {
		t.Errorf("running: %q", s)
	}
	if err := d.Pause(); err != nil {
		t.Fatal(err)
	}
	want := "vsock: active=true conns=1 (guest-initiated 0) ready=0 resets_owed=0 event_pending=false reset_unacked=false events_left=0 rx_held=false"
	if s := d.Describe(); s != want {
		t.Errorf("paused:\n got %q\nwant %q", s, want)
	}
	d.Resume()
}
