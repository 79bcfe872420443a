package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// Create is a restore from a template: the default image boots once, and
// ten boxes restored from its template are machines of their own
// (hostname, machine-id, entropy, clock) that share the template's memory
// pages; killed with the daemon right after their create, they come back
// from the template's checkpoint.
func TestKVMCreateFromTemplate(t *testing.T) {
	img := kvmtest.Artifact(t, "SAILBOX_DEFAULT_IMAGE")
	h := newHost(t, "-image", img)
	ctx := ctxFor(t, 15*time.Minute)
	const n = 10
	type made struct {
		id      string
		created time.Time
	}
	var boxes []made
	for range n {
		before := time.Now()
		b, err := h.c.Create(ctx, api.CreateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		boxes = append(boxes, made{b.ID, before})
	}
	if got := strings.Count(h.logs.String(), "making a template"); got != 1 {
		t.Errorf("%d template boots for %d creates of one spec, want 1", got, n)
	}
	if pids := h.vmmPIDs(); len(pids) != n {
		t.Errorf("%d VMMs for %d boxes: the template's VM should be gone", len(pids), n)
	}

	identity := func(id string) string {
		return h.run(id, "sh", "-c", "hostname; cat /etc/machine-id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo")
	}
	seen := map[string]string{}
	for _, b := range boxes {
		id := identity(b.id)
		lines := strings.Split(strings.TrimSpace(id), "\n")
		if len(lines) != 3 || lines[0] != hostnameOf(t, b.id) {
			t.Errorf("box %s: hostname, machine-id, random bytes = %q", b.id, lines)
			continue
		}
		for i, what := range []string{"hostname", "machine-id", "entropy"} {
			if other, dup := seen[what+lines[i]]; dup {
				t.Errorf("boxes %s and %s share their %s %q", other, b.id, what, lines[i])
			}
			seen[what+lines[i]] = b.id
		}
		// The clock is the host's, not the template's: not earlier than
		// the create call (a second of slack for rounding).
		secs, err := strconv.ParseInt(strings.TrimSpace(h.run(b.id, "date", "+%s")), 10, 64)
		if err != nil || secs < b.created.Unix()-1 {
			t.Errorf("box %s's clock reads %d, before its create at %d: %v", b.id, secs, b.created.Unix(), err)
		}
	}

	// The template's pages are shared: each VMM holds privately far less
	// than its guest's memory.
	got, err := h.c.Get(ctx, boxes[0].id)
	if err != nil {
		t.Fatal(err)
	}
	guest := uint64(got.MemoryMiB) << 20
	var total uint64
	for _, pid := range h.vmmPIDs() {
		p, err := privateMemory(pid)
		if err != nil {
			t.Fatal(err)
		}
		total += p
		if p > guest/4 {
			t.Errorf("VMM %d holds %d KiB privately, not far below its guest's %d KiB", pid, p>>10, guest>>10)
		}
	}
	t.Logf("%d boxes from one template: %d KiB private host memory per VMM on average, of %d KiB guest memory each", n, total/n>>10, guest>>10)

	// A host failure right after the creates: every box comes back from
	// the template's checkpoint, as itself.
	h.kill()
	if k := h.killVMMs(); k != n {
		t.Errorf("killed %d VMMs, want %d", k, n)
	}
	h.start()
	for _, b := range boxes {
		if st := h.state(b.id); st != "running" {
			t.Errorf("box %s is %s after the host failure, want running", b.id, st)
			continue
		}
		if got := h.run(b.id, "hostname"); got != hostnameOf(t, b.id)+"\n" {
			t.Errorf("box %s came back as %q", b.id, got)
		}
	}
	if got := strings.Count(h.logs.String(), "making a template"); got != 1 {
		t.Errorf("%d template boots after the restart, want still 1", got)
	}
}

// hostnameOf is the hostname of box id, created from a template or forked.
func hostnameOf(t *testing.T, id string) string {
	t.Helper()
	name, err := guestagent.ForkHostname(id)
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// privateMemory is what process pid holds that no other process maps
// (Private_Clean + Private_Dirty of /proc/pid/smaps_rollup), in bytes.
func privateMemory(pid int) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var total uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && (fields[0] == "Private_Clean:" || fields[0] == "Private_Dirty:") {
			kb, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("smaps_rollup of %d: %w", pid, err)
			}
			total += kb << 10
		}
	}
	return total, sc.Err()
}
