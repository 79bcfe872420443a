package virtiotest

import (
	"sync/atomic"
	"time"
)

// Interrupt is a fake devices.Interrupt, an edge-triggered line: it counts
// triggers and lets a test wait for one. Trigger may be called from any
// goroutine. A trigger happens before the Wait that observes it returns,
// so what the device wrote to guest memory before triggering is visible
// to the test after Wait.
type Interrupt struct {
	count atomic.Uint64
	// pending holds a token while a trigger has not been waited for.
	// Triggers that arrive while one is pending merge into it, as edges
	// on a line the guest has not serviced yet do.
	pending chan struct{}
}

// NewInterrupt returns a line that has never triggered.
func NewInterrupt() *Interrupt {
	return &Interrupt{pending: make(chan struct{}, 1)}
}

// Trigger implements devices.Interrupt.
func (i *Interrupt) Trigger() error {
	i.count.Add(1)
	select {
	case i.pending <- struct{}{}:
	default:
	}
	return nil
}

// Count reports how many times the line has triggered.
func (i *Interrupt) Count() uint64 { return i.count.Load() }

// Wait waits up to timeout for a trigger not yet waited for, and reports
// whether there was one.
func (i *Interrupt) Wait(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-i.pending:
		return true
	case <-t.C:
		return false
	}
}
