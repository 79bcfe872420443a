package vsock

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/devices/virtio"
	"github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
)

// mmioGuest drives the device through the MMIO transport with
// virtiotest's fake driver, laying packets out as Linux does: rx buffers
// of one descriptor, tx packets as a header descriptor then a payload
// descriptor.
type mmioGuest struct {
	t      *testing.T
	drv    *virtiotest.Driver
	rxBufs map[uint16]virtiotest.Buf // offered rx buffers by head
	rxUsed []virtiotest.Used         // used rx buffers not yet read
}

func (g *mmioGuest) postRx(n int) {
	g.t.Helper()
	for range n {
		b := g.drv.Writable(rxBufSize)
		head, err := g.drv.Queue(rxQueue).Offer(b)
		if err != nil {
			g.t.Fatal(err)
		}
		g.rxBufs[head] = b
	}
	g.drv.Kick(rxQueue)
}

// send offers a packet on the tx queue and waits for the device to take it.
func (g *mmioGuest) send(h header, payload []byte) {
	g.t.Helper()
	h.len = uint32(len(payload))
	var hb [headerSize]byte
	h.encode(hb[:])
	bufs := []virtiotest.Buf{g.drv.Readable(hb[:])}
	if len(payload) > 0 {
		bufs = append(bufs, g.drv.Readable(payload))
	}
	g.sendChain(bufs...)
}

func (g *mmioGuest) sendChain(bufs ...virtiotest.Buf) {
	g.t.Helper()
	if _, err := g.drv.Queue(txQueue).Offer(bufs...); err != nil {
		g.t.Fatal(err)
	}
	g.drv.Kick(txQueue)
	if _, err := g.drv.WaitUsed(txQueue, 1); err != nil {
		g.t.Fatal(err)
	}
}

// recv returns the next packet the device put in an rx buffer, and posts
// a new buffer in its place.
func (g *mmioGuest) recv() (header, []byte) {
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
	b := g.drv.Bytes(g.rxBufs[u.Head])[:u.Len]
	delete(g.rxBufs, u.Head)
	g.postRx(1)
	h, err := decodeHeader(b)
	if err != nil {
		g.t.Fatal(err)
	}
	if int(h.len) != len(b)-headerSize {
		g.t.Fatalf("device sent %s with len %d in %d bytes", h, h.len, len(b))
	}
	return h, b[headerSize:]
}

// TestMMIOTransport runs a host-initiated connection, a malformed chain
// and a transport reset through virtio.MMIO.
func TestMMIOTransport(t *testing.T) {
	dir, err := os.MkdirTemp("", "vsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "v.sock")
	dev, err := New(Config{GuestCID: testCID, UDSPath: path, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() }) // after the driver's reset, which cleans up first
	drv := virtiotest.New(t, dev, 4<<20)

	if id := drv.Read32(virtiotest.RegDeviceID); id != virtio.TypeVsock {
		t.Fatalf("device ID %d, want %d", id, virtio.TypeVsock)
	}
	if f := drv.DeviceFeatures(); f != virtio.FeatureVersion1 {
		t.Fatalf("device offers features %#x, want VIRTIO_F_VERSION_1 only", f)
	}
	if err := drv.Start(0, numQueues); err != nil {
		t.Fatal(err)
	}
	if cid := binary.LittleEndian.Uint64(drv.ReadConfig(0, 8)); cid != testCID {
		t.Fatalf("config guest_cid %d, want %d", cid, testCID)
	}
	if lo := binary.LittleEndian.Uint32(drv.ReadConfig(0, 4)); lo != testCID {
		t.Fatalf("config guest_cid low word %d, want %d", lo, testCID)
	}
	g := &mmioGuest{t: t, drv: drv, rxBufs: make(map[uint16]virtiotest.Buf)}
	g.postRx(8)
	event := drv.Writable(eventSize)
	if _, err := drv.Queue(eventQueue).Offer(event); err != nil {
		t.Fatal(err)
	}
	drv.Kick(eventQueue)

	client := hostConnect(t, path, "CONNECT 1234\n")
	h, _ := g.recv()
	if h.op != opRequest || h.dstPort != 1234 || h.dstCID != testCID || h.srcCID != hostCID {
		t.Fatalf("device sent %s, want REQUEST to port 1234", h)
	}
	hport := h.srcPort
	g.send(guestHeader(opResponse, 1234, hport), nil)
	client.SetReadDeadline(time.Now().Add(testTimeout))
	if line, err := readLine(client); err != nil || line != fmt.Sprintf("OK %d\n", hport) {
		t.Fatalf("client read %q, %v", line, err)
	}

	g.send(guestHeader(opRW, 1234, hport), []byte("hello"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("client read %q, %v", buf, err)
	}
	if _, err := client.Write([]byte("world")); err != nil {
		t.Fatal(err)
	}
	if h, p := g.recv(); h.op != opRW || string(p) != "world" {
		t.Fatalf("guest got %s %q, want RW \"world\"", h, p)
	}

	// A chain too short for a header is returned and dropped; the
	// connection goes on.
	g.sendChain(drv.Readable(make([]byte, 10)))
	if _, err := client.Write([]byte("again")); err != nil {
		t.Fatal(err)
	}
	if h, p := g.recv(); h.op != opRW || string(p) != "again" {
		t.Fatalf("guest got %s %q, want RW \"again\"", h, p)
	}

	if err := dev.ResetTransport(); err != nil {
		t.Fatal(err)
	}
	used, err := drv.WaitUsed(eventQueue, 1)
	if err != nil {
		t.Fatal(err)
	}
	if id := binary.LittleEndian.Uint32(drv.Bytes(event)); used[0].Len != eventSize || id != eventTransportReset {
		t.Fatalf("event %d of %d bytes, want TRANSPORT_RESET (0) of %d", id, used[0].Len, eventSize)
	}
	expectClosed(t, client)
	// The driver acknowledges the reset by posting an event buffer again.
	if _, err := drv.Queue(eventQueue).Offer(drv.Writable(eventSize)); err != nil {
		t.Fatal(err)
	}
	drv.Kick(eventQueue)

	// A driver reset closes connections too, and the device can start
	// again.
	client = hostConnect(t, path, "CONNECT 1234\n")
	if h, _ := g.recv(); h.op != opRequest {
		t.Fatalf("device sent %s, want REQUEST", h)
	}
	drv.Reset()
	expectClosed(t, client)
	if err := drv.Start(0, numQueues); err != nil {
		t.Fatal(err)
	}
}
