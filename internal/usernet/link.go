package usernet

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// frameConn is the VMM's connection as the switch sees it: one Ethernet
// frame a message. It counts frames, drops frames from the guest too
// short to be Ethernet (the switch would read past them), and never lets
// a VMM that stops reading stall the stack: a frame to the guest that
// cannot be written within stallTimeout is dropped, and from then on
// frames are dropped at once while the socket is full, until one goes
// through.
type frameConn struct {
	*net.UnixConn
	c *counters

	// congested: the last frame to the guest timed out; only the
	// switch's writer (one at a time, under its lock) uses it.
	congested atomic.Bool
}

// stallTimeout is how long a frame to the guest may wait for the VMM.
const stallTimeout = time.Second

func (f *frameConn) Read(b []byte) (int, error) {
	for {
		n, err := f.UnixConn.Read(b)
		if err != nil {
			return n, err
		}
		if n == 0 {
			// A zero-length message is how a SOCK_SEQPACKET peer's
			// shutdown reads.
			return 0, errors.New("the VMM closed the connection")
		}
		if n < header.EthernetMinimumSize {
			f.c.framesDropped.Add(1)
			continue
		}
		f.c.framesOut.Add(1)
		f.c.bytesOut.Add(uint64(n))
		return n, nil
	}
}

func (f *frameConn) Write(b []byte) (int, error) {
	if f.congested.Load() {
		// The deadline that timed out is still set: the raw write would
		// fail on it before trying, and the switch would drop the link.
		f.UnixConn.SetWriteDeadline(time.Time{})
		err := f.tryWrite(b)
		if errors.Is(err, syscall.EAGAIN) {
			f.c.framesDropped.Add(1)
			return len(b), nil
		}
		if err != nil {
			return 0, err
		}
		f.congested.Store(false)
		f.sent(b)
		return len(b), nil
	}
	f.UnixConn.SetWriteDeadline(time.Now().Add(stallTimeout))
	n, err := f.UnixConn.Write(b)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		f.congested.Store(true)
		f.c.framesDropped.Add(1)
		return len(b), nil
	}
	if err == nil {
		f.sent(b)
	}
	return n, err
}

func (f *frameConn) sent(b []byte) {
	f.c.framesIn.Add(1)
	f.c.bytesIn.Add(uint64(len(b)))
}

// tryWrite sends b if the socket has room now, else fails with EAGAIN.
func (f *frameConn) tryWrite(b []byte) error {
	rc, err := f.UnixConn.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	if err := rc.Write(func(fd uintptr) bool {
		_, werr = syscall.Write(int(fd), b)
		return true // never wait: EAGAIN is the answer
	}); err != nil {
		return err
	}
	return werr
}
