package vsock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	testCID     = 3
	testTimeout = 10 * time.Second
	rxBufSize   = headerSize + 4096 // what Linux posts
)

// fakeDriver is a guest driver at the packet level: it implements
// driverQueues for the event loop, and its exported-style helpers (send,
// recv, post) are the test's side of the queues.
type fakeDriver struct {
	d *Device

	mu     sync.Mutex
	tx     [][]byte // raw tx chains, oldest first
	rxBufs int      // rx buffers posted and not yet taken
	rxSize int      // writable bytes of each rx buffer
	held   bool     // the device holds an rx buffer
	events int      // event buffers posted

	rx     chan []byte // packets the device wrote
	evOut  chan uint32 // events the device wrote
	refill bool        // recv posts a new rx buffer for each packet taken
}

func (g *fakeDriver) popTx(buf []byte) (int, uint64, bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.tx) == 0 {
		return 0, 0, false, nil
	}
	b := g.tx[0]
	g.tx = g.tx[1:]
	return copy(buf, b), uint64(len(b)), true, nil
}

func (g *fakeDriver) rxRoom() (int, bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.held {
		if g.rxBufs == 0 {
			return 0, false, nil
		}
		g.rxBufs--
		g.held = true
	}
	return g.rxSize - headerSize, true, nil
}

func (g *fakeDriver) putRx(h *header, payload []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.held {
		panic("putRx without a held rx buffer")
	}
	g.held = false
	b := make([]byte, headerSize+len(payload))
	h.encode(b)
	copy(b[headerSize:], payload)
	g.rx <- b // capacity exceeds any number of buffers a test posts
	return nil
}

func (g *fakeDriver) putEvent(id uint32) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.events == 0 {
		return false, nil
	}
	g.events--
	g.evOut <- id
	return true, nil
}

func (g *fakeDriver) eventBuffers() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.events
}

func (g *fakeDriver) interrupt() error { return nil }

// sendRaw queues raw tx chains, all at once, and kicks the device.
func (g *fakeDriver) sendRaw(b ...[]byte) {
	g.mu.Lock()
	g.tx = append(g.tx, b...)
	g.mu.Unlock()
	g.d.Notify(txQueue)
}

// send queues a packet; h.len is set from payload.
func (g *fakeDriver) send(h header, payload []byte) {
	h.len = uint32(len(payload))
	b := make([]byte, headerSize+len(payload))
	h.encode(b)
	copy(b[headerSize:], payload)
	g.sendRaw(b)
}

// post makes n more rx buffers available.
func (g *fakeDriver) post(n int) {
	g.mu.Lock()
	g.rxBufs += n
	g.mu.Unlock()
	g.d.Notify(rxQueue)
}

// postEvent makes an event buffer available.
func (g *fakeDriver) postEvent() {
	g.mu.Lock()
	g.events++
	g.mu.Unlock()
	g.d.Notify(eventQueue)
}

// recv returns the next packet the device sent.
func (g *fakeDriver) recv(t testing.TB) (header, []byte) {
	t.Helper()
	h, p, ok := g.recvWithin(testTimeout)
	if !ok {
		t.Fatalf("no packet from the device within %v", testTimeout)
	}
	return h, p
}

// recvWithin returns the next packet the device sends within d; with d
// zero, only a packet already sent.
func (g *fakeDriver) recvWithin(d time.Duration) (header, []byte, bool) {
	var b []byte
	if d <= 0 {
		select {
		case b = <-g.rx:
		default:
			return header{}, nil, false
		}
	} else {
		select {
		case b = <-g.rx:
		case <-time.After(d):
			return header{}, nil, false
		}
	}
	if g.refill {
		g.post(1)
	}
	h, err := decodeHeader(b)
	if err != nil {
		panic(err)
	}
	if int(h.len) != len(b)-headerSize {
		panic(fmt.Sprintf("device sent %s with len %d and %d payload bytes", h, h.len, len(b)-headerSize))
	}
	return h, b[headerSize:], true
}

// expect receives a packet and checks its op and ports.
func (g *fakeDriver) expect(t testing.TB, op uint16, local, peer uint32) (header, []byte) {
	t.Helper()
	h, p := g.recv(t)
	want := header{srcCID: hostCID, dstCID: testCID, srcPort: local, dstPort: peer, typ: typeStream, op: op}
	if h.srcCID != want.srcCID || h.dstCID != want.dstCID || h.srcPort != want.srcPort || h.dstPort != want.dstPort ||
		h.typ != want.typ || h.op != want.op {
		t.Fatalf("device sent %s (type %d), want %s (type %d)", h, h.typ, want, want.typ)
	}
	return h, p
}

// expectNothing checks that the device sends no packet for d.
func (g *fakeDriver) expectNothing(t testing.TB, d time.Duration) {
	t.Helper()
	if h, _, ok := g.recvWithin(d); ok {
		t.Fatalf("device sent %s, want nothing", h)
	}
}

// guestHeader is a packet from guest port gport to host port hport.
func guestHeader(op uint16, gport, hport uint32) header {
	return header{srcCID: testCID, dstCID: hostCID, srcPort: gport, dstPort: hport, typ: typeStream, op: op,
		bufAlloc: 64 << 10}
}

// startDevice starts a device with a fake driver active on it, posting 16
// rx buffers and refilling them as packets are received.
func startDevice(t testing.TB, lim limits) (*Device, *fakeDriver, string) {
	t.Helper()
	return startDeviceLogging(t, lim, testLogger(t))
}

// startDeviceLogging is startDevice with the device logging to log.
func startDeviceLogging(t testing.TB, lim limits, log *slog.Logger) (*Device, *fakeDriver, string) {
	t.Helper()
	// Unix socket paths are short (108 bytes): no t.TempDir, whose name
	// holds the test's.
	dir, err := os.MkdirTemp("", "vsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "v.sock")
	d, err := newDevice(Config{GuestCID: testCID, UDSPath: path, Logger: log}, lim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	g := &fakeDriver{d: d, rxSize: rxBufSize, rx: make(chan []byte, 1<<16), evOut: make(chan uint32, 16), refill: true}
	if err := d.m.call(func(m *muxer) error { m.q = g; return nil }); err != nil {
		t.Fatal(err)
	}
	g.post(16)
	return d, g, path
}

// testLogger logs through t.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// hostConnect connects a host client, writes line and returns the client.
func hostConnect(t testing.TB, path, line string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, line); err != nil {
		t.Fatal(err)
	}
	return c
}

// establish connects a host client to guest port gport through the fake
// guest, which advertises bufAlloc, and returns the client and the
// host-side port.
//
// The client is the real one (Dial), against the device's real host side.
func establish(t testing.TB, g *fakeDriver, path string, gport, bufAlloc uint32) (*net.UnixConn, uint32) {
	t.Helper()
	type dialed struct {
		c   net.Conn
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		c, err := Dial(ctx, path, gport)
		done <- dialed{c, err}
	}()
	h, _ := g.recv(t)
	if h.op != opRequest || h.dstPort != gport || h.dstCID != testCID || h.srcCID != hostCID || h.bufAlloc != connBufAlloc {
		t.Fatalf("device sent %s buf_alloc %d, want REQUEST to port %d with buf_alloc %d", h, h.bufAlloc, gport, connBufAlloc)
	}
	resp := guestHeader(opResponse, gport, h.srcPort)
	resp.bufAlloc = bufAlloc
	g.send(resp, nil)
	d := <-done
	if d.err != nil {
		t.Fatalf("Dial: %v", d.err)
	}
	t.Cleanup(func() { d.c.Close() })
	return d.c.(*net.UnixConn), h.srcPort
}

// readLine reads up to a newline one byte at a time, so as not to consume
// the stream after it.
func readLine(r io.Reader) (string, error) {
	var b strings.Builder
	var c [1]byte
	for b.Len() < 64 {
		if _, err := io.ReadFull(r, c[:]); err != nil {
			return b.String(), err
		}
		b.WriteByte(c[0])
		if c[0] == '\n' {
			return b.String(), nil
		}
	}
	return b.String(), fmt.Errorf("line %q too long", b.String())
}

// expectClosed checks that the peer closed c without sending anything.
func expectClosed(t testing.TB, c net.Conn) {
	t.Helper()
	if n := waitClosed(t, c); n > 0 {
		t.Fatalf("read %d bytes from a connection expected closed", n)
	}
}

// waitClosed reads c until the peer closes it and returns the bytes read.
func waitClosed(t testing.TB, c net.Conn) int64 {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testTimeout))
	n, err := io.Copy(io.Discard, c)
	if err != nil && !isReset(err) {
		t.Fatalf("read from a connection expected closed: %v", err)
	}
	return n
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }
