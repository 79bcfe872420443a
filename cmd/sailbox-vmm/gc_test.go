package main

import (
	"context"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
)

// run lowers the VMM's GOGC, so that the heap of a VMM whose live heap
// is small is collected long before the 4 MiB Go's default lets it grow
// to; a GOGC in the environment is left alone.
func TestRunLowersTheHeapGoal(t *testing.T) {
	old := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(old) })
	read := func() (gogc, goal uint64) {
		runtime.GC()
		s := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/heap/goal:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64(), s[1].Value.Uint64()
	}

	t.Setenv("GOGC", "100")
	run(context.Background(), []string{"-mem", "x"}, io.Discard, io.Discard)
	if gogc, goal := read(); gogc != 100 || goal < 4<<20 {
		t.Fatalf("with GOGC=100 in the environment: GOGC %d, heap goal %d KiB; want 100 and the default's 4 MiB or more", gogc, goal>>10)
	}

	t.Setenv("GOGC", "")
	os.Unsetenv("GOGC")
	run(context.Background(), []string{"-mem", "x"}, io.Discard, io.Discard)
	if gogc, goal := read(); gogc != gcPercent || goal > 2<<20 {
		t.Errorf("GOGC %d, heap goal %d KiB; want %d and at most 2 MiB", gogc, goal>>10, gcPercent)
	}
}
