package vsock

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/internal/logtest"
)

// guestEnd is the guest's end of one connection: its flow-control
// accounting, checked against what the device does.
type guestEnd struct {
	t        testing.TB
	g        *fakeDriver
	port     uint32 // guest port
	hostPort uint32

	bufAlloc uint32 // advertised to the device
	fwdCnt   uint32 // advertised consumption
	consumed uint32 // bytes read by the "application"
	rxCnt    uint32 // payload bytes received
	txCnt    uint32 // payload bytes sent

	peerBufAlloc, peerFwdCnt uint32 // the device's credit
}

func (e *guestEnd) header(op uint16) header {
	h := guestHeader(op, e.port, e.hostPort)
	h.bufAlloc, h.fwdCnt = e.bufAlloc, e.fwdCnt
	return h
}

func (e *guestEnd) send(op uint16, flags uint32, payload []byte) {
	h := e.header(op)
	h.flags = flags
	e.g.send(h, payload)
	e.txCnt += uint32(len(payload))
}

func (e *guestEnd) peerFree() int {
	return int(e.peerBufAlloc) - int(e.txCnt-e.peerFwdCnt)
}

// account checks a packet from the device against the guest's credit and
// records the device's.
func (e *guestEnd) account(h header) {
	e.t.Helper()
	if h.srcPort != e.hostPort || h.dstPort != e.port {
		e.t.Fatalf("device sent %s on connection %d -> %d", h, e.hostPort, e.port)
	}
	if h.op == opRW {
		if inFlight := e.rxCnt + h.len - e.fwdCnt; inFlight > e.bufAlloc {
			e.t.Fatalf("device sent %d bytes with %d in flight: over the guest's buf_alloc %d", h.len, inFlight-h.len, e.bufAlloc)
		}
		e.rxCnt += h.len
	}
	e.peerBufAlloc, e.peerFwdCnt = h.bufAlloc, h.fwdCnt
}

// TestHostInitiatedStream is the main host-initiated path: CONNECT,
// REQUEST, RESPONSE, "OK <port>", then 1 MiB each way, checksummed, with a
// guest whose 8 KiB buffer makes the device stop at every window and
// resume on CREDIT_UPDATE; then a clean close (host EOF, guest SHUTDOWN,
// device SHUTDOWN both, guest RST).
func TestHostInitiatedStream(t *testing.T) {
	const size = 1 << 20
	_, g, path := startDevice(t, defaultLimits)
	client, hport := establish(t, g, path, 1234, 8<<10)
	e := &guestEnd{t: t, g: g, port: 1234, hostPort: hport, bufAlloc: 8 << 10, peerBufAlloc: connBufAlloc}

	toGuest, toHost := randomBytes(1, size), randomBytes(2, size)
	hostWrote := make(chan error, 1)
	go func() {
		_, err := client.Write(toGuest)
		if err == nil {
			err = client.CloseWrite()
		}
		hostWrote <- err
	}()
	hostRead := make(chan []byte, 1)
	go func() {
		b, err := io.ReadAll(client)
		if err != nil {
			t.Errorf("host client read: %v", err)
		}
		hostRead <- b
	}()

	got := sha256.New()
	var sent, windows int
	checkedStop, hostEOF := false, false
	for !hostEOF || sent < size {
		progressed := false
		if n := min(4096, e.peerFree(), size-sent); n > 0 {
			e.send(opRW, 0, toHost[sent:sent+n])
			sent += n
			progressed = true
		}
		var h header
		var p []byte
		if progressed {
			var ok bool
			if h, p, ok = g.recvWithin(0); !ok {
				continue
			}
		} else {
			h, p = g.recv(t)
		}
		e.account(h)
		switch h.op {
		case opRW:
			got.Write(p)
			e.consumed += h.len
			if e.consumed-e.fwdCnt < e.bufAlloc {
				break
			}
			// The window is full: the device must stop until it hears of
			// the space, whether or not it asks with CREDIT_REQUEST.
			windows++
			if !checkedStop {
				checkedStop = true
				deadline := time.Now().Add(100 * time.Millisecond)
				for time.Now().Before(deadline) {
					if h, _, ok := g.recvWithin(time.Until(deadline)); ok {
						if h.op == opRW {
							t.Fatalf("device sent %s with no credit left", h)
						}
						e.account(h)
					}
				}
			}
			e.fwdCnt = e.consumed
			e.send(opCreditUpdate, 0, nil)
		case opCreditRequest:
			e.fwdCnt = e.consumed
			e.send(opCreditUpdate, 0, nil)
		case opCreditUpdate:
		case opShutdown:
			if h.flags != shutdownSend || e.rxCnt != size {
				t.Fatalf("device sent SHUTDOWN flags %#x after %d bytes, want SEND after %d", h.flags, e.rxCnt, size)
			}
			hostEOF = true
		default:
			t.Fatalf("device sent %s mid-stream", h)
		}
	}
	if err := <-hostWrote; err != nil {
		t.Fatalf("host client write: %v", err)
	}
	if !bytes.Equal(got.Sum(nil), sha256Sum(toGuest)) {
		t.Error("guest received different bytes than the host client wrote")
	}
	if windows < size/(8<<10) {
		t.Errorf("device filled the guest's window %d times, want %d", windows, size/(8<<10))
	}

	// The guest is done sending: the host reads EOF after the data, and
	// with both directions over the device asks the guest to close.
	e.send(opShutdown, shutdownSend, nil)
	if b := <-hostRead; !bytes.Equal(b, toHost) {
		t.Errorf("host client read %d bytes, not the %d the guest sent", len(b), len(toHost))
	}
	for {
		h, _ := g.recv(t)
		e.account(h)
		if h.op == opShutdown {
			if h.flags != shutdownBoth {
				t.Fatalf("device sent SHUTDOWN flags %#x, want RCV|SEND", h.flags)
			}
			break
		}
		if h.op != opCreditUpdate {
			t.Fatalf("device sent %s while closing", h)
		}
	}
	e.send(opRST, 0, nil)
	g.expectNothing(t, 50*time.Millisecond)
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

// listenGuestPort listens where guest-initiated connections to port go.
func listenGuestPort(t testing.TB, path string, port uint32) *net.UnixListener {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: fmt.Sprintf("%s_%d", path, port), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func TestGuestInitiated(t *testing.T) {
	_, g, path := startDevice(t, defaultLimits)
	ln := listenGuestPort(t, path, 5000)
	accepted := make(chan *net.UnixConn, 1)
	go func() {
		c, err := ln.AcceptUnix()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()

	e := &guestEnd{t: t, g: g, port: 40000, hostPort: 5000, bufAlloc: 64 << 10}
	e.send(opRequest, 0, nil)
	h, _ := g.expect(t, opResponse, 5000, 40000)
	e.account(h)
	if h.bufAlloc != connBufAlloc || h.fwdCnt != 0 {
		t.Errorf("RESPONSE advertises buf_alloc %d fwd_cnt %d, want %d and 0", h.bufAlloc, h.fwdCnt, connBufAlloc)
	}
	host := <-accepted
	defer host.Close()

	e.send(opRW, 0, []byte("ping"))
	buf := make([]byte, 4)
	host.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := io.ReadFull(host, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("host read %q, %v; want \"ping\"", buf, err)
	}
	if _, err := host.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	h, p := g.expect(t, opRW, 5000, 40000)
	if string(p) != "pong" {
		t.Fatalf("guest got %q, want \"pong\"", p)
	}
	e.account(h)

	// A guest closing both ways gets RST; the host reads EOF.
	e.send(opShutdown, shutdownBoth, nil)
	g.expect(t, opRST, 5000, 40000)
	expectClosed(t, host)
}

func TestGuestInitiatedNoListener(t *testing.T) {
	_, g, _ := startDevice(t, defaultLimits)
	g.send(guestHeader(opRequest, 40000, 5001), nil)
	g.expect(t, opRST, 5001, 40000)
	// The connection is gone: data for it is answered with RST too.
	g.send(guestHeader(opRW, 40000, 5001), []byte("x"))
	g.expect(t, opRST, 5001, 40000)
}

func TestGuestResetClosesClient(t *testing.T) {
	_, g, path := startDevice(t, defaultLimits)
	client, hport := establish(t, g, path, 80, 64<<10)
	g.send(guestHeader(opRST, 80, hport), nil)
	expectClosed(t, client)
	g.expectNothing(t, 50*time.Millisecond) // an RST is never answered
}

func TestGuestRefusesConnect(t *testing.T) {
	_, g, path := startDevice(t, defaultLimits)
	client := hostConnect(t, path, "CONNECT 81\n")
	h, _ := g.recv(t)
	if h.op != opRequest {
		t.Fatalf("device sent %s, want REQUEST", h)
	}
	g.send(guestHeader(opRST, 81, h.srcPort), nil)
	expectClosed(t, client)
}

// A guest that does not answer a REQUEST gets RST; its client sees its
// connection closed, and the VMM's log says why at warning level.
func TestConnectTimeout(t *testing.T) {
	lim := defaultLimits
	lim.connect = 100 * time.Millisecond
	var logged logtest.Buffer
	_, g, path := startDeviceLogging(t, lim, slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelWarn})))
	client := hostConnect(t, path, "CONNECT 82\n")
	h, _ := g.recv(t)
	if h.op != opRequest {
		t.Fatalf("device sent %s, want REQUEST", h)
	}
	expectClosed(t, client)
	g.expect(t, opRST, h.srcPort, 82)
	if !strings.Contains(logged.String(), "guest did not answer connection request") {
		t.Errorf("the VMM's warnings do not name the unanswered request: %q", logged.String())
	}
}

// TestConnectTimeoutUndelivered checks a connection that times out before
// its REQUEST reached the guest: the guest hears only RST.
func TestConnectTimeoutUndelivered(t *testing.T) {
	lim := defaultLimits
	lim.connect = 100 * time.Millisecond
	_, g, path := startDevice(t, lim)
	g.mu.Lock()
	g.rxBufs = 0
	g.mu.Unlock()
	client := hostConnect(t, path, "CONNECT 83\n")
	expectClosed(t, client)
	g.post(1)
	if h, _ := g.recv(t); h.op != opRST || h.dstPort != 83 {
		t.Fatalf("device sent %s, want RST to port 83", h)
	}
	g.expectNothing(t, 50*time.Millisecond)
}

// TestMalformedConnect checks that bad CONNECT lines close their client and
// nothing else.
func TestMalformedConnect(t *testing.T) {
	_, g, path := startDevice(t, defaultLimits)
	good, hport := establish(t, g, path, 90, 64<<10)
	e := &guestEnd{t: t, g: g, port: 90, hostPort: hport, bufAlloc: 64 << 10}

	for _, line := range []string{
		"CONNECT x\n",
		"CONNECT -1\n",
		"CONNECT 4294967296\n",
		"connect 90\n",
		"CONNECT  90\n",
		"CONNECT " + string(bytes.Repeat([]byte("9"), 100)) + "\n",
		"CONNECT 90", // then EOF
	} {
		c := hostConnect(t, path, line)
		c.CloseWrite()
		expectClosed(t, c)
	}
	g.expectNothing(t, 50*time.Millisecond)

	if _, err := good.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	h, p := g.expect(t, opRW, hport, 90)
	e.account(h)
	if string(p) != "still here" {
		t.Fatalf("guest got %q", p)
	}
	e.send(opRW, 0, []byte("yes"))
	buf := make([]byte, 3)
	good.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := io.ReadFull(good, buf); err != nil || string(buf) != "yes" {
		t.Fatalf("host read %q, %v", buf, err)
	}
}

func TestResetTransport(t *testing.T) {
	d, g, path := startDevice(t, defaultLimits)
	client, _ := establish(t, g, path, 100, 64<<10)
	g.postEvent()
	if err := d.ResetTransport(); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-g.evOut:
		if id != eventTransportReset {
			t.Fatalf("event %d, want TRANSPORT_RESET", id)
		}
	case <-time.After(testTimeout):
		t.Fatal("no TRANSPORT_RESET event")
	}
	expectClosed(t, client)
	g.expectNothing(t, 50*time.Millisecond) // the guest resets its own sockets

	// The listening socket survives; a new connection's REQUEST waits
	// until the driver has handled the reset, which it shows by making an
	// event buffer available again.
	next := hostConnect(t, path, "CONNECT 100\n")
	g.expectNothing(t, 50*time.Millisecond)
	g.postEvent()
	if h, _ := g.recv(t); h.op != opRequest || h.dstPort != 100 {
		t.Fatalf("device sent %s, want REQUEST to port 100", h)
	}
	next.Close()
}

// TestResetTransportWaitsForEventBuffer checks that the event is delivered
// once the driver posts a buffer for it.
func TestResetTransportWaitsForEventBuffer(t *testing.T) {
	d, g, _ := startDevice(t, defaultLimits)
	if err := d.ResetTransport(); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-g.evOut:
		t.Fatalf("event %d with no event buffer", id)
	case <-time.After(20 * time.Millisecond):
	}
	g.postEvent()
	select {
	case <-g.evOut:
	case <-time.After(testTimeout):
		t.Fatal("no TRANSPORT_RESET event")
	}
}

// TestInvalidPackets checks the device's answer to each kind of invalid
// packet: RST, or nothing when the packet cannot be answered.
func TestInvalidPackets(t *testing.T) {
	_, g, path := startDevice(t, defaultLimits)
	_, hport := establish(t, g, path, 7, 64<<10)

	tests := []struct {
		name   string
		packet func() []byte
		rst    bool // answered with RST from hport to 7
	}{
		{"short chain", func() []byte { return make([]byte, headerSize-1) }, false},
		{"wrong src_cid", func() []byte { h := guestHeader(opRW, 7, hport); h.srcCID = 4; return pkt(h, nil) }, false},
		{"wrong dst_cid", func() []byte { h := guestHeader(opRW, 7, hport); h.dstCID = testCID; return pkt(h, nil) }, false},
		{"host cid as src", func() []byte { h := guestHeader(opRW, 7, hport); h.srcCID = hostCID; return pkt(h, nil) }, false},
		{"RST for no connection", func() []byte { return pkt(guestHeader(opRST, 8, hport), nil) }, false},
		{"len past chain", func() []byte {
			h := guestHeader(opRW, 7, hport)
			b := pkt(h, []byte("abc"))
			h.len = 4
			h.encode(b)
			return b
		}, true},
		{"len past limit", func() []byte {
			h := guestHeader(opRW, 7, hport)
			b := pkt(h, make([]byte, maxPayload+1))
			return b
		}, true},
		{"seqpacket", func() []byte { h := guestHeader(opRW, 7, hport); h.typ = 2; return pkt(h, []byte("x")) }, true},
		{"op 0", func() []byte { return pkt(guestHeader(0, 7, hport), nil) }, true},
		{"op 8", func() []byte { return pkt(guestHeader(8, 7, hport), nil) }, true},
		{"RESPONSE when established", func() []byte { return pkt(guestHeader(opResponse, 7, hport), nil) }, true},
		{"REQUEST for existing", func() []byte { return pkt(guestHeader(opRequest, 7, hport), nil) }, true},
		{"credit overrun", func() []byte {
			h := guestHeader(opRW, 7, hport)
			return pkt(h, make([]byte, maxPayload))
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client, port := establish(t, g, path, 7, 64<<10)
			hport = port
			b := [][]byte{tc.packet()}
			if tc.name == "credit overrun" {
				// Packets queued at once are handled in one go, before the
				// host socket's writes can move fwd_cnt: the last of these
				// is one too many for the advertised buffer.
				for range connBufAlloc / maxPayload {
					b = append(b, b[0])
				}
			}
			g.sendRaw(b...)
			if tc.rst {
				g.expect(t, opRST, port, 7)
				if n := waitClosed(t, client); n > connBufAlloc {
					t.Fatalf("host client read %d bytes, more than the guest had credit for", n)
				}
			} else {
				g.expectNothing(t, 50*time.Millisecond)
				g.send(guestHeader(opRST, 7, port), nil)
			}
		})
	}
}

func pkt(h header, payload []byte) []byte {
	h.len = uint32(len(payload))
	b := make([]byte, headerSize+len(payload))
	h.encode(b)
	copy(b[headerSize:], payload)
	return b
}

func TestCreditRequest(t *testing.T) {
	_, g, path := startDevice(t, defaultLimits)
	_, hport := establish(t, g, path, 9, 64<<10)
	g.send(guestHeader(opCreditRequest, 9, hport), nil)
	h, _ := g.expect(t, opCreditUpdate, hport, 9)
	if h.bufAlloc != connBufAlloc || h.fwdCnt != 0 {
		t.Fatalf("CREDIT_UPDATE buf_alloc %d fwd_cnt %d, want %d and 0", h.bufAlloc, h.fwdCnt, connBufAlloc)
	}
}

// TestNoRxBuffers checks that a guest that posts no rx buffers stops the
// device reading the host socket, instead of making it buffer.
func TestNoRxBuffers(t *testing.T) {
	_, g, path := startDevice(t, defaultLimits)
	// Credit is no limit: only the rx buffers left are.
	client, _ := establish(t, g, path, 10, 1<<30)
	g.refill = false
	client.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	n, err := client.Write(make([]byte, 64<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("host wrote %d bytes: %v, want a deadline", n, err)
	}
	// The kernel's socket buffers, one read, and what the 16 rx buffers
	// took.
	if n > 2<<20 {
		t.Fatalf("host wrote %d bytes to a guest that takes none", n)
	}
	t.Logf("host wrote %d bytes before the device stopped reading", n)
}

// TestHostHalfClose checks the half-close mapping: host EOF reaches the
// guest as SHUTDOWN(SEND), after the data, and the guest can still send.
func TestHostHalfClose(t *testing.T) {
	_, g, path := startDevice(t, defaultLimits)
	client, hport := establish(t, g, path, 11, 64<<10)
	e := &guestEnd{t: t, g: g, port: 11, hostPort: hport, bufAlloc: 64 << 10}
	client.Write([]byte("last words"))
	client.CloseWrite()
	var got []byte
	for {
		h, p := g.recv(t)
		e.account(h)
		if h.op == opShutdown {
			if h.flags != shutdownSend {
				t.Fatalf("SHUTDOWN flags %#x, want SEND", h.flags)
			}
			break
		}
		got = append(got, p...)
	}
	if string(got) != "last words" {
		t.Fatalf("guest got %q", got)
	}
	e.send(opRW, 0, []byte("reply"))
	buf := make([]byte, 5)
	client.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "reply" {
		t.Fatalf("host read %q, %v", buf, err)
	}
}

func TestNewValidation(t *testing.T) {
	dir, err := os.MkdirTemp("", "vsock")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := dir + "/v.sock"
	for _, cfg := range []Config{
		{GuestCID: 2, UDSPath: path},
		{GuestCID: 1<<32 - 1, UDSPath: path},
		{GuestCID: 3},
		{GuestCID: 3, UDSPath: dir + "/missing/v.sock"},
	} {
		if d, err := New(cfg); err == nil {
			d.Close()
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	d, err := New(Config{GuestCID: 3, UDSPath: path})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{GuestCID: 4, UDSPath: path}); err == nil {
		t.Error("New on a path in use succeeded")
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after Close: %v", err)
	}
	if err := d.ResetTransport(); err == nil {
		t.Error("ResetTransport after Close succeeded")
	}
}

// TestShutdownTimeout checks that a guest that does not answer the device's
// SHUTDOWN(RCV|SEND) gets RST.
func TestShutdownTimeout(t *testing.T) {
	lim := defaultLimits
	lim.shutdown = 100 * time.Millisecond
	_, g, path := startDevice(t, lim)
	client, hport := establish(t, g, path, 12, 64<<10)
	client.CloseWrite()
	g.expect(t, opShutdown, hport, 12)
	g.send(header{srcCID: testCID, dstCID: hostCID, srcPort: 12, dstPort: hport, typ: typeStream, op: opShutdown,
		flags: shutdownSend, bufAlloc: 64 << 10}, nil)
	expectClosed(t, client)
	if h, _ := g.expect(t, opShutdown, hport, 12); h.flags != shutdownBoth {
		t.Fatalf("SHUTDOWN flags %#x, want RCV|SEND", h.flags)
	}
	g.expect(t, opRST, hport, 12)
}

// TestConnectionLimits checks the connection table's caps. Guest-initiated
// connections hold at most their share of it, so a guest cannot crowd out
// the host's connections to it (the daemon's to the guest agent); and a
// full table refuses a host client with a reason.
func TestConnectionLimits(t *testing.T) {
	lim := defaultLimits
	lim.maxConns, lim.maxGuestConns = 6, 3
	_, g, path := startDevice(t, lim)
	ln := listenGuestPort(t, path, 5000)
	accepted := make(chan *net.UnixConn, 8) // the host ends of guest-initiated connections
	go func() {
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	t.Cleanup(func() {
		for {
			select {
			case c := <-accepted:
				c.Close()
			default:
				return
			}
		}
	})

	// The guest takes its share of the table, and no more though the
	// table has room.
	for port := uint32(40000); port < 40003; port++ {
		g.send(guestHeader(opRequest, port, 5000), nil)
		g.expect(t, opResponse, 5000, port)
	}
	g.send(guestHeader(opRequest, 40003, 5000), nil)
	g.expect(t, opRST, 5000, 40003)

	// The host's connections use the rest.
	for range 3 {
		establish(t, g, path, 1024, 64<<10)
	}
	// The table is full: a host client is told why it is refused, and the
	// guest hears nothing.
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if c, err := Dial(ctx, path, 1024); err == nil || !strings.Contains(err.Error(), `"ERR connection table full\n"`) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("Dial to a full table = %v, want a refusal naming the full table", err)
	}
	g.expectNothing(t, 50*time.Millisecond)

	// A guest connection that ends frees its place for another.
	g.send(guestHeader(opRST, 40000, 5000), nil)
	g.send(guestHeader(opRequest, 40004, 5000), nil)
	g.expect(t, opResponse, 5000, 40004)
}

// TestHostShareAtTheCaps runs the real caps (defaultLimits), not
// shrunk ones: a guest that opens every connection it may is refused the
// next cleanly (RST, with room left in the table), and the host still
// gets every one of its HostConnections, the last of them carrying a
// call both ways as the daemon's calls to the agent do when the guest
// and the exposed ports have taken all theirs; past that, the full table
// refuses a host client with the reason and the guest hears nothing.
func TestHostShareAtTheCaps(t *testing.T) {
	_, g, path := startDevice(t, defaultLimits)
	ln := listenGuestPort(t, path, 5000)
	var guestSide []*net.UnixConn // the host ends of guest-initiated connections
	t.Cleanup(func() {
		for _, c := range guestSide {
			c.Close()
		}
	})
	for i := range uint32(maxGuestConnections) {
		g.send(guestHeader(opRequest, 40000+i, 5000), nil)
		c, err := ln.AcceptUnix()
		if err != nil {
			t.Fatal(err)
		}
		guestSide = append(guestSide, c)
		g.expect(t, opResponse, 5000, 40000+i)
	}
	g.send(guestHeader(opRequest, 40000+maxGuestConnections, 5000), nil)
	g.expect(t, opRST, 5000, 40000+maxGuestConnections)

	const agentPort = 1024
	for range HostConnections - 1 {
		establish(t, g, path, agentPort, 64<<10)
	}
	// The last place: a call, both ways.
	c, hport := establish(t, g, path, agentPort, 64<<10)
	e := &guestEnd{t: t, g: g, port: agentPort, hostPort: hport, bufAlloc: 64 << 10}
	if _, err := c.Write([]byte("health?")); err != nil {
		t.Fatal(err)
	}
	h, p := g.expect(t, opRW, hport, agentPort)
	e.account(h)
	if string(p) != "health?" {
		t.Fatalf("guest got %q on the host's last connection", p)
	}
	e.send(opRW, 0, []byte("ok"))
	buf := make([]byte, 2)
	c.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ok" {
		t.Fatalf("host read %q, %v on its last connection", buf, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if c, err := Dial(ctx, path, agentPort); err == nil || !strings.Contains(err.Error(), `"ERR connection table full\n"`) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("Dial to a full table = %v, want a refusal naming the full table", err)
	}
	g.expectNothing(t, 50*time.Millisecond)
}
