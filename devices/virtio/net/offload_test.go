package net

import (
	"bytes"
	"encoding/binary"
	"errors"
	stdnet "net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	vt "github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
)

// allOffloads are the offloads a driver that accepts every offered
// feature negotiates.
const allOffloads = txOffloads(featureCsum | featureHostTSO4)

// txHeader is a virtio-net header as a driver writes it.
func txHeader(flags, gso byte, gsoSize, csumStart, csumOffset uint16) []byte {
	h := make([]byte, hdrSize)
	h[hdrFlags], h[hdrGSOType] = flags, gso
	binary.LittleEndian.PutUint16(h[2:], csumStart+20) // hdr_len: a hint, here too large
	binary.LittleEndian.PutUint16(h[hdrGSOSize:], gsoSize)
	binary.LittleEndian.PutUint16(h[hdrCsumStart:], csumStart)
	binary.LittleEndian.PutUint16(h[hdrCsumOffset:], csumOffset)
	return h
}

// sum16 is the ones' complement sum of b as big-endian 16-bit words,
// folded, written plainly as the reference for the device's.
func sum16(b []byte) uint16 {
	var s uint32
	for i := 0; i < len(b); i += 2 {
		w := uint32(b[i]) << 8
		if i+1 < len(b) {
			w |= uint32(b[i+1])
		}
		s += w
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// l4Packet returns an Ethernet frame carrying one IPv4 packet whose
// transport layer (TCP or UDP) has n payload bytes numbered by seq, with
// every checksum computed by gopacket (want), the same frame as a Linux
// driver hands it over with VIRTIO_NET_HDR_F_NEEDS_CSUM (partial: the
// transport checksum field holds the pseudo-header's folded sum), and
// where that field is (csum_start, csum_offset).
func l4Packet(t testing.TB, proto layers.IPProtocol, n, seq int) (want, partial []byte, start, offset uint16) {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: stdnet.HardwareAddr(DefaultMAC[:]), DstMAC: stdnet.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: stdnet.IPv4(192, 168, 127, 2), DstIP: stdnet.IPv4(192, 168, 127, 254), Flags: layers.IPv4DontFragment, Id: uint16(seq)}
	payload := make([]byte, n)
	for i := range payload {
		payload[i] = byte(i*31 + seq + i>>8)
	}
	var l4 gopacket.SerializableLayer
	switch proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: 40000, DstPort: 8080, Seq: uint32(seq) * 100000, Ack: 7, ACK: true, PSH: true, Window: 502}
		tcp.SetNetworkLayerForChecksum(ip)
		l4, offset = tcp, tcpCsumOffset
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: 40000, DstPort: 53}
		udp.SetNetworkLayerForChecksum(ip)
		l4, offset = udp, 6
	}
	sb := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(sb, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, l4, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	// Without gopacket's padding to the Ethernet minimum, as Linux sends
	// a frame (the device sums to the frame's end).
	want = bytes.Clone(sb.Bytes())
	want = want[:ethHeaderLen+int(binary.BigEndian.Uint16(want[ethHeaderLen+2:]))]
	start = ethHeaderLen + ipv4MinHdr
	partial = bytes.Clone(want)
	// The pseudo-header: addresses, protocol, transport length.
	var pseudo [12]byte
	copy(pseudo[:8], want[ethHeaderLen+12:ethHeaderLen+20])
	pseudo[9] = byte(proto)
	binary.BigEndian.PutUint16(pseudo[10:], uint16(len(want)-int(start)))
	binary.BigEndian.PutUint16(partial[start+offset:], sum16(pseudo[:]))
	return want, partial, start, offset
}

// tsoPacket is l4Packet for TCP, with the header of a TSO packet.
func tsoPacket(t testing.TB, n, seq int) (want, p []byte) {
	want, partial, start, offset := l4Packet(t, layers.IPProtocolTCP, n, seq)
	return want, append(txHeader(flagNeedsCsum, gsoTCPv4, 1448, start, offset), partial...)
}

// The device completes a partial checksum as the driver asked, giving
// the packet gopacket computed: TCP and UDP, even and odd lengths.
func TestChecksumCompletedLikeAReference(t *testing.T) {
	for _, c := range []struct {
		proto layers.IPProtocol
		n     int
	}{{layers.IPProtocolTCP, 0}, {layers.IPProtocolTCP, 1}, {layers.IPProtocolTCP, 1460}, {layers.IPProtocolTCP, 7}, {layers.IPProtocolUDP, 100}, {layers.IPProtocolUDP, 1471}, {layers.IPProtocolUDP, 0}} {
		want, partial, start, offset := l4Packet(t, c.proto, c.n, c.n)
		frame, err := parseTx(append(txHeader(flagNeedsCsum, gsoNone, 0, start, offset), partial...), featureCsum)
		if err != nil {
			t.Fatalf("%v, %d bytes: %v", c.proto, c.n, err)
		}
		if !bytes.Equal(frame, want) {
			t.Errorf("%v, %d bytes: checksum %#04x, want %#04x", c.proto, c.n, binary.BigEndian.Uint16(frame[start+offset:]), binary.BigEndian.Uint16(want[start+offset:]))
		}
	}
	// A TSO packet of the largest size.
	want, p := tsoPacket(t, maxIPv4Len-ipv4MinHdr-tcpMinHdr, 1)
	frame, err := parseTx(p, allOffloads)
	if err != nil || !bytes.Equal(frame, want) || len(frame) != MaxTSOFrame {
		t.Fatalf("largest TSO packet: %d bytes, %v", len(frame), err)
	}
}

// onesSum is the plain sum, at every length and alignment.
func TestOnesSumMatchesThePlainSum(t *testing.T) {
	b := make([]byte, 300)
	for i := range b {
		b[i] = byte(255 - i*13)
	}
	for start := range 9 {
		for end := start; end <= len(b); end++ {
			if got, want := fold(onesSum(b[start:end])), sum16(b[start:end]); got != want && !(got == 0xffff && want == 0) && !(got == 0 && want == 0xffff) {
				t.Fatalf("[%d:%d]: %#04x, want %#04x", start, end, got, want)
			}
		}
	}
	if got := fold(onesSum(bytes.Repeat([]byte{0xff}, 65536))); got != 0xffff {
		t.Errorf("all ones: %#04x", got)
	}
}

// Every header field is checked against the offloads and the frame.
func TestParseTxOffloads(t *testing.T) {
	_, tso := tsoPacket(t, 60000, 1)
	_, udpPartial, udpStart, udpOff := l4Packet(t, layers.IPProtocolUDP, 100, 2)
	udp := append(txHeader(flagNeedsCsum, gsoNone, 0, udpStart, udpOff), udpPartial...)
	edit := func(p []byte, f func(p []byte)) []byte {
		p = bytes.Clone(p)
		f(p)
		return p
	}
	ip := hdrSize + ethHeaderLen
	for _, c := range []struct {
		name string
		p    []byte
		o    txOffloads
		err  error // nil: accepted
	}{
		{"TSO", tso, allOffloads, nil},
		{"NEEDS_CSUM", udp, featureCsum, nil},
		{"unknown flag bits ignored", edit(udp, func(p []byte) { p[hdrFlags] |= 0xf8 }), featureCsum, nil},
		{"TSO, small", func() []byte { _, p := tsoPacket(t, 10, 3); return p }(), allOffloads, nil},
		{"TSO not negotiated", tso, featureCsum, errOffload},
		{"NEEDS_CSUM not negotiated", udp, 0, errOffload},
		{"DATA_VALID", edit(udp, func(p []byte) { p[hdrFlags] |= flagDataValid }), allOffloads, errOffload},
		{"RSC_INFO", edit(udp, func(p []byte) { p[hdrFlags] |= flagRSCInfo }), allOffloads, errOffload},
		{"ECN", edit(tso, func(p []byte) { p[hdrGSOType] |= gsoECN }), allOffloads, errOffload},
		{"GSO UDP", edit(tso, func(p []byte) { p[hdrGSOType] = 3 }), allOffloads, errOffload},
		{"GSO TCPv6", edit(tso, func(p []byte) { p[hdrGSOType] = 4 }), allOffloads, errOffload},
		{"GSO UDP_L4", edit(tso, func(p []byte) { p[hdrGSOType] = 5 }), allOffloads, errOffload},
		{"TSO without NEEDS_CSUM", edit(tso, func(p []byte) { p[hdrFlags] = 0 }), allOffloads, errTSO},
		{"TSO, gso_size 0", edit(tso, func(p []byte) { binary.LittleEndian.PutUint16(p[hdrGSOSize:], 0) }), allOffloads, errTSO},
		{"TSO, not IPv4", edit(tso, func(p []byte) { p[hdrSize+12] = 0x86; p[hdrSize+13] = 0xdd }), allOffloads, errTSO},
		{"TSO, VLAN tagged", edit(tso, func(p []byte) { p[hdrSize+12] = 0x81; p[hdrSize+13] = 0 }), allOffloads, errTSO},
		{"TSO, IP version 6", edit(tso, func(p []byte) { p[ip] = 0x65 }), allOffloads, errTSO},
		{"TSO, IHL 4", edit(tso, func(p []byte) { p[ip] = 0x44 }), allOffloads, errTSO},
		{"TSO, total length short", edit(tso, func(p []byte) { binary.BigEndian.PutUint16(p[ip+2:], 1500) }), allOffloads, errTSO},
		{"TSO, a fragment", edit(tso, func(p []byte) { p[ip+6] = 0x20 }), allOffloads, errTSO},
		{"TSO, fragment offset", edit(tso, func(p []byte) { p[ip+7] = 1 }), allOffloads, errTSO},
		{"TSO, UDP", edit(tso, func(p []byte) { p[ip+9] = 17 }), allOffloads, errTSO},
		{"TSO, TCP data offset 4", edit(tso, func(p []byte) { p[ip+20+12] = 0x40 }), allOffloads, errTSO},
		{"TSO, csum_start not TCP", edit(tso, func(p []byte) { binary.LittleEndian.PutUint16(p[hdrCsumStart:], 30) }), allOffloads, errTSO},
		{"TSO, csum_offset not TCP's", edit(tso, func(p []byte) { binary.LittleEndian.PutUint16(p[hdrCsumOffset:], 6) }), allOffloads, errTSO},
		{"TSO above MaxTSOFrame", append(bytes.Clone(tso), make([]byte, MaxTSOFrame)...), allOffloads, errOversize},
		{"NEEDS_CSUM above MaxFrame", append(txHeader(flagNeedsCsum, gsoNone, 0, 34, 16), make([]byte, MaxFrame+1)...), allOffloads, errOversize},
		{"csum_start in the Ethernet header", edit(udp, func(p []byte) { binary.LittleEndian.PutUint16(p[hdrCsumStart:], 13) }), featureCsum, errCsum},
		{"csum field past the frame", edit(udp, func(p []byte) {
			binary.LittleEndian.PutUint16(p[hdrCsumOffset:], uint16(len(udp)-hdrSize-int(udpStart)-1))
		}), featureCsum, errCsum},
		{"csum_offset odd", edit(udp, func(p []byte) { binary.LittleEndian.PutUint16(p[hdrCsumOffset:], 7) }), featureCsum, errCsum},
		{"csum_start past the frame", edit(udp, func(p []byte) { binary.LittleEndian.PutUint16(p[hdrCsumStart:], 0xffff) }), featureCsum, errCsum},
	} {
		frame, err := parseTx(bytes.Clone(c.p), c.o)
		switch {
		case c.err == nil && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.err != nil && !errors.Is(err, c.err):
			t.Errorf("%s: error %v, want %v", c.name, err, c.err)
		case c.err != nil && frame != nil:
			t.Errorf("%s: a frame with the error", c.name)
		}
	}
}

// A TSO packet crosses the whole path whole, in the descriptors Linux
// uses (the header, the linear part, page fragments), its checksum
// completed; so does a small packet with NEEDS_CSUM.
func TestTransmitTSOByteForByte(t *testing.T) {
	g := newGuest(t)
	want, p := tsoPacket(t, 65000, 1)
	var bufs []vt.Buf
	bufs = append(bufs, g.drv.Readable(p[:hdrSize]), g.drv.Readable(p[hdrSize:hdrSize+200]))
	for off := hdrSize + 200; off < len(p); off += 4096 {
		bufs = append(bufs, g.drv.Readable(p[off:min(off+4096, len(p))]))
	}
	if used := g.transmit(bufs...); used != 0 {
		t.Errorf("used length %d", used)
	}
	if got := g.peerRead(); !bytes.Equal(got, want) {
		t.Fatalf("peer read %d bytes, want the %d-byte TSO packet with its checksum", len(got), len(want))
	}
	wantUDP, partial, start, offset := l4Packet(t, layers.IPProtocolUDP, 300, 2)
	g.transmit(g.drv.Readable(txHeader(flagNeedsCsum, gsoNone, 0, start, offset)), g.drv.Readable(partial))
	if got := g.peerRead(); !bytes.Equal(got, wantUDP) {
		t.Fatalf("peer read %x, want the UDP packet with its checksum", got)
	}
	s := g.waitStats("two frames sent", func(s Stats) bool { return s.TxFrames == 2 })
	if s.TxBytes != uint64(len(want)+len(wantUDP)) || s.TxInvalid != 0 {
		t.Errorf("stats %+v", s)
	}
}

// A driver that did not accept the offloads (as one that negotiated
// before they were offered) gets its NEEDS_CSUM and TSO packets refused.
func TestOffloadsOnlyWhenNegotiated(t *testing.T) {
	conn, peer := seqpacketPair(t)
	dev := newDevice(conn, DefaultMAC, true, testLogger(t))
	t.Cleanup(func() { dev.Close() })
	g := &guest{t: t, dev: dev, drv: vt.New(t, dev, testMem), peer: peer, rxBufs: map[uint16]vt.Buf{}}
	if err := g.drv.Start(^uint64(offloadFeatures), numQueues); err != nil {
		t.Fatal(err)
	}
	_, tso := tsoPacket(t, 3000, 1)
	_, partial, start, offset := l4Packet(t, layers.IPProtocolUDP, 100, 2)
	g.transmit(g.drv.Readable(tso))
	g.transmit(g.drv.Readable(append(txHeader(flagNeedsCsum, gsoNone, 0, start, offset), partial...)))
	g.expectNoMessage()
	g.waitStats("both refused", func(s Stats) bool { return s.TxInvalid == 2 && s.TxFrames == 0 })
	if made := dev.tsoPool.made.Load(); made != 0 {
		t.Errorf("%d TSO buffers made for a driver without TSO", made)
	}
}

// A guest that floods TSO packets at a peer that does not read gets the
// device to take only what its bounded buffers and the socket hold, and
// the device never makes more than tsoBuffers large buffers; small and
// large frames stay in order.
func TestTransmitTSOMemoryBounded(t *testing.T) {
	g := newGuest(t)
	const frames = 60
	var want [][]byte
	for i := range frames {
		var w, p []byte
		if i%3 == 2 {
			w = frameOf(1000, i)
			p = packet(w)
		} else {
			w, p = tsoPacket(t, 60000, i)
		}
		want = append(want, w)
		g.offerTx(g.drv.Readable(p[:hdrSize]), g.drv.Readable(p[hdrSize:]))
	}
	used := g.txSettled(t)
	t.Logf("the device took %d chains", used)
	if used >= frames {
		t.Fatalf("the device took all %d chains from a peer that does not read", frames)
	}
	if made := g.dev.tsoPool.made.Load(); made > tsoBuffers {
		t.Errorf("%d TSO buffers made, at most %d may be", made, tsoBuffers)
	}
	for i := range frames {
		if got := g.peerRead(); !bytes.Equal(got, want[i]) {
			t.Fatalf("peer read %d bytes as frame %d, want %d", len(got), i, len(want[i]))
		}
	}
	g.waitStats("all sent", func(s Stats) bool { return s.TxFrames == frames })
	if made := g.dev.tsoPool.made.Load(); made > tsoBuffers {
		t.Errorf("%d TSO buffers made, at most %d may be", made, tsoBuffers)
	}
}
