package vmm

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// Boot MSRs, as a BIOS would leave them (Intel SDM vol. 4).
const (
	msrIA32TSC         = 0x10
	msrIA32SysenterCS  = 0x174
	msrIA32SysenterESP = 0x175
	msrIA32SysenterEIP = 0x176
	msrIA32MiscEnable  = 0x1a0
	msrMTRRDefType     = 0x2ff
	msrSTAR            = 0xc0000081
	msrLSTAR           = 0xc0000082
	msrCSTAR           = 0xc0000083
	msrSyscallMask     = 0xc0000084
	msrKernelGSBase    = 0xc0000102

	miscEnableFastString = 1
	mtrrEnableWriteBack  = 1<<11 | 6
)

// Local APIC LVT registers and delivery modes.
const (
	apicLVT0       = 0x350
	apicLVT1       = 0x360
	apicModeNMI    = 0x4
	apicModeExtINT = 0x7
)

// kickSignal interrupts a vCPU thread blocked in KVM_RUN. The Go runtime
// already handles SIGURG (it is its preemption signal) on every thread, so
// no handler needs installing and a stray one is harmless.
const kickSignal = unix.SIGURG

// vcpu is one virtual CPU and the goroutine that runs it.
type vcpu struct {
	m   *Machine
	id  int
	cpu atomic.Pointer[kvm.VCPU] // set once by the run goroutine; read by kick

	tid     atomic.Int32 // OS thread of the run goroutine, 0 until it starts
	stopped atomic.Bool  // set by kick; the run loop ends at its next exit

	// mu guards the fields below, and kvm_run.immediate_exit: whoever
	// changes it holds mu, so that clearing it before KVM_RUN cannot undo
	// a pause or a stop requested at the same moment.
	mu     sync.Mutex
	cond   sync.Cond         // on mu: pause, parked, work or stopped changed
	pause  bool              // a pause is requested: the loop parks at its next exit
	parked bool              // the loop is parked, out of KVM_RUN
	work   []func(*kvm.VCPU) // run on the vCPU's thread while parked

	msrs []uint32 // the MSRs this vCPU saves; probed at its first checkpoint
}

// newVCPU returns vCPU id of m, not yet running.
func newVCPU(m *Machine, id int) *vcpu {
	v := &vcpu{m: m, id: id}
	v.cond.L = &v.mu
	return v
}

// run creates, configures and runs the vCPU on a goroutine locked to its
// thread, as KVM wants. It reports setup success or failure on started.
func (v *vcpu) run(started chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	v.tid.Store(int32(unix.Gettid()))
	if err := v.setup(); err != nil {
		started <- fmt.Errorf("vcpu %d: %w", v.id, err)
		return
	}
	started <- nil
	if err := v.loop(); err != nil {
		v.m.stop(ExitStopped, fmt.Errorf("vcpu %d: %w", v.id, err))
	}
}

func (v *vcpu) setup() error {
	cpu, err := v.m.vm.CreateVCPU(v.id)
	if err != nil {
		return err
	}
	v.cpu.Store(cpu)
	// kick stores stopped before loading cpu, we store cpu before loading
	// stopped: one of the two sees the other, so no kick is lost.
	if v.stopped.Load() {
		cpu.SetImmediateExit(true)
	}
	if v.m.restored != nil {
		if err := restoreVCPU(cpu, &v.m.restored[v.id]); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		if v.id == 0 {
			// Only a head start: the pages fault in as usual otherwise.
			if err := v.m.prefault(cpu); err != nil {
				deviceLogger(v.m.cfg).Warn("restore: mapping the working set ahead", "err", err)
			}
		}
		return cpu.NotifyGuestPaused()
	}
	if err := cpu.SetCPUID(guestCPUID(v.m.cpuid, v.id, v.m.cfg.VCPUs)); err != nil {
		return err
	}
	if err := cpu.SetMSRs([]kvm.MSREntry{
		{Index: msrIA32SysenterCS}, {Index: msrIA32SysenterESP}, {Index: msrIA32SysenterEIP},
		{Index: msrSTAR}, {Index: msrCSTAR}, {Index: msrKernelGSBase}, {Index: msrSyscallMask}, {Index: msrLSTAR},
		{Index: msrIA32TSC},
		{Index: msrIA32MiscEnable, Data: miscEnableFastString},
		{Index: msrMTRRDefType, Data: mtrrEnableWriteBack},
	}); err != nil {
		return err
	}
	if err := cpu.SetFPU(kvm.FPU{FCW: 0x37f, MXCSR: 0x1f80}); err != nil {
		return err
	}
	lapic, err := cpu.LAPIC()
	if err != nil {
		return err
	}
	setLVTMode(&lapic, apicLVT0, apicModeExtINT)
	setLVTMode(&lapic, apicLVT1, apicModeNMI)
	if err := cpu.SetLAPIC(lapic); err != nil {
		return err
	}
	if v.id != 0 {
		return nil // application processors wait for the BSP's INIT/SIPI
	}
	sregs, err := cpu.Sregs()
	if err != nil {
		return err
	}
	if err := cpu.SetSregs(v.m.entry.Sregs(sregs)); err != nil {
		return err
	}
	return cpu.SetRegs(v.m.entry.Regs)
}

func setLVTMode(l *kvm.LAPICState, reg int, mode uint32) {
	r := l.Regs[reg : reg+4]
	val := uint32(r[0]) | uint32(r[1])<<8 | uint32(r[2])<<16 | uint32(r[3])<<24
	val = val&^0x700 | mode<<8
	r[0], r[1], r[2], r[3] = byte(val), byte(val>>8), byte(val>>16), byte(val>>24)
}

// kick makes the run loop return: it marks the vCPU stopped, makes any
// later KVM_RUN return at once, and signals the thread out of a KVM_RUN in
// progress. Safe from any goroutine, any number of times.
func (v *vcpu) kick() {
	v.mu.Lock()
	v.stopped.Store(true)
	v.interruptLocked()
	v.cond.Broadcast()
	v.mu.Unlock()
}

// interruptLocked makes the next or current KVM_RUN of the vCPU return.
func (v *vcpu) interruptLocked() {
	if cpu := v.cpu.Load(); cpu != nil {
		cpu.SetImmediateExit(true)
	}
	if tid := v.tid.Load(); tid != 0 {
		unix.Tgkill(unix.Getpid(), int(tid), kickSignal)
	}
}

// gate runs before every KVM_RUN: it parks the loop while a pause is
// requested, and otherwise clears immediate_exit, set by an earlier pause
// request, unless the vCPU is stopping. It reports false once stopped.
func (v *vcpu) gate(cpu *kvm.VCPU) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.pause && !v.stopped.Load() {
		// KVM finishes an exit's instruction (an IN's result into RAX,
		// RIP past an OUT) only on the next KVM_RUN. Enter once with
		// immediate_exit still set: KVM completes it and returns EINTR
		// without running guest code, so the state a checkpoint saves
		// never replays or loses an access.
		if err := cpu.Run(); err != nil && !errors.Is(err, unix.EINTR) {
			v.m.stop(ExitStopped, fmt.Errorf("vcpu %d: complete exit before pausing: %w", v.id, err))
		}
		v.parked = true
		v.cond.Broadcast()
		for v.pause && !v.stopped.Load() {
			if len(v.work) == 0 {
				v.cond.Wait()
				continue
			}
			f := v.work[0]
			v.work = v.work[1:]
			v.mu.Unlock()
			f(cpu)
			v.mu.Lock()
		}
		v.parked = false
		v.cond.Broadcast()
	}
	if v.stopped.Load() {
		return false
	}
	cpu.SetImmediateExit(false)
	return true
}

// requestPause asks the loop to park and waits until it has, or has ended.
func (v *vcpu) requestPause() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pause = true
	v.interruptLocked()
	if v.parked || v.stopped.Load() {
		return nil
	}
	// Kick again now and then, and give up after parkTimeout: a vCPU
	// that does not leave KVM_RUN is stuck in the kernel, and waiting
	// for it would hang the pause (and a checkpoint) forever. (Not
	// covered: a vCPU stuck in the immediate_exit KVM_RUN that gate
	// makes while holding v.mu, which returns without running guest
	// code.)
	deadline := time.Now().Add(parkTimeout)
	expired, finished := false, false
	defer func() { finished = true }() // under v.mu: a late tick does nothing
	var timer *time.Timer
	tick := func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		if finished || v.parked || v.stopped.Load() {
			return
		}
		if time.Now().After(deadline) {
			expired = true
			v.cond.Broadcast()
			return
		}
		v.interruptLocked()
		timer.Reset(rekickInterval)
	}
	timer = time.AfterFunc(rekickInterval, tick)
	defer timer.Stop()
	for !v.parked && !v.stopped.Load() {
		if expired {
			return fmt.Errorf("vcpu %d: %w: not out of KVM_RUN %v after a pause request", v.id, ErrVCPUStuck, parkTimeout)
		}
		v.cond.Wait()
	}
	return nil
}

// How a pause waits for a vCPU to park: kicked again every
// rekickInterval, given up on after parkTimeout.
const (
	rekickInterval = 100 * time.Millisecond
	parkTimeout    = 10 * time.Second
)

// resume lets a parked loop run the guest again.
func (v *vcpu) resume() {
	v.mu.Lock()
	v.pause = false
	v.cond.Broadcast()
	v.mu.Unlock()
}

// do runs f on the vCPU's own thread while it is parked and returns its
// error; KVM wants a vCPU's state ioctls issued there.
func (v *vcpu) do(f func(*kvm.VCPU) error) error {
	v.mu.Lock()
	if !v.parked {
		v.mu.Unlock()
		return fmt.Errorf("vcpu %d: not paused", v.id)
	}
	done := make(chan error, 1)
	v.work = append(v.work, func(cpu *kvm.VCPU) { done <- f(cpu) })
	v.cond.Broadcast()
	v.mu.Unlock()
	return <-done
}

// loop runs the guest until the vCPU is kicked or the guest stops.
func (v *vcpu) loop() error {
	cpu := v.cpu.Load()
	for v.gate(cpu) {
		err := cpu.Run()
		switch {
		case errors.Is(err, unix.EINTR):
			// A kick (a stop or a pause) or a signal meant for someone
			// else; either way the gate decides.
			continue
		case errors.Is(err, unix.EAGAIN):
			// An application processor left its wait-for-SIPI state; KVM
			// returns to user space once and expects to be entered again.
			continue
		}
		if err != nil {
			return err
		}
		if done, err := v.handleExit(cpu); done || err != nil {
			return err
		}
	}
	return nil
}

// handleExit services one exit; done reports that the machine is stopping.
func (v *vcpu) handleExit(cpu *kvm.VCPU) (done bool, err error) {
	switch r := cpu.ExitReason(); r {
	case kvm.ExitIO:
		io, err := cpu.IO()
		if err != nil {
			return true, err
		}
		for i := 0; i+io.Size <= len(io.Data); i += io.Size {
			d := io.Data[i : i+io.Size]
			if io.Out {
				v.m.pio.Write(uint64(io.Port), d)
			} else if !v.m.pio.Read(uint64(io.Port), d) {
				clear(d)
			}
		}
	case kvm.ExitMMIO:
		mmio, err := cpu.MMIO()
		if err != nil {
			return true, err
		}
		if mmio.Write {
			v.m.mmio.Write(mmio.Addr, mmio.Data)
		} else if !v.m.mmio.Read(mmio.Addr, mmio.Data) {
			clear(mmio.Data)
		}
	case kvm.ExitHLT:
		// Only without an in-kernel irqchip; nothing to do but re-enter.
	case kvm.ExitShutdown:
		v.reportShutdown(cpu)
		v.m.stop(ExitShutdown, nil)
		return true, nil
	case kvm.ExitSystemEvent:
		switch cpu.SystemEventType() {
		case kvm.SystemEventReset:
			v.m.stop(ExitReset, nil)
		case kvm.SystemEventShutdown:
			v.m.stop(ExitPowerOff, nil)
		default:
			v.m.stop(ExitShutdown, nil)
		}
		return true, nil
	case kvm.ExitInternalError:
		sub, data := cpu.InternalError()
		return true, fmt.Errorf("%v suberror %d data %#x", r, sub, data)
	case kvm.ExitFailEntry:
		return true, fmt.Errorf("%v: hardware entry failure", r)
	case kvm.ExitIntr:
	default:
		return true, fmt.Errorf("unhandled %v", r)
	}
	return false, nil
}

// reportShutdown logs where a vCPU was when the guest shut down (a triple
// fault): the registers that tell a wild jump from a broken page table or
// IDT.
func (v *vcpu) reportShutdown(cpu *kvm.VCPU) {
	r, rerr := cpu.Regs()
	sr, serr := cpu.Sregs()
	ev, eerr := cpu.VCPUEvents()
	deviceLogger(v.m.cfg).Error("guest shut down (triple fault)", "vcpu", v.id,
		"rip", fmt.Sprintf("%#x", r.RIP), "rsp", fmt.Sprintf("%#x", r.RSP), "rflags", fmt.Sprintf("%#x", r.RFLAGS),
		"cr0", fmt.Sprintf("%#x", sr.CR0), "cr2", fmt.Sprintf("%#x", sr.CR2), "cr3", fmt.Sprintf("%#x", sr.CR3),
		"cr4", fmt.Sprintf("%#x", sr.CR4), "efer", fmt.Sprintf("%#x", sr.EFER),
		"idt", fmt.Sprintf("%#x/%#x", sr.IDT.Base, sr.IDT.Limit),
		"exception", fmt.Sprintf("nr=%d injected=%d pending=%d code=%#x", ev.Exception.Nr, ev.Exception.Injected, ev.Exception.Pending, ev.Exception.ErrorCode),
		"err", errors.Join(rerr, serr, eerr))
}
