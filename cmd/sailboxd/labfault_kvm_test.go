package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// labFaults tells, in the lab only, a call whose guest the lab's emulated
// SVM broke (see README) from any other failure: the guest triple-faults
// and its VMM exits (the daemon then restores the box from its last
// checkpoint), or its vCPU is stuck at an address of the lab's kernel. A
// test that runs many guests at once (the load, twenty forks) meets one
// in most lab runs; it counts and reports each and makes the call once
// more when the box is whole again. Any other failure, and any such sign
// on a host's real KVM, fails the test: the runner does the same for
// whole tests (kvmlab's labFaultSigns).
type labFaults struct {
	h     *host
	ctx   context.Context
	seen  sync.Map // box → its lab faults already counted
	ended sync.Map // boxes whose stuck VMM the test ended, not yet counted
	n     atomic.Int64
}

func (h *host) labFaults(ctx context.Context) *labFaults {
	return &labFaults{h: h, ctx: ctx}
}

// count is how many calls the lab broke so far.
func (f *labFaults) count() int64 { return f.n.Load() }

// broke reports whether call's failure err on box id was the lab's
// doing: the error quotes the VMM whose restored guest the lab broke
// (a wake's), the daemon logged the guest's death (a running box's), or
// the guest's vCPUs show it stuck (an exec's, see stuck: now, or when a
// watch looked earlier). If so it counts it and waits until the box is up
// (restored from its last checkpoint) or asleep again, for call to be
// made once more.
func (f *labFaults) broke(id, call string, err error) bool {
	_, ended := f.ended.LoadAndDelete(id)
	if !kvmtest.InLab() || !(ended || f.quoted(err) || f.logged(id) || f.stuck(id)) {
		return false
	}
	f.ended.Delete(id) // stuck's, just now
	f.n.Add(1)
	f.h.t.Logf("%s in %s: the lab broke its guest (%v); trying again once it is up or asleep", call, id, err)
	if err := f.h.waitSettled(f.ctx, id); err != nil {
		f.h.t.Errorf("%s in %s, after the lab broke its guest: %v", call, id, err)
		return false
	}
	return true
}

// brokeNew reports whether a failed create or fork was the lab's doing:
// the new box's guest broke before it answered (quoted). The daemon has
// undone the call, which can be made again.
func (f *labFaults) brokeNew(call string, err error) bool {
	if !kvmtest.InLab() || !f.quoted(err) {
		return false
	}
	f.n.Add(1)
	f.h.t.Logf("%s: the lab broke the new guest (%v); trying again", call, err)
	return true
}

// boxInError finds the boxes an error names.
var boxInError = regexp.MustCompile(`box (sb-[0-9a-f]+)`)

// quoted reports whether a failed create, fork or wake shows the lab's
// sign: the VMM's log ends with its exit after a triple fault (the error
// quotes it), or the daemon logged the box's vCPU stuck in the lab's
// kernel.
func (f *labFaults) quoted(err error) bool {
	if strings.Contains(err.Error(), "sailbox-vmm: guest shutdown") {
		return true
	}
	// A fork's error names its parent, then the child that failed.
	for _, id := range boxInError.FindAllStringSubmatch(err.Error(), -1) {
		if f.logged(id[1]) {
			return true
		}
	}
	return false
}

// logged reports whether the daemon logged, since the faults of box id
// already counted, a sign of the lab's emulated SVM breaking the box's
// guest: its VMM exited on its own after a triple fault (sailbox-vmm's
// exit line "guest shutdown"), or a restored guest never answered with a
// vCPU stuck at an address of the lab's kernel ("rip is the host's", see
// README). It waits a little for the daemon to notice.
func (f *labFaults) logged(id string) bool {
	before, _ := f.seen.Load(id)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		n := 0
		for _, line := range strings.Split(f.h.logs.String(), "\n") {
			if !strings.Contains(line, "box="+id+" ") {
				continue
			}
			if strings.Contains(line, "exited on its own") && strings.Contains(line, "guest shutdown") ||
				strings.Contains(line, "did not answer; its vCPUs") && strings.Contains(line, "rip is the host's") {
				n++
			}
		}
		if prev, _ := before.(int); n > prev {
			f.seen.Store(id, n)
			return true
		}
	}
	return false
}

// stuck reports whether box id's running guest stopped answering with a
// vCPU stuck at an address of the lab's kernel (the sign "rip is the
// host's", as the daemon logs it for a wake; an exec on a running box has
// no such log). The daemon cannot know the guest is gone, so the test
// ends its VMM as a host failure would, and the daemon restores the box
// from its last checkpoint.
func (f *labFaults) stuck(id string) bool {
	if !kvmtest.InLab() {
		return false
	}
	h := f.h
	dctx, cancel := context.WithTimeout(f.ctx, 20*time.Second)
	d, err := h.vcpus(dctx, id)
	cancel()
	if err != nil || !strings.Contains(d, "rip is the host's ") {
		return false
	}
	h.t.Logf("box %s's vCPUs are stuck in the lab's kernel; ending its VMM so that the daemon restores it:\n%s", id, d)
	f.ended.Store(id, true)
	for _, pid := range h.vmmPIDsOf(id) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return true
}

// waitSettled waits until box id is running and answers, or asleep: a
// guest the daemon restores after its VM died, or a wake that failed. It
// may run beside the test's goroutine.
func (h *host) waitSettled(ctx context.Context, id string) error {
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		b, err := h.c.Get(ctx, id)
		if err == nil && b.State == lifecycle.Sleeping {
			return nil
		}
		if err == nil && b.State == lifecycle.Running {
			if _, code, err := h.exec(id, "true"); err == nil && code == 0 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("box %s neither running nor asleep after 3 minutes: %+v, %v", id, b, err)
		}
	}
}
