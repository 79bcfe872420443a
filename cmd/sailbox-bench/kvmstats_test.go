package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestReadKVMCounters(t *testing.T) {
	root := t.TempDir()
	write := func(rel, content string) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Two VMs made by threads 42 and 43 of one process (summed), one by
	// 420 (not its), a vCPU's own directory (already in its VM's sums)
	// and a file that is no counter.
	write("42-11/exits", "100\n")
	write("42-11/mmio_exits", "7\n")
	write("42-11/io_exits", "3\n")
	write("42-11/vcpu0/exits", "100\n")
	write("42-11/notes", "not a number\n")
	write("43-12/exits", "5\n")
	write("420-11/exits", "1000\n")

	mine := func(tid int) bool { return tid == 42 || tid == 43 }
	c, err := readKVMCounters(root, mine)
	if err != nil {
		t.Fatal(err)
	}
	if c["exits"] != 105 || c["userspace_exits"] != 10 {
		t.Errorf("counters %v: want exits 105 (both VMs of 42 and 43, no vCPU directory, not 420's), userspace_exits 10 (mmio + io)", c)
	}
	if _, ok := c["notes"]; ok {
		t.Errorf("a file that is no number was read as a counter: %v", c)
	}
	if _, err := readKVMCounters(root, func(int) bool { return false }); err == nil || !strings.Contains(err.Error(), "no VM of this process") {
		t.Errorf("no VM of the process: %v, want an error naming it", err)
	}
}

func TestThreadOf(t *testing.T) {
	if !threadOf(os.Getpid())(syscall.Gettid()) {
		t.Error("this thread is not the process's")
	}
	if threadOf(os.Getpid())(1 << 30) {
		t.Error("a thread id no process has was accepted")
	}
}

func TestPerCallCounters(t *testing.T) {
	a := kvmCounters{"exits": 1000, "insn_emulation": 10, "irq_injections": 0, "userspace_exits": 5, "halt_exits": 7, "irq_exits": 1}
	b := kvmCounters{"exits": 3000, "insn_emulation": 410, "irq_injections": 60, "userspace_exits": 45, "halt_exits": 207, "irq_exits": 21}
	got := perCall(a, b, 20)
	want := map[string]float64{"exits": 100, "insn_emulation": 20, "irq_injections": 3, "userspace_exits": 2, "halt_exits": 10, "irq_exits": 1}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s per call: %v, want %v", k, got[k], v)
		}
	}

	res := &Results{}
	var log bytes.Buffer
	res.recordCounters(&log, 3, agentTimes{execCounters: got}, "qemu")
	row, ok := res.rowByID("kvm.exits.exec.qemu")
	if !ok || len(row.Samples) != 1 || row.Samples[0] != 100 || row.Unit != "count" {
		t.Errorf("row kvm.exits.exec.qemu: %+v (found %v), want one sample of 100 counts", row, ok)
	}
	if _, ok := res.rowByID("kvm.exits.health.qemu"); ok {
		t.Error("a health row without health counters")
	}
	if !strings.Contains(log.String(), "qemu    run 3: per exec call: exits 100.0") {
		t.Errorf("log %q", log.String())
	}
}
