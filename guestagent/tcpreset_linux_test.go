package guestagent

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A connection whose peer vanished without a word (as the host's network
// does across a restore: here the peer socket is closed in TCP_REPAIR
// mode, which sends nothing) hangs its reader until it is probed; the
// probe has it reset by the peer's stack, which knows it no more.
func TestProbeResetsDeadConnection(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_RAW for the probe, CAP_NET_ADMIN for TCP_REPAIR): run the test as root")
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	client, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := server.Write([]byte("half")); err != nil {
		t.Fatal(err)
	}
	raw, _ := server.(*net.TCPConn).SyscallConn()
	var serr error
	raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_TCP, unix.TCP_REPAIR, 1) })
	if serr != nil {
		t.Fatalf("TCP_REPAIR: %v", serr)
	}
	server.Close()

	buf := make([]byte, 16)
	if n, err := client.Read(buf); n != 4 || err != nil {
		t.Fatalf("read %d, %v; want the 4 bytes sent", n, err)
	}
	// Nothing comes, nothing tells the client: it would wait for ever.
	client.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := client.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read from the dead connection before the probe: %v, want nothing", err)
	}
	c := tcpSocket{
		Local:  client.LocalAddr().(*net.TCPAddr).AddrPort(),
		Remote: client.RemoteAddr().(*net.TCPAddr).AddrPort(),
		State:  tcpEstablished,
	}
	if n, err := probeConnections([]tcpSocket{c}); n != 1 || err != nil {
		t.Fatalf("probeConnections = %d, %v", n, err)
	}
	// A bound on a failure only: the reset is at once.
	client.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := client.Read(buf); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after the probe: %v, want ECONNRESET", err)
	}
}

// A probe of a live connection (one made after the restore, before the
// probe) changes nothing: both ends go on, no byte lost.
func TestProbeLeavesLiveConnection(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_RAW for the probe): run the test as root")
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	c := tcpSocket{
		Local:  client.LocalAddr().(*net.TCPAddr).AddrPort(),
		Remote: client.RemoteAddr().(*net.TCPAddr).AddrPort(),
		State:  tcpEstablished,
	}
	for range 3 {
		if n, err := probeConnections([]tcpSocket{c}); n != 1 || err != nil {
			t.Fatalf("probeConnections = %d, %v", n, err)
		}
	}
	msg := []byte("still here")
	for _, pair := range [][2]net.Conn{{client, server}, {server, client}} {
		if _, err := pair[0].Write(msg); err != nil {
			t.Fatalf("write after the probe: %v", err)
		}
		buf := make([]byte, len(msg))
		pair[1].SetReadDeadline(time.Now().Add(time.Minute)) // a bound on a failure only
		if _, err := io.ReadFull(pair[1], buf); err != nil || string(buf) != string(msg) {
			t.Fatalf("read after the probe: %q, %v", buf, err)
		}
	}
}
