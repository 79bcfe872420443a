package vmm_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/snapshot/disklayer"
	"github.com/sailbox-dev/sailbox/snapshot/memlayer"
	"github.com/sailbox-dev/sailbox/vmm"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// box is a booted guest whose disk is layered, so that it can be
// checkpointed, and the checkpoint store it goes to.
type box struct {
	*guest
	root *snapshot.Root
	dir  string // the store's directory
}

// bootBox boots a guest with a layered ext4 disk (/dev/vda) in a new
// checkpoint store.
func bootBox(t *testing.T) *box {
	t.Helper()
	kvmtest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	root, err := snapshot.OpenRoot(store, nil)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "base.ext4")
	const size = 32 << 20
	kvmtest.Ext4Image(t, base, size)
	disk, err := disklayer.Open(disklayer.Layout{Base: base}, root.TopPath("box-vda.top"))
	if err != nil {
		t.Fatal(err)
	}
	g := boot(t, vmm.Config{Disks: []vmm.Disk{{
		Layered: disk,
		ID:      "vda",
		Chain:   snapshot.DiskChain{Base: base, BaseSize: size, Size: size},
	}}})
	return &box{guest: g, root: root, dir: store}
}

// sh runs a shell script in the guest and returns its stdout; a non-zero
// exit fails the test.
func (g *guest) sh(t *testing.T, script string) string {
	t.Helper()
	out, errOut, code := g.run(t, "sh", "-c", script)
	if code != 0 {
		t.Fatalf("sh -c %q: exit %d: %s%s", script, code, out, errOut)
	}
	return out
}

// restoreBox restores checkpoint id of b's store into a new machine and
// starts it. The agent is told it was restored (clock, entropy).
func restoreBox(t *testing.T, b *box, id string) *guest {
	t.Helper()
	return restoreAs(t, b, id, guestagent.RestoreArgs())
}

// restoreAs is restoreBox with the agent's restored op given args (a
// fork's new identity).
func restoreAs(t *testing.T, b *box, id string, args guestagent.RestoredArgs) *guest {
	t.Helper()
	sys := kvmtest.Require(t)
	uds := filepath.Join(t.TempDir(), "vsock")
	con := &console{}
	m, err := vmm.Restore(sys, vmm.RestoreConfig{Root: b.root, ID: id, VsockUDSPath: uds, Serial: con, Logger: con.logger()})
	if err != nil {
		t.Fatal(err)
	}
	g := start(t, m, con, uds, true)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := g.agent.Restored(ctx, args)
	if err != nil {
		t.Fatalf("restored op: %v", err)
	}
	if skew := time.Since(res.ClockAfter); skew > 30*time.Second || skew < -30*time.Second {
		t.Errorf("guest clock after the restored op is %v from the host's", skew)
	}
	return g
}

// KVM's paravirtual MSRs (Documentation/virt/kvm/x86/msr.rst).
const (
	msrKVMSystemTimeNew = 0x4b564d01 // kvm-clock; bit 0: enabled
	msrKVMAsyncPFEn     = 0x4b564d02 // async page faults; bit 0: enabled
)

// savedMSR returns the value of MSR index in vCPU 0's state in man.
func savedMSR(t *testing.T, man *snapshot.Manifest, index uint32) (uint64, bool) {
	t.Helper()
	var st struct{ MSRs []kvm.MSREntry }
	if err := json.Unmarshal(man.State["vcpu/0"], &st); err != nil {
		t.Fatalf("vcpu/0 section: %v", err)
	}
	for _, e := range st.MSRs {
		if e.Index == index {
			return e.Data, true
		}
	}
	return 0, false
}

// savedLVTT returns the LAPIC timer's LVT register in vCPU 0's state in man.
func savedLVTT(t *testing.T, man *snapshot.Manifest) uint32 {
	t.Helper()
	var st struct{ LAPIC kvm.LAPICState }
	if err := json.Unmarshal(man.State["vcpu/0"], &st); err != nil {
		t.Fatalf("vcpu/0 section: %v", err)
	}
	return binary.LittleEndian.Uint32(st.LAPIC.Regs[0x320:])
}

// startCounter starts a guest process that counts in memory (a tmpfs
// file) forever and returns its pid.
func startCounter(t *testing.T, g *guest) string {
	t.Helper()
	return strings.TrimSpace(g.sh(t, `(i=0; while true; do i=$((i+1)); echo $i > /tmp/ticks; sleep 0.2; done) </dev/null >/dev/null 2>&1 & echo $!`))
}

// counting checks that process pid is alive and its counter advances.
func counting(t *testing.T, g *guest, pid string) {
	t.Helper()
	read := func() int {
		n, err := strconv.Atoi(strings.TrimSpace(g.sh(t, "kill -0 "+pid+" && cat /tmp/ticks")))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	a := read()
	deadline := time.Now().Add(time.Minute)
	for read() <= a {
		if time.Now().After(deadline) {
			t.Fatalf("counter process %s stuck at %d", pid, a)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkpointAge is how old a checkpoint is when the clock test restores it.
const checkpointAge = 45 * time.Second

const mountVDA = "mkdir -p /mnt && (grep -q ' /mnt ' /proc/mounts || mount -t ext4 /dev/vda /mnt)"

// A checkpoint of a running guest restores exactly: the memory a process
// holds, the file on disk, and the process itself, still counting.
func TestKVMCheckpointRestore(t *testing.T) {
	b := bootBox(t)
	pid := startCounter(t, b.guest)
	b.sh(t, mountVDA+" && echo -n 111 > /tmp/value && echo -n before > /mnt/file && sync")

	man, stats, err := b.m.Checkpoint(vmm.CheckpointOptions{Root: b.root, ID: "c1", GuestSchemaVersion: guestagent.GuestSchemaVersion})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("checkpoint c1: %d pages (%d bytes, layer file %d), %d copied paused, pause %v, total %v; %d disk bytes sealed",
		stats.Pages, stats.PageBytes, stats.LayerBytes, stats.PausedPages, stats.Pause, stats.Total, stats.DiskBytes)
	checkPauseParts(t, stats)
	// A running guest with a layered disk: every part of the stop took
	// place (each makes system calls, so none can take no time at all).
	p := stats.PauseParts
	for name, d := range map[string]time.Duration{"stop": p.Stop, "dirty log": p.DirtyLog, "vm state": p.VMState, "vcpu state": p.VCPUState, "devices": p.Devices, "disk switch": p.DiskSwitch, "resume": p.Resume} {
		if d <= 0 {
			t.Errorf("pause part %s not measured: %+v", name, p)
		}
	}
	if r := stats.RunningParts; r.PreCopy <= 0 || r.Files <= 0 || r.Write <= 0 || r.Seal <= 0 || r.Commit <= 0 {
		t.Errorf("running parts not measured: %+v", r)
	}
	if len(man.Memory) != 1 || len(man.Disks["vda"].Layers) != 1 {
		t.Errorf("manifest chains: memory %v, disk %v; want one layer each", man.Memory, man.Disks)
	}
	// The guest runs kvm-clock but was never offered async page faults,
	// which a restore would leave a task waiting on forever.
	if v, ok := savedMSR(t, man, msrKVMSystemTimeNew); !ok || v&1 == 0 {
		t.Errorf("kvm-clock MSR %#x: %#x, saved %v; want it on", msrKVMSystemTimeNew, v, ok)
	}
	if v, ok := savedMSR(t, man, msrKVMAsyncPFEn); !ok || v&1 != 0 {
		t.Errorf("async page fault MSR %#x: %#x, saved %v; want it saved and off", msrKVMAsyncPFEn, v, ok)
	}
	// Offered TSC-deadline mode, the guest's LAPIC timer counts the TSC
	// (LVTT bits 18:17 = 10b) instead of a rate it calibrated at boot; the
	// counter above sleeps on it across the restore below.
	if n, _ := kvmtest.Require(t).CheckExtension(kvm.CapTSCDeadlineTimer); n > 0 {
		if mode := savedLVTT(t, man) >> 17 & 3; mode != 2 {
			t.Errorf("LAPIC timer mode %d (LVTT %#x); want 2, TSC-deadline", mode, savedLVTT(t, man))
		}
	}

	// The original goes on and changes both.
	b.sh(t, "echo -n 222 > /tmp/value && echo -n after > /mnt/file && sync")
	counting(t, b.guest, pid)
	b.stop() // as a host failure would

	// An old checkpoint: the guest's clock stood still since it was taken,
	// and the restored op must bring it to the host's.
	if age := time.Since(man.Created); age < checkpointAge {
		time.Sleep(checkpointAge - age)
	}
	r := restoreBox(t, b, "c1")
	guestNow, err := strconv.ParseInt(strings.TrimSpace(r.sh(t, "date +%s")), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if skew := time.Now().Unix() - guestNow; skew > 3 || skew < -3 {
		t.Errorf("guest clock %d s off the host's after restoring a %v old checkpoint", skew, checkpointAge)
	}
	if got := r.sh(t, "cat /tmp/value"); got != "111" {
		t.Errorf("restored memory: /tmp/value = %q, want 111", got)
	}
	if got := r.sh(t, mountVDA+" && cat /mnt/file"); got != "before" {
		t.Errorf("restored disk: /mnt/file = %q, want before", got)
	}
	counting(t, r, pid)
}

func checkpoint(t *testing.T, b *box, g *guest, id string) (*snapshot.Manifest, vmm.CheckpointStats) {
	t.Helper()
	man, stats, err := g.m.Checkpoint(vmm.CheckpointOptions{Root: b.root, ID: id, GuestSchemaVersion: guestagent.GuestSchemaVersion})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("checkpoint %s: %d pages (%d bytes), %d copied paused, pause %v, total %v",
		id, stats.Pages, stats.PageBytes, stats.PausedPages, stats.Pause, stats.Total)
	checkPauseParts(t, stats)
	return man, stats
}

// checkPauseParts logs where a checkpoint's pause went and checks the
// parts, one after the other, add up to no more than the pause.
func checkPauseParts(t *testing.T, stats vmm.CheckpointStats) {
	t.Helper()
	p := stats.PauseParts
	t.Logf("pause %v: stop %v, dirty log %v, copy %v (%d pages), vm state %v, vcpu state %v, devices %v, disk switch %v, resume %v",
		stats.Pause, p.Stop, p.DirtyLog, p.Copy, stats.PausedPages, p.VMState, p.VCPUState, p.Devices, p.DiskSwitch, p.Resume)
	if p.Sum() > stats.Pause {
		t.Errorf("pause parts sum to %v, more than the pause %v: %+v", p.Sum(), stats.Pause, p)
	}
	for name, d := range map[string]time.Duration{"stop": p.Stop, "dirty log": p.DirtyLog, "copy": p.Copy, "vm state": p.VMState, "vcpu state": p.VCPUState, "devices": p.Devices, "disk switch": p.DiskSwitch, "resume": p.Resume} {
		if d < 0 {
			t.Errorf("pause part %s negative: %v", name, d)
		}
	}
}

// Fork a running box: parent and child both run, with their own memory,
// disk, randomness and identity; the child's pages are shared, not copied.
func TestKVMFork(t *testing.T) {
	b := bootBox(t)
	pid := startCounter(t, b.guest)
	b.sh(t, mountVDA+" && echo -n shared > /mnt/file && echo -n shared > /tmp/value && sync")
	checkpoint(t, b, b.guest, "f1")

	args, err := guestagent.ForkArgs("child1")
	if err != nil {
		t.Fatal(err)
	}
	child := restoreAs(t, b, "f1", args)
	// Right after the fork the child holds little of its own: its memory
	// maps the checkpoint's layers.
	u, err := child.m.Memory().Usage()
	if err != nil {
		t.Fatal(err)
	}
	size := child.m.Memory().Size()
	t.Logf("child right after fork: private %d KiB, resident %d KiB of %d KiB guest memory", u.Private>>10, u.Resident>>10, size>>10)
	if u.Private > size/4 {
		t.Errorf("child's private memory %d KiB is not far below its guest memory %d KiB", u.Private>>10, size>>10)
	}

	// Both run; each writes memory and disk; neither sees the other's.
	b.sh(t, mountVDA+" && echo -n parent > /mnt/file && echo -n parent > /tmp/value && sync")
	child.sh(t, mountVDA+" && echo -n child > /mnt/file && echo -n child > /tmp/value && sync")
	for _, c := range []struct {
		g    *guest
		want string
	}{{b.guest, "parent"}, {child, "child"}} {
		if got := c.g.sh(t, "cat /tmp/value"); got != c.want {
			t.Errorf("%s memory: /tmp/value = %q", c.want, got)
		}
		if got := c.g.sh(t, "echo 3 > /proc/sys/vm/drop_caches; cat /mnt/file"); got != c.want {
			t.Errorf("%s disk: /mnt/file = %q", c.want, got)
		}
		counting(t, c.g, pid)
	}
	// Fresh randomness and identity in the child.
	rnd := "head -c 16 /dev/urandom | od -An -tx1"
	if p, c := b.sh(t, rnd), child.sh(t, rnd); p == c {
		t.Errorf("parent and child read the same 16 random bytes: %s", p)
	}
	if got := strings.TrimSpace(child.sh(t, "hostname")); got != "sbx-child1" {
		t.Errorf("child hostname %q, want sbx-child1", got)
	}
	if p, c := b.sh(t, "cat /etc/machine-id 2>/dev/null; true"), child.sh(t, "cat /etc/machine-id"); p == c || len(strings.TrimSpace(c)) != 32 {
		t.Errorf("machine-id: parent %q, child %q", p, c)
	}
}

// Five checkpoint → restore cycles in a row, each restore checkpointed
// again on top of its chain, stay exact.
func TestKVMCheckpointRestoreCycles(t *testing.T) {
	b := bootBox(t)
	pid := startCounter(t, b.guest)
	g := b.guest
	for i := range 5 {
		id := fmt.Sprintf("cycle%d", i)
		g.sh(t, fmt.Sprintf("%s && echo -n %d > /tmp/value && echo -n %d > /mnt/file && sync", mountVDA, i, i))
		man, _ := checkpoint(t, b, g, id)
		if len(man.Memory) != i+1 {
			t.Errorf("checkpoint %s: memory chain of %d layers, want %d", id, len(man.Memory), i+1)
		}
		g.sh(t, "echo -n garbage > /tmp/value && echo -n garbage > /mnt/file && sync")
		g.stop()
		g = restoreBox(t, b, id)
		want := fmt.Sprint(i)
		if got := g.sh(t, "cat /tmp/value"); got != want {
			t.Fatalf("cycle %d: /tmp/value = %q, want %q", i, got, want)
		}
		if got := g.sh(t, mountVDA+" && cat /mnt/file"); got != want {
			t.Fatalf("cycle %d: /mnt/file = %q, want %q", i, got, want)
		}
		counting(t, g, pid)
	}
}

// An incremental checkpoint writes the pages the guest dirtied, not more:
// at most 1.05 × the bytes dirtied, plus the pages the harness's own exec
// dirties (measured in the same run by an identical exec that writes
// nothing), plus the layer's fixed metadata.
func TestKVMIncrementalCheckpointSize(t *testing.T) {
	b := bootBox(t)
	g := b.guest
	// 64 KiB blocks: dd's own buffer, which the guest dirties too, stays
	// small next to what it writes to the tmpfs.
	const dd = "dd if=/dev/urandom of=/tmp/blob%d bs=64k count=%d 2>/dev/null"
	checkpoint(t, b, g, "base")
	g.sh(t, fmt.Sprintf(dd, 0, 0))
	_, idle := checkpoint(t, b, g, "idle")
	for _, n := range []int{16, 64} {
		g.sh(t, fmt.Sprintf(dd, n, n*16))
		_, st := checkpoint(t, b, g, fmt.Sprintf("dirty%d", n))
		dirtied := int64(n) << 20
		limit := dirtied*105/100 + idle.PageBytes
		t.Logf("dirtied %d MiB: checkpoint wrote %d bytes of pages (limit %d = 1.05 × %d + %d measured idle)", n, st.PageBytes, limit, dirtied, idle.PageBytes)
		if st.PageBytes > limit {
			t.Errorf("dirtied %d MiB: checkpoint wrote %d bytes of pages, more than %d", n, st.PageBytes, limit)
		}
		if st.PageBytes < dirtied {
			t.Errorf("dirtied %d MiB: checkpoint wrote only %d bytes of pages: pages missed", n, st.PageBytes)
		}
		if meta := st.LayerBytes - st.PageBytes; meta > 64<<10 {
			t.Errorf("layer metadata %d bytes, want at most 64 KiB", meta)
		}
		g.sh(t, fmt.Sprintf("rm /tmp/blob%d", n))
	}
}

// A damaged, truncated or unknown-version checkpoint is refused with an
// error naming the problem, and nothing is overwritten.
func TestKVMRestoreRefusesDamage(t *testing.T) {
	b := bootBox(t)
	man, _ := checkpoint(t, b, b.guest, "good")
	b.stop()
	layerPath, err := b.root.Layers().Open(man.Memory[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	manifestPath := filepath.Join(b.dir, "checkpoints", "good", "manifest")
	original, err := os.ReadFile(manifestPath)
	if err != nil {
		t.Fatal(err)
	}
	layer, err := os.ReadFile(layerPath)
	if err != nil {
		t.Fatal(err)
	}
	sys := kvmtest.Require(t)
	try := func(what string, damage func(), wantErr string) {
		t.Helper()
		damage()
		m, err := vmm.Restore(sys, vmm.RestoreConfig{Root: b.root, ID: "good", VsockUDSPath: filepath.Join(t.TempDir(), "v")})
		if err == nil {
			m.Close()
			t.Errorf("%s: restore succeeded", what)
		} else if !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%s: error %q does not name %q", what, err, wantErr)
		} else {
			t.Logf("%s: %v", what, err)
		}
		os.WriteFile(manifestPath, original, 0o644)
		os.WriteFile(layerPath, layer, 0o644)
	}
	try("manifest byte flipped", func() {
		d := slices.Clone(original)
		d[len(d)/2] ^= 0xff
		os.WriteFile(manifestPath, d, 0o644)
	}, "checksum")
	try("manifest truncated", func() { os.WriteFile(manifestPath, original[:len(original)/3], 0o644) }, "manifest")
	try("manifest from a newer format", func() {
		d := slices.Clone(original)
		d[8] = 99 // the version field follows the 8-byte magic
		os.WriteFile(manifestPath, d, 0o644)
	}, "version")
	try("memory layer truncated", func() { os.WriteFile(layerPath, layer[:len(layer)/2], 0o644) }, "memory layer")
	try("memory layer header damaged", func() {
		d := slices.Clone(layer)
		d[20] ^= 0xff
		os.WriteFile(layerPath, d, 0o644)
	}, "memory layer")
	// A new checkpoint never replaces an existing one.
	if _, err := b.root.Begin("good"); !errors.Is(err, snapshot.ErrExists) {
		t.Errorf("Begin over a completed checkpoint: %v, want ErrExists", err)
	}
	if after, _ := os.ReadFile(manifestPath); !bytes.Equal(after, original) {
		t.Error("the manifest changed")
	}
}

// A checkpoint taken right after a restore, while the guest may still be
// handling the restore's vsock transport reset, restores like any other:
// the new machine's agent answers its first connection. (sailboxd does
// this when an inference call puts a box to sleep just after it woke.)
func TestKVMCheckpointRightAfterRestore(t *testing.T) {
	b := bootBox(t)
	checkpoint(t, b, b.guest, "r0")
	b.guest.stop()
	g := restoreBox(t, b, "r0")
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("r%d", i)
		checkpoint(t, b, g, id)
		g.stop()
		g = restoreBox(t, b, id)
		if got := g.sh(t, "echo -n ok"); got != "ok" {
			t.Fatalf("after restoring %s: %q", id, got)
		}
	}
}

// A restore maps the working set recorded for its checkpoint before the
// guest runs: here every page the checkpoint holds as read (far more than
// the guest touches on its way to its first exec) and a few pages as
// written, which the new VM gets its own copies of, contents unchanged.
// The guest then runs on exactly as it would have; its own working set is
// not saved over the first, and a checkpoint of it inherits the first.
func TestKVMRestoreMapsWorkingSetAhead(t *testing.T) {
	b := bootBox(t)
	pid := startCounter(t, b.guest)
	b.sh(t, "echo -n before > /tmp/value")
	man, _ := checkpoint(t, b, b.guest, "ws")

	chain, err := b.root.OpenMemory(man)
	if err != nil {
		t.Fatal(err)
	}
	maps, err := memlayer.Plan(chain, man.MemorySize)
	for _, l := range chain {
		l.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	words := (man.MemorySize/memlayer.PageSize + 63) / 64
	ws := snapshot.WorkingSet{Touched: make([]uint64, words), Written: make([]uint64, words)}
	held := 0
	for _, mp := range maps {
		for p := mp.GuestOffset / memlayer.PageSize; p < (mp.GuestOffset+mp.Length)/memlayer.PageSize; p++ {
			ws.Touched[p/64] |= 1 << (p % 64)
			held++
		}
	}
	// Written: the first 32 pages the checkpoint holds, and 32 pages from
	// 160 MiB on (zeros, unless the guest used them).
	written := kvm.DirtyPages(ws.Touched)[:32]
	for p := uint64(40960); p < 40960+32; p++ {
		written = append(written, p)
	}
	for _, p := range written {
		ws.Written[p/64] |= 1 << (p % 64)
	}

	if saved, err := b.root.SaveWorkingSet("ws", ws); err != nil || !saved {
		t.Fatalf("save the working set: %v, %v", saved, err)
	}

	sys := kvmtest.Require(t)
	uds := filepath.Join(t.TempDir(), "vsock")
	con := &console{}
	m, err := vmm.Restore(sys, vmm.RestoreConfig{Root: b.root, ID: "ws", VsockUDSPath: uds, Serial: con, Logger: con.logger()})
	if err != nil {
		t.Fatal(err)
	}
	g := start(t, m, con, uds, true)
	got, err := g.m.Memory().WorkingSet()
	if err != nil {
		t.Fatal(err)
	}
	own, err := g.m.Memory().Private()
	if err != nil {
		t.Fatal(err)
	}
	if tr := g.m.Memory().Tracking(); tr != memory.NoWriteTracking {
		t.Errorf("a restore of a checkpoint with a working set tracks writes (%v), which it will never record", tr)
	}
	notMapped, notCopied := 0, 0
	for w := range ws.Touched {
		notMapped += bits.OnesCount64(ws.Touched[w] &^ got.Touched[w])
		notCopied += bits.OnesCount64(ws.Written[w] &^ own[w])
	}
	if notCopied > 0 {
		t.Errorf("%d of the 64 pages given as written have no copy of their own", notCopied)
	}
	preFault, err := sys.CheckExtension(kvm.CapPreFaultMemory)
	if err != nil || preFault == 0 {
		t.Logf("this kernel cannot enter pages in KVM's tables ahead (KVM_PRE_FAULT_MEMORY: %d, %v): %d of %d held pages mapped by use alone", preFault, err, held-notMapped, held)
	} else if notMapped > 0 {
		t.Errorf("%d of the %d pages the checkpoint holds were not mapped ahead", notMapped, held)
	}
	// The machine says what it mapped, as the VMM's status reports it.
	mapped, ok := g.m.MappedAhead()
	if !ok || mapped.From != "ws" || mapped.Pages != uint64(ws.Pages()) || mapped.Copied != uint64(len(written)) ||
		(preFault > 0 && mapped.Entered != mapped.Pages) {
		t.Errorf("the machine reports %+v (%v) mapped ahead; want ws's %d pages, its %d written ones copied", mapped, ok, ws.Pages(), len(written))
	}
	if got := g.sh(t, "cat /tmp/value"); got != "before" {
		t.Errorf("/tmp/value = %q after the restore, want %q", got, "before")
	}
	counting(t, g, pid)
	if saved, err := g.m.SaveWorkingSet(); err != nil || saved {
		t.Errorf("the restored machine's SaveWorkingSet: saved %v, %v; want the first kept", saved, err)
	}
	next, _ := checkpoint(t, b, g, "ws2")
	if got, from, err := b.root.WorkingSet(next); err != nil || from != "ws2" || got.Pages() != ws.Pages() {
		t.Errorf("working set of the next checkpoint: %d pages from %q, %v; want the %d of ws, inherited", got.Pages(), from, err, ws.Pages())
	}
}

// A machine restored from a checkpoint without a working set records its
// own: the pages its guest touched, among them what it wrote.
func TestKVMRestoreRecordsWorkingSet(t *testing.T) {
	b := bootBox(t)
	man, _ := checkpoint(t, b, b.guest, "rec")
	g := restoreBox(t, b, "rec")
	if mapped, ok := g.m.MappedAhead(); ok {
		t.Errorf("a restore of a checkpoint without a working set reports %+v mapped ahead", mapped)
	}
	g.sh(t, "echo -n after > /tmp/value")
	best, err := scratchMemoryTracking()
	if err != nil {
		t.Logf("this kernel cannot tell written pages: %v", err)
	}
	if got := g.m.Memory().Tracking(); got != best {
		t.Errorf("the restored machine tracks writes by %v, want %v, the best this kernel offers", got, best)
	}
	if saved, err := g.m.SaveWorkingSet(); err != nil || !saved {
		t.Fatalf("SaveWorkingSet: saved %v, %v", saved, err)
	}
	if got := g.m.Memory().Tracking(); got != memory.NoWriteTracking {
		t.Errorf("still tracking writes (%v) after the working set was saved", got)
	}
	ws, from, err := b.root.WorkingSet(man)
	if err != nil || from != "rec" {
		t.Fatalf("working set of rec: from %q, %v", from, err)
	}
	var touched, written int
	for w := range ws.Touched {
		touched += bits.OnesCount64(ws.Touched[w])
		written += bits.OnesCount64(ws.Written[w])
		if ws.Written[w]&^ws.Touched[w] != 0 {
			t.Errorf("word %d: written pages not touched: %#x", w, ws.Written[w]&^ws.Touched[w])
		}
	}
	t.Logf("working set after the restore and two execs: %d pages touched, %d written (%v)", touched, written, best)
	if touched == 0 || (written == 0) != (best == memory.NoWriteTracking) || uint64(touched) >= man.MemorySize/memlayer.PageSize/2 {
		t.Errorf("%d pages touched and %d written of %d: not a working set", touched, written, man.MemorySize/memlayer.PageSize)
	}
	if _, err := b.guest.m.SaveWorkingSet(); err == nil {
		t.Error("a booted machine saved a working set")
	}
}

// scratchMemoryTracking is the way of tracking writes this host kernel
// offers first, as memory.TrackWrites finds it on a scratch mapping.
func scratchMemoryTracking() (memory.WriteTracking, error) {
	m, err := memory.New(1 << 20)
	if err != nil {
		return memory.NoWriteTracking, err
	}
	defer m.Close()
	return m.TrackWrites()
}
