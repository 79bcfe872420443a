package main

import (
	"fmt"
	"strings"
	"testing"
)

func TestConsoleWatchFindsTheMarkerAcrossWrites(t *testing.T) {
	for _, split := range []int{0, 1, 5, len(initMarker) - 1, len(initMarker)} {
		w := newConsoleWatch(initMarker)
		line := "2026/12/07 00:40:00 " + initMarker + "\n"
		cut := len("2026/12/07 00:40:00 ") + split
		w.Write([]byte("[    0.1] a kernel line\n"))
		w.Write([]byte(line[:cut]))
		if _, ok := w.seenAt(); ok && split < len(initMarker) {
			t.Fatalf("split %d: seen before the marker was whole", split)
		}
		w.Write([]byte(line[cut:]))
		if _, ok := w.seenAt(); !ok {
			t.Errorf("split %d: marker not seen in %q", split, w.lastBytes())
		}
		select {
		case <-w.seen:
		default:
			t.Errorf("split %d: seen not closed", split)
		}
	}
}

func TestConsoleWatchOneByteAtATime(t *testing.T) {
	// As Sailbox's UART writes it.
	w := newConsoleWatch(initMarker)
	for _, b := range []byte(strings.Repeat("noise ", 1000) + initMarker + " and after") {
		w.Write([]byte{b})
	}
	at, ok := w.seenAt()
	if !ok {
		t.Fatal("marker not seen")
	}
	w.Write([]byte(initMarker))
	if again, _ := w.seenAt(); again != at {
		t.Error("a second marker moved the time of the first")
	}
}

func TestConsoleWatchKeepsABoundedTail(t *testing.T) {
	w := newConsoleWatch(initMarker)
	for i := range 1000 {
		fmt.Fprintf(w, "line %d\n", i)
	}
	tail := w.lastBytes()
	if len(tail) > consoleTailBytes || !strings.HasSuffix(tail, "line 999\n") {
		t.Errorf("tail of %d bytes ending %q", len(tail), tail[max(0, len(tail)-20):])
	}
	if !w.contains("line 998") || w.contains("line 1\n") {
		t.Error("contains does not look at the tail alone")
	}
	// A marker after the tail was cut is still found.
	w.Write([]byte(initMarker[:4]))
	w.Write([]byte(initMarker[4:]))
	if _, ok := w.seenAt(); !ok {
		t.Error("marker after a cut tail not seen")
	}
}
