package main

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A call to a box's guest ends when the guest stops, or after its
// timeout, whichever comes first: a guest the lab broke never answers.
func TestBoxRunCallsEndWhenTheGuestStops(t *testing.T) {
	b := &boxRun{done: make(chan struct{})}
	ctx, cancel := b.calls(context.Background(), time.Hour)
	defer cancel()
	select {
	case <-ctx.Done():
		t.Fatalf("ended with the guest running: %v", ctx.Err())
	case <-time.After(10 * time.Millisecond):
	}
	close(b.done)
	select {
	case <-ctx.Done():
		if !errors.Is(ctx.Err(), context.Canceled) {
			t.Errorf("ended with %v, want canceled", ctx.Err())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a call outlived its guest")
	}

	running := &boxRun{done: make(chan struct{})}
	ctx, cancel = running.calls(context.Background(), time.Millisecond)
	defer cancel()
	select {
	case <-ctx.Done():
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Errorf("ended with %v, want its deadline", ctx.Err())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a call to a running guest outlived its timeout")
	}
}
