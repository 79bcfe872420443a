package guestagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"time"
)

// DefaultRequestTimeout is the RequestTimeout of a Server that sets none.
const DefaultRequestTimeout = 10 * time.Second

// maxErrorMessage bounds the Message of an Error the server sends, so that
// an error quoting a hostile request still fits in a frame.
const maxErrorMessage = 4 << 10

// maxLoggedOp bounds how much of a request's op is quoted in errors and logs.
const maxLoggedOp = 64

// A Server answers agent requests on the connections it accepts. Its fields
// configure it and must not change once Serve has been called; Serve may be
// called more than once, also concurrently, with different listeners.
type Server struct {
	// Logger receives the server's logs. Nil discards them.
	Logger *slog.Logger

	// RequestTimeout bounds each wait on the host: for a connection's
	// request, for every frame of write_file's input, and for the host to
	// take every frame the agent sends, except the stream frames of a
	// dial_tcp connection, which wait as long as the connection lasts. It
	// also bounds dial_tcp's dial. Zero means DefaultRequestTimeout. A host
	// that stops taking an exec's output for this long is treated as gone,
	// and the process is killed.
	RequestTimeout time.Duration

	// Guest says that the server is the agent of a Sailbox guest, which
	// lets the restored op change the system as a whole: set the wall
	// clock, reseed the kernel's random number generator, and rename the
	// machine. Without it the op is refused, so that an agent run on a
	// host for tests cannot reset the host's clock and name.
	// cmd/sailbox-agent sets it when it prepares the guest.
	Guest bool

	// RootErr, if not nil, says why the box's root file system, which the
	// kernel command line names, could not be mounted (see MountRoot).
	// exec, read_file, write_file and stat then fail with
	// CodeRootUnavailable and its message, rather than act on the
	// initramfs that the agent sees in its place. cmd/sailbox-agent sets
	// it from MountRoot's error.
	RootErr error

	// vet, if set, sees the decoded arguments of every exec, read_file,
	// write_file, stat, restored and dial_tcp request (an *execArgs,
	// *readFileArgs, and so on) before the op runs, and may rewrite them or
	// refuse the request by returning an error, which is sent to the host.
	// Fuzz tests use it so that fuzzed requests run no program but echo,
	// touch no file outside a scratch directory and dial no port but an
	// echo server's.
	vet func(args any) error

	// sys, if set, stands in for the guest's system in the restored op,
	// whatever Guest says. Tests use it to observe the op without root.
	sys guestSystem
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Server) requestTimeout() time.Duration {
	if s.RequestTimeout <= 0 {
		return DefaultRequestTimeout
	}
	return s.RequestTimeout
}

// Serve accepts connections on l and serves each in its own goroutine until
// ctx is cancelled. Serve owns l and closes it before returning.
//
// When ctx is cancelled, Serve stops accepting, interrupts connections that
// are still waiting for their request or for write_file's input, stops
// read_file streams, kills (SIGKILL) the process groups of execs in
// flight, closes dial_tcp connections, waits for every request to be
// answered, and returns nil. It
// returns an error only if l fails for good, for example because someone
// else closed it; transient accept errors are logged and retried.
//
// Goroutines: the caller's goroutine runs the accept loop; a goroutine
// started by context.AfterFunc closes l when ctx is done; each accepted
// connection is owned, and closed, by the goroutine that serves it, which
// ends every goroutine it starts for the connection before it returns.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	log := s.logger()
	var wg sync.WaitGroup
	defer wg.Wait() // runs last: after l is closed, no new handlers start
	defer l.Close()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()

	var backoff time.Duration
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				log.Debug("agent: stopping", "reason", context.Cause(ctx))
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("agent serve: accept: %w", err)
			}
			// Typically EMFILE or a connection aborted before accept. Back
			// off as net/http does; the agent is the guest's only link to
			// the host, so it keeps trying rather than exit.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			log.Error("agent: accept failed; retrying", "err", err, "backoff", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
			continue
		}
		backoff = 0
		wg.Go(func() { s.handle(ctx, conn) })
	}
}

// handle serves conn, turning a panic into a log entry: one bad request must
// not take down the guest's only agent.
func (s *Server) handle(ctx context.Context, conn net.Conn) {
	defer func() {
		if r := recover(); r != nil {
			conn.Close()
			s.logger().Error("agent: panic serving connection",
				"remote", addrString(conn.RemoteAddr()), "panic", r, "stack", string(debug.Stack()))
		}
	}()
	s.serveConn(ctx, conn)
}

// aLongTimeAgo is a deadline in the past, which makes blocked I/O on a
// connection return at once.
var aLongTimeAgo = time.Unix(1, 0)

// An exchange is the agent's side of one connection. The host's frames,
// its request first, are read from in; every frame the agent sends, the
// terminal one last, goes through out.
type exchange struct {
	conn    net.Conn
	timeout time.Duration // the server's RequestTimeout
	in      *FrameReader  // the host's frames; read by one goroutine at a time
	out     frameWriter   // every frame the agent sends, each within timeout
}

// serveConn reads one request from conn, answers it and closes conn. It
// owns conn for its whole run.
func (s *Server) serveConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	log := s.logger().With("remote", addrString(conn.RemoteAddr()))
	timeout := s.requestTimeout()
	x := &exchange{
		conn:    conn,
		timeout: timeout,
		in:      NewFrameReader(conn),
		out:     frameWriter{conn: conn, timeout: timeout},
	}

	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		log.Debug("agent: set request deadline", "err", err)
	}
	// Give up waiting for the request when the server stops. Once the
	// request is in, the op decides how to honour ctx.
	stopWatch := context.AfterFunc(ctx, func() { conn.SetReadDeadline(aLongTimeAgo) })
	typ, payload, err := x.in.Next()
	stopWatch()

	var e *Error
	switch {
	case err == nil:
		start := time.Now()
		var op string
		typ, payload, op, e = s.answer(ctx, x, typ, payload)
		log = log.With("op", op)
		if e == nil {
			log.Debug("agent: request served", "duration", time.Since(start))
		} else {
			log.Warn("agent: request failed", "code", e.Code, "err", e.Message, "duration", time.Since(start))
		}
	case errors.Is(err, io.EOF):
		log.Debug("agent: connection closed before a request")
		return
	case ctx.Err() != nil:
		log.Debug("agent: connection dropped: server stopping")
		return
	case isTimeout(err):
		log.Warn("agent: no request before deadline", "timeout", timeout)
		return
	case errors.Is(err, ErrFrameTooLarge), errors.Is(err, io.ErrUnexpectedEOF):
		e = &Error{Code: CodeProtocol, Message: "read request: " + err.Error()}
		log.Warn("agent: bad request frame", "err", err)
	default:
		log.Warn("agent: read request", "err", err)
		return
	}
	if e != nil {
		typ, payload = FrameError, encodeError(e)
	}

	// The write gets a fresh deadline: the op may have run for a while.
	if err := x.out.write(typ, payload); err != nil {
		log.Debug("agent: write answer", "err", err)
		return
	}
	s.linger(ctx, conn)
}

// Bounds on what linger discards.
const (
	lingerTimeout  = time.Second
	maxLingerBytes = 4 << 20
)

// linger discards whatever the host still sends until it closes its end of
// conn, for at most lingerTimeout or maxLingerBytes. Unix sockets and vsock
// reset a connection closed with unread data, and a reset can destroy the
// answer before the host has read it: for example when an older agent
// answers "unknown op" to a newer host that sent stream frames right after
// its request. A well-behaved host closes as soon as it has the answer, so
// linger usually returns at once.
func (s *Server) linger(ctx context.Context, conn net.Conn) {
	if err := conn.SetReadDeadline(time.Now().Add(lingerTimeout)); err != nil {
		return
	}
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(aLongTimeAgo) })
	defer stop()
	io.CopyN(io.Discard, conn, maxLingerBytes)
}

// answer decodes a request frame and runs its op. It returns the terminal
// frame to send, or an *Error to send in its place, and the op, truncated
// for logs.
func (s *Server) answer(ctx context.Context, x *exchange, typ FrameType, payload []byte) (FrameType, []byte, string, *Error) {
	if typ != FrameRequest {
		return 0, nil, "", &Error{
			Code:    CodeProtocol,
			Message: fmt.Sprintf("expected a %v frame, got %v", FrameRequest, typ),
		}
	}
	var req Request
	if err := json.Unmarshal(payload, &req); err != nil {
		return 0, nil, "", &Error{Code: CodeBadRequest, Message: "decode request: " + err.Error()}
	}
	op := truncate(req.Op, maxLoggedOp)
	result, err := s.dispatch(ctx, x, &req)
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = &Error{Code: CodeInternal, Message: err.Error()}
		}
		return 0, nil, op, e
	}
	b, err := json.Marshal(result)
	if err != nil {
		return 0, nil, op, &Error{Code: CodeInternal, Message: "encode response: " + err.Error()}
	}
	if len(b) > MaxPayload {
		return 0, nil, op, &Error{Code: CodeInternal, Message: fmt.Sprintf("response of %d bytes exceeds the maximum frame payload", len(b))}
	}
	return FrameResponse, b, op, nil
}

// dispatch runs req's op and returns its result, to be sent as JSON in a
// FrameResponse, or its error, to be sent in a FrameError (as is if it is an
// *Error, as CodeInternal otherwise).
//
// Ops that stream use x, and manage the connection's read deadline
// themselves: on entry it is the one set for the request.
func (s *Server) dispatch(ctx context.Context, x *exchange, req *Request) (any, error) {
	if s.RootErr != nil {
		switch req.Op {
		case opExec, opReadFile, opWriteFile, opStat:
			return nil, &Error{Code: CodeRootUnavailable, Message: fmt.Sprintf("%s: %v", req.Op, s.RootErr)}
		}
	}
	switch req.Op {
	case OpHealth:
		return &HealthResponse{
			Status:             HealthStatusOK,
			AgentVersion:       AgentVersion,
			GuestSchemaVersion: GuestSchemaVersion,
		}, nil
	case opExec:
		var args execArgs
		if err := s.decodeArgs(req, &args); err != nil {
			return nil, err
		}
		return s.exec(ctx, x, &args)
	case opReadFile:
		var args readFileArgs
		if err := s.decodeArgs(req, &args); err != nil {
			return nil, err
		}
		return readFile(ctx, x, &args)
	case opWriteFile:
		var args writeFileArgs
		if err := s.decodeArgs(req, &args); err != nil {
			return nil, err
		}
		return writeFile(ctx, x, &args)
	case opStat:
		var args statArgs
		if err := s.decodeArgs(req, &args); err != nil {
			return nil, err
		}
		return stat(&args)
	case opRestored:
		var args restoredArgs
		if err := s.decodeArgs(req, &args); err != nil {
			return nil, err
		}
		return s.restored(&args)
	case opDialTCP:
		var args dialTCPArgs
		if err := s.decodeArgs(req, &args); err != nil {
			return nil, err
		}
		return s.dialTCP(ctx, x, &args)
	case "":
		return nil, &Error{Code: CodeBadRequest, Message: "request has no op"}
	default:
		return nil, &Error{
			Code:    CodeUnknownOp,
			Message: fmt.Sprintf("unknown op %q", truncate(req.Op, maxLoggedOp)),
		}
	}
}

// decodeArgs decodes req's Args, if any, into args and lets s.vet see them.
// Fields it does not know are ignored, as compatible evolution requires.
func (s *Server) decodeArgs(req *Request, args any) error {
	if len(req.Args) > 0 {
		if err := json.Unmarshal(req.Args, args); err != nil {
			return &Error{Code: CodeBadRequest, Message: fmt.Sprintf("decode %s args: %v", req.Op, err)}
		}
	}
	if s.vet != nil {
		return s.vet(args)
	}
	return nil
}

// encodeError encodes e as the payload of a FrameError, truncating its
// strings so that it always fits.
func encodeError(e *Error) []byte {
	b, err := json.Marshal(&Error{Code: truncate(e.Code, maxLoggedOp), Message: truncate(e.Message, maxErrorMessage)})
	if err != nil { // cannot happen for two strings
		return []byte(`{"code":"internal","message":"encode error"}`)
	}
	return b
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// truncate shortens s to at most n bytes, marking the cut with "...".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func addrString(a net.Addr) string {
	if a == nil {
		return "unknown"
	}
	return a.String()
}
