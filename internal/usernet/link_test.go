package usernet

import (
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// seqpacketPair returns the two ends of a socketpair(AF_UNIX,
// SOCK_SEQPACKET): the network's and the VMM's.
func seqpacketPair(t *testing.T) (network, vmm *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "seqpacket")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// A VMM that stops reading for longer than stallTimeout (a guest that
// posts no receive buffers, a slow restore) costs frames, not the link:
// once it reads again, frames go through on the same connection.
func TestACongestedVMMKeepsItsLink(t *testing.T) {
	network, vmm := seqpacketPair(t)
	f := &frameConn{UnixConn: network, c: &counters{}}
	frame := make([]byte, 1514)
	for sent := 0; !f.congested.Load(); sent++ {
		if sent > 1<<16 {
			t.Fatal("the socket never filled")
		}
		if _, err := f.Write(frame); err != nil {
			t.Fatalf("write %d: %v", sent, err)
		}
	}
	// Congested: frames are dropped at once, with no error (an error
	// makes the switch drop the link).
	dropped := f.c.framesDropped.Load()
	for range 3 {
		if _, err := f.Write(frame); err != nil {
			t.Fatalf("write while congested: %v", err)
		}
	}
	if got := f.c.framesDropped.Load(); got != dropped+3 {
		t.Errorf("%d frames dropped while congested, want 3", got-dropped)
	}
	// The VMM reads again.
	buf := make([]byte, 2048)
	for {
		vmm.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := vmm.Read(buf); err != nil {
			break
		}
	}
	marked := append([]byte{0xee}, frame[1:]...)
	if _, err := f.Write(marked); err != nil || f.congested.Load() {
		t.Fatalf("write once the VMM reads: %v (congested %v)", err, f.congested.Load())
	}
	vmm.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := vmm.Read(buf); err != nil || n != len(marked) || buf[0] != 0xee {
		t.Fatalf("the VMM read %d bytes, %v; want the frame sent after the congestion", n, err)
	}
}
