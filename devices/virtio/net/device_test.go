package net

import (
	"bytes"
	"encoding/binary"
	"errors"
	stdnet "net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/devices/virtio"
	vt "github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
)

func TestConfigSpace(t *testing.T) {
	g := newGuest(t)
	d := g.drv
	if got := d.Read32(vt.RegDeviceID); got != virtio.TypeNet {
		t.Errorf("device ID %d, want %d", got, virtio.TypeNet)
	}
	want := uint64(virtio.FeatureVersion1 | featureMAC | featureStatus | featureMTU | featureCsum | featureHostTSO4)
	if got := d.DeviceFeatures(); got != want {
		t.Errorf("features %#x, want %#x (checksum and TSO4 offloads; no TSO6, ECN, UFO, receive offload, mergeable buffers or control queue)", got, want)
	}
	if got := d.ReadConfig(cfgMAC, 6); !bytes.Equal(got, DefaultMAC[:]) {
		t.Errorf("mac %x, want %x", got, DefaultMAC)
	}
	if got := binary.LittleEndian.Uint16(d.ReadConfig(cfgStatus, 2)); got != statusLinkUp {
		t.Errorf("status %#x, want VIRTIO_NET_S_LINK_UP", got)
	}
	if got := binary.LittleEndian.Uint16(d.ReadConfig(cfgMTU, 2)); got != MTU {
		t.Errorf("mtu %d, want %d", got, MTU)
	}
	if got := d.ReadConfig(configSize, 8); !bytes.Equal(got, make([]byte, 8)) {
		t.Errorf("past the configuration: %x, want zeros", got)
	}
	// Writes change nothing.
	d.MMIO.Write(vt.RegConfig+cfgMAC, []byte{1, 2, 3, 4})
	if got := d.ReadConfig(cfgMAC, 6); !bytes.Equal(got, DefaultMAC[:]) {
		t.Errorf("mac after a write %x", got)
	}
	if d.Read32(vt.RegQueueSel) != 0 {
		t.Fatal("queue select")
	}
	for i := range numQueues {
		d.Write32(vt.RegQueueSel, uint32(i))
		if got := d.Read32(vt.RegQueueNumMax); got != queueSize {
			t.Errorf("queue %d: QueueNumMax %d", i, got)
		}
	}
	d.Write32(vt.RegQueueSel, numQueues)
	if got := d.Read32(vt.RegQueueNumMax); got != 0 {
		t.Errorf("queue %d (no control queue) exists: QueueNumMax %d", numQueues, got)
	}
}

func TestParseMAC(t *testing.T) {
	if m, err := ParseMAC("02:00:00:AB:cd:01"); err != nil || m.String() != "02:00:00:ab:cd:01" {
		t.Errorf("ParseMAC = %v, %v", m, err)
	}
	for _, bad := range []string{"", "01:00:5e:00:00:01", "00:00:00:00:00:00", "02:00:00:00:00", "02:00:00:00:00:00:00:01", "xx"} {
		if _, err := ParseMAC(bad); err == nil {
			t.Errorf("ParseMAC(%q) accepted", bad)
		}
	}
	if DefaultMAC[0]&3 != 2 {
		t.Errorf("DefaultMAC %v is not a locally administered unicast address", DefaultMAC)
	}
}

// Transmitted frames reach the peer as one message each, byte for byte,
// however the driver lays the packet out.
func TestTransmitByteForByte(t *testing.T) {
	g := newGuest(t)
	var frames, bytesOut uint64
	for i, n := range []int{MinFrame, 60, 590, 1514, MaxFrame} {
		frame := frameOf(n, i)
		p := packet(frame)
		for _, layout := range []struct {
			name string
			bufs []vt.Buf
		}{
			{"header then frame", []vt.Buf{g.drv.Readable(p[:hdrSize]), g.drv.Readable(p[hdrSize:])}},
			{"one descriptor", []vt.Buf{g.drv.Readable(p)}},
			{"split header, frame in three", []vt.Buf{
				g.drv.Readable(p[:5]), g.drv.Readable(p[5 : hdrSize+3]), g.drv.Readable(nil),
				g.drv.Readable(p[hdrSize+3 : hdrSize+9]), g.drv.Readable(p[hdrSize+9:]),
			}},
		} {
			if used := g.transmit(layout.bufs...); used != 0 {
				t.Errorf("%d bytes, %s: used length %d, want 0", n, layout.name, used)
			}
			if got := g.peerRead(); !bytes.Equal(got, frame) {
				t.Fatalf("%d bytes, %s: peer read %d bytes %x, want %x", n, layout.name, len(got), got[:min(len(got), 32)], frame[:min(n, 32)])
			}
			frames++
			bytesOut += uint64(n)
		}
	}
	s := g.waitStats("transmit counters", func(s Stats) bool { return s.TxFrames == frames })
	if s.TxBytes != bytesOut || s.TxInvalid != 0 || s.TxDropped != 0 {
		t.Errorf("stats %+v, want %d frames of %d bytes, nothing dropped", s, frames, bytesOut)
	}
}

// Messages from the peer reach the guest's receive buffers behind the
// header (num_buffers 1), in order, in one buffer or a header buffer and
// a data buffer.
func TestReceiveWithHeader(t *testing.T) {
	g := newGuest(t)
	g.postRx(4, rxBufSize)
	var sent [][]byte
	for i, n := range []int{MinFrame, 60, 1514, MaxFrame} {
		f := frameOf(n, i)
		sent = append(sent, f)
		g.peerWrite(f)
	}
	for i, want := range sent {
		if got := g.receiveFrame(); !bytes.Equal(got, want) {
			t.Fatalf("frame %d: guest got %d bytes, want %d", i, len(got), len(want))
		}
	}
	if n := binary.LittleEndian.Uint16(rxHeader[hdrNumBuffers:]); n != 1 {
		t.Errorf("num_buffers %d", n)
	}

	// A header descriptor and a data descriptor.
	hdr, data := g.drv.Writable(hdrSize), g.drv.Writable(MaxFrame)
	if _, err := g.drv.Queue(rxQueue).Offer(hdr, data); err != nil {
		t.Fatal(err)
	}
	g.drv.Kick(rxQueue)
	f := frameOf(1000, 9)
	g.peerWrite(f)
	used, err := g.drv.WaitUsed(rxQueue, 1)
	if err != nil || used[0].Len != hdrSize+1000 {
		t.Fatalf("used %v, %v", used, err)
	}
	if got := g.drv.Bytes(hdr); !bytes.Equal(got, rxHeader[:]) {
		t.Errorf("header %x", got)
	}
	if got := g.drv.Bytes(data)[:1000]; !bytes.Equal(got, f) {
		t.Errorf("frame differs")
	}
	s := g.dev.Stats()
	if s.RxFrames != 5 || s.RxBytes != MinFrame+60+1514+MaxFrame+1000 || s.RxDropped != 0 || s.RxInvalid != 0 {
		t.Errorf("stats %+v", s)
	}
}

// Invalid transmit chains are returned unused and counted, never sent;
// the device goes on.
func TestTransmitInvalidDropped(t *testing.T) {
	g := newGuest(t)
	d := g.drv
	withHeader := func(flags, gso byte, frame []byte) []byte {
		p := packet(frame)
		p[hdrFlags], p[hdrGSOType] = flags, gso
		return p
	}
	frame := frameOf(100, 1)
	for _, c := range []struct {
		name string
		bufs []vt.Buf
	}{
		{"oversize", []vt.Buf{d.Readable(packet(frameOf(MaxFrame+1, 2)))}},
		{"jumbo", []vt.Buf{d.Readable(packet(frameOf(9000, 2)))}},
		{"oversize in many buffers", []vt.Buf{d.Readable(make([]byte, hdrSize)), d.Readable(make([]byte, 1000)), d.Readable(make([]byte, 1000))}},
		{"runt", []vt.Buf{d.Readable(packet(frameOf(MinFrame-1, 3)))}},
		{"header only", []vt.Buf{d.Readable(make([]byte, hdrSize))}},
		{"short header", []vt.Buf{d.Readable(make([]byte, 8))}},
		{"empty", []vt.Buf{d.Readable(nil)}},
		{"NEEDS_CSUM", []vt.Buf{d.Readable(withHeader(1, 0, frame))}},
		{"DATA_VALID", []vt.Buf{d.Readable(withHeader(2, 0, frame))}},
		{"GSO TCPv4", []vt.Buf{d.Readable(withHeader(0, 1, frame))}},
		{"GSO ECN", []vt.Buf{d.Readable(withHeader(0, 0x80, frame))}},
		{"writable buffer", []vt.Buf{d.Readable(packet(frame)), d.Writable(16)}},
		{"outside memory", []vt.Buf{{Addr: testMem - 8, Len: 200}}},
		{"far outside", []vt.Buf{{Addr: 1 << 40, Len: 112}}},
	} {
		if used := g.transmit(c.bufs...); used != 0 {
			t.Errorf("%s: used length %d", c.name, used)
		}
	}
	g.expectNoMessage()
	if s := g.dev.Stats(); s.TxInvalid != 14 || s.TxFrames != 0 {
		t.Errorf("stats %+v, want 14 invalid chains, nothing sent", s)
	}

	// A loop in the descriptor table.
	r := d.Queue(txQueue)
	buf := d.Readable(packet(frame))
	for i := uint16(200); i < 202; i++ {
		if err := r.WriteDesc(i, vt.Desc{Addr: buf.Addr, Len: buf.Len, Flags: vt.FlagNext, Next: 200 + (i-199)%2}); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Publish(200); err != nil {
		t.Fatal(err)
	}
	d.Kick(txQueue)
	if used, err := d.WaitUsed(txQueue, 1); err != nil || used[0].Head != 200 || used[0].Len != 0 {
		t.Fatalf("looping chain: used %v, %v", used, err)
	}
	g.waitStats("the loop counted", func(s Stats) bool { return s.TxInvalid == 15 })

	g.send(frame)
	if got := g.peerRead(); !bytes.Equal(got, frame) {
		t.Fatalf("after the invalid chains: peer read %x", got)
	}
}

// Messages from the peer that are not frames are dropped and counted.
func TestReceiveInvalid(t *testing.T) {
	g := newGuest(t)
	g.postRx(2, rxBufSize)
	g.peerWrite(frameOf(MaxFrame+1, 1))
	g.peerWrite(frameOf(9000, 2))
	g.peerWrite(frameOf(MinFrame-1, 3))
	f := frameOf(64, 4)
	g.peerWrite(f)
	if got := g.receiveFrame(); !bytes.Equal(got, f) {
		t.Fatalf("guest got %x, want the valid frame", got)
	}
	if s := g.dev.Stats(); s.RxInvalid != 3 || s.RxFrames != 1 {
		t.Errorf("stats %+v, want 3 invalid messages and 1 frame", s)
	}
}

// Receive buffers too small for any frame go back unused; one too small
// for a frame drops that frame and serves the next.
func TestReceiveSmallBuffers(t *testing.T) {
	g := newGuest(t)
	g.postRx(1, hdrSize+MinFrame-1)
	g.peerWrite(frameOf(100, 1))
	if b := g.receive(); len(b) != 0 {
		t.Fatalf("a buffer too small for any frame: used length %d, want 0", len(b))
	}
	g.postRx(1, hdrSize+64)
	big, small := frameOf(65, 2), frameOf(64, 3)
	g.peerWrite(big)
	g.peerWrite(small)
	if got := g.receiveFrame(); !bytes.Equal(got, small) {
		t.Fatalf("guest got %d bytes, want the frame that fits", len(got))
	}
	// The first frame waited for a buffer, and was dropped when one that
	// does not fit it came.
	if s := g.dev.Stats(); s.RxDropped != 2 || s.RxFrames != 1 {
		t.Errorf("stats %+v, want 2 dropped (the first, then the one too big), 1 delivered", s)
	}
}

// A peer flooding a guest that posts no receive buffers costs the device
// at most maxHeld frames: the rest is dropped and counted, and the oldest
// held frames are delivered once buffers come.
func TestReceiveFloodBounded(t *testing.T) {
	g := newGuest(t)
	const flood = 5000
	queued := maxHeld - rxHandoff
	go func() {
		for i := range flood {
			g.peer.SetWriteDeadline(time.Now().Add(testTimeout))
			if _, err := g.peer.Write(frameOf(1514, i)); err != nil {
				return
			}
		}
	}()
	s := g.waitStats("flood dropped", func(s Stats) bool { return s.RxDropped == flood-uint64(queued) })
	if made := g.dev.rxPool.made.Load(); made > maxHeld+1 {
		t.Errorf("%d receive buffers made, at most %d may be", made, maxHeld+1)
	}
	if s.RxFrames != 0 {
		t.Fatalf("stats %+v", s)
	}
	g.postRx(queued+10, rxBufSize)
	for i := range queued {
		if got := g.receiveFrame(); binary.BigEndian.Uint32(got) != uint32(i) {
			t.Fatalf("received frame %d, want %d", binary.BigEndian.Uint32(got), i)
		}
	}
	g.waitStats("held frames delivered", func(s Stats) bool { return s.RxFrames == uint64(queued) })
	f := frameOf(1514, flood)
	g.peerWrite(f)
	if got := g.receiveFrame(); !bytes.Equal(got, f) {
		t.Fatal("a frame after the flood")
	}
}

// A peer that does not read stops the device from taking transmit chains
// once its buffers are full, without blocking the vCPU that kicks; when
// the peer reads again every frame arrives, in order.
func TestTransmitBackPressure(t *testing.T) {
	g := newGuest(t)
	if err := g.dev.conn.SetWriteBuffer(1); err != nil { // the kernel's minimum: a few frames
		t.Fatal(err)
	}
	const frames = queueSize
	for i := range frames {
		// Each kick is a vCPU's MMIO write: it must return while the
		// writer waits for the peer.
		g.offerTx(g.drv.Readable(packet(frameOf(1514, i))))
	}
	used := g.txSettled(t)
	t.Logf("the device took %d chains", used)
	if used >= frames || used < txBuffers {
		t.Fatalf("the device took %d of %d chains from a peer that does not read; want at least its %d buffers and not all", used, frames, txBuffers)
	}
	if made := g.dev.txPool.made.Load(); made > txBuffers {
		t.Errorf("%d transmit buffers made, at most %d may be", made, txBuffers)
	}
	for i := range frames {
		if got := g.peerRead(); binary.BigEndian.Uint32(got) != uint32(i) || len(got) != 1514 {
			t.Fatalf("peer read frame %d (%d bytes), want %d", binary.BigEndian.Uint32(got), len(got), i)
		}
	}
	g.waitStats("all sent", func(s Stats) bool { return s.TxFrames == frames })
}

// Frames that arrive before the driver is active, and frames held when
// the driver resets, are dropped.
func TestNotActiveDrops(t *testing.T) {
	conn, peer := seqpacketPair(t)
	dev := newDevice(conn, DefaultMAC, true, testLogger(t))
	t.Cleanup(func() { dev.Close() })
	g := &guest{t: t, dev: dev, drv: vt.New(t, dev, testMem), peer: peer, rxBufs: map[uint16]vt.Buf{}}
	g.peerWrite(frameOf(100, 1))
	g.waitStats("dropped before activation", func(s Stats) bool { return s.RxDropped == 1 })
	if err := g.drv.Start(^uint64(0), numQueues); err != nil {
		t.Fatal(err)
	}
	g.peerWrite(frameOf(100, 2))
	g.peerWrite(frameOf(100, 3))
	g.waitStats("held", func(s Stats) bool { return dev.rxPool.made.Load() >= 2 })
	g.drv.Reset()
	g.waitStats("dropped at reset", func(s Stats) bool { return s.RxDropped == 3 })
	if err := g.drv.Start(^uint64(0), numQueues); err != nil {
		t.Fatal(err)
	}
	g.postRx(1, rxBufSize)
	f := frameOf(100, 4)
	g.peerWrite(f)
	if got := g.receiveFrame(); !bytes.Equal(got, f) {
		t.Fatalf("after the reset the guest got frame %d", binary.BigEndian.Uint32(got))
	}
}

// A peer that goes away leaves a link that drops every frame: transmit
// chains still come back, nothing blocks, and the device saves and
// closes.
func TestPeerGone(t *testing.T) {
	g := newGuest(t)
	g.postRx(1, rxBufSize)
	g.send(frameOf(100, 1))
	g.peerRead()
	g.peer.Close()
	s := g.waitStats("peer gone", func(s Stats) bool { return s.PeerGone })
	for i := range 10 {
		g.send(frameOf(100, i))
	}
	s = g.waitStats("frames dropped", func(s Stats) bool { return s.TxDropped == 10 })
	if s.TxFrames != 1 {
		t.Errorf("stats %+v", s)
	}
	st, _ := g.drv.Save(nil)
	if len(st.Device) == 0 {
		t.Fatal("no state")
	}
	if err := g.dev.Close(); err != nil {
		t.Fatal(err)
	}
}

// shortDir returns a directory for Unix sockets, whose paths are short
// (108 bytes): not t.TempDir, whose name holds the test's.
func shortDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "vnet")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// listen is a host network's socket: it accepts one connection.
func listen(t *testing.T, path string) <-chan *stdnet.UnixConn {
	t.Helper()
	ln, err := stdnet.ListenUnix("unixpacket", &stdnet.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns := make(chan *stdnet.UnixConn, 1)
	go func() {
		c, err := ln.AcceptUnix()
		if err != nil {
			close(conns)
			return
		}
		t.Cleanup(func() { c.Close() })
		conns <- c
	}()
	return conns
}

// New and Restore connect to the socket they are given; a socket that
// cannot be connected is an error naming it.
func TestDial(t *testing.T) {
	dir := shortDir(t)
	path := filepath.Join(dir, "net.sock")
	conns := listen(t, path)
	d, err := New(Config{SocketPath: path, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	peer := <-conns
	if d.MAC() != DefaultMAC {
		t.Errorf("MAC %v", d.MAC())
	}

	mac := MAC{2, 0, 0, 0, 0, 7}
	path2 := filepath.Join(dir, "net2.sock")
	conns2 := listen(t, path2)
	r, err := Restore(State{Version: StateVersion, MAC: mac.String()}, path2, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	<-conns2
	if r.MAC() != mac {
		t.Errorf("restored MAC %v, want %v", r.MAC(), mac)
	}
	_ = peer

	missing := filepath.Join(dir, "missing.sock")
	if _, err := New(Config{SocketPath: missing}); err == nil || !strings.Contains(err.Error(), missing) || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("New on a missing socket: %v", err)
	}
	if _, err := Restore(State{Version: StateVersion, MAC: mac.String()}, missing, nil); err == nil {
		t.Error("Restore on a missing socket succeeded")
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New without a socket path succeeded")
	}
	stream := filepath.Join(dir, "stream.sock")
	ln, err := stdnet.Listen("unix", stream)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := New(Config{SocketPath: stream}); err == nil || !strings.Contains(err.Error(), "SOCK_SEQPACKET") {
		t.Errorf("New on a stream socket: %v", err)
	}
}
