package net

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"testing"
	"time"

	"github.com/google/gopacket/layers"

	vt "github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
)

// FuzzParseTx checks the transmit header and frame checks on any bytes,
// under no offloads, checksum only, and checksum and TSO: what parseTx
// accepts asks only for negotiated offloads, is a frame of MinFrame to
// MaxFrame bytes (MaxTSOFrame for a TSO packet, which is one IPv4 TCP
// packet), and is the rest of the packet, unchanged but for a checksum
// that, with the pseudo-header's sum the driver left in its field,
// verifies. A refused packet is left as it was.
func FuzzParseTx(f *testing.F) {
	_, tso := tsoPacket(f, 2000, 1)
	f.Add(tso)
	_, partial, start, offset := l4Packet(f, layers.IPProtocolUDP, 40, 2)
	f.Add(append(txHeader(flagNeedsCsum, gsoNone, 0, start, offset), partial...))
	f.Fuzz(func(t *testing.T, p []byte) {
		for _, o := range []txOffloads{0, featureCsum, allOffloads} {
			checkParseTx(t, p, o)
		}
	})
}

func checkParseTx(t *testing.T, p []byte, o txOffloads) {
	q := bytes.Clone(p)
	frame, err := parseTx(q, o)
	if err != nil {
		if frame != nil {
			t.Fatalf("offloads %#x: error %v with a frame", o, err)
		}
		if !bytes.Equal(q, p) {
			t.Fatalf("offloads %#x: a refused packet was changed", o)
		}
		return
	}
	flags, gso := p[hdrFlags], p[hdrGSOType]
	needsCsum := flags&flagNeedsCsum != 0
	limit := MaxFrame
	if gso == gsoTCPv4 {
		limit = MaxTSOFrame
	}
	switch {
	case flags&(flagDataValid|flagRSCInfo) != 0,
		needsCsum && o&featureCsum == 0,
		gso != gsoNone && (gso != gsoTCPv4 || o&featureHostTSO4 == 0 || !needsCsum):
		t.Fatalf("offloads %#x: accepted the header %x", o, p[:hdrSize])
	case len(frame) < MinFrame || len(frame) > limit:
		t.Fatalf("offloads %#x: accepted a %d-byte frame", o, len(frame))
	case len(frame) != len(p)-hdrSize || &frame[0] != &q[hdrSize]:
		t.Fatalf("offloads %#x: the frame is not the packet's rest", o)
	}
	if !needsCsum {
		if !bytes.Equal(frame, p[hdrSize:]) {
			t.Fatalf("offloads %#x: the frame changed without NEEDS_CSUM", o)
		}
		return
	}
	start := int(binary.LittleEndian.Uint16(p[hdrCsumStart:]))
	field := start + int(binary.LittleEndian.Uint16(p[hdrCsumOffset:]))
	in := p[hdrSize:]
	if start < ethHeaderLen || (field-start)%2 != 0 || field+2 > len(frame) ||
		!bytes.Equal(frame[:field], in[:field]) || !bytes.Equal(frame[field+2:], in[field+2:]) {
		t.Fatalf("offloads %#x: csum_start %d, field at %d: more than the checksum changed", o, start, field)
	}
	pseudo := binary.BigEndian.Uint16(in[field:])
	sum := uint32(sum16(frame[start:])) + uint32(pseudo)
	if got := sum&0xffff + sum>>16; got != 0xffff {
		t.Fatalf("offloads %#x: the completed checksum does not verify (sum %#04x)", o, got)
	}
	if gso == gsoTCPv4 {
		ip := frame[ethHeaderLen:]
		if binary.BigEndian.Uint16(frame[12:]) != etherTypeIPv4 || ip[0]>>4 != 4 || ip[9] != ipProtoTCP ||
			int(binary.BigEndian.Uint16(ip[2:])) != len(ip) || start != ethHeaderLen+int(ip[0]&0xf)*4 {
			t.Fatalf("accepted a TSO packet that is not one IPv4 TCP packet: %x", frame[:min(len(frame), 60)])
		}
	}
}

// Buffer placements in fuzzed chain layouts.
const (
	placeInside   = iota // a fresh buffer in guest memory
	placeInside2         // the same, to weight valid buffers
	placeStraddle        // across the end of guest memory
	placeOutside         // far beyond it
)

// fuzzMem is the fuzzed devices' guest memory: room for 32 buffers of up
// to 64 KiB.
const fuzzMem = 4 << 20

// FuzzTransmitChain sends an arbitrary transmit chain through the whole
// path (fake driver, MMIO transport, queue, device, socket): the device
// must return it unused, and send exactly its frame if it is a valid
// packet (as parseTx completes it), else nothing, counting it invalid. A
// valid frame sent after it must then arrive, first.
//
// layout describes the chain, 3 bytes per buffer: flags (bit 0: device-
// writable; bits 1-2: a placement), then a little-endian 16-bit length.
// Readable buffers carry, in order, a header whose flags and gso_type are
// the fuzzer's (the rest numbered bytes), then the frame's bytes.
func FuzzTransmitChain(f *testing.F) {
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, hdrFlagsByte, gsoByte byte, layout []byte) {
		if len(layout) < 3 || len(layout) > 3*32 {
			return
		}
		g := newGuestMem(t, fuzzMem, log)
		d := g.drv
		stream := make([]byte, 64<<10*32+hdrSize)
		for i := range stream {
			stream[i] = byte(i * 13)
		}
		stream[hdrFlags], stream[hdrGSOType] = hdrFlagsByte, gsoByte
		var bufs []vt.Buf
		var readable int
		wellFormed := true
		for i := 0; i+3 <= len(layout); i += 3 {
			flags, n := layout[i], uint32(binary.LittleEndian.Uint16(layout[i+1:]))
			b := vt.Buf{Len: n, Writable: flags&1 != 0}
			switch flags >> 1 & 3 {
			case placeInside, placeInside2:
				b.Addr = d.Alloc(uint64(n), 1)
				if !b.Writable {
					d.Mem.WriteAt(stream[readable:readable+int(n)], int64(b.Addr))
				}
			case placeStraddle:
				b.Addr = fuzzMem - uint64(n)/2
				wellFormed = wellFormed && n == 0
			case placeOutside:
				b.Addr = 1 << 40
				wellFormed = wellFormed && n == 0
			}
			if b.Writable {
				wellFormed = false
			} else {
				readable += int(n)
			}
			bufs = append(bufs, b)
		}
		packet := stream[:readable]
		// The driver accepted every feature: the device checks the
		// packet as parseTx does under every offload.
		want, err := parseTx(bytes.Clone(packet), allOffloads)
		valid := wellFormed && err == nil

		if used := g.transmit(bufs...); used != 0 {
			t.Fatalf("used length %d for a transmit chain", used)
		}
		if valid {
			if got := g.peerRead(); !bytes.Equal(got, want) {
				t.Fatalf("peer read %d bytes, want the %d-byte frame", len(got), len(want))
			}
		}
		sentinel := frameOf(64, 0xee)
		g.send(sentinel)
		if got := g.peerRead(); !bytes.Equal(got, sentinel) {
			t.Fatalf("peer read %d bytes %x, want the sentinel frame (valid %v)", len(got), got[:min(len(got), 16)], valid)
		}
		invalid := map[bool]uint64{true: 0, false: 1}[valid]
		g.waitStats("the frames counted", func(s Stats) bool {
			return s.TxInvalid == invalid && s.TxFrames == 2-invalid
		})
	})
}

// FuzzReceive has the peer send arbitrary messages into receive buffers
// of arbitrary sizes: every message is delivered, dropped or refused,
// what the guest gets is the header and a valid frame, in the order
// sent, and the device holds no more than its bounds.
//
// msgs is a sequence of little-endian 16-bit message lengths (the bytes
// are numbered); bufSizes one of 16-bit receive buffer sizes, posted
// before the messages are sent.
func FuzzReceive(f *testing.F) {
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, msgs, bufSizes []byte) {
		if len(msgs) > 2*64 || len(bufSizes) > 2*32 {
			return
		}
		g := newGuestMem(t, fuzzMem, log)
		for i := 0; i+2 <= len(bufSizes); i += 2 {
			g.postRx(1, uint32(binary.LittleEndian.Uint16(bufSizes[i:])))
		}
		var sent [][]byte
		for i := 0; i+2 <= len(msgs); i += 2 {
			n := int(binary.LittleEndian.Uint16(msgs[i:]))
			if n == 0 {
				continue // the end of the link, on a SOCK_SEQPACKET socket
			}
			m := frameOf(n, i/2)
			g.peerWrite(m)
			sent = append(sent, m)
		}
		// Delivered, dropped, refused, or held for lack of a buffer.
		deadline := time.Now().Add(testTimeout)
		for g.accounted() != uint64(len(sent)) {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d messages accounted for: %+v", g.accounted(), len(sent), g.dev.Stats())
			}
			time.Sleep(time.Millisecond)
		}
		var invalid uint64
		for _, m := range sent {
			if len(m) < MinFrame || len(m) > MaxFrame {
				invalid++
			}
		}
		s := g.dev.Stats()
		if s.RxInvalid != invalid {
			t.Fatalf("stats %+v, want %d invalid", s, invalid)
		}
		if made := g.dev.rxPool.made.Load(); made > maxHeld+1 {
			t.Fatalf("%d receive buffers made", made)
		}
		// The used buffers hold a subsequence of the valid frames sent.
		// The device counts a frame once its buffer is returned, so the
		// used ring is complete.
		used, err := g.drv.Queue(rxQueue).Used()
		if err != nil {
			t.Fatal(err)
		}
		g.rxUsed = used
		var got [][]byte
		for len(g.rxUsed) > 0 {
			got = append(got, g.receive())
		}
		if delivered := len(got) - countEmpty(got); uint64(delivered) != s.RxFrames {
			t.Fatalf("%d frames in used buffers, %d counted", delivered, s.RxFrames)
		}
		next := 0
		for _, b := range got {
			if len(b) == 0 {
				continue // a buffer too small for any frame
			}
			if len(b) < hdrSize || !bytes.Equal(b[:hdrSize], rxHeader[:]) {
				t.Fatalf("received %x", b[:min(len(b), hdrSize)])
			}
			for next < len(sent) && !bytes.Equal(sent[next], b[hdrSize:]) {
				next++
			}
			if next == len(sent) {
				t.Fatalf("received a %d-byte frame that was not sent in this order", len(b)-hdrSize)
			}
			next++
		}
	})
}

func countEmpty(bufs [][]byte) int {
	n := 0
	for _, b := range bufs {
		if len(b) == 0 {
			n++
		}
	}
	return n
}

// accounted counts the peer's messages the device delivered, dropped,
// refused or holds, as its event loop sees them between two events.
func (g *guest) accounted() uint64 {
	var n uint64
	g.dev.call(func(l *loop) error {
		s := g.dev.Stats()
		n = s.RxFrames + s.RxDropped + s.RxInvalid + uint64(l.pending.len()+len(g.dev.rx))
		return nil
	})
	return n
}
