package vmm

import (
	"errors"
	"sync"
	"testing"

	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// fakeKicks is a kickSource the test drives: each value sent on kicks is
// what one Wait returns; Close makes Wait return kvm.ErrIOEventFDClosed.
type fakeKicks struct {
	kicks     chan error
	closed    chan struct{}
	closeOnce sync.Once
}

func newFakeKicks() *fakeKicks {
	return &fakeKicks{kicks: make(chan error), closed: make(chan struct{})}
}

func (f *fakeKicks) Wait() error {
	select {
	case err := <-f.kicks:
		return err
	case <-f.closed:
		return kvm.ErrIOEventFDClosed
	}
}

func (f *fakeKicks) Close() error {
	f.closeOnce.Do(func() { close(f.closed) })
	return nil
}

// Each kick a source reports is delivered, in order with the source's
// reports; close ends every notifier before it returns.
func TestNotifiersDeliverUntilClosed(t *testing.T) {
	var n notifiers
	a, b := newFakeKicks(), newFakeKicks()
	delivered := make(chan string)
	failed := func(err error) { t.Errorf("notifier failed: %v", err) }
	n.start(a, func() { delivered <- "a" }, failed)
	n.start(b, func() { delivered <- "b" }, failed)
	for _, want := range []string{"a", "b", "a"} {
		src := map[string]*fakeKicks{"a": a, "b": b}[want]
		src.kicks <- nil
		if got := <-delivered; got != want {
			t.Fatalf("delivered %q, want %q", got, want)
		}
	}
	if err := n.close(); err != nil {
		t.Fatal(err)
	}
	// Every notifier has returned: nothing waits on the sources.
	for _, src := range []*fakeKicks{a, b} {
		select {
		case src.kicks <- nil:
			t.Fatal("a notifier still waits after close")
		default:
		}
	}
}

// A source that fails (not closed) ends its notifier and is reported:
// its kicks would be lost, so the machine must not go on silently.
func TestNotifierReportsFailure(t *testing.T) {
	var n notifiers
	src := newFakeKicks()
	boom := errors.New("read failed")
	got := make(chan error, 1)
	n.start(src, func() { t.Error("kick delivered for a failed wait") }, func(err error) { got <- err })
	src.kicks <- boom
	if err := <-got; !errors.Is(err, boom) {
		t.Errorf("failure reported as %v, want %v", err, boom)
	}
	if err := n.close(); err != nil {
		t.Fatal(err)
	}
}
