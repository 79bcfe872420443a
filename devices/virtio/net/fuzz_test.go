package net

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"testing"
	"time"

	vt "github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
)

// FuzzParseTx checks the transmit header and frame checks on any bytes:
// what parseTx accepts is a frame of MinFrame to MaxFrame bytes behind an
// all-zero flags and gso_type, and it is the rest of the packet.
func FuzzParseTx(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		frame, err := parseTx(p)
		if err != nil {
			if frame != nil {
				t.Fatalf("error %v with a frame", err)
			}
			return
		}
		switch {
		case len(p) < hdrSize || p[hdrFlags] != 0 || p[hdrGSOType] != 0:
			t.Fatalf("accepted the header %x", p[:min(len(p), hdrSize)])
		case len(frame) < MinFrame || len(frame) > MaxFrame:
			t.Fatalf("accepted a %d-byte frame", len(frame))
		case !bytes.Equal(frame, p[hdrSize:]):
			t.Fatal("the frame is not the packet's rest")
		}
	})
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
// packet, else nothing, counting it invalid. A valid frame sent after it
// must then arrive, first.
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
		valid := wellFormed && readable >= hdrSize+MinFrame && readable <= hdrSize+MaxFrame &&
			hdrFlagsByte == 0 && gsoByte == 0

		if used := g.transmit(bufs...); used != 0 {
			t.Fatalf("used length %d for a transmit chain", used)
		}
		if valid {
			if got := g.peerRead(); !bytes.Equal(got, packet[hdrSize:]) {
				t.Fatalf("peer read %d bytes, want the %d-byte frame", len(got), readable-hdrSize)
			}
		}
		sentinel := frameOf(64, 0xee)
		g.send(sentinel)
		if got := g.peerRead(); !bytes.Equal(got, sentinel) {
			t.Fatalf("peer read %d bytes %x, want the sentinel frame (valid %v)", len(got), got[:min(len(got), 16)], valid)
		}
		want := map[bool]uint64{true: 0, false: 1}[valid]
		g.waitStats("the frames counted", func(s Stats) bool {
			return s.TxInvalid == want && s.TxFrames == 2-want
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
