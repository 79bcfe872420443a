package guestagent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/internal/nettest"
)

// guestListen listens on a TCP port of 127.0.0.1, standing in for a server
// in the guest, and runs handle on each connection in its own goroutine
// until the end of the test, then closes the connection. It returns the
// port.
func guestListen(t testing.TB, handle func(*net.TCPConn)) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nettest.Serve(t, l, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		handle(c.(*net.TCPConn))
	})
	return l.Addr().(*net.TCPAddr).Port
}

// echo sends back what it reads until EOF, then closes its sending side.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// closedPort returns a port of 127.0.0.1 that nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// dialTCP dials port through c, and closes the connection at the end of the
// test.
func dialTCP(t *testing.T, c *Client, port int) net.Conn {
	t.Helper()
	conn, err := c.DialTCP(testContext(t), "", port)
	if err != nil {
		t.Fatalf("DialTCP port %d: %v", port, err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	return conn
}

// closeWrite half-closes c, as the daemon's port forwarding does.
func closeWrite(t *testing.T, c net.Conn) {
	t.Helper()
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("%T has no CloseWrite method", c)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
}

func TestDialTCPEcho(t *testing.T) {
	port := guestListen(t, echo)
	conn := dialTCP(t, startClient(t), port)
	if got, want := conn.RemoteAddr().String(), "127.0.0.1:"+strconv.Itoa(port); got != want {
		t.Errorf("RemoteAddr = %s, want %s", got, want)
	}
	for _, msg := range []string{"hello", "", "world"} {
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatalf("Write: %v", err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != msg {
			t.Fatalf("read back %q, %v; want %q", buf, err, msg)
		}
	}
	closeWrite(t, conn)
	if rest, err := io.ReadAll(conn); err != nil || len(rest) != 0 {
		t.Fatalf("after CloseWrite: read %q, %v; want EOF", rest, err)
	}
	if n, err := conn.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("Read after EOF = %d, %v; want io.EOF again", n, err)
	}
	if _, err := conn.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after CloseWrite = %v, want net.ErrClosed", err)
	}
	if err := conn.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// TestDialTCPContextBoundsOnlyTheDial cancels the context once DialTCP has
// returned: the connection must carry on.
func TestDialTCPContextBoundsOnlyTheDial(t *testing.T) {
	port := guestListen(t, echo)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	conn, err := startClient(t).DialTCP(ctx, "127.0.0.1", port)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	time.Sleep(10 * time.Millisecond)
	conn.Write([]byte("still here"))
	closeWrite(t, conn)
	if got, err := io.ReadAll(conn); err != nil || string(got) != "still here" {
		t.Fatalf("read %q, %v; want the echo", got, err)
	}
}

// TestDialTCPLargeBothWays streams several MiB in each direction at once.
func TestDialTCPLargeBothWays(t *testing.T) {
	const size = 6<<20 + 12345 // not a multiple of any frame size
	toGuest := make([]byte, size)
	fromGuest := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{1})
	rng.Read(toGuest)
	rng.Read(fromGuest)

	received := make(chan [32]byte, 1)
	port := guestListen(t, func(c *net.TCPConn) {
		var wg sync.WaitGroup
		wg.Go(func() {
			c.Write(fromGuest)
			c.CloseWrite()
		})
		h := sha256.New()
		io.Copy(h, c)
		received <- [32]byte(h.Sum(nil))
		wg.Wait()
	})
	conn := dialTCP(t, startClient(t), port)

	writeErr := make(chan error, 1)
	go func() {
		_, err := conn.Write(toGuest)
		if err == nil {
			err = conn.(interface{ CloseWrite() error }).CloseWrite()
		}
		writeErr <- err
	}()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if !bytes.Equal(got, fromGuest) {
		t.Errorf("host read %d bytes, want the guest's %d intact", len(got), len(fromGuest))
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("Write: %v", err)
	}
	if h := <-received; h != sha256.Sum256(toGuest) {
		t.Errorf("guest received other bytes than the host's %d", len(toGuest))
	}
}

// TestDialTCPHostClosesFirst half-closes the host's side: the guest reads
// EOF and still answers.
func TestDialTCPHostClosesFirst(t *testing.T) {
	port := guestListen(t, func(c *net.TCPConn) {
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "got %d bytes", n)
	})
	conn := dialTCP(t, startClient(t), port)
	io.WriteString(conn, "0123456789")
	closeWrite(t, conn)
	if got, err := io.ReadAll(conn); err != nil || string(got) != "got 10 bytes" {
		t.Fatalf("read %q, %v; want %q and EOF", got, err, "got 10 bytes")
	}
}

// TestDialTCPGuestClosesFirst half-closes the guest's side: the host reads
// EOF and can still send.
func TestDialTCPGuestClosesFirst(t *testing.T) {
	received := make(chan string, 1)
	port := guestListen(t, func(c *net.TCPConn) {
		io.WriteString(c, "banner")
		c.CloseWrite()
		b, _ := io.ReadAll(c)
		received <- string(b)
	})
	conn := dialTCP(t, startClient(t), port)
	if got, err := io.ReadAll(conn); err != nil || string(got) != "banner" {
		t.Fatalf("read %q, %v; want %q and EOF", got, err, "banner")
	}
	if _, err := io.WriteString(conn, "after your EOF"); err != nil {
		t.Fatalf("Write after the guest's EOF: %v", err)
	}
	closeWrite(t, conn)
	if got := <-received; got != "after your EOF" {
		t.Errorf("guest received %q", got)
	}
}

// TestDialTCPHostCloses closes the host's end without CloseWrite, as a
// client that is done does: the guest's end sees the connection end.
func TestDialTCPHostCloses(t *testing.T) {
	ended := make(chan error, 1)
	port := guestListen(t, func(c *net.TCPConn) {
		io.WriteString(c, "hi")
		b, err := io.ReadAll(c)
		if err == nil && string(b) != "bye" {
			err = fmt.Errorf("read %q", b)
		}
		ended <- err
	})
	conn := dialTCP(t, startClient(t), port)
	buf := make([]byte, 2)
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "bye")
	conn.Close()
	if err := <-ended; err != nil {
		t.Fatalf("guest's end: %v, want EOF after what the host sent", err)
	}
	if _, err := conn.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close = %v, want net.ErrClosed", err)
	}
}

func TestDialTCPRefused(t *testing.T) {
	port := closedPort(t)
	_, err := startClient(t).DialTCP(testContext(t), "", port)
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != CodeConnRefused {
		t.Fatalf("DialTCP to a closed port = %v, want an *Error with code %q", err, CodeConnRefused)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if !strings.Contains(ae.Message, addr) || !strings.Contains(ae.Message, "refused") {
		t.Errorf("message %q does not name %s and the refusal", ae.Message, addr)
	}
	if !strings.HasPrefix(err.Error(), "agent dial_tcp "+addr+": ") {
		t.Errorf("error %q, want it prefixed with the op and address", err)
	}
}

func TestDialTCPBadArgs(t *testing.T) {
	c := startClient(t)
	for _, tc := range []struct {
		host string
		port int
		want string // in the message
	}{
		{"", 0, "port 0"},
		{"", -1, "port -1"},
		{"", 65536, "port 65536"},
		{"", 1 << 40, "port 1099511627776"},
		{strings.Repeat("h", maxDialHost+1), 80, "longer than"},
	} {
		_, err := c.DialTCP(testContext(t), tc.host, tc.port)
		var ae *Error
		if !errors.As(err, &ae) || ae.Code != CodeBadRequest || !strings.Contains(ae.Message, tc.want) {
			t.Errorf("DialTCP(%.10q, %d) = %v, want an *Error with code %q mentioning %q", tc.host, tc.port, err, CodeBadRequest, tc.want)
		}
	}
	// Any host the guest can reach is allowed. This one is no domain
	// name, which the resolver knows without asking a name server.
	_, err := c.DialTCP(testContext(t), "no host!", 80)
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != CodeNetwork || !strings.Contains(ae.Message, "no host!:80") {
		t.Errorf("DialTCP to an unknown host = %v, want an *Error with code %q naming it", err, CodeNetwork)
	}
}

func TestDialTCPOnOldAgent(t *testing.T) {
	c := &Client{Dial: unixDialer(oldAgent(t))}
	_, err := c.DialTCP(testContext(t), "", 80)
	var old *AgentTooOldError
	if !errors.As(err, &old) {
		t.Fatalf("DialTCP on a version 1 agent = %v, want an *AgentTooOldError", err)
	}
	want := AgentTooOldError{Op: "dial_tcp", AgentVersion: "v0.1.0", SchemaVersion: 1, MinSchemaVersion: DialTCPSchemaVersion}
	if *old != want {
		t.Errorf("error = %+v, want %+v", *old, want)
	}
	if !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), "upgrade") {
		t.Errorf("error %q: want errors.ErrUnsupported, and to say upgrade", err)
	}
}

// TestDialTCPGuestResets has the guest's end reset the connection: the
// host's Read fails with the agent's error.
func TestDialTCPGuestResets(t *testing.T) {
	port := guestListen(t, func(c *net.TCPConn) {
		io.ReadFull(c, make([]byte, 5))
		c.SetLinger(0) // Close sends a reset
	})
	conn := dialTCP(t, startClient(t), port)
	io.WriteString(conn, "hello")
	_, err := io.ReadAll(conn)
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != CodeNetwork || !strings.Contains(ae.Message, "reset") {
		t.Fatalf("ReadAll after a reset = %v, want an *Error with code %q", err, CodeNetwork)
	}
}

// TestDialTCPReadDeadline checks that a Read deadline leaves the stream
// intact, also when it strikes inside a frame.
func TestDialTCPReadDeadline(t *testing.T) {
	port := guestListen(t, echo)
	conn := dialTCP(t, startClient(t), port)
	conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline = %v, want os.ErrDeadlineExceeded", err)
	}
	conn.SetReadDeadline(time.Time{})
	io.WriteString(conn, "intact")
	closeWrite(t, conn)
	if got, err := io.ReadAll(conn); err != nil || string(got) != "intact" {
		t.Fatalf("read %q, %v after a deadline; want %q", got, err, "intact")
	}

	// A fake agent that sends its frames a few bytes at a time, slowly.
	var stream bytes.Buffer
	WriteFrame(&stream, FrameStdout, []byte("split across"))
	WriteFrame(&stream, FrameStdout, []byte(" deadlines"))
	WriteFrame(&stream, FrameStdoutEOF, nil)
	path := fakePeer(t, func(c net.Conn) {
		ReadFrame(c)
		WriteFrame(c, FrameConnected, []byte(`{"remote_addr":"127.0.0.1:80"}`))
		for b := stream.Bytes(); len(b) > 0; b = b[min(3, len(b)):] {
			time.Sleep(5 * time.Millisecond)
			c.Write(b[:min(3, len(b))])
		}
		stall(c)
	})
	conn = dialTCP(t, &Client{Dial: unixDialer(path)}, 80)
	var got []byte
	buf := make([]byte, 4)
	timeouts := 0
	for {
		conn.SetReadDeadline(time.Now().Add(2 * time.Millisecond))
		n, err := conn.Read(buf)
		got = append(got, buf[:n]...)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			timeouts++
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Read: %v (after %q)", err, got)
		}
	}
	if string(got) != "split across deadlines" || timeouts == 0 {
		t.Fatalf("read %q with %d timeouts, want %q and some timeouts", got, timeouts, "split across deadlines")
	}
}

// TestDialTCPClientRejectsBadAnswers has a fake agent misbehave, before and
// after it connects.
func TestDialTCPClientRejectsBadAnswers(t *testing.T) {
	connected := frame(FrameConnected, `{"remote_addr":"127.0.0.1:80"}`)
	cat := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	for _, tc := range []struct {
		name     string
		answer   []byte
		dialErr  string // substring of DialTCP's error, or "" if it succeeds
		readErr  string // substring of the error of reading everything
		readSome string // what is read before the error
	}{
		{name: "close", answer: nil, dialErr: "connection closed without a response"},
		{name: "stdout first", answer: frame(FrameStdout, "x"), dialErr: "unexpected stdout frame"},
		{name: "response first", answer: frame(FrameResponse, "{}"), dialErr: "unexpected response frame"},
		{name: "bad connected json", answer: frame(FrameConnected, "{"), dialErr: "decode connected frame"},
		{name: "bad remote addr", answer: frame(FrameConnected, `{"remote_addr":"somewhere"}`), dialErr: "remote_addr"},
		{name: "oversize", answer: []byte("\x09\xff\xff\xff\xff"), dialErr: "exceeds maximum"},
		{name: "agent error", answer: frame(FrameError, `{"code":"brand_new","message":"no"}`), dialErr: "agent dial_tcp 127.0.0.1:80: no (brand_new)"},
		{name: "closed mid-stream", answer: cat(connected, frame(FrameStdout, "abc")),
			readErr: "connection closed before the end of the stream", readSome: "abc"},
		{name: "truncated payload", answer: cat(connected, frame(FrameStdout, "abcdef")[:7]),
			readErr: "unexpected EOF", readSome: "ab"},
		{name: "truncated header", answer: cat(connected, []byte{4, 0}),
			readErr: "frame header: unexpected EOF"},
		{name: "stderr frame", answer: cat(connected, frame(FrameStderr, "x")),
			readErr: "unexpected stderr frame"},
		{name: "response before eof", answer: cat(connected, frame(FrameResponse, "{}")),
			readErr: "unexpected response frame"},
		{name: "eof with payload", answer: cat(connected, frame(FrameStdoutEOF, "x")),
			readErr: "unexpected stdout-eof frame of 1 bytes"},
		{name: "oversize in stream", answer: cat(connected, []byte("\x04\x00\x10\x00\x01")),
			readErr: "exceeds maximum"},
		{name: "error in stream", answer: cat(connected, frame(FrameStdout, "abc"), frame(FrameError, `{"code":"network","message":"gone"}`)),
			readErr: "agent dial_tcp 127.0.0.1:80: gone (network)", readSome: "abc"},
		{name: "truncated error", answer: cat(connected, frame(FrameError, `{"code":"network"}`)[:9]),
			readErr: "error frame payload"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := fakePeer(t, func(c net.Conn) {
				if _, _, err := ReadFrame(c); err != nil {
					t.Errorf("fake agent: read request: %v", err)
				}
				c.Write(tc.answer)
			})
			conn, err := (&Client{Dial: unixDialer(path)}).DialTCP(testContext(t), "", 80)
			if tc.dialErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.dialErr) {
					t.Fatalf("DialTCP = %v, want an error containing %q", err, tc.dialErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("DialTCP: %v", err)
			}
			defer conn.Close()
			got, err := io.ReadAll(conn)
			if err == nil || !strings.Contains(err.Error(), tc.readErr) || string(got) != tc.readSome {
				t.Fatalf("ReadAll = %q, %v; want %q and an error containing %q", got, err, tc.readSome, tc.readErr)
			}
			if _, err2 := conn.Read(make([]byte, 1)); err2 == nil || err2.Error() != err.Error() {
				t.Errorf("Read after the failure = %v, want the same error again", err2)
			}
		})
	}
}

// startRawDialTCP sends a dial_tcp request on a new connection to the agent
// at path, checks that it connects, and returns the connection.
func startRawDialTCP(t *testing.T, path string, port int) net.Conn {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := json.Marshal(&dialTCPArgs{Port: port})
	req, _ := json.Marshal(&Request{Op: opDialTCP, Args: b})
	if err := WriteFrame(conn, FrameRequest, req); err != nil {
		t.Fatal(err)
	}
	if typ, p, err := ReadFrame(conn); err != nil || typ != FrameConnected {
		t.Fatalf("answer %v %q %v, want a connected frame", typ, p, err)
	}
	return conn
}

// TestDialTCPFrameSequence checks the agent's frames for a whole exchange,
// ended by both sides: the guest's end first.
func TestDialTCPFrameSequence(t *testing.T) {
	port := guestListen(t, func(c *net.TCPConn) {
		io.WriteString(c, "bye")
		c.CloseWrite()
		io.Copy(io.Discard, c)
	})
	conn := startRawDialTCP(t, startServer(t), port)
	var got []string
	for {
		typ, p, err := ReadFrame(conn)
		if err != nil {
			t.Fatalf("read: %v after %q", err, got)
		}
		got = append(got, fmt.Sprintf("%v %s", typ, p))
		if typ == FrameStdoutEOF {
			break
		}
	}
	WriteFrame(conn, FrameStdin, []byte("x"))
	WriteFrame(conn, FrameStdinEOF, nil)
	typ, p, err := ReadFrame(conn)
	got = append(got, fmt.Sprintf("%v %s", typ, p))
	if want := []string{"stdout bye", "stdout-eof ", "response {}"}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("frames %q, %v; want %q", got, err, want)
	}
}

func TestDialTCPProtocolErrors(t *testing.T) {
	path := startServer(t)
	// The guest's end keeps its side open, so that the exchange goes on
	// after the host's stdin-eof.
	hold := make(chan struct{})
	port := guestListen(t, func(c *net.TCPConn) {
		io.Copy(io.Discard, c)
		<-hold
	})
	t.Cleanup(func() { close(hold) }) // before guestListen's cleanup waits for the handler
	for _, tc := range []struct {
		name   string
		frames [][]byte
		want   string
	}{
		{"signal", [][]byte{frame(FrameSignal, `{"signal":9}`)}, "unexpected signal frame"},
		{"stdin after eof", [][]byte{frame(FrameStdinEOF, ""), frame(FrameStdin, "x")}, "unexpected stdin frame after stdin-eof"},
		{"second eof", [][]byte{frame(FrameStdinEOF, ""), frame(FrameStdinEOF, "")}, "unexpected stdin-eof frame after stdin-eof"},
		{"oversize", [][]byte{[]byte("\x03\x00\x10\x00\x01")}, "exceeds maximum"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := startRawDialTCP(t, path, port)
			for _, f := range tc.frames {
				conn.Write(f)
			}
			_, typ, p := readRawAnswer(t, conn)
			var e Error
			if typ != FrameError || json.Unmarshal(p, &e) != nil || e.Code != CodeProtocol || !strings.Contains(e.Message, tc.want) {
				t.Fatalf("answer %v %s, want a protocol error containing %q", typ, p, tc.want)
			}
		})
	}
}

// TestServeStopClosesDialTCP stops the server while a connection is up: the
// guest's end sees it close and the host's Read fails.
func TestServeStopClosesDialTCP(t *testing.T) {
	ended := make(chan struct{})
	port := guestListen(t, func(c *net.TCPConn) {
		io.Copy(io.Discard, c)
		close(ended)
	})
	l, path := listenUnix(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- (&Server{Logger: testLogger(t)}).Serve(ctx, l) }()
	conn := dialTCP(t, &Client{Dial: unixDialer(path)}, port)

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return with a dial_tcp connection up")
	}
	<-ended
	_, err := io.ReadAll(conn)
	var ae *Error
	if !errors.As(err, &ae) || !strings.Contains(ae.Message, "stopping") {
		t.Fatalf("ReadAll = %v, want the agent's stopping error", err)
	}
}

// TestDialTCPLeavesNoGoroutines makes connections that end in every way,
// and checks that the goroutines they started, the server's included, are
// gone once they have.
func TestDialTCPLeavesNoGoroutines(t *testing.T) {
	echoPort := guestListen(t, echo)
	resetPort := guestListen(t, func(c *net.TCPConn) {
		// Reset only once the connection is surely up: a reset during
		// the handshake fails the dial instead.
		io.ReadFull(c, make([]byte, 1))
		c.SetLinger(0)
	})
	quietPort := guestListen(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	c := startClient(t)
	before := runtime.NumGoroutine()

	// Both sides close their sending sides.
	conn := dialTCP(t, c, echoPort)
	io.WriteString(conn, "x")
	closeWrite(t, conn)
	io.ReadAll(conn)
	conn.Close()
	// The host closes while nothing moves, and while the guest sends.
	conn = dialTCP(t, c, quietPort)
	io.WriteString(conn, "x")
	conn.Close()
	conn = dialTCP(t, c, echoPort)
	io.WriteString(conn, strings.Repeat("x", 256<<10)) // less than the buffers on the way hold
	conn.Close()
	// The guest's end resets the connection.
	conn = dialTCP(t, c, resetPort)
	io.WriteString(conn, "x")
	io.ReadAll(conn)
	conn.Close()
	// Dials that fail.
	c.DialTCP(testContext(t), "", closedPort(t))
	c.DialTCP(testContext(t), "", 0)

	var now int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if now = runtime.NumGoroutine(); now <= before {
			return
		}
	}
	buf := make([]byte, 1<<20)
	t.Fatalf("%d goroutines before, %d after:\n%s", before, now, buf[:runtime.Stack(buf, true)])
}
