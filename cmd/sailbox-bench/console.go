package main

import (
	"bytes"
	"sync"
	"time"
)

// initMarker is what the guest's init prints first on the console: u-root's
// init logs it before it does anything else (before the guest agent
// starts). It is the point a boot under gokvm, which has no vsock for the
// agent to answer on, can be compared at: the kernel booted, found the
// initramfs and ran init.
const initMarker = "Welcome to u-root!"

// consoleTailBytes bounds what a consoleWatch keeps of a console, for
// the error of a boot that never printed the marker.
const consoleTailBytes = 2048

// consoleWatch is a guest console's writer (a VMM's serial output, or
// what a peer prints of it) that records when a marker first appears in
// it and keeps the console's tail. Its Write may be called from any
// goroutine, and never blocks on the reader.
type consoleWatch struct {
	marker []byte
	seen   chan struct{} // closed when the marker appears

	mu   sync.Mutex // guards what follows
	at   time.Time  // when the marker appeared; zero until then
	tail []byte     // the console's last consoleTailBytes bytes
	scan int        // where in tail the search for the marker resumes
}

func newConsoleWatch(marker string) *consoleWatch {
	return &consoleWatch{marker: []byte(marker), seen: make(chan struct{})}
}

func (w *consoleWatch) Write(p []byte) (int, error) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tail = append(w.tail, p...)
	if w.at.IsZero() {
		if bytes.Contains(w.tail[w.scan:], w.marker) {
			w.at = now
			close(w.seen)
		} else {
			// The marker may straddle this write and the next.
			w.scan = max(0, len(w.tail)-len(w.marker)+1)
		}
	}
	if over := len(w.tail) - consoleTailBytes; over > 0 {
		w.tail = append(w.tail[:0], w.tail[over:]...)
		w.scan = max(0, w.scan-over)
	}
	return len(p), nil
}

// seenAt is when the marker appeared, false if it has not.
func (w *consoleWatch) seenAt() (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.at, !w.at.IsZero()
}

// lastBytes is the console's tail, for an error.
func (w *consoleWatch) lastBytes() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.tail)
}

// contains says whether the console's tail holds s.
func (w *consoleWatch) contains(s string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return bytes.Contains(w.tail, []byte(s))
}
