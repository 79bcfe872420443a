package net

import (
	"errors"
	"fmt"
	"io"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/virtio"
)

// loop is the event loop's state. Only the loop goroutine (run) touches
// it, and the functions it runs for others (call, post).
type loop struct {
	d *Device

	// The driver's, from Activate until Reset; nil while not active.
	mem      devices.GuestMemory
	rxq, txq *virtio.Queue
	signal   func() error
	offloads txOffloads      // the transmit offloads the driver accepted
	returned [numQueues]bool // chains returned since the last interrupt

	// pending are frames from the peer waiting for receive buffers,
	// oldest first, in rxPool's buffers.
	pending frameQueue
}

func (l *loop) active() bool { return l.txq != nil }

// deactivate lets go of the driver's queues and drops the frames held
// for it.
func (l *loop) deactivate() {
	l.mem, l.rxq, l.txq, l.signal = nil, nil, nil, nil
	l.offloads = 0
	l.returned = [numQueues]bool{}
	for l.pending.len() > 0 {
		l.drop(l.pending.pop())
	}
}

// run is the event loop. After every event it moves what it can between
// the driver's queues and the link.
func (d *Device) run() {
	l := &loop{d: d}
	defer l.deactivate()
	for {
		select {
		case <-d.done:
			return
		case <-d.kick:
		case f := <-d.events:
			f(l)
		case frame := <-d.rx:
			l.received(frame)
			// Take what else came, so that one pass (and one interrupt)
			// serves a burst.
			for more := true; more; {
				select {
				case frame := <-d.rx:
					l.received(frame)
				default:
					more = false
				}
			}
		}
		l.pump()
	}
}

// received queues a frame from the peer for the guest, or drops it.
func (l *loop) received(frame []byte) {
	if !l.active() || l.pending.len() == maxHeld-rxHandoff {
		l.drop(frame)
		return
	}
	l.pending.push(frame)
}

// drop counts a frame from the peer as dropped and frees its buffer.
func (l *loop) drop(frame []byte) {
	l.d.stats.rxDropped.Add(1)
	l.d.rxPool.put(frame)
}

// pump sends what the driver transmitted, delivers what the peer sent
// into the driver's receive buffers, and interrupts the driver.
func (l *loop) pump() {
	if !l.active() {
		return
	}
	l.transmit()
	l.deliver()
	l.interrupt()
}

// transmit copies the frames of the transmit queue's chains out and hands
// them to the writer, returning each chain at once. It stops at a chain
// whose buffer pool has every buffer waiting for the socket, leaving it
// for the next pass: the writer's next send wakes the loop again.
func (l *loop) transmit() {
	for {
		c, ok, err := l.txq.Pop(l.mem)
		if !ok {
			if err != nil {
				l.d.guestLog.Warn("virtio-net: transmit queue", "err", err)
			}
			return
		}
		var pool *bufPool
		if err == nil {
			pool, err = l.txPoolFor(&c)
		}
		var buf, frame []byte
		if err == nil {
			if buf = pool.tryGet(); buf == nil {
				l.txq.PutBack()
				return
			}
			frame, err = readTx(l.mem, &c, buf, l.offloads)
		}
		if perr := l.push(txQueue, c.Head, 0); perr != nil {
			if buf != nil {
				pool.put(buf)
			}
			l.d.guestLog.Warn("virtio-net: return transmit chain", "err", perr)
			return
		}
		if err != nil {
			if buf != nil {
				pool.put(buf)
			}
			l.d.stats.txInvalid.Add(1)
			l.d.guestLog.Warn("virtio-net: dropping transmit chain", "head", c.Head, "err", err)
			continue
		}
		l.d.out <- txFrame{buf: buf, frame: frame, pool: pool} // never blocks: out holds every buffer
	}
}

// txPoolFor returns the pool whose buffers hold chain c's packet: txPool
// up to MaxFrame, tsoPool past it if the driver accepted TSO. A chain that
// cannot be a packet needs none.
func (l *loop) txPoolFor(c *virtio.Chain) (*bufPool, error) {
	if len(c.Writable) > 0 {
		return nil, errors.New("a transmit chain with device-writable buffers")
	}
	switch n := c.ReadableLen(); {
	case n <= hdrSize+MaxFrame:
		return l.d.txPool, nil
	case n <= hdrSize+uint64(l.offloads.maxFrame(gsoTCPv4)):
		return l.d.tsoPool, nil
	default:
		return nil, fmt.Errorf("%w: %d bytes with the header", errOversize, n)
	}
}

// readTx reads the transmitted packet of chain c, which fits buf, into
// buf and returns its frame, checked and with its checksum completed
// under the offloads o (parseTx).
func readTx(mem devices.GuestMemory, c *virtio.Chain, buf []byte, o txOffloads) ([]byte, error) {
	p := buf[:c.ReadableLen()]
	if _, err := io.ReadFull(c.Reader(mem), p); err != nil {
		return nil, err
	}
	return parseTx(p, o)
}

// deliver writes the frames held for the guest into its receive buffers,
// oldest first, while both exist.
func (l *loop) deliver() {
	for l.pending.len() > 0 {
		c, ok, err := l.rxq.Pop(l.mem)
		if !ok {
			if err != nil {
				l.d.guestLog.Warn("virtio-net: receive queue", "err", err)
			}
			return
		}
		if err != nil {
			l.d.guestLog.Warn("virtio-net: dropping receive chain", "head", c.Head, "err", err)
			if !l.returnRx(c.Head, 0) {
				return
			}
			continue
		}
		frame := l.pending.peek()
		room := c.WritableLen()
		switch {
		case room < hdrSize+MinFrame:
			// No frame fits: the chain goes back unused.
			l.d.guestLog.Warn("virtio-net: receive chain too small for any frame", "head", c.Head, "bytes", room)
			if !l.returnRx(c.Head, 0) {
				return
			}
			continue
		case room < hdrSize+uint64(len(frame)):
			// This frame does not fit; the next may. The chain stays the
			// driver's next.
			l.rxq.PutBack()
			l.d.guestLog.Warn("virtio-net: dropping a frame larger than the receive buffer", "frame", len(frame), "buffer", room)
			l.drop(l.pending.pop())
			continue
		}
		w := c.Writer(l.mem)
		_, err = w.Write(rxHeader[:])
		if err == nil {
			_, err = w.Write(frame)
		}
		l.pending.pop()
		if err != nil {
			// Pop checked the buffers; guest memory still refused.
			l.drop(frame)
			l.d.guestLog.Warn("virtio-net: write receive chain", "head", c.Head, "err", err)
			if !l.returnRx(c.Head, 0) {
				return
			}
			continue
		}
		n := len(frame)
		l.d.rxPool.put(frame)
		ok = l.returnRx(c.Head, w.Written())
		// Counted once returned, so that a test seeing the count sees
		// the buffer.
		l.d.stats.rxBytes.Add(uint64(n))
		l.d.stats.rxFrames.Add(1)
		if !ok {
			return
		}
	}
}

// returnRx returns a receive chain; it reports false if the queue is
// unusable until the driver's next notification.
func (l *loop) returnRx(head uint16, written uint32) bool {
	if err := l.push(rxQueue, head, written); err != nil {
		l.d.guestLog.Warn("virtio-net: return receive chain", "err", err)
		return false
	}
	return true
}

// push returns the chain at head of queue index to the driver.
func (l *loop) push(index int, head uint16, written uint32) error {
	q := l.rxq
	if index == txQueue {
		q = l.txq
	}
	if err := q.PushUsed(l.mem, head, written); err != nil {
		return err
	}
	l.returned[index] = true
	return nil
}

// interrupt raises the used-buffer interrupt if chains were returned
// since the last call and the driver wants to hear of it.
func (l *loop) interrupt() {
	want := false
	for i, q := range [numQueues]*virtio.Queue{l.rxq, l.txq} {
		if l.returned[i] && q.NeedsInterrupt(l.mem) {
			want = true
		}
		l.returned[i] = false
	}
	if !want {
		return
	}
	if err := l.signal(); err != nil {
		l.d.log.Error("virtio-net: used-buffer interrupt", "err", err)
	}
}

// frameQueue is a FIFO of at most maxHeld-rxHandoff frames.
type frameQueue struct {
	ring       [maxHeld - rxHandoff][]byte
	head, size int
}

func (q *frameQueue) len() int { return q.size }

func (q *frameQueue) push(f []byte) {
	q.ring[(q.head+q.size)%len(q.ring)] = f
	q.size++
}

func (q *frameQueue) peek() []byte { return q.ring[q.head] }

func (q *frameQueue) pop() []byte {
	f := q.ring[q.head]
	q.ring[q.head] = nil
	q.head = (q.head + 1) % len(q.ring)
	q.size--
	return f
}
