package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/virtio"
)

var _ virtio.Device = (*Device)(nil)

// Activate hands the driver's queues to the event loop. It is called by
// the transport on a vCPU goroutine, under the transport's lock; the loop
// never takes that lock (signal does not), so waiting for it is safe.
func (d *Device) Activate(mem devices.GuestMemory, acked uint64, queues []*virtio.Queue, signal func() error) error {
	if len(queues) != numQueues {
		return fmt.Errorf("vsock: activate: %d queues, want %d", len(queues), numQueues)
	}
	vq := &virtqueues{mem: mem, q: [numQueues]*virtio.Queue(queues), signal: signal}
	return d.m.call(func(m *muxer) error {
		if m.q != nil {
			return errors.New("vsock: activate: already active")
		}
		m.q = vq
		return nil
	})
}

// virtqueues implements driverQueues over the driver's split virtqueues
// (spec §5.10.2). It belongs to the event loop from Activate until Reset.
type virtqueues struct {
	mem    devices.GuestMemory
	q      [numQueues]*virtio.Queue // by queue index
	signal func() error

	held     *virtio.Chain // rx chain taken by rxRoom and not yet filled
	returned [numQueues]bool
}

// popTx implements driverQueues. Tx chains are returned at once, with
// nothing written: their bytes are copied out.
func (v *virtqueues) popTx(buf []byte) (int, uint64, bool, error) {
	c, ok, err := v.q[txQueue].Pop(v.mem)
	if err != nil {
		return 0, 0, ok, v.drop(txQueue, c, ok, err)
	}
	if !ok {
		return 0, 0, false, nil
	}
	chainLen := c.ReadableLen()
	n, err := io.ReadFull(c.Reader(v.mem), buf[:min(uint64(len(buf)), chainLen)])
	if err != nil {
		return 0, 0, true, v.drop(txQueue, c, true, fmt.Errorf("tx chain %d: %w", c.Head, err))
	}
	if err := v.push(txQueue, c.Head, 0); err != nil {
		return 0, 0, true, err
	}
	return n, chainLen, true, nil
}

// rxRoom implements driverQueues.
func (v *virtqueues) rxRoom() (int, bool, error) {
	if v.held == nil {
		c, ok, err := v.q[rxQueue].Pop(v.mem)
		if err != nil {
			return 0, ok, v.drop(rxQueue, c, ok, err)
		}
		if !ok {
			return 0, false, nil
		}
		if c.WritableLen() < headerSize {
			return 0, true, v.drop(rxQueue, c, true,
				fmt.Errorf("rx chain %d: %d writable bytes, fewer than a %d-byte header", c.Head, c.WritableLen(), headerSize))
		}
		v.held = &c
	}
	return int(min(v.held.WritableLen()-headerSize, maxPayload)), true, nil
}

// putRx implements driverQueues.
func (v *virtqueues) putRx(h *header, payload []byte) error {
	c := v.held
	v.held = nil
	var b [headerSize]byte
	h.encode(b[:])
	w := c.Writer(v.mem)
	_, err := w.Write(b[:])
	if err == nil {
		_, err = w.Write(payload)
	}
	if err != nil {
		return v.drop(rxQueue, *c, true, fmt.Errorf("rx chain %d: write %s: %w", c.Head, h, err))
	}
	return v.push(rxQueue, c.Head, w.Written())
}

// putEvent implements driverQueues.
func (v *virtqueues) putEvent(id uint32) (bool, error) {
	c, ok, err := v.q[eventQueue].Pop(v.mem)
	if err != nil {
		return ok, v.drop(eventQueue, c, ok, err)
	}
	if !ok {
		return false, nil
	}
	var b [eventSize]byte
	binary.LittleEndian.PutUint32(b[:], id)
	w := c.Writer(v.mem)
	if _, err := w.Write(b[:]); err != nil {
		return true, v.drop(eventQueue, c, true, fmt.Errorf("event chain %d: write event %d: %w", c.Head, id, err))
	}
	return true, v.push(eventQueue, c.Head, w.Written())
}

// eventBuffers implements driverQueues.
func (v *virtqueues) eventBuffers() int {
	n, err := v.q[eventQueue].Available(v.mem)
	if err != nil {
		return 0
	}
	return int(n)
}

// interrupt implements driverQueues.
func (v *virtqueues) interrupt() error {
	want := false
	for i, q := range v.q {
		if v.returned[i] && q.NeedsInterrupt(v.mem) {
			want = true
		}
		v.returned[i] = false
	}
	if !want {
		return nil
	}
	if err := v.signal(); err != nil {
		return fmt.Errorf("used-buffer interrupt: %w", err)
	}
	return nil
}

// push returns the chain at head to the driver, written bytes filled.
func (v *virtqueues) push(index int, head uint16, written uint32) error {
	if err := v.q[index].PushUsed(v.mem, head, written); err != nil {
		return err
	}
	v.returned[index] = true
	return nil
}

// drop handles a chain the device cannot use: if one was taken (taken), it
// goes back to the driver unused. It returns cause, with any error in
// returning the chain.
func (v *virtqueues) drop(index int, c virtio.Chain, taken bool, cause error) error {
	if !taken {
		return cause
	}
	return errors.Join(cause, v.push(index, c.Head, 0))
}
