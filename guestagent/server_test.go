package guestagent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/internal/nettest"
)

// testLogger logs to the test's output, so that failures show the server's
// side of the story.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// socketPath returns a path for a Unix socket in a fresh directory removed
// at the end of the test. It avoids t.TempDir, whose long paths can exceed
// the 108-byte limit on socket paths.
func socketPath(t *testing.T) string { return nettest.SocketPath(t) }

// listenUnix listens on a fresh Unix socket.
func listenUnix(t *testing.T) (net.Listener, string) {
	t.Helper()
	path := socketPath(t)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	return l, path
}

func unixDialer(path string) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}

// serve runs s.Serve on l until the end of the test, and checks that it
// stops cleanly.
func serve(t *testing.T, s *Server, l net.Listener) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after its context was cancelled")
		}
	})
}

// startServer serves a new Server on a Unix socket and returns its path.
func startServer(t *testing.T) string {
	t.Helper()
	l, path := listenUnix(t)
	serve(t, &Server{Logger: testLogger(t)}, l)
	return path
}

// startClient serves a new Server on a Unix socket and returns a Client for
// it.
func startClient(t *testing.T) *Client {
	t.Helper()
	return &Client{Dial: unixDialer(startServer(t))}
}

// errReader is an io.Reader that fails.
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func checkHealth(t *testing.T, ctx context.Context, c *Client) {
	t.Helper()
	got, err := c.Health(ctx)
	if err != nil {
		t.Fatalf("Health: %v", err)
	}
	want := HealthResponse{Status: HealthStatusOK, AgentVersion: AgentVersion, GuestSchemaVersion: GuestSchemaVersion}
	if got != want {
		t.Fatalf("Health = %+v, want %+v", got, want)
	}
}

func TestHealthOverUnixSocket(t *testing.T) {
	path := startServer(t)
	c := &Client{Dial: unixDialer(path)}
	ctx := testContext(t)
	checkHealth(t, ctx, c)

	// Concurrent calls each get their own connection.
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if _, err := c.Health(ctx); err != nil {
				t.Errorf("concurrent Health: %v", err)
			}
		})
	}
	wg.Wait()
}

func TestHealthOverPipe(t *testing.T) {
	s := &Server{Logger: testLogger(t)}
	var wg sync.WaitGroup
	defer wg.Wait()
	c := &Client{Dial: func(ctx context.Context) (net.Conn, error) {
		host, guest := net.Pipe()
		wg.Go(func() { s.serveConn(ctx, guest) })
		return host, nil
	}}
	checkHealth(t, testContext(t), c)
}

func TestHealthReportsAgentVersion(t *testing.T) {
	old := AgentVersion
	AgentVersion = "v9.9.9-test"
	t.Cleanup(func() { AgentVersion = old })
	path := startServer(t)
	got, err := (&Client{Dial: unixDialer(path)}).Health(testContext(t))
	if err != nil || got.AgentVersion != "v9.9.9-test" {
		t.Fatalf("Health = %+v, %v; want AgentVersion v9.9.9-test", got, err)
	}
}

func TestUnknownOp(t *testing.T) {
	path := startServer(t)
	c := &Client{Dial: unixDialer(path)}
	for _, op := range []string{"frobnicate", strings.Repeat("x", 100<<10)} {
		var result json.RawMessage
		err := c.do(testContext(t), &call{op: op}, &result)
		var ae *Error
		if !errors.As(err, &ae) || ae.Code != CodeUnknownOp || !strings.Contains(ae.Message, "unknown op") {
			t.Fatalf("do(%.20q...) = %v, want an *Error with code %q", op, err, CodeUnknownOp)
		}
		if len(ae.Message) > 200 {
			t.Errorf("unknown-op message is %d bytes long; the op should be truncated", len(ae.Message))
		}
	}
	var result json.RawMessage
	err := c.do(testContext(t), &call{op: "frobnicate"}, &result)
	if want := `agent frobnicate: unknown op "frobnicate" (unknown_op)`; err == nil || err.Error() != want {
		t.Errorf("error = %v, want %s", err, want)
	}
}

// rawExchange sends raw bytes on a new connection to path, half-closes it,
// and returns every frame the server sends until it closes the connection.
func rawExchange(t *testing.T, path string, raw []byte) []Error {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(raw); err != nil {
		t.Fatalf("write: %v", err)
	}
	conn.(*net.UnixConn).CloseWrite()
	var errs []Error
	for {
		typ, p, err := ReadFrame(conn)
		if err == io.EOF {
			return errs
		}
		if err != nil {
			t.Fatalf("read answer: %v", err)
		}
		if typ != FrameError {
			t.Fatalf("got a %v frame %q, want an error frame", typ, p)
		}
		var e Error
		if err := json.Unmarshal(p, &e); err != nil {
			t.Fatalf("decode error frame %q: %v", p, err)
		}
		errs = append(errs, e)
	}
}

func TestServerRejectsBadInput(t *testing.T) {
	path := startServer(t)
	for _, tc := range []struct {
		name string
		raw  string
		code string // "" for no answer
	}{
		{"nothing", "", ""},
		{"http", "GET / HTTP/1.1\r\nHost: agent\r\n\r\n", CodeProtocol},
		{"oversize", "\x01\x00\x10\x00\x01", CodeProtocol},
		{"truncated header", "\x01\x00\x00", CodeProtocol},
		{"truncated payload", "\x01\x00\x00\x00\x20{\"op\":", CodeProtocol},
		{"stdin first", string(frame(FrameStdin, "data")), CodeProtocol},
		{"type zero", string(frame(0, "")), CodeProtocol},
		{"unassigned type", string(frame(0xee, `{"op":"health"}`)), CodeProtocol},
		{"response from host", string(frame(FrameResponse, `{"status":"ok"}`)), CodeProtocol},
		{"bad json", string(frame(FrameRequest, `{"op":`)), CodeBadRequest},
		{"json array", string(frame(FrameRequest, `["health"]`)), CodeBadRequest},
		{"op not a string", string(frame(FrameRequest, `{"op":42}`)), CodeBadRequest},
		{"trailing garbage", string(frame(FrameRequest, `{"op":"health"}x`)), CodeBadRequest},
		{"no op", string(frame(FrameRequest, `{}`)), CodeBadRequest},
		{"null", string(frame(FrameRequest, `null`)), CodeBadRequest},
		{"empty request", string(frame(FrameRequest, ``)), CodeBadRequest},
		{"unknown op", string(frame(FrameRequest, `{"op":"HEALTH"}`)), CodeUnknownOp},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := rawExchange(t, path, []byte(tc.raw))
			switch {
			case tc.code == "" && len(errs) != 0:
				t.Fatalf("got %+v, want no answer", errs)
			case tc.code != "" && (len(errs) != 1 || errs[0].Code != tc.code):
				t.Fatalf("got %+v, want one error with code %q", errs, tc.code)
			}
		})
	}
	// Unknown fields are ignored (compatible evolution), and the server
	// still serves well-behaved clients after all of the above.
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := WriteFrame(conn, FrameRequest, []byte(`{"op":"health","args":{"x":1},"future":true}`)); err != nil {
		t.Fatal(err)
	}
	if typ, p, err := ReadFrame(conn); err != nil || typ != FrameResponse {
		t.Fatalf("health with unknown fields: %v %q %v", typ, p, err)
	}
	checkHealth(t, testContext(t), &Client{Dial: unixDialer(path)})
}

func TestServerRequestTimeout(t *testing.T) {
	l, path := listenUnix(t)
	serve(t, &Server{Logger: testLogger(t), RequestTimeout: 50 * time.Millisecond}, l)
	for _, sent := range []string{"", "\x01\x00\x00\x00\x10{"} {
		conn, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.Write([]byte(sent))
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		if n, err := conn.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("after sending %q: Read = %d, %v; want the server to close the connection", sent, n, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("server took %v to drop a silent connection", d)
		}
	}
}

func TestServeStopsOnCancel(t *testing.T) {
	l, path := listenUnix(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- (&Server{Logger: testLogger(t)}).Serve(ctx, l) }()

	checkHealth(t, testContext(t), &Client{Dial: unixDialer(path)})
	// A connection that never sends its request must not hold up the stop,
	// even though the default request timeout is long.
	idle, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	time.Sleep(20 * time.Millisecond) // let the server accept it

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v, want nil after cancellation", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancellation")
	}
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("idle connection: Read = %v, want EOF", err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		t.Errorf("dial after Serve returned: connected, want the listener closed")
	}
}

func TestServeListenerClosedElsewhere(t *testing.T) {
	l, _ := listenUnix(t)
	done := make(chan error, 1)
	go func() { done <- (&Server{}).Serve(context.Background(), l) }()
	time.Sleep(10 * time.Millisecond)
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Serve = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after its listener was closed")
	}
}

// flakyListener fails its first accepts with a transient error, and makes
// the first connection it returns panic when read.
type flakyListener struct {
	net.Listener
	mu       sync.Mutex
	failures int
	panicked bool
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failures > 0 {
		l.failures--
		return nil, errors.New("accept: too many open files")
	}
	c, err := l.Listener.Accept()
	if err != nil || l.panicked {
		return c, err
	}
	l.panicked = true
	return panicConn{c}, nil
}

type panicConn struct{ net.Conn }

func (panicConn) Read([]byte) (int, error) { panic("boom") }

func TestServeSurvivesAcceptErrorsAndPanics(t *testing.T) {
	l, path := listenUnix(t)
	serve(t, &Server{Logger: testLogger(t)}, &flakyListener{Listener: l, failures: 3})
	c := &Client{Dial: unixDialer(path)}
	// The first connection panics the handler and is dropped.
	if _, err := c.Health(testContext(t)); err == nil {
		t.Fatal("Health on the panicking connection succeeded")
	}
	checkHealth(t, testContext(t), c)
}
