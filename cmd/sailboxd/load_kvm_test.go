package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
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
// vCPUs show it: see labFaults) is counted, reported and tried once more
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
	faults := h.labFaults(ctx)
	// sleep puts box id to sleep, once more if the lab broke its guest
	// first (unless the box is asleep already: a wake that failed).
	sleep := func(id, call string) error {
		_, err := h.c.Sleep(ctx, id)
		if err != nil && faults.broke(id, call, err) {
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
		if err != nil && faults.brokeNew("create", err) {
			b, err = h.c.Create(ctx, api.CreateRequest{})
		}
		if err != nil {
			t.Fatal(err)
		}
		boxes[i] = b.ID
		if _, code, err := h.exec(b.ID, "sh", "-c", writeBuffer); err != nil || code != 0 {
			if err == nil || !faults.broke(b.ID, "write the buffer", err) {
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
		if err != nil && faults.broke(id, fmt.Sprintf("exec (round %d)", round), err) {
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
		n, last-1, time.Since(start).Round(time.Second), faults.count(), compactions, before, after)
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
