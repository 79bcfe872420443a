package daemon

import (
	"context"
	"sync"
	"time"

	"github.com/sailbox-dev/sailbox/api/lifecycle"
)

// Idle timeouts: a running box with an idle timeout is put to sleep by
// the daemon once it has gone that long unused. A use is an exec, a file
// call or a connection to one of its exposed ports; it counts from its
// start to its end (an exec that runs for an hour, a connection held
// open, keep the box awake), so the box is idle when no use is in flight
// and the last one ended at least the timeout ago. The timer is armed
// whenever the box starts running (create, fork, any wake, a daemon
// start that finds it running) and counts from then; it is not kept
// across a daemon restart, which gives every running box its full
// timeout again.

// usage is the idle bookkeeping of the Manager's boxes.
type usage struct {
	mu    sync.Mutex
	boxes map[string]*boxUse // guarded by mu; boxes armed or in use
}

// boxUse is one box's uses and idle timer.
type boxUse struct {
	busy    int       // uses in flight
	last    time.Time // when a use last began or ended, or the timer was armed
	timeout time.Duration
	timer   Timer  // nil while not armed
	gen     uint64 // bumped at every (dis)arm: a timer of an older one does nothing
}

// beginUse records that a use of box id begins; call the function it
// returns when it ends. Call it before the use takes the box's lock, so
// that an idle sleep decided under that lock sees it.
func (m *Manager) beginUse(id string) (end func()) {
	u := &m.uses
	u.mu.Lock()
	bu := u.boxes[id]
	if bu == nil {
		bu = &boxUse{}
		u.boxes[id] = bu
	}
	bu.busy++
	bu.last = m.clock.Now()
	u.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			u.mu.Lock()
			defer u.mu.Unlock()
			bu.busy--
			bu.last = m.clock.Now()
			if bu.busy == 0 && bu.timer == nil && u.boxes[id] == bu {
				delete(u.boxes, id)
			}
		})
	}
}

// armIdle starts box id's idle timer, of timeout seconds, counting from
// now; 0 disarms it.
func (m *Manager) armIdle(id string, timeoutSeconds int64) {
	if timeoutSeconds <= 0 {
		m.disarmIdle(id)
		return
	}
	u := &m.uses
	u.mu.Lock()
	defer u.mu.Unlock()
	bu := u.boxes[id]
	if bu == nil {
		bu = &boxUse{}
		u.boxes[id] = bu
	}
	bu.timeout = time.Duration(timeoutSeconds) * time.Second
	bu.last = m.clock.Now()
	m.scheduleIdleLocked(id, bu, bu.timeout)
}

// scheduleIdleLocked (re)starts bu's timer to check box id after d.
// u.mu must be held.
func (m *Manager) scheduleIdleLocked(id string, bu *boxUse, d time.Duration) {
	if bu.timer != nil {
		bu.timer.Stop()
	}
	bu.gen++
	gen := bu.gen
	bu.timer = m.clock.AfterFunc(d, func() { m.idleCheck(id, gen) })
}

// disarmIdle stops box id's idle timer: it no longer runs, or no longer
// exists.
func (m *Manager) disarmIdle(id string) {
	u := &m.uses
	u.mu.Lock()
	defer u.mu.Unlock()
	bu := u.boxes[id]
	if bu == nil {
		return
	}
	if bu.timer != nil {
		bu.timer.Stop()
		bu.timer = nil
	}
	bu.gen++
	if bu.busy == 0 {
		delete(u.boxes, id)
	}
}

// idleFor reports whether box id's timer of generation gen is current
// and the box has been unused for its whole timeout; if it is current but
// the box is not idle, it schedules the next check.
func (m *Manager) idleFor(id string, gen uint64) bool {
	u := &m.uses
	u.mu.Lock()
	defer u.mu.Unlock()
	bu := u.boxes[id]
	if bu == nil || bu.gen != gen || bu.timer == nil {
		return false
	}
	quiet := m.clock.Now().Sub(bu.last)
	switch {
	case bu.busy > 0:
		m.scheduleIdleLocked(id, bu, bu.timeout) // its end resets last
	case quiet < bu.timeout:
		m.scheduleIdleLocked(id, bu, bu.timeout-quiet)
	default:
		return true
	}
	return false
}

// idleCheck, box id's idle timer, puts the box to sleep if it is still
// unused: decided under the box's lock, which every use's wake takes
// after beginUse.
func (m *Manager) idleCheck(id string, gen uint64) {
	if m.closed.Load() || !m.idleFor(id, gen) {
		return
	}
	unlock := m.lock(id)
	defer unlock()
	if !m.idleFor(id, gen) {
		return
	}
	b, err := m.record(id)
	if err != nil || b.State != lifecycle.Running {
		m.disarmIdle(id)
		return
	}
	m.log.Info("box idle; putting it to sleep", "box", id, "idle_timeout_seconds", b.IdleTimeoutSeconds)
	if _, err := m.apply(context.Background(), id, lifecycle.OpSleep, nil); err != nil {
		// It still runs: try again after another timeout.
		m.log.Error("idle box not put to sleep", "box", id, "err", err)
		m.armIdle(id, b.IdleTimeoutSeconds)
	}
}
