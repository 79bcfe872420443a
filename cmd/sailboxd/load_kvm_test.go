package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// Load: boxes cycling exec → sleep → wake (the exec wakes) for a while.
// The daemon's descriptors, threads and memory must stay bounded, the
// store must hold only what the boxes' chains reference, and chains are
// compacted as they grow, each box waking from its compacted checkpoint
// with its memory whole (the exec checks it).
//
// Every cycle restores a guest, and in the lab now and then a restored
// guest is broken by the lab's emulated SVM (see README): it
// triple-faults, and the daemon restores it again, or its vCPU is stuck
// at an address of the lab's kernel, and the wake or the exec fails. In
// the lab only, a call (exec, wake or sleep) whose guest broke so (the
// daemon logged the sign, the call's error quotes it, or the guest's
// vCPUs show it: see labBrokeIt) is counted, reported and tried once more
// when the box is up or asleep again; any other failed call, and any such
// sign on a host's real KVM, fails the test.
//
// $SAILBOX_LOAD_DURATION sets how long (default 1m, as `make test` runs
// it; `make chaos` runs 15m); $SAILBOX_LOAD_BOXES how many boxes (default
// 10; `make chaos` runs 20), cycled by 4 workers so that at most 4 run
// at once.
func TestKVMLoadSleepWake(t *testing.T) {
	// Every fourth sleep compacts the box's chain (the default is every
	// ninth), so that boxes keep waking from compacted checkpoints.
	h := newHost(t, "-compact-after", "3")
	dur := time.Minute
	if s := os.Getenv("SAILBOX_LOAD_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("SAILBOX_LOAD_DURATION=%q: %v", s, err)
		}
		dur = d
	}
	n := 10
	if s := os.Getenv("SAILBOX_LOAD_BOXES"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			t.Fatalf("SAILBOX_LOAD_BOXES=%q", s)
		}
	}
	const workers = 4
	ctx := ctxFor(t, dur+30*time.Minute)
	boxes := make([]string, n)
	var died atomic.Int64
	var seenFaults sync.Map // box → lab faults already counted
	// labBrokeIt reports whether call's failure on box id was the lab's
	// doing: a wake's error quotes the VMM whose restored guest the lab
	// broke (labBrokeCall), a running guest's death is in the daemon's log
	// (labBroke), a stuck one only in its vCPUs (labStuck). If so it counts
	// it and waits until the box is up (the daemon restored it from its
	// last checkpoint) or asleep again, for call to be tried once more.
	labBrokeIt := func(id, call string, err error) bool {
		if !kvmtest.InLab() || !(h.labBrokeCall(err, &seenFaults) || h.labBroke(id, &seenFaults) || h.labStuck(ctx, id)) {
			return false
		}
		died.Add(1)
		t.Logf("%s in %s: the lab broke its guest (%v); trying again once it is up or asleep", call, id, err)
		h.waitSettled(ctx, id)
		return true
	}
	// sleep puts box id to sleep, once more if the lab broke its guest
	// first (unless the box is asleep already: a wake that failed).
	sleep := func(id, call string) error {
		_, err := h.c.Sleep(ctx, id)
		if err != nil && labBrokeIt(id, call, err) {
			if h.state(id) == string(lifecycle.Sleeping) {
				return nil
			}
			_, err = h.c.Sleep(ctx, id)
		}
		if err != nil {
			return fmt.Errorf("%s of %s: %w", call, id, err)
		}
		return nil
	}
	for i := range boxes {
		b, err := h.c.Create(ctx, api.CreateRequest{})
		if err != nil && kvmtest.InLab() && h.labBrokeCall(err, &seenFaults) {
			died.Add(1)
			t.Logf("create: the lab broke the new guest (%v); creating another", err)
			b, err = h.c.Create(ctx, api.CreateRequest{})
		}
		if err != nil {
			t.Fatal(err)
		}
		boxes[i] = b.ID
		if _, code, err := h.exec(b.ID, "sh", "-c", writeBuffer); err != nil || code != 0 {
			if err == nil || !labBrokeIt(b.ID, "write the buffer", err) {
				t.Fatalf("write the buffer in %s: exit %d, %v", b.ID, code, err)
			}
			// The box is back at its template: no buffer, which
			// checkBuffer accepts.
		}
		if err := sleep(b.ID, "first sleep"); err != nil {
			t.Fatal(err)
		}
	}
	// One box's cycle: wake it with an exec that checks its memory and
	// writes to it, then put it to sleep.
	cycle := func(id string, round int) error {
		argv := []string{"sh", "-c", checkBuffer + " && echo -n " + strconv.Itoa(round) + " > /tmp/round && cat /tmp/round"}
		out, code, err := h.exec(id, argv...)
		if err != nil && labBrokeIt(id, fmt.Sprintf("exec (round %d)", round), err) {
			out, code, err = h.exec(id, argv...)
		}
		if err != nil || code != 0 || out != strconv.Itoa(round) {
			if err != nil {
				h.describeVCPUs(ctx, id)
			}
			return fmt.Errorf("exec in %s (round %d): %q, exit %d, %v", id, round, out, code, err)
		}
		return sleep(id, fmt.Sprintf("sleep (round %d)", round))
	}
	rounds := func(stop time.Time, first int) (int, error) {
		round := first
		for ; round == first || time.Now().Before(stop); round++ {
			var wg sync.WaitGroup
			errs := make(chan error, n)
			next := make(chan string)
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for id := range next {
						if err := cycle(id, round); err != nil {
							errs <- err
						}
					}
				}()
			}
			for _, id := range boxes {
				next <- id
			}
			close(next)
			wg.Wait()
			close(errs)
			for err := range errs {
				return round, err
			}
		}
		return round, nil
	}
	// A first round warms up what the daemon keeps (connections, caches);
	// what it holds after is the baseline.
	if _, err := rounds(time.Now(), 0); err != nil {
		t.Fatal(err)
	}
	before := h.daemonUsage()
	start := time.Now()
	last, err := rounds(start.Add(dur), 1)
	if err != nil {
		t.Fatal(err)
	}
	after := h.daemonUsage()
	compactions := strings.Count(h.logs.String(), `msg="chain compacted"`)
	t.Logf("%d boxes, %d rounds of exec → sleep → wake in %v (%d guests the lab broke under a call, restored and called again; %d chains compacted); daemon before: %+v, after: %+v",
		n, last-1, time.Since(start).Round(time.Second), died.Load(), compactions, before, after)
	if compactions == 0 {
		t.Error("no box's chain was compacted")
	}
	if after.fds > before.fds+8 {
		t.Errorf("daemon descriptors grew from %d to %d", before.fds, after.fds)
	}
	if after.threads > before.threads+8 {
		t.Errorf("daemon threads grew from %d to %d", before.threads, after.threads)
	}
	if after.rssKiB > before.rssKiB*3/2+32<<10 {
		t.Errorf("daemon memory grew from %d KiB to %d KiB", before.rssKiB, after.rssKiB)
	}
	h.checkWhole(ctx, false)
}

// labBroke reports whether the daemon logged, since the faults of box id
// already counted in seen, a sign of the lab's emulated SVM breaking the
// box's guest: its VMM exited on its own after a triple fault
// (sailbox-vmm's exit line "guest shutdown"), or a restored guest never
// answered with a vCPU stuck at an address of the lab's kernel ("rip is
// the host's", see README). It waits a little for the daemon to notice.
func (h *host) labBroke(id string, seen *sync.Map) bool {
	before, _ := seen.Load(id)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		n := 0
		for _, line := range strings.Split(h.logs.String(), "\n") {
			if !strings.Contains(line, "box="+id+" ") {
				continue
			}
			if strings.Contains(line, "exited on its own") && strings.Contains(line, "guest shutdown") ||
				strings.Contains(line, "did not answer; its vCPUs") && strings.Contains(line, "rip is the host's") {
				n++
			}
		}
		if prev, _ := before.(int); n > prev {
			seen.Store(id, n)
			return true
		}
	}
	return false
}

// labStuck reports whether box id's running guest stopped answering an
// exec with a vCPU stuck at an address of the lab's kernel (the sign
// "rip is the host's", as the daemon logs it for a wake; an exec on a
// running box has no such log). The daemon cannot know the guest is
// gone, so the test ends its VMM as a host failure would, and the daemon
// restores the box from its last checkpoint.
func (h *host) labStuck(ctx context.Context, id string) bool {
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	d, err := h.vcpus(dctx, id)
	cancel()
	if err != nil || !strings.Contains(d, "rip is the host's ") {
		return false
	}
	h.t.Logf("box %s's vCPUs are stuck in the lab's kernel; ending its VMM so that the daemon restores it:\n%s", id, d)
	for _, pid := range h.vmmPIDsOf(id) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return true
}

// labBrokeCall reports whether a failed create or wake shows the lab's
// sign: the VMM's log ends with its exit after a triple fault (the error
// quotes it), or the daemon logged the box's vCPU stuck in the lab's
// kernel.
func (h *host) labBrokeCall(err error, seen *sync.Map) bool {
	if strings.Contains(err.Error(), "sailbox-vmm: guest shutdown") {
		return true
	}
	id := regexp.MustCompile(`box (sb-[0-9a-f]+)`).FindStringSubmatch(err.Error())
	return id != nil && h.labBroke(id[1], seen)
}

// waitSettled waits until box id is running and answers, or asleep: a
// guest the daemon restores after its VM died, or a wake that failed.
func (h *host) waitSettled(ctx context.Context, id string) {
	h.t.Helper()
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		b, err := h.c.Get(ctx, id)
		if err == nil && b.State == lifecycle.Sleeping {
			return
		}
		if err == nil && b.State == lifecycle.Running {
			if _, code, err := h.exec(id, "true"); err == nil && code == 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("box %s neither running nor asleep after 3 minutes: %+v, %v", id, b, err)
		}
	}
}

// usage is what a process holds.
type usage struct {
	fds, threads int
	rssKiB       int64
}

// daemonUsage reads the daemon's descriptors, threads and resident memory.
func (h *host) daemonUsage() usage {
	t := h.t
	pid := h.cmd.Process.Pid
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	u := usage{fds: len(fds)}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		var v int64
		if _, err := fmt.Sscanf(sc.Text(), "VmRSS: %d kB", &v); err == nil {
			u.rssKiB = v
		}
		if _, err := fmt.Sscanf(sc.Text(), "Threads: %d", &v); err == nil {
			u.threads = int(v)
		}
	}
	return u
}
