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
	// timeout, if positive, is how long each frame may take to write: the
	// writer sets the connection's write deadline before every frame.
	timeout time.Duration

	mu  sync.Mutex // held while a frame is written
	err error      // the first write error, guarded by mu
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
