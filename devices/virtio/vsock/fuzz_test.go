package vsock

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	h := header{srcCID: 3, dstCID: 2, srcPort: 1234, dstPort: 1 << 30, len: 5, typ: typeStream, op: opRW,
		flags: shutdownBoth, bufAlloc: connBufAlloc, fwdCnt: 0xdeadbeef}
	var b [headerSize]byte
	h.encode(b[:])
	want := []byte{
		3, 0, 0, 0, 0, 0, 0, 0, // src_cid
		2, 0, 0, 0, 0, 0, 0, 0, // dst_cid
		0xd2, 0x04, 0, 0, // src_port
		0, 0, 0, 0x40, // dst_port
		5, 0, 0, 0, // len
		1, 0, // type
		5, 0, // op
		3, 0, 0, 0, // flags
		0, 0, 4, 0, // buf_alloc
		0xef, 0xbe, 0xad, 0xde, // fwd_cnt
	}
	if !bytes.Equal(b[:], want) {
		t.Fatalf("encoded %x, want %x", b, want)
	}
	got, err := decodeHeader(b[:])
	if err != nil || got != h {
		t.Fatalf("decoded %+v, %v; want %+v", got, err, h)
	}
	if _, err := decodeHeader(b[:headerSize-1]); err == nil {
		t.Fatal("decoded a short header")
	}
}

// FuzzPacketHeader checks that decoding and encoding a header are inverse.
func FuzzPacketHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeHeader(b)
		if len(b) < headerSize {
			if err == nil {
				t.Fatalf("decoded a %d-byte header", len(b))
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		var out [headerSize]byte
		h.encode(out[:])
		if !bytes.Equal(out[:], b[:headerSize]) {
			t.Fatalf("round trip %x -> %+v -> %x", b[:headerSize], h, out)
		}
		_ = h.String()
	})
}

// FuzzTxPacket feeds the muxer a sequence of tx packets, each a 2-byte
// little-endian prefix and chain bytes, with two connections
// open to host sockets: one established (local port firstLocalPort, guest
// port 1234) and one connecting (firstLocalPort+1, guest port 1235).
// After each packet it takes everything the device has for the guest and
// checks it, and the device's bounds.
//
// The prefix's low 15 bits are the chain's length. Unless its top bit is
// set, the packet's CIDs are overwritten with the right ones, so that
// most mutations reach the connection state machine rather than the
// address check.
func FuzzTxPacket(f *testing.F) {
	dir, err := os.MkdirTemp("", "vsock")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(dir) })
	log := slog.New(slog.DiscardHandler)

	f.Fuzz(func(t *testing.T, seq []byte) {
		ctx, cancel := context.WithCancel(context.Background())
		m := newMuxer(ctx, testCID, filepath.Join(dir, "v.sock"), log, defaultLimits)
		sink := &sinkQueues{t: t}
		m.q = sink
		var peers []*net.UnixConn
		defer func() {
			cancel()
			close(m.done)
			m.removeAll()
			m.wg.Wait()
			for _, p := range peers {
				p.Close()
			}
		}()
		for _, port := range []uint32{1234, 1235} {
			local, peer := socketPair(t)
			peers = append(peers, peer)
			m.hostConnect(local, port)
		}
		resp := header{srcCID: testCID, dstCID: hostCID, srcPort: 1234, dstPort: firstLocalPort, typ: typeStream,
			op: opResponse, bufAlloc: 64 << 10}
		var b [headerSize]byte
		resp.encode(b[:])
		m.fromGuest(b[:], headerSize)
		m.fillRx()

		for len(seq) >= 2 {
			prefix := binary.LittleEndian.Uint16(seq)
			n := min(int(prefix&0x7fff), len(seq)-2)
			pkt := m.txBuf[:copy(m.txBuf, seq[2:2+n])]
			seq = seq[2+n:]
			if prefix&0x8000 == 0 && len(pkt) >= 16 {
				binary.LittleEndian.PutUint64(pkt[0:], testCID)
				binary.LittleEndian.PutUint64(pkt[8:], hostCID)
			}
			m.fromGuest(pkt, uint64(len(pkt)))
			m.fillRx()
			if len(m.resets) > maxPendingResets || len(m.conns) > maxConnections || m.guestConns > maxGuestConnections {
				t.Fatalf("%d resets pending, %d connections, %d guest-initiated", len(m.resets), len(m.conns), m.guestConns)
			}
			guestConns := 0
			for _, c := range m.conns {
				if c.guestInitiated {
					guestConns++
				}
				if c.rxCnt-c.fwdCnt > connBufAlloc {
					t.Fatalf("%s holds %d guest bytes, over buf_alloc", c.key, c.rxCnt-c.fwdCnt)
				}
				if len(c.pending) > hostReadSize {
					t.Fatalf("%s holds %d host bytes", c.key, len(c.pending))
				}
			}
			if guestConns != m.guestConns {
				t.Fatalf("%d guest-initiated connections in the table, %d counted", guestConns, m.guestConns)
			}
		}
	})
}

// sinkQueues takes every packet the device sends, into rx buffers of
// Linux's size, and checks it.
type sinkQueues struct{ t *testing.T }

func (s *sinkQueues) popTx([]byte) (int, uint64, bool, error) { return 0, 0, false, nil }
func (s *sinkQueues) rxRoom() (int, bool, error)              { return rxBufSize - headerSize, true, nil }
func (s *sinkQueues) putEvent(uint32) (bool, error)           { return true, nil }
func (s *sinkQueues) eventBuffers() int                       { return 1 }
func (s *sinkQueues) interrupt() error                        { return nil }

func (s *sinkQueues) putRx(h *header, payload []byte) error {
	if h.srcCID != hostCID || h.dstCID != testCID || h.typ != typeStream || h.op < opRequest || h.op > opCreditRequest ||
		int(h.len) != len(payload) || len(payload) > rxBufSize-headerSize || (h.op != opRW && len(payload) > 0) {
		s.t.Fatalf("device sent %s type %d len %d with %d payload bytes", h, h.typ, h.len, len(payload))
	}
	return nil
}

// socketPair returns the two ends of a Unix stream socket pair.
func socketPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ends [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		ends[i] = c.(*net.UnixConn)
	}
	return ends[0], ends[1]
}
