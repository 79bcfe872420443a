package guestagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Client is the host side of the agent protocol. Each call dials a new
// connection, sends one request, reads the answer and closes the
// connection, so a Client is safe for concurrent use.
type Client struct {
	// Dial opens a connection to the agent. For a guest behind a hybrid
	// vsock device:
	//
	//	func(ctx context.Context) (net.Conn, error) {
	//		return guestagent.DialHybridVsock(ctx, socketPath, guestagent.Port)
	//	}
	Dial func(ctx context.Context) (net.Conn, error)
}

// Health asks the agent whether it is up and which protocol revision it
// speaks. Callers should check the response's GuestSchemaVersion before
// relying on any other op.
func (c *Client) Health(ctx context.Context) (HealthResponse, error) {
	var resp HealthResponse
	if err := c.call(ctx, OpHealth, nil, &resp); err != nil {
		return HealthResponse{}, err
	}
	return resp, nil
}

// call runs one non-streaming exchange: it sends op with args (marshalled
// to JSON unless nil) and decodes the FrameResponse into result. An answer
// in a FrameError is returned as an *Error.
//
// The connection is used by the calling goroutine only, except that a
// goroutine started by context.AfterFunc may set its deadline to the past
// when ctx is cancelled, which makes the blocked read or write return.
func (c *Client) call(ctx context.Context, op string, args, result any) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("agent %s: %w", op, err)
		}
	}()
	if c.Dial == nil {
		return errors.New("client has no Dial function")
	}
	req := Request{Op: op}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("encode arguments: %w", err)
		}
		req.Args = b
	}
	reqBytes, err := json.Marshal(&req)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}

	conn, err := c.Dial(ctx)
	if err != nil {
		return fmt.Errorf("dial: %w", contextError(ctx, err))
	}
	defer conn.Close()
	stop, err := watchContext(ctx, conn)
	if err != nil {
		return err
	}
	defer stop()

	if err := WriteFrame(conn, FrameRequest, reqBytes); err != nil {
		return fmt.Errorf("write request: %w", contextError(ctx, err))
	}
	typ, payload, err := ReadFrame(conn)
	if err != nil {
		if err == io.EOF {
			err = errors.New("connection closed without a response")
		}
		return fmt.Errorf("read response: %w", contextError(ctx, err))
	}
	switch typ {
	case FrameResponse:
		if err := json.Unmarshal(payload, result); err != nil {
			return fmt.Errorf("decode response: %w", err)
		}
		return nil
	case FrameError:
		ae := new(Error)
		if err := json.Unmarshal(payload, ae); err != nil {
			return fmt.Errorf("decode error response: %w", err)
		}
		return ae
	default:
		return fmt.Errorf("read response: unexpected %v frame", typ)
	}
}

// watchContext makes I/O on conn honour ctx: it applies ctx's deadline, if
// any, and arranges for blocked I/O to return when ctx is cancelled. The
// returned stop function ends the watch; it reports false if cancellation
// has already begun to interrupt conn.
func watchContext(ctx context.Context, conn net.Conn) (stop func() bool, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return nil, fmt.Errorf("set deadline: %w", err)
		}
	}
	return context.AfterFunc(ctx, func() { conn.SetDeadline(aLongTimeAgo) }), nil
}

// contextError returns ctx's error in place of err if err was caused by
// ctx: cancellation, or a connection deadline that ctx's deadline set.
func contextError(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) && isTimeout(err) {
		// The connection's deadline fired a hair before ctx's timer.
		return context.DeadlineExceeded
	}
	return err
}

// maxHybridReply bounds the hybrid vsock reply line, newline included. The
// valid reply, "OK <u32>\n", is at most 14 bytes.
const maxHybridReply = 64

// DialHybridVsock connects to port on the guest behind a hybrid vsock
// device whose host end is the Unix socket at path: it dials path, writes
// "CONNECT <port>\n" and expects "OK <host port>\n" in reply. It returns
// the connection, positioned at the first byte after the reply, with no
// deadline set.
//
// ctx bounds the dial and the handshake only. A VMM closes the connection
// without replying when nothing listens on the guest port, for example
// while the guest is still booting; callers waiting for the agent retry.
func DialHybridVsock(ctx context.Context, path string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("hybrid vsock port %d: %w", port, err)
	}
	if err := handshakeContext(ctx, conn, port); err != nil {
		conn.Close()
		return nil, fmt.Errorf("hybrid vsock %s port %d: %w", path, port, err)
	}
	return conn, nil
}

// handshakeContext runs hybridHandshake on conn within ctx, and leaves
// conn without a deadline if it succeeds.
func handshakeContext(ctx context.Context, conn net.Conn, port uint32) error {
	stop, err := watchContext(ctx, conn)
	if err != nil {
		return err
	}
	if err := hybridHandshake(conn, port); err != nil {
		stop()
		return contextError(ctx, err)
	}
	if !stop() {
		// ctx was cancelled just now and may be moving the deadline.
		return ctx.Err()
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return fmt.Errorf("clear deadline: %w", err)
	}
	return nil
}

// hybridHandshake sends the CONNECT line and checks the reply. It reads the
// reply a byte at a time, so that bytes the guest sends right after it stay
// in the connection for the caller.
func hybridHandshake(conn net.Conn, port uint32) error {
	if _, err := conn.Write([]byte("CONNECT " + strconv.FormatUint(uint64(port), 10) + "\n")); err != nil {
		return fmt.Errorf("write CONNECT: %w", err)
	}
	var buf [maxHybridReply]byte
	n := 0
	for n == 0 || buf[n-1] != '\n' {
		if n == len(buf) {
			return fmt.Errorf("reply longer than %d bytes: %q", maxHybridReply, buf[:n])
		}
		m, err := conn.Read(buf[n : n+1])
		n += m
		if err != nil && (m == 0 || buf[n-1] != '\n') {
			if err == io.EOF {
				if n == 0 {
					return fmt.Errorf("VMM closed the connection without a reply (is anything listening on the guest port?): %w", io.ErrUnexpectedEOF)
				}
				return fmt.Errorf("VMM closed the connection inside reply %q: %w", buf[:n], io.ErrUnexpectedEOF)
			}
			return fmt.Errorf("read reply: %w", err)
		}
	}
	reply := string(buf[:n])
	hostPort, ok := strings.CutPrefix(strings.TrimSuffix(reply, "\n"), "OK ")
	if !ok {
		return fmt.Errorf("VMM refused the connection: reply %q, want \"OK <port>\\n\"", reply)
	}
	if _, err := strconv.ParseUint(hostPort, 10, 32); err != nil {
		return fmt.Errorf("malformed reply %q, want \"OK <port>\\n\"", reply)
	}
	return nil
}
