package apiserver

import (
	"io"
	"net/http"
	"time"
)

// Timeouts bound how long a client may keep the server waiting for it:
// without them a client that stalls or trickles a request holds a
// connection and a goroutine forever. Nothing bounds how long an answer
// may take (there is no write timeout): exec streams its output for as
// long as the command runs.
const (
	// DefaultHeaderTimeout bounds sending a request's line and headers.
	DefaultHeaderTimeout = 10 * time.Second
	// DefaultBodyTimeout bounds sending a call's body (see limitBodyTime).
	DefaultBodyTimeout = time.Minute
	// DefaultIdleTimeout bounds the wait for the next call on a kept-alive
	// connection.
	DefaultIdleTimeout = 2 * time.Minute
)

// connTimeouts are the connection-level bounds Serve sets; the body's is
// the Server's (Config.BodyTimeout), since it depends on the route.
type connTimeouts struct{ header, idle time.Duration }

var defaultConnTimeouts = connTimeouts{header: DefaultHeaderTimeout, idle: DefaultIdleTimeout}

func newHTTPServer(h http.Handler, t connTimeouts) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: t.header, IdleTimeout: t.idle}
}

// limitBodyTime bounds the time r's client may take to send its body: the
// connection's read deadline is set to s.bodyTimeout from now, and r.Body
// is replaced by a timedBody that lifts it once the body has been read to
// its end. A call without a body is left alone. Where the connection has
// no deadlines (a ResponseWriter of a test) nothing is bounded.
func (s *Server) limitBodyTime(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength == 0 {
		return
	}
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(time.Now().Add(s.bodyTimeout)) != nil {
		return
	}
	r.Body = &timedBody{ReadCloser: r.Body, rc: rc, timeout: s.bodyTimeout}
}

// timedBody is a request body read under the connection's read deadline.
//
// The deadline must not outlive the body: from then on the http.Server
// reads the connection itself, to notice a client that goes away, and
// cancels the call's context when that read fails, so a deadline left
// behind would cut off a long exec stream or checkpoint. The net/http of
// the Go this module requires clears the deadline when it starts that
// read, but does not document it, so timedBody lifts it too. It is kept
// after any other read error: the connection is then spent, and the
// server's discarding of what is left of the body must not wait.
//
// A timedBody is read by one goroutine at a time.
type timedBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
	// perRead re-arms the deadline at each read (see uploading) instead
	// of bounding the whole body.
	perRead bool
	done    bool // read to its end; the deadline is lifted
}

func (b *timedBody) Read(p []byte) (int, error) {
	if b.perRead && !b.done {
		b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// uploading marks h as a handler that reads an unbounded body as it goes
// (a file write). Its client must keep sending, each read waiting at most
// the body timeout, but the whole body has no time limit, which would cap
// the size of a file. (So a client may still send slowly; not stalling is
// what it must do.) Until the first read, the deadline set at the start
// of the call bounds only what the server discards if h answers without
// reading.
func uploading(h func(http.ResponseWriter, *http.Request) error) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		if b, ok := r.Body.(*timedBody); ok {
			b.perRead = true
		}
		return h(w, r)
	}
}
