package vsock

import (
	"fmt"
	"time"
)

// connKey names a connection by its two ports. The CIDs are implied: the
// host end is always VMADDR_CID_HOST and the guest end the guest's CID.
type connKey struct {
	local uint32 // host-side port: allocated for host-initiated connections, the guest's dst_port otherwise
	peer  uint32 // guest-side port
}

func (k connKey) String() string { return fmt.Sprintf("local port %d, peer port %d", k.local, k.peer) }

// connState is where a connection is in its life (spec §5.10.6.5).
type connState int

const (
	// stateConnecting: host-initiated; REQUEST queued or sent, waiting for
	// the guest's RESPONSE until the connect deadline.
	stateConnecting connState = iota
	// stateDialing: guest-initiated; dialing "<UDSPath>_<port>". The guest
	// gets RESPONSE or RST when the dial ends.
	stateDialing
	// stateEstablished: data flows both ways, possibly half-closed.
	stateEstablished
	// stateClosing: both directions are finished and SHUTDOWN(RCV|SEND) was
	// queued; the guest's RST is awaited until the shutdown deadline.
	stateClosing
	// stateClosed: removed from the table. Events still in flight for the
	// connection are ignored.
	stateClosed
)

// conn is one vsock stream between a guest port and a host Unix socket. It
// is owned by the event loop goroutine. Its dial goroutine reads key, set
// before it starts and never changed; the dial and hostStream goroutines
// otherwise only use it as the identity in the events they post.
//
// Flow control (spec §5.10.6.3) runs both ways. As sender the device
// never has more than the guest's buf_alloc in flight: txCnt-peerFwdCnt.
// As receiver it advertises connBufAlloc and counts in fwdCnt the bytes
// the host socket has taken.
type conn struct {
	key    connKey
	state  connState
	stream *hostStream // nil while dialing
	timer  *time.Timer // connect or shutdown deadline, nil when none is armed
	// guestInitiated: the guest sent the REQUEST. Such connections count
	// against limits.maxGuestConns.
	guestInitiated bool

	// Host → guest.
	peerBufAlloc    uint32 // buf_alloc of the guest's latest packet
	peerFwdCnt      uint32 // fwd_cnt of the guest's latest packet
	txCnt           uint32 // payload bytes sent to the guest, modulo 2^32
	pending         []byte // read from the host, not yet sent; aliases the reader's buffer
	reading         bool   // the reader holds a grant: a read is under way
	hostEOF         bool   // the host socket reached EOF
	creditRequested bool   // CREDIT_REQUEST sent since peerFree last was nonzero

	// Guest → host.
	rxCnt           uint32 // payload bytes received from the guest
	fwdCnt          uint32 // of those, bytes written to the host socket
	sentFwdCnt      uint32 // fwd_cnt in the latest packet sent to the guest
	hostWriteClosed bool   // the host socket's write side is shut down

	// Packets owed to the guest.
	sendRequest      bool
	sendResponse     bool
	sendCreditUpdate bool
	ourShutdown      uint32 // SHUTDOWN flags sent to the guest
	peerShutdown     uint32 // SHUTDOWN flags received from the guest
	scheduled        bool   // in muxer.ready
}

// peerFree is how many payload bytes the guest can take now (spec
// §5.10.6.3): buf_alloc - (tx_cnt - fwd_cnt). A guest whose fwd_cnt runs
// ahead of what it was sent, or whose buf_alloc shrank, gets nothing.
func (c *conn) peerFree() uint32 {
	inFlight := c.txCnt - c.peerFwdCnt
	if inFlight >= c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inFlight
}

// updatePeerCredit records the credit fields every guest packet carries.
func (c *conn) updatePeerCredit(h *header) {
	c.peerBufAlloc, c.peerFwdCnt = h.bufAlloc, h.fwdCnt
	if c.peerFree() > 0 {
		c.creditRequested = false
	}
}

// canSendData reports whether payload may go to the guest now.
func (c *conn) canSendData() bool {
	return c.state == stateEstablished && c.peerShutdown&shutdownRcv == 0 && len(c.pending) > 0 && c.peerFree() > 0
}

// dueShutdown returns the SHUTDOWN flags owed to the guest and not yet
// sent: SEND once the host reached EOF and everything read was sent, both
// once the connection is closing.
func (c *conn) dueShutdown() uint32 {
	var want uint32
	switch {
	case c.state == stateClosing:
		want = shutdownBoth
	case c.state == stateEstablished && c.hostEOF && len(c.pending) == 0:
		want = shutdownSend
	}
	return want &^ c.ourShutdown
}

// wantsRx reports whether c has a packet for the guest.
func (c *conn) wantsRx() bool {
	if c.state == stateClosed {
		return false
	}
	return c.sendRequest || c.sendResponse || c.canSendData() || c.needsCreditRequest() ||
		c.sendCreditUpdate || c.dueShutdown() != 0
}

// needsCreditRequest reports whether data waits for guest credit and the
// guest has not been asked for an update yet (spec §5.10.6.3).
func (c *conn) needsCreditRequest() bool {
	return c.state == stateEstablished && c.peerShutdown&shutdownRcv == 0 && len(c.pending) > 0 &&
		c.peerFree() == 0 && !c.creditRequested
}

// nextPacket builds c's next packet to the guest at guestCID, for an rx
// buffer with room payload bytes. The payload aliases c.pending; the
// caller commits the packet with sent.
func (c *conn) nextPacket(guestCID uint64, room int) (h header, payload []byte, ok bool) {
	switch {
	case c.sendRequest:
		h.op = opRequest
	case c.sendResponse:
		h.op = opResponse
	case c.canSendData() && room > 0:
		n := min(len(c.pending), int(c.peerFree()), room, maxPayload)
		h.op, payload = opRW, c.pending[:n]
	case c.needsCreditRequest():
		h.op = opCreditRequest
	case c.sendCreditUpdate:
		h.op = opCreditUpdate
	case c.dueShutdown() != 0:
		h.op, h.flags = opShutdown, c.ourShutdown|c.dueShutdown()
	default:
		return header{}, nil, false
	}
	h.srcCID, h.dstCID, h.srcPort, h.dstPort = hostCID, guestCID, c.key.local, c.key.peer
	h.typ, h.len = typeStream, uint32(len(payload))
	h.bufAlloc, h.fwdCnt = connBufAlloc, c.fwdCnt
	return h, payload, true
}

// sent commits a packet built by nextPacket once it is in guest memory.
func (c *conn) sent(h *header) {
	c.sentFwdCnt = h.fwdCnt
	c.sendCreditUpdate = false // every packet carries buf_alloc and fwd_cnt
	switch h.op {
	case opRequest:
		c.sendRequest = false
	case opResponse:
		c.sendResponse = false
	case opRW:
		c.pending = c.pending[h.len:]
		c.txCnt += h.len
	case opCreditRequest:
		c.creditRequested = true
	case opShutdown:
		c.ourShutdown = h.flags
	}
}

// wrote accounts for n payload bytes the host socket took and reports
// whether the guest should hear of it: when its view of our free space
// (buf_alloc - (rx_cnt - the fwd_cnt we last sent)) is low.
func (c *conn) wrote(n uint32) bool {
	c.fwdCnt += n
	unseen := c.rxCnt - c.sentFwdCnt // in flight, as far as the guest knows
	return c.fwdCnt != c.sentFwdCnt && (unseen >= connBufAlloc || connBufAlloc-unseen < creditUpdateThreshold)
}

func (s connState) String() string {
	switch s {
	case stateConnecting:
		return "connecting"
	case stateDialing:
		return "dialing"
	case stateEstablished:
		return "established"
	case stateClosing:
		return "closing"
	case stateClosed:
		return "closed"
	}
	return fmt.Sprintf("connState(%d)", int(s))
}
