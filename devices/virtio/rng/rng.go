// Package rng implements a virtio entropy device (virtio spec v1.2 §5.4):
// the guest posts device-writable buffers and the device fills them with
// random bytes from the host (crypto/rand).
package rng

import (
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/virtio"
	"github.com/sailbox-dev/sailbox/internal/guestlog"
)

// queueSize is the maximum size of the request queue (spec §5.4.2: one
// queue, requestq).
const queueSize = 64

// MaxRequest bounds the bytes written into one request: a driver asking
// for more gets MaxRequest. It also bounds the work one kick costs the
// vCPU that makes it, to queueSize × MaxRequest.
const MaxRequest = 64 << 10

// warnsPerSecond bounds the device's logs: a guest can make every request
// malformed, and so write a warning per request.
const warnsPerSecond = 10

// Entropy is a virtio entropy device. It implements virtio.Device. Requests
// are filled on the goroutine of the vCPU that kicks: getting random bytes
// is quick and bounded.
type Entropy struct {
	// Logger receives the device's logs: malformed requests, at most
	// warnsPerSecond a second. Nil discards them. Set it before the
	// device is activated.
	Logger *slog.Logger

	logLimit *guestlog.Limiter // set by New; one budget for the device's life

	// mu guards the fields below and serializes Activate, Notify and Reset.
	mu     sync.Mutex
	mem    devices.GuestMemory
	queue  *virtio.Queue // nil when not activated
	signal func() error
	buf    []byte // random bytes on their way to a request; MaxRequest long
}

// New returns an entropy device.
func New() *Entropy {
	return &Entropy{logLimit: guestlog.NewLimiter(warnsPerSecond, time.Second)}
}

// Type is virtio.TypeEntropy.
func (e *Entropy) Type() uint32 { return virtio.TypeEntropy }

// Features offers none: the device has no feature bits (spec §5.4.3).
func (e *Entropy) Features() uint64 { return 0 }

// QueueSizes lists the one request queue.
func (e *Entropy) QueueSizes() []uint16 { return []uint16{queueSize} }

// ReadConfig reads zeros: the device has no configuration space
// (spec §5.4.4).
func (e *Entropy) ReadConfig(offset uint64, data []byte) { clear(data) }

// WriteConfig ignores the write.
func (e *Entropy) WriteConfig(offset uint64, data []byte) {}

// Activate starts serving the request queue.
func (e *Entropy) Activate(mem devices.GuestMemory, acked uint64, queues []*virtio.Queue, signal func() error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.queue != nil:
		return errors.New("virtio-rng: activate: already active")
	case len(queues) != 1 || !queues[0].Ready:
		return errors.New("virtio-rng: activate: the request queue is not ready")
	}
	e.mem, e.queue, e.signal = mem, queues[0], signal
	if e.buf == nil {
		e.buf = make([]byte, MaxRequest)
	}
	return nil
}

// Notify fills every available request, returns them and interrupts the
// driver if it wants to know.
func (e *Entropy) Notify(index int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.queue == nil {
		return
	}
	returned := false
	for {
		c, ok, err := e.queue.Pop(e.mem)
		if !ok {
			if err != nil {
				e.logger().Warn("virtio-rng: request queue", "err", err)
			}
			break
		}
		var written uint32
		if err != nil {
			e.logger().Warn("virtio-rng: malformed request", "err", err)
		} else if written, err = e.fill(&c); err != nil {
			e.logger().Warn("virtio-rng: fill request", "head", c.Head, "err", err)
		}
		if err := e.queue.PushUsed(e.mem, c.Head, written); err != nil {
			e.logger().Warn("virtio-rng: return request", "err", err)
			break
		}
		returned = true
	}
	if returned && e.queue.NeedsInterrupt(e.mem) {
		if err := e.signal(); err != nil {
			e.logger().Warn("virtio-rng: interrupt", "err", err)
		}
	}
}

// fill writes random bytes into the chain's writable buffers, up to
// MaxRequest, and returns how many it wrote.
func (e *Entropy) fill(c *virtio.Chain) (uint32, error) {
	p := e.buf[:min(c.WritableLen(), MaxRequest)]
	// crypto/rand.Read never fails (Go 1.24+); it crashes the program
	// rather than return predictable bytes.
	rand.Read(p)
	w := c.Writer(e.mem)
	if _, err := w.Write(p); err != nil {
		return w.Written(), fmt.Errorf("write %d random bytes: %w", len(p), err)
	}
	return w.Written(), nil
}

// Reset stops serving the queue.
func (e *Entropy) Reset() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.mem, e.queue, e.signal = nil, nil, nil
}

// logger returns Logger, rate-limited.
func (e *Entropy) logger() *slog.Logger { return e.logLimit.Logger(e.Logger) }
