package vsock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxReply bounds the handshake's reply line, newline included. The valid
// reply, "OK <u32>\n", is at most 14 bytes.
const maxReply = 64

// Dial is the host side's client: it connects to port on the guest behind
// the device whose host socket is at path (Config.UDSPath), writing
// "CONNECT <port>\n" and expecting "OK <host port>\n" in reply. It returns
// the connection positioned at the guest's first byte, with no deadline
// set.
//
// ctx bounds the dial and the handshake only. The device closes the
// connection without replying when nothing listens on the guest port, for
// example while the guest is still booting; callers waiting for a guest
// service retry.
func Dial(ctx context.Context, path string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("hybrid vsock port %d: %w", port, err)
	}
	if err := handshakeWithin(ctx, conn, port); err != nil {
		conn.Close()
		return nil, fmt.Errorf("hybrid vsock %s port %d: %w", path, port, err)
	}
	return conn, nil
}

// handshakeWithin runs handshake on conn within ctx's deadline and until
// it is cancelled, and leaves conn without a deadline if it succeeds.
func handshakeWithin(ctx context.Context, conn net.Conn, port uint32) error {
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return fmt.Errorf("set deadline: %w", err)
		}
	}
	var interrupted sync.WaitGroup
	interrupted.Add(1)
	stop := context.AfterFunc(ctx, func() {
		defer interrupted.Done()
		conn.SetDeadline(time.Unix(1, 0)) // unblock the handshake's read or write
	})
	err := handshake(conn, port)
	if !stop() {
		interrupted.Wait() // ctx ended: its deadline is set, or being set
		return ctx.Err()
	}
	if err != nil {
		// The interrupt did not run (stop stopped it), so a timeout is the
		// connection's deadline, which is ctx's: ctx's timer may simply not
		// have fired yet. Comparing clocks here instead would race with it.
		var ne net.Error
		if _, ok := ctx.Deadline(); ok && errors.As(err, &ne) && ne.Timeout() {
			return context.DeadlineExceeded
		}
		return err
	}
	return conn.SetDeadline(time.Time{})
}

// handshake sends the CONNECT line and checks the reply. It reads the
// reply a byte at a time, so that bytes the guest sends right after it
// stay in the connection for the caller.
func handshake(conn net.Conn, port uint32) error {
	if _, err := conn.Write([]byte(connectPrefix + strconv.FormatUint(uint64(port), 10) + "\n")); err != nil {
		return fmt.Errorf("write CONNECT: %w", err)
	}
	var buf [maxReply]byte
	n := 0
	for n == 0 || buf[n-1] != '\n' {
		if n == len(buf) {
			return fmt.Errorf("reply longer than %d bytes: %q", maxReply, buf[:n])
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
