package net

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	stdnet "net"
	"os"
	"strings"
	"testing"
	"time"

	vt "github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
	"golang.org/x/sys/unix"
)

// testTimeout bounds every wait; no test depends on timing.
const testTimeout = 10 * time.Second

// testMem is the fake guest's memory: room for a few hundred buffers of
// each queue (virtiotest never reuses memory within a test).
const testMem = 8 << 20

// rxBufSize is a Linux receive buffer without mergeable buffers: the
// header and GOOD_PACKET_LEN.
const rxBufSize = hdrSize + MaxFrame

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// seqpacketPair returns the two ends of a socketpair(AF_UNIX,
// SOCK_SEQPACKET): the device's and the peer's.
func seqpacketPair(t testing.TB) (dev, peer *stdnet.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *stdnet.UnixConn {
		f := os.NewFile(uintptr(fd), "seqpacket")
		defer f.Close()
		c, err := stdnet.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*stdnet.UnixConn)
	}
	dev, peer = conn(fds[0]), conn(fds[1])
	t.Cleanup(func() { peer.Close() })
	return dev, peer
}

// guest is a device with its fake driver and the peer at the other end of
// its link.
type guest struct {
	t      testing.TB
	dev    *Device
	drv    *vt.Driver
	peer   *stdnet.UnixConn
	rxBufs map[uint16]vt.Buf // posted receive buffers by head
	rxUsed []vt.Used         // used receive buffers not yet taken
}

// newGuest builds a device on a socketpair and starts its driver,
// accepting every offered feature, with testMem bytes of guest memory.
func newGuest(t testing.TB) *guest { return newGuestMem(t, testMem, testLogger(t)) }

// newGuestMem is newGuest with memSize bytes of guest memory.
func newGuestMem(t testing.TB, memSize uint64, log *slog.Logger) *guest {
	return newGuestDev(t, memSize, log, true)
}

// newGuestDev is newGuestMem for a device that offers the transmit
// offloads or not (as one restored from a version 1 state).
func newGuestDev(t testing.TB, memSize uint64, log *slog.Logger, offloads bool) *guest {
	t.Helper()
	conn, peer := seqpacketPair(t)
	dev := newDevice(conn, DefaultMAC, offloads, log)
	t.Cleanup(func() { dev.Close() })
	g := &guest{t: t, dev: dev, drv: vt.New(t, dev, memSize), peer: peer, rxBufs: map[uint16]vt.Buf{}}
	if err := g.drv.Start(^uint64(0), numQueues); err != nil {
		t.Fatal(err)
	}
	return g
}

// packet is a transmitted packet: an all-zero header, then frame.
func packet(frame []byte) []byte { return append(make([]byte, hdrSize), frame...) }

// frameOf returns an n-byte frame whose bytes say which it is.
func frameOf(n, seq int) []byte {
	f := make([]byte, n)
	for i := range f {
		f[i] = byte(i*7 + seq)
	}
	if n >= 4 {
		binary.BigEndian.PutUint32(f, uint32(seq))
	}
	return f
}

// offerTx offers one transmit chain and kicks, without waiting.
func (g *guest) offerTx(bufs ...vt.Buf) uint16 {
	g.t.Helper()
	head, err := g.drv.Queue(txQueue).Offer(bufs...)
	if err != nil {
		g.t.Fatal(err)
	}
	g.drv.Kick(txQueue)
	return head
}

// transmit offers chain, kicks and waits for the device to return it; it
// returns the used length.
func (g *guest) transmit(bufs ...vt.Buf) uint32 {
	g.t.Helper()
	g.offerTx(bufs...)
	used, err := g.drv.WaitUsed(txQueue, 1)
	if err != nil || len(used) != 1 {
		g.t.Fatalf("transmit chain: used %v, %v", used, err)
	}
	return used[0].Len
}

// send transmits frame as Linux does: the header in one descriptor, the
// frame in the next.
// txSettled counts the transmit chains the device returns until it has
// returned none for 20 polls in a row: what it takes from a peer that
// does not read before its buffers run out.
func (g *guest) txSettled(t testing.TB) int {
	t.Helper()
	var used int
	for stable := 0; stable < 20; {
		u, err := g.drv.Queue(txQueue).Used()
		if err != nil {
			t.Fatal(err)
		}
		if len(u) == 0 {
			stable++
		} else {
			stable = 0
		}
		used += len(u)
		time.Sleep(10 * time.Millisecond)
	}
	return used
}

func (g *guest) send(frame []byte) {
	g.t.Helper()
	g.transmit(g.drv.Readable(make([]byte, hdrSize)), g.drv.Readable(frame))
}

// postRx posts n receive buffers of size bytes and kicks.
func (g *guest) postRx(n int, size uint32) {
	g.t.Helper()
	for range n {
		b := g.drv.Writable(size)
		head, err := g.drv.Queue(rxQueue).Offer(b)
		if err != nil {
			g.t.Fatal(err)
		}
		g.rxBufs[head] = b
	}
	g.drv.Kick(rxQueue)
}

// receive returns the bytes of the next receive buffer the device used:
// the header and the frame.
func (g *guest) receive() []byte {
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
	b, ok := g.rxBufs[u.Head]
	if !ok {
		g.t.Fatalf("the device used receive chain %d, which is not posted", u.Head)
	}
	delete(g.rxBufs, u.Head)
	if u.Len > b.Len {
		g.t.Fatalf("used length %d of a %d-byte buffer", u.Len, b.Len)
	}
	return g.drv.Bytes(b)[:u.Len]
}

// receiveFrame is receive, checking the header and stripping it.
func (g *guest) receiveFrame() []byte {
	g.t.Helper()
	b := g.receive()
	if len(b) < hdrSize || !bytes.Equal(b[:hdrSize], rxHeader[:]) {
		g.t.Fatalf("received %x, want the header %x first", b[:min(len(b), hdrSize)], rxHeader)
	}
	return b[hdrSize:]
}

// peerRead reads the next message the device sent.
func (g *guest) peerRead() []byte {
	g.t.Helper()
	return readMessage(g.t, g.peer)
}

func readMessage(t testing.TB, c *stdnet.UnixConn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, MaxTSOFrame+1)
	n, _, flags, _, err := c.ReadMsgUnix(buf, nil)
	if err != nil || flags&unix.MSG_TRUNC != 0 {
		t.Fatalf("peer read: %d bytes, flags %#x, %v", n, flags, err)
	}
	return buf[:n]
}

// peerWrite sends one message to the device.
func (g *guest) peerWrite(msg []byte) {
	g.t.Helper()
	g.peer.SetWriteDeadline(time.Now().Add(testTimeout))
	if _, err := g.peer.Write(msg); err != nil {
		g.t.Fatal(err)
	}
}

// waitStats waits until cond holds of the device's counters.
func (g *guest) waitStats(what string, cond func(Stats) bool) Stats {
	g.t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		s := g.dev.Stats()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("%s: stats %+v", what, s)
		}
		time.Sleep(time.Millisecond)
	}
}

// expectNoMessage checks that the peer has nothing to read for a while.
func (g *guest) expectNoMessage() {
	g.t.Helper()
	g.peer.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 64<<10)
	if n, err := g.peer.Read(buf); err == nil {
		g.t.Fatalf("peer read an unexpected %d-byte message %x", n, buf[:min(n, 32)])
	}
}
