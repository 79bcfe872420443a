package net

import (
	"errors"
	"fmt"
	stdnet "net"
	"syscall"
	"time"
)

// dialTimeout bounds the connection to the host network's socket: a
// peer whose backlog is full makes connect wait.
const dialTimeout = 5 * time.Second

// Dial connects to the host network's Unix SOCK_SEQPACKET socket at path.
// The VMM does so at start-up, before its seccomp filter and Landlock
// rules apply; neither is asked to allow it later.
func Dial(path string) (*stdnet.UnixConn, error) {
	if path == "" {
		return nil, errors.New("virtio-net: no socket path")
	}
	d := stdnet.Dialer{Timeout: dialTimeout}
	c, err := d.Dial("unixpacket", path)
	if err != nil {
		return nil, fmt.Errorf("virtio-net: connect to the network socket %s (SOCK_SEQPACKET): %w", path, err)
	}
	return c.(*stdnet.UnixConn), nil
}

// readLoop receives the peer's messages, one frame each, and hands them
// to the event loop until the link ends.
func (d *Device) readLoop() {
	for {
		buf := d.rxPool.get(d.done)
		if buf == nil {
			return
		}
		n, _, flags, _, err := d.conn.ReadMsgUnix(buf, nil)
		switch {
		case err != nil || n == 0:
			// A SOCK_SEQPACKET socket reads 0 bytes at the peer's end
			// (recvmsg cannot tell an empty message from it: a peer must
			// not send one).
			d.rxPool.put(buf)
			if err == nil {
				err = errors.New("the peer closed the link")
			}
			d.lose(err)
			return
		case flags&syscall.MSG_TRUNC != 0 || n < MinFrame:
			d.rxPool.put(buf)
			d.stats.rxInvalid.Add(1)
			d.guestLog.Warn("virtio-net: dropping a message from the peer that is not a frame", "bytes", n, "truncated", flags&syscall.MSG_TRUNC != 0)
			continue
		}
		select {
		case d.rx <- buf[:n]:
		case <-d.done:
			return
		}
	}
}

// writeLoop sends the frames the event loop copied out of the transmit
// queue, one message each, and gives their buffers back.
func (d *Device) writeLoop() {
	for {
		select {
		case f := <-d.out:
			d.send(f.frame)
			f.pool.put(f.buf)
			d.notify() // the loop may wait for a buffer
		case <-d.done:
			return
		}
	}
}

// send sends one frame, or counts it dropped.
func (d *Device) send(frame []byte) {
	if d.stats.peerGone.Load() {
		d.stats.txDropped.Add(1)
		return
	}
	if _, err := d.conn.Write(frame); err != nil {
		d.stats.txDropped.Add(1)
		if linkGone(err) {
			d.lose(err)
		} else {
			d.guestLog.Warn("virtio-net: the socket refused a frame", "bytes", len(frame), "err", err)
		}
		return
	}
	d.stats.txFrames.Add(1)
	d.stats.txBytes.Add(uint64(len(frame)))
}

// linkGone reports whether a write error means the peer is gone.
func linkGone(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ENOTCONN) || errors.Is(err, stdnet.ErrClosed)
}

// lose marks the link gone, logging it the first time, unless the device
// is closing (which ends the link itself).
func (d *Device) lose(err error) {
	if d.closing() {
		return
	}
	if d.stats.peerGone.CompareAndSwap(false, true) {
		d.log.Warn("virtio-net: the network peer went away; the link drops every frame from now on", "err", err)
	}
}
