package guestagent

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// DialTCP connects to TCP port port of host in the guest, through the
// agent, and returns the connection. Host is an IP address or a name the
// guest resolves; "" means the guest's 127.0.0.1. The agent dials within
// its RequestTimeout.
//
// ctx bounds the dial only: the connection lasts until it is closed, and
// the caller must close it. Its deadlines work as for any net.Conn, except
// that a Write interrupted by one midway leaves the connection unable to
// send. It also has a CloseWrite method, as *net.TCPConn does, which closes the
// guest connection's sending side while it goes on receiving. When the
// guest's end closes its sending side, Read returns io.EOF; a failure of
// the guest connection, such as a reset, is returned by Read as an error
// that wraps an *Error with CodeNetwork. Close closes the guest connection.
//
// Agents older than DialTCPSchemaVersion do not have the op: DialTCP then
// fails with an *AgentTooOldError, which matches errors.ErrUnsupported.
// Other agent errors are *Error values: CodeConnRefused when nothing
// listens on the port, CodeNetwork for other failures to connect, and
// CodeBadRequest for a port outside 1 to 65535.
func (c *Client) DialTCP(ctx context.Context, host string, port int) (_ net.Conn, err error) {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	if host == "" {
		addr = net.JoinHostPort(defaultDialHost, strconv.Itoa(port))
	}
	name := "agent " + opDialTCP + " " + addr
	defer func() {
		var old *AgentTooOldError
		if err != nil && !errors.As(err, &old) {
			err = fmt.Errorf("%s: %w", name, err)
		}
	}()
	if c.Dial == nil {
		return nil, errors.New("client has no Dial function")
	}
	args, err := json.Marshal(&dialTCPArgs{Host: host, Port: port})
	if err != nil {
		return nil, fmt.Errorf("encode arguments: %w", err)
	}
	req, err := json.Marshal(&Request{Op: opDialTCP, Args: args})
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}

	conn, err := c.Dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", contextError(ctx, err))
	}
	remote, err := dialTCPHandshake(ctx, conn, req)
	if err != nil {
		conn.Close()
		var ae *Error
		if errors.As(err, &ae) {
			err = c.tooOld(ctx, opDialTCP, DialTCPSchemaVersion, ae)
		}
		return nil, err
	}
	return &tcpConn{conn: conn, remote: remote, name: name}, nil
}

// dialTCPHandshake sends req, a dial_tcp request, on conn and reads the
// agent's answer within ctx: the address it connected to, from a
// FrameConnected, or the *Error it answered with. It leaves conn without a
// deadline if it succeeds.
func dialTCPHandshake(ctx context.Context, conn net.Conn, req []byte) (*net.TCPAddr, error) {
	stop, err := watchContext(ctx, conn)
	if err != nil {
		return nil, err
	}
	remote, err := readConnected(conn, req)
	if err != nil {
		stop()
		return nil, contextError(ctx, err)
	}
	if !stop() {
		// ctx was cancelled just now and has moved the deadline.
		return nil, ctx.Err()
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("clear deadline: %w", err)
	}
	return remote, nil
}

// readConnected writes req to conn and reads the agent's first frame. It
// reads nothing past that frame, which leaves the stream frames that
// follow for a tcpConn.
func readConnected(conn net.Conn, req []byte) (*net.TCPAddr, error) {
	if err := WriteFrame(conn, FrameRequest, req); err != nil {
		return nil, fmt.Errorf("write request: %w", err)
	}
	typ, p, err := ReadFrame(conn)
	if err != nil {
		if err == io.EOF {
			err = errors.New("connection closed without a response")
		}
		return nil, fmt.Errorf("read response: %w", err)
	}
	switch typ {
	case FrameConnected:
		var msg dialTCPConnected
		if err := json.Unmarshal(p, &msg); err != nil {
			return nil, fmt.Errorf("decode %v frame: %w", typ, err)
		}
		ap, err := netip.ParseAddrPort(msg.RemoteAddr)
		if err != nil {
			return nil, fmt.Errorf("decode %v frame: remote_addr: %w", typ, err)
		}
		return net.TCPAddrFromAddrPort(ap), nil
	case FrameError:
		ae := new(Error)
		if err := json.Unmarshal(p, ae); err != nil {
			return nil, fmt.Errorf("decode error response: %w", err)
		}
		return nil, ae
	}
	return nil, fmt.Errorf("read response: unexpected %v frame", typ)
}

// tcpConn is the host's end of a dial_tcp exchange whose connection is up:
// a net.Conn whose bytes travel in stream frames on conn, the agent
// connection. Reads and writes may come from different goroutines, as
// net.Conn promises.
//
// Read takes the payload of each FrameStdout straight from conn into the
// caller's buffer, and keeps track of where it is in the frame, so that a
// Read interrupted by a deadline loses nothing and the next goes on where
// it stopped. Writes send whole frames; a Write interrupted by a deadline
// after part of a frame went out leaves the stream unusable, and every
// later Write fails.
type tcpConn struct {
	conn   net.Conn
	remote *net.TCPAddr // what the agent connected to
	name   string       // "agent dial_tcp <addr>", for errors

	rmu  sync.Mutex // held by Read while it runs; guards the fields below
	hdr  [headerLen]byte
	nhdr int   // how much of the next frame's header is in hdr
	left int   // how much of the current FrameStdout's payload is unread
	rerr error // io.EOF once the guest's end has closed its side, or why reading failed

	wmu     sync.Mutex // held by Write and CloseWrite while they run; guards the fields below
	wclosed bool       // CloseWrite has sent FrameStdinEOF
	werr    error      // why writing failed, if it did
}

// Read reads what the guest's end of the connection sent.
func (c *tcpConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if c.rerr != nil {
			return 0, c.rerr
		}
		if len(p) == 0 {
			return 0, nil
		}
		if c.left > 0 {
			n, err := c.conn.Read(p[:min(len(p), c.left)])
			c.left -= n
			switch {
			case err == nil:
			case err == io.EOF && c.left == 0:
				err = nil // the next Read reports the end of the stream
			case err == io.EOF:
				err = c.fail(fmt.Errorf("%v frame payload: %w", FrameStdout, io.ErrUnexpectedEOF))
			default:
				err = c.readFailed(err)
			}
			return n, err
		}
		for c.nhdr < headerLen {
			n, err := c.conn.Read(c.hdr[c.nhdr:])
			c.nhdr += n
			switch {
			case err == nil || c.nhdr == headerLen:
			case err == io.EOF && c.nhdr == 0:
				return 0, c.fail(errors.New("connection closed before the end of the stream"))
			case err == io.EOF:
				return 0, c.fail(fmt.Errorf("frame header: %w", io.ErrUnexpectedEOF))
			default:
				return 0, c.readFailed(err)
			}
		}
		c.nhdr = 0
		typ := FrameType(c.hdr[0])
		n := binary.BigEndian.Uint32(c.hdr[1:])
		switch {
		case n > MaxPayload:
			return 0, c.fail(fmt.Errorf("%v frame: payload length %d exceeds maximum %d: %w",
				typ, n, MaxPayload, ErrFrameTooLarge))
		case typ == FrameStdout:
			c.left = int(n)
		case typ == FrameStdoutEOF && n == 0:
			c.rerr = io.EOF
		case typ == FrameError:
			// The agent's error says what failed.
			c.rerr = fmt.Errorf("%s: %w", c.name, c.readError(int(n)))
			return 0, c.rerr
		default:
			return 0, c.fail(fmt.Errorf("unexpected %v frame of %d bytes", typ, n))
		}
	}
}

// readError reads the payload of a FrameError, n bytes, and returns the
// *Error it holds, or why it could not.
func (c *tcpConn) readError(n int) error {
	p := make([]byte, n)
	if _, err := io.ReadFull(c.conn, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("%v frame payload (%d bytes): %w", FrameError, n, err)
	}
	ae := new(Error)
	if err := json.Unmarshal(p, ae); err != nil {
		return fmt.Errorf("decode error response: %w", err)
	}
	return ae
}

// readFailed returns the error of a Read of conn that failed with err. A
// deadline leaves the stream where it was, and Read may be called again;
// any other failure is final.
func (c *tcpConn) readFailed(err error) error {
	if isTimeout(err) {
		return err
	}
	return c.fail(err)
}

// fail makes err the final outcome of reading, and returns it.
func (c *tcpConn) fail(err error) error {
	c.rerr = fmt.Errorf("%s: read: %w", c.name, err)
	return c.rerr
}

// Write sends p to the guest's end of the connection.
func (c *tcpConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.writable(); err != nil {
		return 0, err
	}
	n := 0
	for n < len(p) {
		chunk := p[n:min(len(p), n+maxChunk)]
		if err := c.writeFrame(FrameStdin, chunk); err != nil {
			return n, err
		}
		n += len(chunk)
	}
	return n, nil
}

// CloseWrite closes the sending side of the guest connection: the guest's
// end reads EOF once it has read everything written before. Reading goes
// on until the guest's end closes its side.
func (c *tcpConn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclosed {
		return nil
	}
	if err := c.writable(); err != nil {
		return err
	}
	if err := c.writeFrame(FrameStdinEOF, nil); err != nil {
		return err
	}
	c.wclosed = true
	return nil
}

// writable reports why nothing more can be written, if that is so.
func (c *tcpConn) writable() error {
	switch {
	case c.werr != nil:
		return c.werr
	case c.wclosed:
		return fmt.Errorf("%s: write after CloseWrite: %w", c.name, net.ErrClosed)
	}
	return nil
}

// writeFrame sends one frame. A failure after part of the frame went out
// is final.
func (c *tcpConn) writeFrame(typ FrameType, payload []byte) error {
	var hdr [headerLen]byte
	hdr[0] = byte(typ)
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	bufs := net.Buffers{hdr[:], payload}
	n, err := bufs.WriteTo(c.conn)
	switch {
	case err == nil:
		return nil
	case n == 0 && isTimeout(err):
		return err
	}
	c.werr = fmt.Errorf("%s: write %v frame: %w", c.name, typ, err)
	return c.werr
}

// Close closes the connection, in both directions. Blocked Reads and
// Writes return.
func (c *tcpConn) Close() error { return c.conn.Close() }

// LocalAddr returns the host's address of the agent connection.
func (c *tcpConn) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// RemoteAddr returns the address in the guest that the agent connected to.
func (c *tcpConn) RemoteAddr() net.Addr { return c.remote }

func (c *tcpConn) SetDeadline(t time.Time) error      { return c.conn.SetDeadline(t) }
func (c *tcpConn) SetReadDeadline(t time.Time) error  { return c.conn.SetReadDeadline(t) }
func (c *tcpConn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }
