package daemon

import "time"

// Clock is the time the Manager's policies run on (idle timeouts, TTLs:
// see policies.go). Tests give a fake one to move time by hand.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine once d has passed.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending call of Clock.AfterFunc.
type Timer interface {
	// Stop keeps the call from happening, if it has not yet; it reports
	// whether it did.
	Stop() bool
}

// wallClock is the real Clock.
type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

func (wallClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }
