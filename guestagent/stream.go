package guestagent

import (
	"net"
	"sync"
	"time"
)

// frameWriter writes whole frames to a connection on behalf of any number
// of goroutines, one frame at a time. A write that fails may leave part of
// a frame on the connection, after which nothing more can be sent that the
// peer would understand: every later write fails with the same error.
type frameWriter struct {
	conn net.Conn

	mu sync.Mutex // held while a frame is written
	// timeout, if positive, is how long each frame may take to write: the
	// writer sets the connection's write deadline before every frame. It
	// is guarded by mu once the writer is shared.
	timeout time.Duration
	err     error // the first write error, guarded by mu
}

// setTimeout changes the timeout of the frames written from now on. Zero
// means none: it clears the connection's write deadline, so that frames
// wait for the peer for as long as it takes.
func (w *frameWriter) setTimeout(d time.Duration) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.timeout = d
	if d > 0 {
		return nil
	}
	return w.conn.SetWriteDeadline(time.Time{})
}

// write sends one frame, or fails if an earlier one failed.
func (w *frameWriter) write(typ FrameType, payload []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	if w.timeout > 0 {
		if err := w.conn.SetWriteDeadline(time.Now().Add(w.timeout)); err != nil {
			w.err = err
			return err
		}
	}
	w.err = WriteFrame(w.conn, typ, payload)
	return w.err
}
