package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// testTimeout bounds every wait; the tests assert nothing about elapsed
// time below it.
const testTimeout = 10 * time.Second

const testBox = "sb-test"

// fakeGuest stands in for a guest port reached through the agent: a
// loopback TCP listener whose accepted connections, the guest's ends,
// the test holds and drives. Like the agent's connections, the host's
// ends half-close.
type fakeGuest struct {
	ln    net.Listener
	conns chan net.Conn // guest ends, as accepted
}

func newFakeGuest(t *testing.T) *fakeGuest {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &fakeGuest{ln: ln, conns: make(chan net.Conn, 64)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for {
			select {
			case c := <-g.conns:
				c.Close()
			default:
				return
			}
		}
	})
	return g
}

// dial is the forwards' dial: it reaches the fake guest port.
func (g *fakeGuest) dial(ctx context.Context, box string, guestPort int) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", g.ln.Addr().String())
}

// accept returns the guest's end of the next forwarded connection.
func (g *fakeGuest) accept(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-g.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(testTimeout):
		t.Fatalf("no forwarded connection reached the guest within %v", testTimeout)
		return nil
	}
}

// startForwards exposes a loopback port of testBox whose connections go
// to g; tune, if not nil, shrinks the forwards' limits first. It returns
// the forwards and the exposed address.
func startForwards(t *testing.T, g *fakeGuest, tune func(*forwards)) (*forwards, string) {
	t.Helper()
	f := &forwards{}
	f.setup(slog.New(slog.DiscardHandler), g.dial)
	if tune != nil {
		tune(f)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().(*net.TCPAddr)
	f.serve(testBox, catalog.Port{HostAddr: addr.String(), HostPort: addr.Port, GuestPort: 8080}, l)
	t.Cleanup(func() { closeWithin(t, f) })
	return f, addr.String()
}

// closeWithin runs closeAll, which Manager.Close runs, and fails the test
// if it has not returned within testTimeout.
func closeWithin(t *testing.T, f *forwards) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		f.closeAll()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatalf("closing the forwards did not return within %v", testTimeout)
	}
}

// connect opens a client connection to the exposed address.
func connect(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// send writes msg on from and checks that to reads it.
func send(t *testing.T, from, to net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(from, msg); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	to.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(to, buf); err != nil || string(buf) != msg {
		t.Fatalf("read %q, %v; want %q", buf, err, msg)
	}
}

// expectClosed checks that c's peer closes it, with nothing more sent.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testTimeout))
	n, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection still open after %v", testTimeout)
	}
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read from a connection expected closed: %v", err)
	}
	if n > 0 {
		t.Fatalf("read %d bytes from a connection expected closed", n)
	}
}

// A guest that holds a forwarded connection open without sending, after
// the client has finished, must not hold up Close: it closes both ends.
func TestForwardCloseWithSilentGuest(t *testing.T) {
	g := newFakeGuest(t)
	f, addr := startForwards(t, g, nil)
	client := connect(t, addr)
	guest := g.accept(t)
	send(t, client, guest, "ping")
	send(t, guest, client, "pong")
	// The client is done sending; the guest hears EOF and stays silent.
	if err := client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, guest)

	closeWithin(t, f)
	expectClosed(t, client)
}

// A forwarded connection on which nothing moves for the idle timeout is
// closed, both ends.
func TestForwardIdleTimeout(t *testing.T) {
	g := newFakeGuest(t)
	_, addr := startForwards(t, g, func(f *forwards) { f.idleTimeout = 50 * time.Millisecond })
	client := connect(t, addr)
	guest := g.accept(t)
	send(t, client, guest, "ping")
	send(t, guest, client, "pong")
	expectClosed(t, client)
	expectClosed(t, guest)
}

// A box's exposed ports hold at most maxConnsPerBox connections: past it
// a client is closed without reaching the guest, and a connection that
// ends makes room for another.
func TestForwardConnectionCap(t *testing.T) {
	g := newFakeGuest(t)
	f, addr := startForwards(t, g, func(f *forwards) { f.maxConnsPerBox = 2 })
	// One at a time: two connections made at once may reach the guest
	// in either order.
	c1 := connect(t, addr)
	g1 := g.accept(t)
	c2 := connect(t, addr)
	g2 := g.accept(t)
	send(t, c1, g1, "one")
	send(t, c2, g2, "two")

	expectClosed(t, connect(t, addr))
	select {
	case <-g.conns:
		t.Fatal("a connection past the cap reached the guest")
	default:
	}

	c1.Close()
	g1.Close()
	waitOpen(t, f, 1)
	c3 := connect(t, addr)
	send(t, c3, g.accept(t), "three")
}

// waitOpen waits until testBox has n forwarded connections open.
func waitOpen(t *testing.T, f *forwards, n int) {
	t.Helper()
	for deadline := time.Now().Add(testTimeout); ; time.Sleep(time.Millisecond) {
		f.mu.Lock()
		open := f.openConns(testBox)
		f.mu.Unlock()
		if open == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections open after %v, want %d", open, testTimeout, n)
		}
	}
}
