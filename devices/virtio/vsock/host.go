package vsock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// The host-initiated handshake (Firecracker's hybrid vsock): a client of
// the listening socket writes "CONNECT <port>\n", port in decimal, and,
// once the guest accepts, reads "OK <local port>\n" before the guest's
// stream. A malformed or late line, a refused or unanswered connection,
// all close the client's socket with nothing written; only a full
// connection table, which is the device's refusal and not the guest's, is
// answered first with refusedTableFull.
const (
	connectPrefix   = "CONNECT "
	maxConnectLine  = 32 // "CONNECT 4294967295\n" is 19 bytes
	maxHandshakes   = 64 // clients still writing their CONNECT line
	handshakeLimit  = 5 * time.Second
	acceptRetryWait = 50 * time.Millisecond // after an accept error such as EMFILE
	// refusedTableFull is the reply to a client the connection table has
	// no room for. Dial reports a reply other than "OK" as a refusal,
	// quoting it; it must fit Dial's maxReply.
	refusedTableFull = "ERR connection table full\n"
	refuseLimit      = time.Second // to write a refusal to a client that does not read
)

// parseConnect parses a CONNECT line, newline excluded.
func parseConnect(line []byte) (port uint32, err error) {
	digits, ok := bytes.CutPrefix(line, []byte(connectPrefix))
	if !ok {
		return 0, fmt.Errorf("CONNECT line %q: want %q", line, connectPrefix+"<port>")
	}
	p, err := strconv.ParseUint(string(digits), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("CONNECT line %q: port: %w", line, err)
	}
	return uint32(p), nil
}

// acceptLoop accepts host clients until the listener is closed and hands
// each to a handshake goroutine; at most maxHandshakes run at once, the
// rest wait in the listen backlog.
func (m *muxer) acceptLoop(ln *net.UnixListener) {
	slots := make(chan struct{}, maxHandshakes)
	for {
		uc, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			m.log.Warn("accept on host socket", "path", m.udsPath, "err", err)
			select {
			case <-time.After(acceptRetryWait):
				continue
			case <-m.done:
				return
			}
		}
		select {
		case slots <- struct{}{}:
		case <-m.done:
			uc.Close()
			return
		}
		m.spawn(func() {
			defer func() { <-slots }()
			m.handshake(uc)
		})
	}
}

// handshake reads the client's CONNECT line and hands the client to the
// event loop. It reads one byte at a time so that nothing the client sends
// after the newline is consumed: those bytes belong to the guest.
func (m *muxer) handshake(uc *net.UnixConn) {
	stop := context.AfterFunc(m.ctx, func() { uc.SetReadDeadline(time.Unix(1, 0)) }) // Close interrupts the read
	port, err := readConnect(uc, time.Now().Add(handshakeLimit))
	stop()
	if err == nil {
		err = uc.SetReadDeadline(time.Time{})
	}
	if err != nil {
		m.log.Warn("host connection refused", "path", m.udsPath, "err", err)
		uc.Close()
		return
	}
	if !m.post(func(m *muxer) { m.hostConnect(uc, port) }) {
		uc.Close()
	}
}

// refuse writes reply to a host client and closes it.
func refuse(uc *net.UnixConn, reply string) {
	uc.SetWriteDeadline(time.Now().Add(refuseLimit))
	io.WriteString(uc, reply)
	uc.Close()
}

// readConnect reads and parses a CONNECT line from uc before deadline.
func readConnect(uc *net.UnixConn, deadline time.Time) (uint32, error) {
	if err := uc.SetReadDeadline(deadline); err != nil {
		return 0, fmt.Errorf("CONNECT line: %w", err)
	}
	var line [maxConnectLine]byte
	for n := 0; n < len(line); n++ {
		if _, err := io.ReadFull(uc, line[n:n+1]); err != nil {
			return 0, fmt.Errorf("CONNECT line after %q: %w", line[:n], err)
		}
		if line[n] == '\n' {
			return parseConnect(line[:n])
		}
	}
	return 0, fmt.Errorf("CONNECT line %q...: longer than %d bytes", line[:], maxConnectLine)
}

// dial connects a guest-initiated connection to "<UDSPath>_<port>" and
// reports the result to the event loop.
func (m *muxer) dial(c *conn) {
	path := m.udsPath + "_" + strconv.FormatUint(uint64(c.key.local), 10)
	d := net.Dialer{Timeout: m.limits.dial}
	nc, err := d.DialContext(m.ctx, "unix", path)
	var uc *net.UnixConn
	if err == nil {
		uc = nc.(*net.UnixConn)
	}
	if !m.post(func(m *muxer) { m.dialDone(c, uc, err) }) && uc != nil {
		uc.Close()
	}
}

// hostStream is the host end of a connection: a Unix socket with a reader
// and a writer goroutine.
//
// The reader reads one chunk per grant from the event loop and posts it;
// the loop owns the chunk until it sends the next grant, so the reader's
// single buffer is all the host → guest data a connection holds. The loop
// grants only while the guest has credit and nothing read is unsent, so a
// guest that stops taking data stops the reads and leaves back-pressure in
// the host socket.
//
// The writer drains a queue of byte slices the loop appends. Guest →
// host data in the queue is bounded by the credit the device advertises
// (connBufAlloc): the loop resets a guest that sends more. The writer
// closes the socket when it exits; an abortive close also closes it at
// once, from the loop, to interrupt both goroutines.
type hostStream struct {
	conn  *net.UnixConn
	grant chan struct{} // loop → reader, capacity 1; the loop closes it to stop the reader

	mu    sync.Mutex // guards queue and end; taken by the loop and the writer
	cond  sync.Cond  // on mu: queue or end changed
	queue []writeItem
	end   streamEnd // what the writer does once queue is empty
}

// writeItem is one slice for the host socket: guest payload, which the
// loop counts in fwd_cnt once written, or the "OK" line, which it does not.
type writeItem struct {
	b       []byte
	payload bool
}

// streamEnd is the writer's instruction once its queue is empty. It only
// moves forward: endNone → endWrite → endClose, or → endAbort at any time.
type streamEnd int

const (
	endNone  streamEnd = iota // keep waiting for data
	endWrite                  // shut the socket's write side (guest sent SHUTDOWN SEND)
	endClose                  // close the socket: the connection is over
	endAbort                  // stop now; the loop closed the socket
)

// startStream starts the reader and writer of c's socket.
func (m *muxer) startStream(c *conn, uc *net.UnixConn) {
	s := &hostStream{conn: uc, grant: make(chan struct{}, 1)}
	s.cond.L = &s.mu
	c.stream = s
	m.spawn(func() { s.readLoop(m, c) })
	m.spawn(func() { s.writeLoop(m, c) })
}

func (s *hostStream) readLoop(m *muxer, c *conn) {
	var buf []byte // allocated on the first grant: a connection still connecting holds none
	for range s.grant {
		if buf == nil {
			buf = make([]byte, hostReadSize)
		}
		n, err := s.conn.Read(buf)
		if !m.post(func(m *muxer) { m.hostRead(c, buf[:n], err) }) || err != nil {
			return
		}
	}
}

func (s *hostStream) writeLoop(m *muxer, c *conn) {
	defer s.conn.Close()
	done := endNone // the last end acted upon
	for {
		s.mu.Lock()
		for len(s.queue) == 0 && s.end == done {
			s.cond.Wait()
		}
		var it writeItem
		end, got := s.end, len(s.queue) > 0 && s.end != endAbort
		if got {
			it = s.queue[0]
			s.queue[0] = writeItem{}
			s.queue = s.queue[1:]
		}
		s.mu.Unlock()

		switch {
		case got:
			if _, err := s.conn.Write(it.b); err != nil {
				m.post(func(m *muxer) { m.hostWriteFailed(c, err) })
				return
			}
			if it.payload {
				n := uint32(len(it.b))
				m.post(func(m *muxer) { m.hostWrote(c, n) })
			}
		case end == endWrite:
			err := s.conn.CloseWrite()
			m.post(func(m *muxer) { m.hostWriteClosed(c, err) })
			done = endWrite
		case end == endClose, end == endAbort:
			return
		}
	}
}

// write queues b for the host socket.
func (s *hostStream) write(b []byte, payload bool) {
	s.mu.Lock()
	s.queue = append(s.queue, writeItem{b, payload})
	s.mu.Unlock()
	s.cond.Signal()
}

// setEnd moves the writer's end instruction forward to e.
func (s *hostStream) setEnd(e streamEnd) {
	s.mu.Lock()
	if e > s.end {
		s.end = e
	}
	s.mu.Unlock()
	s.cond.Signal()
}

// shutdownWrite shuts the socket's write side once queued data is written.
func (s *hostStream) shutdownWrite() { s.setEnd(endWrite) }

// close ends the stream. Gracefully, queued data is still written, for at
// most linger, before the socket closes; otherwise the socket closes now
// and queued data is dropped.
func (s *hostStream) close(graceful bool, linger time.Duration) {
	close(s.grant)
	if !graceful {
		s.setEnd(endAbort)
		s.conn.Close()
		return
	}
	s.conn.SetReadDeadline(time.Unix(1, 0)) // wake the reader
	s.conn.SetWriteDeadline(time.Now().Add(linger))
	s.setEnd(endClose)
}
