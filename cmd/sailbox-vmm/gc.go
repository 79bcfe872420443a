package main

import (
	"os"
	"runtime/debug"
)

// gcPercent is the VMM's GOGC. A VMM's live heap is small: a restored
// box's device bookkeeping, vsock's buffers and the control server come
// to about 0.4 MiB (a heap profile of a fork in the lab). At Go's default
// of 100 the runtime lets the heap grow to at least 4 MiB before it
// collects, and every page the heap grew into stays resident: that, and
// the runtime's metadata for it, was most of a forked VMM's 6.5 MiB of
// private memory. At 25 the heap's smallest goal is 1 MiB; a collection
// of so small a heap is short, and a VMM allocates little once its
// guest runs.
const gcPercent = 25

// tuneGC sets the VMM's GOGC unless the environment sets one, which
// wins, as GOGC always does.
func tuneGC() {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(gcPercent)
	}
}
