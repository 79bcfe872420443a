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

	// RequestTimeout bounds how long a connection may take to deliver its
	// request, and how long the agent waits for the host to take its
	// answer. Zero means DefaultRequestTimeout.
	RequestTimeout time.Duration
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
// are still waiting for their request, waits for the requests in flight to
// be answered (each is bounded by RequestTimeout), and returns nil. It
// returns an error only if l fails for good, for example because someone
// else closed it; transient accept errors are logged and retried.
//
// Goroutines: the caller's goroutine runs the accept loop; a goroutine
// started by context.AfterFunc closes l when ctx is done; each accepted
// connection is owned, and closed, by the goroutine that serves it.
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

// serveConn reads one request from conn, answers it and closes conn. It
// owns conn for its whole run.
func (s *Server) serveConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	log := s.logger().With("remote", addrString(conn.RemoteAddr()))
	timeout := s.requestTimeout()

	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		log.Debug("agent: set request deadline", "err", err)
	}
	// Give up waiting for the request when the server stops. Once the
	// request is in, it is answered even if the server is stopping.
	stopWatch := context.AfterFunc(ctx, func() { conn.SetReadDeadline(aLongTimeAgo) })
	typ, payload, err := ReadFrame(conn)
	stopWatch()

	var e *Error
	switch {
	case err == nil:
		start := time.Now()
		var op string
		typ, payload, op, e = s.answer(ctx, typ, payload)
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

	// The op may have run for a while; give the host a fresh timeout to
	// take the answer.
	if err := conn.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		log.Debug("agent: set response deadline", "err", err)
	}
	if err := WriteFrame(conn, typ, payload); err != nil {
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
func (s *Server) answer(ctx context.Context, typ FrameType, payload []byte) (FrameType, []byte, string, *Error) {
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
	result, err := s.dispatch(ctx, &req)
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
// Ops that stream (exec, read_file, write_file) will also need the
// connection and its FrameReader; they will get them through an argument
// added here, and must then manage the connection's deadlines themselves.
func (s *Server) dispatch(ctx context.Context, req *Request) (any, error) {
	switch req.Op {
	case OpHealth:
		return &HealthResponse{
			Status:             HealthStatusOK,
			AgentVersion:       AgentVersion,
			GuestSchemaVersion: GuestSchemaVersion,
		}, nil
	case "":
		return nil, &Error{Code: CodeBadRequest, Message: "request has no op"}
	default:
		return nil, &Error{
			Code:    CodeUnknownOp,
			Message: fmt.Sprintf("unknown op %q", truncate(req.Op, maxLoggedOp)),
		}
	}
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
