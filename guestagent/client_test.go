package guestagent

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/internal/nettest"
)

// fakePeer accepts connections on a Unix socket and runs handle on each in
// its own goroutine until the end of the test. It returns the socket path.
func fakePeer(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	l, path := listenUnix(t)
	nettest.Serve(t, l, handle)
	return path
}

// stall reads from c until the peer goes away or 10 seconds pass.
func stall(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, c)
}

func TestClientHonoursContext(t *testing.T) {
	path := fakePeer(t, stall) // an agent that never answers
	c := &Client{Dial: unixDialer(path)}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Health(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), "agent health: read response: ") {
		t.Errorf("Health past deadline = %v, want agent health: read response: ... context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Health took %v with a 100ms deadline", d)
	}

	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := c.Health(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Health cancelled = %v, want context.Canceled", err)
	}
	if _, err := c.Health(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Health with a cancelled context = %v, want context.Canceled", err)
	}
}

func TestClientRejectsBadAnswers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer []byte
		want   string // substring of the error
		is     error
	}{
		{"close", nil, "agent health: read response: connection closed without a response", nil},
		{"truncated", []byte("\x02\x00\x00"), "agent health: read response: frame header", io.ErrUnexpectedEOF},
		{"oversize", []byte("\x02\xff\xff\xff\xff"), "agent health: read response:", ErrFrameTooLarge},
		{"wrong frame", frame(FrameStdout, "hello"), "agent health: read response: unexpected stdout frame", nil},
		{"bad json", frame(FrameResponse, "{"), "agent health: decode response:", nil},
		{"bad error json", frame(FrameError, "["), "agent health: decode error response:", nil},
		{"agent error", frame(FrameError, `{"code":"brand_new","message":"no"}`), "agent health: no (brand_new)", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := fakePeer(t, func(c net.Conn) {
				if _, _, err := ReadFrame(c); err != nil {
					t.Errorf("fake agent: read request: %v", err)
				}
				c.Write(tc.answer)
			})
			_, err := (&Client{Dial: unixDialer(path)}).Health(testContext(t))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Health = %v, want an error containing %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("Health = %v, want it to wrap %v", err, tc.is)
			}
		})
	}
}

func TestClientReturnsAgentError(t *testing.T) {
	path := fakePeer(t, func(c net.Conn) {
		ReadFrame(c)
		WriteFrame(c, FrameError, []byte(`{"code":"internal","message":"disk on fire"}`))
	})
	_, err := (&Client{Dial: unixDialer(path)}).Health(testContext(t))
	var ae *Error
	if !errors.As(err, &ae) || *ae != (Error{Code: CodeInternal, Message: "disk on fire"}) {
		t.Fatalf("Health = %v, want *Error{internal, disk on fire}", err)
	}
}

func TestClientDialErrors(t *testing.T) {
	if _, err := (&Client{}).Health(testContext(t)); err == nil || !strings.HasPrefix(err.Error(), "agent health: ") {
		t.Errorf("Health without Dial = %v, want an error", err)
	}
	boom := errors.New("boom")
	c := &Client{Dial: func(context.Context) (net.Conn, error) { return nil, boom }}
	if _, err := c.Health(testContext(t)); !errors.Is(err, boom) || !strings.HasPrefix(err.Error(), "agent health: dial: ") {
		t.Errorf("Health with failing Dial = %v, want agent health: dial: boom", err)
	}
}

// fakeVMM is the host end of a hybrid vsock device: it reads the CONNECT
// line, checks it, and hands the connection to handle.
func fakeVMM(t *testing.T, wantPort string, handle func(net.Conn)) string {
	return fakePeer(t, func(c net.Conn) {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := readLine(c, 32)
		if err != nil {
			t.Errorf("fake VMM: read CONNECT line: %q, %v", line, err)
			return
		}
		if want := "CONNECT " + wantPort + "\n"; line != want {
			t.Errorf("fake VMM: got %q, want %q", line, want)
			return
		}
		c.SetReadDeadline(time.Time{})
		handle(c)
	})
}

// readLine reads a line from c a byte at a time, as a VMM must so that
// nothing sent after the line is lost.
func readLine(c net.Conn, limit int) (string, error) {
	var line []byte
	b := make([]byte, 1)
	for len(line) < limit {
		if _, err := io.ReadFull(c, b); err != nil {
			return string(line), err
		}
		line = append(line, b[0])
		if b[0] == '\n' {
			return string(line), nil
		}
	}
	return string(line), errors.New("line too long")
}

func TestHybridClientHealth(t *testing.T) {
	s := &Server{Logger: testLogger(t)}
	ctx := testContext(t)
	path := fakeVMM(t, "1024", func(c net.Conn) {
		if _, err := c.Write([]byte("OK 1073741824\n")); err != nil {
			t.Errorf("fake VMM: %v", err)
			return
		}
		s.serveConn(ctx, c)
	})
	checkHealth(t, ctx, NewHybridClient(path))
}

func TestWaitHealthy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	c := &Client{Dial: unixDialer(path)}

	// Nothing listens: WaitHealthy gives up with ctx, naming the last error.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := c.WaitHealthy(ctx, 10*time.Millisecond, nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "last error") {
		t.Fatalf("WaitHealthy with no agent = %v", err)
	}

	// The VM goes away: WaitHealthy stops with ErrGone.
	gone := make(chan struct{})
	close(gone)
	if _, err := c.WaitHealthy(testContext(t), 10*time.Millisecond, gone); !errors.Is(err, ErrGone) {
		t.Fatalf("WaitHealthy after the VM stopped = %v, want ErrGone", err)
	}

	// The agent comes up while WaitHealthy polls.
	go func() {
		time.Sleep(50 * time.Millisecond)
		l, err := net.Listen("unix", path)
		if err != nil {
			return
		}
		(&Server{}).Serve(t.Context(), l)
	}()
	h, err := c.WaitHealthy(testContext(t), 10*time.Millisecond, nil)
	if err != nil || h.Status != "ok" || h.GuestSchemaVersion != GuestSchemaVersion {
		t.Fatalf("WaitHealthy = %+v, %v", h, err)
	}
}
