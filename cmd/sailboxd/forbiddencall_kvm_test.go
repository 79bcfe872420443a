package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// syscallInsn is x86-64's SYSCALL instruction.
var syscallInsn = [2]byte{0x0f, 0x05}

// makeForbiddenCall makes running process pid issue socketpair(2), a
// call sailbox-vmm's seccomp filter forbids (vmm/seccomp's forbidden
// list), as a guest that took over the VMM would, with no hook in the
// VMM: it stops one of pid's threads that sits in a system call
// (PTRACE_SEIZE, PTRACE_INTERRUPT), points it back at that call's SYSCALL
// instruction with socketpair's number, and lets it go. It returns how
// that thread ended; if the call returns instead, the test fails. The arguments (AF_UNIX, SOCK_STREAM, 0, NULL) would
// fail with EFAULT if the call ran at all.
//
// Every ptrace request must come from the thread that seized the tracee,
// so the goroutine stays on its thread throughout.
func makeForbiddenCall(t *testing.T, pid int) unix.WaitStatus {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatalf("threads of %d: %v", pid, err)
	}
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		if err := unix.PtraceSeize(tid); err != nil {
			t.Fatalf("seize thread %d of %d: %v", tid, pid, err)
		}
		if err := unix.PtraceInterrupt(tid); err != nil {
			t.Fatalf("interrupt thread %d of %d: %v", tid, pid, err)
		}
		var ws unix.WaitStatus
		if _, err := unix.Wait4(tid, &ws, unix.WALL, nil); err != nil || !ws.Stopped() {
			t.Fatalf("wait for thread %d of %d to stop: %v (status %#x)", tid, pid, err, ws)
		}
		var regs unix.PtraceRegs
		if err := unix.PtraceGetRegs(tid, &regs); err != nil {
			t.Fatalf("registers of thread %d of %d: %v", tid, pid, err)
		}
		var insn [2]byte
		if n, err := unix.PtracePeekText(tid, uintptr(regs.Rip-2), insn[:]); err != nil || n != 2 || insn != syscallInsn {
			unix.PtraceDetach(tid) // not stopped in a system call: try another thread
			continue
		}
		// Orig_rax -1: no restart of the interrupted call either.
		saved := regs
		regs.Rip -= 2
		regs.Orig_rax = ^uint64(0)
		regs.Rax = unix.SYS_SOCKETPAIR
		regs.Rdi, regs.Rsi, regs.Rdx, regs.R10 = unix.AF_UNIX, unix.SOCK_STREAM, 0, 0
		if err := unix.PtraceSetRegs(tid, &regs); err != nil {
			t.Fatalf("set registers of thread %d of %d: %v", tid, pid, err)
		}
		// Stop at the call's entry and exit too: a call the filter lets
		// through must fail the test, not hang it. A killed call is
		// skipped and still reaches its exit stop, before the SIGSYS that
		// ends the thread; only a call that ran returns EFAULT.
		if err := unix.PtraceSetOptions(tid, unix.PTRACE_O_TRACESYSGOOD); err != nil {
			t.Fatalf("trace system calls of thread %d of %d: %v", tid, pid, err)
		}
		sig, syscallStops := 0, 0
		for {
			if err := unix.PtraceSyscall(tid, sig); err != nil {
				t.Fatalf("continue thread %d of %d: %v", tid, pid, err)
			}
			if _, err := unix.Wait4(tid, &ws, unix.WALL, nil); err != nil {
				t.Fatalf("wait for thread %d of %d: %v", tid, pid, err)
			}
			switch {
			case ws.Exited() || ws.Signaled():
				return ws
			case ws.StopSignal() == unix.SIGTRAP|0x80:
				sig = 0
				var now unix.PtraceRegs
				if err := unix.PtraceGetRegs(tid, &now); err != nil {
					t.Fatalf("registers of thread %d of %d: %v", tid, pid, err)
				}
				if syscallStops++; syscallStops == 2 && int64(now.Rax) == -int64(unix.EFAULT) {
					unix.PtraceSetRegs(tid, &saved)
					unix.PtraceDetach(tid)
					t.Fatalf("thread %d of %d made socketpair, which failed with EFAULT: no seccomp filter stopped it", tid, pid)
				}
			case ws.StopSignal() == unix.SIGTRAP:
				sig = 0 // a ptrace event
			default:
				sig = int(ws.StopSignal()) // the thread's own signal: deliver it
			}
		}
	}
	t.Fatalf("no thread of %d stopped in a system call", pid)
	return 0
}
