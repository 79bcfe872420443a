package guestagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// address checks a's arguments and returns the address they name, in the
// form net.Dial takes.
func (a *dialTCPArgs) address() (string, error) {
	host := a.Host
	if host == "" {
		host = defaultDialHost
	}
	if len(host) > maxDialHost {
		return "", &Error{Code: CodeBadRequest, Message: fmt.Sprintf("dial_tcp: host %.64q... is longer than %d bytes", host, maxDialHost)}
	}
	addr := net.JoinHostPort(host, strconv.Itoa(a.Port))
	if a.Port < 1 || a.Port > 65535 {
		return "", &Error{Code: CodeBadRequest, Message: fmt.Sprintf("dial_tcp %s: port %d is not between 1 and 65535", addr, a.Port)}
	}
	return addr, nil
}

// dialError turns a failed dial of addr into an *Error that names addr.
func dialError(addr string, err error) *Error {
	code := CodeNetwork
	if errors.Is(err, syscall.ECONNREFUSED) {
		code = CodeConnRefused
	}
	return &Error{Code: code, Message: fmt.Sprintf("dial_tcp %s: %v", addr, opCause(err))}
}

// opCause returns the cause inside a *net.OpError, whose own message
// repeats the operation and the addresses, or err itself.
func opCause(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}

// dialTCP connects to the address args name, in the guest, tells the host
// with a FrameConnected, and then forwards the connection in both
// directions until both have ended, the host goes away, or something
// fails.
//
// Each direction ends on its own, with an explicit frame: the guest's end
// closing its side (EOF on the TCP connection) is sent as a
// FrameStdoutEOF; the host's FrameStdinEOF closes the agent's sending side
// of the TCP connection (shutdown(SHUT_WR)). Once both have ended, the op
// answers with an empty result. The host closing or dropping the agent
// connection closes the TCP connection; so does the server's shutdown,
// which answers errStopping.
//
// While the connection is up, neither the host's frames nor the agent's
// have a deadline: either end of a TCP connection may rightly keep quiet,
// or stop reading, for as long as it likes.
//
// Goroutines: the calling goroutine owns the TCP connection. It starts
// pump, which forwards what the guest sends to the host, and control,
// which reads the host's frames; a goroutine started by context.AfterFunc
// may stop the forward. The calling goroutine waits for both directions
// to end or for the forward to stop, then interrupts the two goroutines'
// I/O, waits for them, and closes the TCP connection.
func (s *Server) dialTCP(ctx context.Context, x *exchange, args *dialTCPArgs) (*dialTCPResult, error) {
	addr, err := args.address()
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: x.timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, errStopping
		}
		return nil, dialError(addr, err)
	}
	defer c.Close()
	tcp, ok := c.(*net.TCPConn)
	if !ok { // cannot happen for "tcp"
		return nil, fmt.Errorf("dial_tcp %s: got a %T, want a *net.TCPConn", addr, c)
	}
	log := s.logger().With("addr", addr)

	connected, err := json.Marshal(dialTCPConnected{RemoteAddr: tcp.RemoteAddr().String()})
	if err != nil {
		return nil, fmt.Errorf("dial_tcp %s: encode %v frame: %w", addr, FrameConnected, err)
	}
	if err := x.out.write(FrameConnected, connected); err != nil {
		return nil, fmt.Errorf("dial_tcp %s: send %v: %w", addr, FrameConnected, err)
	}
	log.Debug("agent: dial_tcp connected", "local", tcp.LocalAddr().String())

	// The stream frames go without deadlines. They come back for the
	// terminal frame, once the goroutines that send stream frames have
	// ended.
	defer x.out.setTimeout(x.timeout)
	if err := x.out.setTimeout(0); err != nil {
		return nil, fmt.Errorf("dial_tcp %s: clear write deadline: %w", addr, err)
	}
	if err := x.conn.SetReadDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("dial_tcp %s: clear read deadline: %w", addr, err)
	}

	f := &tcpForward{
		x:       x,
		tcp:     tcp,
		addr:    addr,
		outDone: make(chan struct{}),
		inDone:  make(chan struct{}),
		stopped: make(chan struct{}),
	}
	stopCtx := context.AfterFunc(ctx, func() { f.stop(errStopping) })
	var wg sync.WaitGroup
	wg.Go(f.pump)
	wg.Go(f.control)
	outDone, inDone := f.outDone, f.inDone
	for outDone != nil || inDone != nil {
		select {
		case <-outDone:
			outDone = nil
		case <-inDone:
			inDone = nil
		case <-f.stopped:
			outDone, inDone = nil, nil
		}
	}
	stopCtx()
	f.done.Store(true)
	// control waits for the host's frames even after its stdin-eof, to
	// notice it leaving; after a stop, pump may be waiting for the guest or
	// for the host to take a frame.
	x.conn.SetDeadline(aLongTimeAgo)
	tcp.Close()
	wg.Wait()

	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.err != nil:
		return nil, f.err
	case f.hostGone:
		log.Debug("agent: dial_tcp: the host closed the connection")
	}
	return &dialTCPResult{}, nil
}

// A tcpForward is a dial_tcp exchange whose connection is up: the state
// that its goroutines share.
type tcpForward struct {
	x    *exchange
	tcp  *net.TCPConn
	addr string // what was dialed, for errors

	outDone chan struct{} // closed by pump once it has sent FrameStdoutEOF
	inDone  chan struct{} // closed by control once the host's FrameStdinEOF is applied
	stopped chan struct{} // closed by the first stop

	// done is set once the forward is ending: from then on, the
	// goroutines' I/O fails because dialTCP interrupts it, not because
	// anything went wrong.
	done atomic.Bool

	mu        sync.Mutex
	isStopped bool  // stop has run; guarded by mu
	err       error // why the forward stopped, if it failed; guarded by mu
	hostGone  bool  // the forward stopped because the host left; guarded by mu
}

// stop ends the forward early: with err if it failed, or with nil if the
// host closed or dropped the agent connection. Only the first call counts,
// and none once the forward is ending.
func (f *tcpForward) stop(err error) {
	if f.done.Load() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.isStopped {
		return
	}
	f.isStopped = true
	f.err = err
	f.hostGone = err == nil
	close(f.stopped)
}

// netError describes a failure of the TCP connection during op.
func (f *tcpForward) netError(op string, err error) *Error {
	err = opCause(err)
	var se *os.SyscallError
	if errors.As(err, &se) { // its message would repeat the op, as the system call's name
		err = se.Err
	}
	return &Error{Code: CodeNetwork, Message: fmt.Sprintf("dial_tcp %s: %s: %v", f.addr, op, err)}
}

// pump forwards what the guest's end of the connection sends as
// FrameStdout frames, and its end as a FrameStdoutEOF. A host that cannot
// take a frame has closed or dropped the agent connection.
func (f *tcpForward) pump() {
	buf := make([]byte, maxChunk)
	for {
		n, err := f.tcp.Read(buf)
		if n > 0 {
			if f.x.out.write(FrameStdout, buf[:n]) != nil {
				f.stop(nil)
				return
			}
		}
		if err == io.EOF {
			if f.x.out.write(FrameStdoutEOF, nil) != nil {
				f.stop(nil)
				return
			}
			close(f.outDone)
			return
		}
		if err != nil {
			f.stop(f.netError("read", err))
			return
		}
	}
}

// control reads the host's frames: what to send on the connection, and its
// end, which closes the agent's sending side of the connection. It goes on
// reading after that, since the host's leaving ends the forward, and
// anything else the host sends then is a protocol error.
//
// Frames are read in order, so bytes that the guest's end does not read
// hold back whatever the host sends after them, its leaving included.
func (f *tcpForward) control() {
	input := true // the host may send bytes
	for {
		typ, p, err := f.x.in.Next()
		switch {
		case errors.Is(err, ErrFrameTooLarge):
			f.stop(&Error{Code: CodeProtocol, Message: fmt.Sprintf("dial_tcp %s: read from host: %v", f.addr, err)})
			return
		case err != nil:
			f.stop(nil) // io.EOF, a reset or a truncated frame: the host has left
			return
		case typ == FrameStdin && input:
			if _, err := f.tcp.Write(p); err != nil {
				f.stop(f.netError("write", err))
				return
			}
		case typ == FrameStdinEOF && input:
			if err := f.tcp.CloseWrite(); err != nil {
				f.stop(f.netError("close write", err))
				return
			}
			input = false
			close(f.inDone)
		default:
			msg := fmt.Sprintf("dial_tcp %s: unexpected %v frame", f.addr, typ)
			if typ == FrameStdin || typ == FrameStdinEOF {
				msg += " after stdin-eof"
			}
			f.stop(&Error{Code: CodeProtocol, Message: msg})
			return
		}
	}
}
