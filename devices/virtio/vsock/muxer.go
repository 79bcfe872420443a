package vsock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/sailbox-dev/sailbox/internal/guestlog"
)

// Bounds on what a connection, and the device, may hold.
const (
	// connBufAlloc is the buf_alloc the device advertises per connection
	// (spec §5.10.6.3): the guest → host bytes it may hold for a host
	// socket that is slow to read.
	connBufAlloc = 256 << 10
	// creditUpdateThreshold: when the guest's view of that buffer's free
	// space falls below this, the device sends CREDIT_UPDATE as the host
	// socket takes data.
	creditUpdateThreshold = 64 << 10
	// hostReadSize is one read from a host socket: the most host → guest
	// data a connection holds.
	hostReadSize = 32 << 10
	// maxConnections bounds the connection table, and with the two bounds
	// above the device's buffers: 1024 × (256 + 32) KiB at worst.
	maxConnections = 1024
	// maxGuestConnections bounds the guest-initiated connections in the
	// table. The rest, HostConnections, is kept for host-initiated ones.
	maxGuestConnections = 256
	// maxPendingResets bounds the RST replies waiting for rx buffers;
	// past it, replies are dropped (spec §5.10.6.1: a driver that posts no
	// rx buffers must not make the device queue without end).
	maxPendingResets = 256
	// firstLocalPort is the first host-side port allocated to a
	// host-initiated connection; allocation wraps below VMADDR_PORT_ANY.
	firstLocalPort = 1 << 30
	portAny        = 1<<32 - 1 // VMADDR_PORT_ANY
	// guestWarnsPerSecond bounds the warnings a guest can cause at will.
	guestWarnsPerSecond = 10
)

// HostConnections is how many host-initiated connections the table has
// room for however many connections the guest opens: the table's size
// less the guest's share. They are the host's calls to services in the
// guest (sailboxd's to its agent, and the exposed ports it forwards
// through the agent), so a guest sending REQUEST after REQUEST cannot
// lock the host out of it. A host that also caps some of its own
// connections (sailboxd its forwards) keeps that cap below this, leaving
// room for the rest (internal/vmmbackend's agentConnReserve).
const HostConnections = maxConnections - maxGuestConnections

// The guest's share leaves the host a share of its own (checked when
// compiled: a negative constant does not convert to uint).
const _ uint = HostConnections - 1

// limits are the device's timeouts and connection caps; tests shrink them.
type limits struct {
	connect       time.Duration // for the guest's answer to a host-initiated REQUEST
	shutdown      time.Duration // for the guest's RST after SHUTDOWN(RCV|SEND)
	dial          time.Duration // to connect to "<UDSPath>_<port>"
	linger        time.Duration // to flush guest data to a host socket being closed
	maxConns      int           // the connection table's size
	maxGuestConns int           // of which guest-initiated connections may hold this many
}

// The connect deadline only ends a connection the guest does not answer:
// a guest kernel answers a REQUEST in microseconds on hardware, but an
// emulated or heavily loaded host can take seconds, so it is generous.
var defaultLimits = limits{
	connect:       10 * time.Second,
	shutdown:      2 * time.Second,
	dial:          2 * time.Second,
	linger:        5 * time.Second,
	maxConns:      maxConnections,
	maxGuestConns: maxGuestConnections,
}

// driverQueues is the event loop's view of the driver's virtqueues: the
// virtqueues themselves once the device is active, a scripted guest in
// tests. Its methods are called on the event loop goroutine only.
//
// The methods that take a chain report with ok whether they took one.
// An error with ok means that chain was unusable and went back to the
// driver unused; the queue can go on. An error without ok means the queue
// itself is unusable until the driver's next notification.
type driverQueues interface {
	// popTx takes the next tx chain, copies the start of its readable
	// bytes into buf and returns the chain to the driver. n is the bytes
	// copied, chainLen the chain's readable length.
	popTx(buf []byte) (n int, chainLen uint64, ok bool, err error)
	// rxRoom takes the next rx chain, or keeps the one it took before, and
	// returns its payload room: its writable length less the header.
	rxRoom() (room int, ok bool, err error)
	// putRx writes a packet into the chain rxRoom took and returns it to
	// the driver.
	putRx(h *header, payload []byte) error
	// putEvent writes an event into the next event chain and returns it.
	putEvent(id uint32) (ok bool, err error)
	// eventBuffers is how many event chains the driver has made
	// available and the device has not taken. Counting buffers, not
	// notifications, tells that the driver handled TRANSPORT_RESET: a
	// restore notifies every queue itself.
	eventBuffers() int
	// interrupt raises the used-buffer interrupt if chains were returned
	// since the last call and the driver wants to hear of it.
	interrupt() error
}

// errClosed reports a call on a closed device.
var errClosed = errors.New("vsock device closed")

// muxer is the device's engine: the connection table and the protocol
// state machine between driver packets and host sockets.
//
// One event loop goroutine (run) owns the loop-owned fields and every
// conn. Other goroutines never touch them: they hand the loop a function
// on events, an unbuffered channel, so a send that succeeds is always run
// by the loop (and one that finds the device closed has not been handed
// over: the sender cleans up). Notify only sets kick. The goroutines are:
//
//   - the event loop;
//   - acceptLoop, and a handshake goroutine per host client until its
//     CONNECT line is read;
//   - a dial goroutine per guest-initiated connection until it connects;
//   - a reader and a writer per host socket (hostStream);
//   - timers' functions, which only post.
type muxer struct {
	// Set by newMuxer, then read-only.
	guestCID uint64
	udsPath  string
	log      *slog.Logger
	limits   limits
	ctx      context.Context   // cancelled on Close: stops handshakes and dials
	events   chan func(*muxer) // unbuffered: work for the loop
	kick     chan struct{}     // capacity 1: the driver made buffers available
	done     chan struct{}     // closed on Close: the loop exits, posts fail
	wg       sync.WaitGroup    // every goroutine but timers'

	// Owned by the event loop.
	q            driverQueues // nil while the driver is not active
	conns        map[connKey]*conn
	guestConns   int       // guest-initiated connections in conns
	ready        []*conn   // connections with packets for the guest, served round robin
	resets       []connKey // RST replies owed, for connections gone or never known
	nextPort     uint32    // next local port to try for a host-initiated connection
	eventPending bool      // TRANSPORT_RESET owed to the driver
	// resetUnacked: TRANSPORT_RESET was delivered and the driver has not
	// yet made a new event buffer available, which Linux does only after
	// it has reset its sockets. Until then connection packets wait: a
	// REQUEST the guest took before handling the reset would be reset
	// with the old connections, and the host client would wait out its
	// connect deadline.
	resetUnacked bool
	eventsLeft   int    // event buffers available once the reset took one; one more acknowledges it
	txBuf        []byte // one tx packet, header and largest payload
	// guestLog logs what the guest can cause at will, at most
	// guestWarnsPerSecond records a second.
	guestLog *slog.Logger
}

func newMuxer(ctx context.Context, guestCID uint64, udsPath string, log *slog.Logger, lim limits) *muxer {
	return &muxer{
		guestCID: guestCID,
		udsPath:  udsPath,
		log:      log,
		guestLog: guestlog.NewLimiter(guestWarnsPerSecond, time.Second).Logger(log),
		limits:   lim,
		ctx:      ctx,
		events:   make(chan func(*muxer)),
		kick:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		conns:    make(map[connKey]*conn),
		nextPort: firstLocalPort,
		txBuf:    make([]byte, headerSize+maxPayload),
	}
}

// spawn runs f on a goroutine Close waits for.
func (m *muxer) spawn(f func()) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		f()
	}()
}

// post hands f to the event loop. It reports false, with f not run, once
// the device is closed.
func (m *muxer) post(f func(*muxer)) bool {
	select {
	case m.events <- f:
		return true
	case <-m.done:
		return false
	}
}

// call runs f on the event loop and waits for its result.
func (m *muxer) call(f func(*muxer) error) error {
	res := make(chan error, 1)
	if !m.post(func(m *muxer) { res <- f(m) }) {
		return errClosed
	}
	return <-res
}

// notify tells the loop that the driver made buffers available. It never
// blocks: kicks coalesce.
func (m *muxer) notify() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// run is the event loop. After every event it moves what it can between
// the driver's queues and the connections.
func (m *muxer) run() {
	defer m.removeAll()
	for {
		select {
		case <-m.done:
			return
		case <-m.kick:
		case f := <-m.events:
			f(m)
		}
		m.pump()
	}
}

// pump processes the tx queue, fills rx buffers with what connections owe
// the guest, delivers a pending event, and interrupts the driver.
func (m *muxer) pump() {
	if m.q == nil {
		return
	}
	for {
		n, chainLen, ok, err := m.q.popTx(m.txBuf)
		if err != nil {
			m.guestWarn("dropping tx chain", "err", err)
		}
		if !ok {
			break
		}
		if err == nil {
			m.fromGuest(m.txBuf[:n], chainLen)
		}
	}
	if m.resetUnacked && m.q.eventBuffers() > m.eventsLeft {
		m.resetUnacked = false
	}
	m.fillRx()
	for m.eventPending {
		ok, err := m.q.putEvent(eventTransportReset)
		if err != nil {
			m.guestWarn("dropping event chain", "err", err)
		}
		if !ok {
			break
		}
		m.eventPending = err != nil
		if !m.eventPending {
			m.resetUnacked, m.eventsLeft = true, m.q.eventBuffers()
		}
	}
	if err := m.q.interrupt(); err != nil {
		m.log.Error("interrupting the driver", "err", err)
	}
}

// fillRx writes packets into rx buffers while both exist. Resets go
// first; connections then take turns, one packet each.
func (m *muxer) fillRx() {
	for len(m.resets) > 0 || len(m.ready) > 0 {
		room, ok, err := m.q.rxRoom()
		if err != nil {
			m.guestWarn("dropping rx chain", "err", err)
		}
		if !ok {
			return
		}
		if err == nil && !m.emit(room) {
			return
		}
	}
}

// emit writes one packet into the held rx buffer, which has room payload
// bytes. It reports false when nothing fits.
func (m *muxer) emit(room int) bool {
	if len(m.resets) > 0 {
		key := m.resets[0]
		m.resets = m.resets[1:]
		h := header{srcCID: hostCID, dstCID: m.guestCID, srcPort: key.local, dstPort: key.peer, typ: typeStream, op: opRST}
		if err := m.q.putRx(&h, nil); err != nil {
			m.guestWarn("dropping RST", "conn", key, "err", err)
		}
		return true
	}
	if m.resetUnacked {
		return false // connections wait for the driver to handle the reset
	}
	var skipped []*conn // wanting to send, but more than room
	defer func() {
		for _, c := range skipped {
			m.schedule(c)
		}
	}()
	for len(m.ready) > 0 {
		c := m.ready[0]
		m.ready[0] = nil
		m.ready = m.ready[1:]
		c.scheduled = false
		if c.state == stateClosed { // removed while queued: it owes nothing
			continue
		}
		h, payload, ok := c.nextPacket(m.guestCID, room)
		if !ok {
			if c.wantsRx() {
				skipped = append(skipped, c)
			}
			continue
		}
		if err := m.q.putRx(&h, payload); err != nil {
			// The packet is lost, and with it the stream's integrity.
			m.guestWarn("writing rx packet", "conn", c.key, "op", opName(h.op), "err", err)
			m.reset(c)
			return true
		}
		c.sent(&h)
		if h.op == opShutdown {
			m.maybeFinish(c)
		}
		m.maybeRead(c)
		m.schedule(c)
		return true
	}
	return false
}

// schedule queues c for the rx queue if it has a packet for the guest.
func (m *muxer) schedule(c *conn) {
	if !c.scheduled && c.wantsRx() {
		c.scheduled = true
		m.ready = append(m.ready, c)
	}
}

// queueReset owes the guest an RST for key.
func (m *muxer) queueReset(key connKey) {
	if len(m.resets) >= maxPendingResets {
		m.guestWarn("dropping RST: rx queue not drained", "conn", key, "pending", len(m.resets))
		return
	}
	m.resets = append(m.resets, key)
}

// reset tears c down abortively: the guest gets RST, the host socket is
// closed at once.
func (m *muxer) reset(c *conn) {
	m.queueReset(c.key)
	m.remove(c, false)
}

// remove drops c from the table and closes its host socket, gracefully
// (guest data already queued is still written) or not.
func (m *muxer) remove(c *conn, graceful bool) {
	if c.guestInitiated && m.conns[c.key] == c {
		m.guestConns--
	}
	delete(m.conns, c.key)
	c.state = stateClosed
	c.pending = nil
	m.disarm(c)
	if c.stream != nil {
		c.stream.close(graceful, m.limits.linger)
	}
}

// removeAll drops every connection abortively and forgets owed packets:
// the driver was reset, lost its transport, or the device is closing.
func (m *muxer) removeAll() {
	for _, c := range m.conns {
		m.remove(c, false)
	}
	m.ready, m.resets = nil, nil
}

// arm starts c's deadline for its current state; expired runs on the loop
// if c is still in that state when it passes.
func (m *muxer) arm(c *conn, d time.Duration, expired func(*muxer, *conn)) {
	m.disarm(c)
	state := c.state
	c.timer = time.AfterFunc(d, func() {
		m.post(func(m *muxer) {
			if c.state == state {
				expired(m, c)
			}
		})
	})
}

func (m *muxer) disarm(c *conn) {
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
}

// fromGuest handles one packet from the tx queue: b holds the start of
// the chain's readable bytes, chainLen their total.
//
// Misaddressed packets and chains too short for a header are dropped;
// everything else wrong is answered with RST (spec §5.10.6.5), except an
// RST itself.
func (m *muxer) fromGuest(b []byte, chainLen uint64) {
	h, payload, err := decodeTx(b, chainLen)
	if errors.Is(err, errShortChain) {
		m.guestWarn("dropping tx packet", "err", err)
		return
	}
	if h.srcCID != m.guestCID || h.dstCID != hostCID {
		m.guestWarn("dropping misaddressed tx packet", "packet", h)
		return
	}
	key := connKey{local: h.dstPort, peer: h.srcPort}
	if h.op == opRST {
		if c := m.conns[key]; c != nil {
			m.remove(c, false)
		}
		return
	}
	if err == nil && h.typ != typeStream {
		err = fmt.Errorf("%s: socket type %d not supported", h, h.typ)
	}
	if err == nil {
		err = m.handle(m.conns[key], &h, payload)
	}
	if err != nil {
		m.guestWarn("resetting connection", "conn", key, "err", err)
		if c := m.conns[key]; c != nil {
			m.remove(c, false)
		}
		m.queueReset(key)
	}
}

// handle applies a well-formed stream packet to its connection c, nil if
// none. An error resets the connection.
func (m *muxer) handle(c *conn, h *header, payload []byte) error {
	if h.op == opRequest {
		if c != nil {
			return fmt.Errorf("%s: connection exists", h)
		}
		return m.guestConnect(h)
	}
	if c == nil {
		return fmt.Errorf("%s: no such connection", h)
	}
	c.updatePeerCredit(h)
	switch h.op {
	case opResponse:
		if c.state != stateConnecting {
			return fmt.Errorf("%s: unexpected in state %s", h, c.state)
		}
		m.disarm(c)
		c.state = stateEstablished
		c.stream.write(fmt.Appendf(nil, "OK %d\n", c.key.local), false)
	case opRW:
		if c.state != stateEstablished || c.peerShutdown&shutdownSend != 0 {
			return fmt.Errorf("%s: data unexpected in state %s, peer shutdown %#x", h, c.state, c.peerShutdown)
		}
		if inFlight := c.rxCnt - c.fwdCnt; uint64(inFlight)+uint64(h.len) > connBufAlloc {
			return fmt.Errorf("%s: %d bytes with %d unforwarded exceed buf_alloc %d", h, h.len, inFlight, connBufAlloc)
		}
		if h.len > 0 {
			c.stream.write(bytes.Clone(payload), true)
			c.rxCnt += h.len
		}
	case opCreditUpdate:
		// The credit fields, recorded above, are the whole message.
	case opCreditRequest:
		c.sendCreditUpdate = true
	case opShutdown:
		if c.state != stateEstablished && c.state != stateClosing {
			return fmt.Errorf("%s: unexpected in state %s", h, c.state)
		}
		m.peerShutdown(c, h.flags)
	default:
		return fmt.Errorf("%s: unknown op", h)
	}
	m.schedule(c)
	m.maybeRead(c)
	return nil
}

// guestConnect starts a guest-initiated connection: dial the host socket
// for the destination port; the guest hears RESPONSE or RST when the dial
// ends (dialDone). Guest-initiated connections get only their share of
// the table (limits.maxGuestConns).
func (m *muxer) guestConnect(h *header) error {
	if len(m.conns) >= m.limits.maxConns {
		return fmt.Errorf("%s: connection table full: %d connections open", h, len(m.conns))
	}
	if m.guestConns >= m.limits.maxGuestConns {
		return fmt.Errorf("%s: %d guest-initiated connections open, the most allowed", h, m.guestConns)
	}
	c := &conn{key: connKey{local: h.dstPort, peer: h.srcPort}, state: stateDialing, guestInitiated: true}
	c.updatePeerCredit(h)
	m.conns[c.key] = c
	m.guestConns++
	m.spawn(func() { m.dial(c) })
	return nil
}

// dialDone completes a guest-initiated connection.
func (m *muxer) dialDone(c *conn, uc *net.UnixConn, err error) {
	if c.state != stateDialing { // the guest gave up, or the transport was reset
		if uc != nil {
			uc.Close()
		}
		return
	}
	if err != nil {
		m.log.Debug("guest connection refused", "conn", c.key, "err", err)
		m.reset(c)
		return
	}
	m.startStream(c, uc)
	c.state = stateEstablished
	c.sendResponse = true
	m.schedule(c)
	m.maybeRead(c)
}

// peerShutdown applies SHUTDOWN flags from the guest (spec §5.10.6.5).
// They accumulate; once the guest will neither send nor receive, the
// connection is answered with RST and closed, after the host socket gets
// the data the guest already sent.
func (m *muxer) peerShutdown(c *conn, flags uint32) {
	c.peerShutdown |= flags & shutdownBoth
	if c.peerShutdown == shutdownBoth {
		m.queueReset(c.key)
		m.remove(c, true)
		return
	}
	if c.peerShutdown&shutdownRcv != 0 {
		c.pending = nil // the guest will not take it; reads stop too
	}
	if c.peerShutdown&shutdownSend != 0 {
		c.stream.shutdownWrite()
	}
}

// maybeFinish starts closing c once both directions are over: the host
// sent EOF and the guest heard it, and the guest shut down sending and the
// host socket's write side is shut. The guest is asked to close with
// SHUTDOWN(RCV|SEND) and given limits.shutdown to answer RST.
func (m *muxer) maybeFinish(c *conn) {
	if c.state != stateEstablished || c.ourShutdown&shutdownSend == 0 || !c.hostWriteClosed {
		return
	}
	c.state = stateClosing
	m.arm(c, m.limits.shutdown, func(m *muxer, c *conn) {
		m.guestWarn("guest did not answer SHUTDOWN; resetting", "conn", c.key, "timeout", m.limits.shutdown)
		m.reset(c)
	})
	m.schedule(c)
}

// maybeRead lets c's reader read the next chunk from the host socket if
// the guest can take data and everything read has been sent.
func (m *muxer) maybeRead(c *conn) {
	if c.stream == nil || c.reading || c.state != stateEstablished || len(c.pending) > 0 || c.hostEOF ||
		c.peerShutdown&shutdownRcv != 0 || c.peerFree() == 0 {
		return
	}
	c.reading = true
	c.stream.grant <- struct{}{}
}

// hostConnect starts a host-initiated connection for a client whose
// CONNECT line named port. A full table refuses the client with the
// reply refusedTableFull.
func (m *muxer) hostConnect(uc *net.UnixConn, port uint32) {
	if len(m.conns) >= m.limits.maxConns {
		m.log.Warn("host connection refused: connection table full", "port", port, "open", len(m.conns))
		m.spawn(func() { refuse(uc, refusedTableFull) })
		return
	}
	c := &conn{key: m.allocLocalPort(port), state: stateConnecting, sendRequest: true}
	m.conns[c.key] = c
	m.startStream(c, uc)
	m.arm(c, m.limits.connect, func(m *muxer, c *conn) {
		// A warning: the client only sees its connection closed without
		// a reply, as for a port nobody listens on, and a guest this
		// slow to answer is stuck, which the VMM's log should say.
		m.guestWarn("guest did not answer connection request; resetting", "conn", c.key, "timeout", m.limits.connect)
		m.reset(c)
	})
	m.schedule(c)
}

// allocLocalPort picks a host-side port for a connection to guest port
// peer. The table holds at most maxConnections entries, so the search
// ends.
func (m *muxer) allocLocalPort(peer uint32) connKey {
	for {
		key := connKey{local: m.nextPort, peer: peer}
		m.nextPort++
		if m.nextPort == portAny {
			m.nextPort = firstLocalPort
		}
		if m.conns[key] == nil {
			return key
		}
	}
}

// hostRead takes a chunk the reader read (data, then err).
func (m *muxer) hostRead(c *conn, data []byte, err error) {
	if c.state == stateClosed {
		return
	}
	c.reading = false
	if c.peerShutdown&shutdownRcv == 0 {
		c.pending = data
	}
	if errors.Is(err, io.EOF) {
		c.hostEOF = true
	} else if err != nil {
		m.log.Info("reading host socket; resetting", "conn", c.key, "err", err)
		m.reset(c)
		return
	}
	m.schedule(c)
	m.maybeRead(c)
}

// hostWrote accounts for n bytes of guest data the host socket took.
func (m *muxer) hostWrote(c *conn, n uint32) {
	if c.state == stateClosed {
		return
	}
	if c.wrote(n) {
		c.sendCreditUpdate = true
		m.schedule(c)
	}
}

// hostWriteFailed resets c: the host socket no longer takes data.
func (m *muxer) hostWriteFailed(c *conn, err error) {
	if c.state == stateClosed {
		return
	}
	m.log.Info("writing host socket; resetting", "conn", c.key, "err", err)
	m.reset(c)
}

// hostWriteClosed records that the host socket's write side is shut.
func (m *muxer) hostWriteClosed(c *conn, err error) {
	if err != nil {
		m.hostWriteFailed(c, err)
		return
	}
	if c.state == stateClosed {
		return
	}
	c.hostWriteClosed = true
	m.maybeFinish(c)
}

// guestWarn logs a warning the guest can cause at will, rate-limited.
func (m *muxer) guestWarn(msg string, args ...any) { m.guestLog.Warn(msg, args...) }
