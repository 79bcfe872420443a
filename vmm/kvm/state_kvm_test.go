package kvm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"testing"

	"github.com/sailbox-dev/sailbox/internal/kvmtest"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

const (
	msrTSC            = 0x10
	msrTSCDeadline    = 0x6e0
	msrKVMSystemTime  = 0x4b564d01 // MSR_KVM_SYSTEM_TIME_NEW: the guest's kvmclock page
	msrHVVPRuntime    = 0x40000010
	msrHVTimeRefCount = 0x40000020

	apicLVTT = 0x320 // LAPIC timer LVT
	apicLVT0 = 0x350

	ecxTSCDeadline = 1 << 24 // CPUID leaf 1 ECX
	ecxXSAVE       = 1 << 26

	kvmclockPage = 0x2000
)

// clockMSRs count time: two reads differ even with nothing in between.
var clockMSRs = map[uint32]bool{msrTSC: true, msrHVVPRuntime: true, msrHVTimeRefCount: true}

// The state a snapshot of a one-vCPU VM holds, as the lead's vmm/ will
// save it.
type savedVCPU struct {
	MP     kvm.MPState
	Events kvm.VCPUEvents
	Regs   kvm.Regs
	Sregs  kvm.Sregs
	XSave  []byte
	XCRs   kvm.XCRs
	MSRs   []kvm.MSREntry
	LAPIC  kvm.LAPICState
	Debug  kvm.DebugRegs
	CPUID  []kvm.CPUIDEntry
	TSCKHz uint32
}

type savedVM struct {
	Chips [3]kvm.IRQChip
	PIT   kvm.PITState
	Clock kvm.ClockData
}

var chipIDs = [3]kvm.IRQChipID{kvm.IRQChipPICMaster, kvm.IRQChipPICSlave, kvm.IRQChipIOAPIC}

// get calls a getter and fails the test on error.
func get[T any](t *testing.T, f func() (T, error)) T {
	t.Helper()
	v, err := f()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func readMSRs(t *testing.T, cpu *kvm.VCPU, indices ...uint32) []kvm.MSREntry {
	t.Helper()
	e, err := cpu.GetMSRs(indices)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func irqChip(t *testing.T, vm *kvm.VM, id kvm.IRQChipID) kvm.IRQChip {
	t.Helper()
	c, err := vm.IRQChip(id)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func createVCPU(t *testing.T, vm *kvm.VM) *kvm.VCPU {
	t.Helper()
	cpu, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cpu.Close() })
	return cpu
}

func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// saveVCPU reads everything, MP state first: KVM_GET_MP_STATE delivers a
// latched INIT or SIPI, which rewrites CS:IP and the registers.
func saveVCPU(t *testing.T, cpu *kvm.VCPU, msrs []uint32) savedVCPU {
	t.Helper()
	var s savedVCPU
	s.MP = get(t, cpu.MPState)
	s.Events = get(t, cpu.VCPUEvents)
	s.Regs = get(t, cpu.Regs)
	s.Sregs = get(t, cpu.Sregs)
	s.XSave = get(t, cpu.XSave)
	s.XCRs = get(t, cpu.XCRs)
	s.MSRs = readMSRs(t, cpu, msrs...)
	s.LAPIC = get(t, cpu.LAPIC)
	s.Debug = get(t, cpu.DebugRegs)
	s.CPUID = get(t, cpu.CPUID)
	s.TSCKHz = get(t, cpu.TSCKHz)
	return s
}

func saveVM(t *testing.T, vm *kvm.VM) savedVM {
	t.Helper()
	var s savedVM
	for i, id := range chipIDs {
		s.Chips[i] = irqChip(t, vm, id)
	}
	s.PIT = get(t, vm.PIT2)
	s.Clock = get(t, vm.Clock)
	return s
}

type restoreStep struct {
	name string
	do   func() error
}

// restoreSteps is the order the package documentation prescribes for
// restoring into a fresh VM (irqchip and PIT created, memory mapped) and a
// fresh vCPU that has never run.
func restoreSteps(vm *kvm.VM, cpu *kvm.VCPU, v savedVCPU, m savedVM) []restoreStep {
	return []restoreStep{
		{"cpuid", func() error { return cpu.SetCPUID(v.CPUID) }},
		{"tsc-khz", func() error { return cpu.SetTSCKHz(v.TSCKHz) }},
		{"sregs", func() error { return cpu.SetSregs(v.Sregs) }},
		{"regs", func() error { return cpu.SetRegs(v.Regs) }},
		{"xsave", func() error { return cpu.SetXSave(v.XSave) }},
		{"xcrs", func() error { return cpu.SetXCRs(v.XCRs) }},
		{"lapic", func() error { return cpu.SetLAPIC(v.LAPIC) }},
		{"msrs", func() error { return cpu.SetMSRs(v.MSRs) }},
		{"events", func() error { return cpu.SetVCPUEvents(v.Events) }},
		{"mp-state", func() error { return cpu.SetMPState(v.MP) }},
		{"debugregs", func() error { return cpu.SetDebugRegs(v.Debug) }},
		{"irqchip", func() error {
			for _, c := range m.Chips {
				if err := vm.SetIRQChip(c); err != nil {
					return err
				}
			}
			return nil
		}},
		{"pit2", func() error { return vm.SetPIT2(m.PIT) }},
		// Resume kvmclock where it stopped: no ClockRealtime, so the guest
		// does not see the time the test spent between save and restore.
		{"clock", func() error { return vm.SetClock(kvm.ClockData{Clock: m.Clock.Clock}) }},
		{"kvmclock-ctrl", cpu.NotifyGuestPaused},
	}
}

func restore(t *testing.T, steps []restoreStep) {
	t.Helper()
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("restore %s: %v", s.name, err)
		}
	}
}

// readableMSRs returns the entries of indices that the vCPU's KVM_GET_MSRS
// reads, and the indices it refuses.
func readableMSRs(t *testing.T, cpu *kvm.VCPU, indices []uint32) (ok []kvm.MSREntry, refused []uint32) {
	t.Helper()
	rest := indices
	for len(rest) > 0 {
		got, err := cpu.GetMSRs(rest)
		ok = append(ok, got...)
		var me *kvm.MSRError
		if errors.As(err, &me) {
			refused = append(refused, me.Index)
			rest = rest[len(got)+1:]
			continue
		}
		check(t, err)
		break
	}
	return ok, refused
}

func msrIndices(entries []kvm.MSREntry) []uint32 {
	idx := make([]uint32, len(entries))
	for i, e := range entries {
		idx[i] = e.Index
	}
	return idx
}

func compareMSRs(t *testing.T, what string, got, want []kvm.MSREntry) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d MSRs, want %d", what, len(got), len(want))
		return
	}
	for i := range want {
		if got[i].Index != want[i].Index {
			t.Errorf("%s: entry %d is MSR %#x, want %#x", what, i, got[i].Index, want[i].Index)
		} else if got[i].Data != want[i].Data && !clockMSRs[want[i].Index] {
			t.Errorf("%s: MSR %#x = %#x, want %#x", what, want[i].Index, got[i].Data, want[i].Data)
		}
	}
}

// firstDiff describes where two byte images differ.
func firstDiff(a, b []byte) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("first difference at byte %#x: %#x vs %#x", i, a[i], b[i])
		}
	}
	return fmt.Sprintf("lengths %d vs %d", len(a), len(b))
}

func lapicReg(l *kvm.LAPICState, off int) uint32 {
	return binary.LittleEndian.Uint32(l.Regs[off:])
}

func setLAPICReg(l *kvm.LAPICState, off int, v uint32) {
	binary.LittleEndian.PutUint32(l.Regs[off:], v)
}

// samePIT compares two i8254 states but for CountLoadTime, which
// KVM_SET_PIT2 resets to the time of the call.
func samePIT(a, b kvm.PITState) bool {
	for i := range a.Channels {
		a.Channels[i].CountLoadTime, b.Channels[i].CountLoadTime = 0, 0
	}
	return a == b
}

func logCapabilities(t *testing.T, sys *kvm.System, vm *kvm.VM) {
	t.Helper()
	for _, c := range []struct {
		name string
		cap  kvm.Capability
	}{
		{"XSAVE", kvm.CapXSave}, {"XSAVE2", kvm.CapXSave2}, {"XCRS", kvm.CapXCRS},
		{"DEBUGREGS", kvm.CapDebugRegs}, {"VCPU_EVENTS", kvm.CapVCPUEvents},
		{"ADJUST_CLOCK", kvm.CapAdjustClock}, {"KVMCLOCK_CTRL", kvm.CapKVMClockCtrl},
		{"PIT_STATE2", kvm.CapPITState2}, {"MP_STATE", kvm.CapMPState},
		{"TSC_CONTROL", kvm.CapTSCControl}, {"GET_TSC_KHZ", kvm.CapGetTSCKHz},
		{"VM_TSC_CONTROL", kvm.CapVMTSCControl}, {"TSC_DEADLINE_TIMER", kvm.CapTSCDeadlineTimer},
		{"GET_MSR_FEATURES", kvm.CapGetMSRFeatures}, {"ENABLE_CAP_VM", kvm.CapEnableCapVM},
		{"MANUAL_DIRTY_LOG_PROTECT2", kvm.CapManualDirtyLogProtect2},
		{"DIRTY_LOG_RING", kvm.CapDirtyLogRing},
		{"EXCEPTION_PAYLOAD", kvm.CapExceptionPayload},
		{"X86_TRIPLE_FAULT_EVENT", kvm.CapX86TripleFaultEvent},
	} {
		s, _ := sys.CheckExtension(c.cap)
		v, _ := vm.CheckExtension(c.cap)
		t.Logf("KVM_CAP_%s: system %d, vm %d", c.name, s, v)
	}
}

// newStateVM creates a VM as vmm.New does for these purposes: in-kernel
// irqchip and PIT, and 64 KiB of memory at 0 holding code.
func newStateVM(t *testing.T, sys *kvm.System, code []byte) (*kvm.VM, []byte) {
	t.Helper()
	vm := newVM(t, sys)
	check(t, vm.CreateIRQChip())
	check(t, vm.CreatePIT2())
	mem := guestMemory(t, 1<<16)
	copy(mem[guestEntry:], code)
	check(t, vm.MapMemory(0, 0, mem, 0))
	return vm, mem
}

// roundTrip reads a piece of state, optionally changes it, writes it back
// and checks that reading it again gives what was written.
func roundTrip[T comparable](t *testing.T, name string, get func() (T, error), set func(T) error, mutate func(*T)) {
	t.Helper()
	v, err := get()
	if err != nil {
		t.Errorf("%s: %v", name, err)
		return
	}
	if mutate != nil {
		mutate(&v)
	}
	if err := set(v); err != nil {
		t.Errorf("%s: %v", name, err)
		return
	}
	got, err := get()
	if err != nil {
		t.Errorf("%s: read back: %v", name, err)
		return
	}
	if got != v {
		t.Errorf("%s: read back\n%+v\nwant\n%+v", name, got, v)
	}
}

// Every get/set pair on one VM: get, (change,) set, get again and compare.
func TestKVMStateRoundTrip(t *testing.T) {
	sys := kvmtest.Require(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	vm, _ := newStateVM(t, sys, nil)
	cpu := newVCPU(t, sys, vm, nil)
	logCapabilities(t, sys, vm)

	supported := get(t, sys.SupportedCPUID)
	cpuid := get(t, cpu.CPUID)
	if len(cpuid) != len(supported) {
		t.Errorf("KVM_GET_CPUID2: %d entries, SetCPUID gave %d", len(cpuid), len(supported))
	}
	for i := range min(len(cpuid), len(supported)) {
		if g, w := cpuid[i], supported[i]; g.Function != w.Function || g.Index != w.Index {
			t.Errorf("KVM_GET_CPUID2 entry %d is leaf %#x.%d, SetCPUID gave %#x.%d", i, g.Function, g.Index, w.Function, w.Index)
		}
	}
	t.Logf("XSAVE state: %d bytes", cpu.XSaveSize())

	khz := get(t, cpu.TSCKHz)
	t.Logf("guest TSC: %d kHz", khz)
	roundTrip(t, "TSC kHz", cpu.TSCKHz, cpu.SetTSCKHz, nil)
	roundTrip(t, "regs", cpu.Regs, cpu.SetRegs, func(r *kvm.Regs) { r.RAX, r.RBX, r.R15 = 0x1234, 0x5678, 0x9abc })
	roundTrip(t, "sregs", cpu.Sregs, cpu.SetSregs, nil)
	roundTrip(t, "debugregs", cpu.DebugRegs, cpu.SetDebugRegs, func(d *kvm.DebugRegs) { d.DB = [4]uint64{0x1000, 0x2000, 0x3000, 0x4000} })
	roundTrip(t, "vcpu events", cpu.VCPUEvents, cpu.SetVCPUEvents, nil)
	roundTrip(t, "lapic", cpu.LAPIC, cpu.SetLAPIC, func(l *kvm.LAPICState) {
		setLAPICReg(l, apicLVT0, lapicReg(l, apicLVT0)&^0x700|0x700) // ExtINT
	})
	roundTrip(t, "mp state", cpu.MPState, cpu.SetMPState, func(s *kvm.MPState) { *s = kvm.MPStateHalted })
	roundTrip(t, "mp state", cpu.MPState, cpu.SetMPState, func(s *kvm.MPState) { *s = kvm.MPStateRunnable })

	leaf1 := cpuidEntry(supported, 1)
	roundTrip(t, "xcrs", cpu.XCRs, cpu.SetXCRs, func(x *kvm.XCRs) {
		t.Logf("XCRs: %d, XCR0 = %#x", x.NrXCRs, x.XCRs[0].Value)
		if x.NrXCRs > 0 && leaf1 != nil && leaf1.ECX&ecxXSAVE != 0 {
			x.XCRs[0].Value = 0x3 // x87 | SSE
		}
	})

	xs := get(t, cpu.XSave)
	check(t, cpu.SetXSave(xs))
	if again := get(t, cpu.XSave); !bytes.Equal(again, xs) {
		t.Errorf("xsave: read back differs: %s", firstDiff(again, xs))
	}

	// MSRs: KVM's list, less those this vCPU refuses to read.
	list := get(t, sys.MSRIndexList)
	msrs, refused := readableMSRs(t, cpu, list)
	t.Logf("KVM_GET_MSR_INDEX_LIST: %d MSRs; KVM_GET_MSRS reads %d, refuses %#x", len(list), len(msrs), refused)
	if err := cpu.SetMSRs(msrs); err != nil {
		var me *kvm.MSRError
		if errors.As(err, &me) {
			t.Errorf("KVM_SET_MSRS refused MSR %#x = %#x after setting %d", me.Index, msrs[me.Done].Data, me.Done)
		} else {
			t.Error(err)
		}
	} else {
		compareMSRs(t, "MSRs read back", readMSRs(t, cpu, msrIndices(msrs)...), msrs)
	}
	if feats, err := sys.MSRFeatureIndexList(); err != nil {
		t.Logf("feature MSRs: %v", err)
	} else {
		vals, err := sys.FeatureMSRs(feats)
		t.Logf("feature MSRs: %d listed, %d read (%v)", len(feats), len(vals), err)
	}

	// KVM_KVMCLOCK_CTRL: EINVAL (ignored) before the guest enables
	// kvmclock, success after.
	check(t, cpu.NotifyGuestPaused())
	check(t, cpu.SetMSRs([]kvm.MSREntry{{Index: msrKVMSystemTime, Data: kvmclockPage | 1}}))
	if got := readMSRs(t, cpu, msrKVMSystemTime); got[0].Data != kvmclockPage|1 {
		t.Errorf("MSR_KVM_SYSTEM_TIME_NEW = %#x, want %#x", got[0].Data, kvmclockPage|1)
	}
	check(t, cpu.NotifyGuestPaused())

	for _, id := range chipIDs {
		roundTrip(t, fmt.Sprintf("irqchip %d", id), func() (kvm.IRQChip, error) { return vm.IRQChip(id) }, vm.SetIRQChip, func(c *kvm.IRQChip) {
			switch id {
			case kvm.IRQChipPICMaster:
				p := c.PIC()
				p.IMR = 0xfb // all masked but the cascade
				c.SetPIC(p)
			case kvm.IRQChipIOAPIC:
				s := c.IOAPIC()
				s.RedirTbl[4] = 1<<16 | 0x34 // masked, vector 0x34
				c.SetIOAPIC(s)
			}
		})
	}

	pit := get(t, vm.PIT2)
	check(t, vm.SetPIT2(pit))
	if again := get(t, vm.PIT2); !samePIT(again, pit) {
		t.Errorf("pit2: read back\n%+v\nwant\n%+v", again, pit)
	}

	// kvmclock runs on from what KVM_SET_CLOCK sets.
	clk := get(t, vm.Clock)
	t.Logf("KVM_GET_CLOCK: %d ns, flags %#x", clk.Clock, clk.Flags)
	const ahead = 5_000_000_000
	check(t, vm.SetClock(kvm.ClockData{Clock: clk.Clock + ahead}))
	if got := get(t, vm.Clock); got.Clock < clk.Clock+ahead || got.Clock > clk.Clock+ahead+60_000_000_000 {
		t.Errorf("kvmclock after setting it %d ns ahead: %d, was %d", ahead, got.Clock, clk.Clock)
	}
	// What KVM_GET_CLOCK returned goes back as is.
	check(t, vm.SetClock(clk))
	if got := get(t, vm.Clock); got.Clock < clk.Clock {
		t.Errorf("kvmclock went back: %d after restoring %d", got.Clock, clk.Clock)
	}
}

// The guest of TestKVMRestore: it loads registers, writes AL to port 0x80,
// then to port 0x81, then spins.
var restoreGuest = []byte{
	0xB8, 0x34, 0x12, // mov ax, 0x1234
	0xBB, 0x78, 0x56, // mov bx, 0x5678
	0xE6, 0x80, // out 0x80, al
	0xE6, 0x81, // out 0x81, al
	0xEB, 0xFE, // jmp $
}

// Save a VM that has run, restore it into a new VM in the documented
// order, and check that the new VM has the same state and runs on from
// where the first stopped.
func TestKVMRestore(t *testing.T) {
	sys := kvmtest.Require(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	deadline := false
	tweak := func(c []kvm.CPUIDEntry) {
		if n, _ := sys.CheckExtension(kvm.CapTSCDeadlineTimer); n > 0 {
			cpuidEntry(c, 1).ECX |= ecxTSCDeadline
			deadline = true
		}
	}
	vmA, memA := newStateVM(t, sys, restoreGuest)
	cpuA := newVCPU(t, sys, vmA, tweak)
	if r := runToExit(t, cpuA); r != kvm.ExitIO {
		t.Fatalf("guest: %v, want KVM_EXIT_IO", r)
	}
	if io := get(t, cpuA.IO); io.Port != 0x80 {
		t.Fatalf("guest wrote port %#x, want 0x80", io.Port)
	}
	// Until the exit is completed, the OUT is unfinished: RIP still
	// points at it, and state saved now would replay it on restore.
	t.Logf("at the OUT exit, RIP = %#x (the OUT is at %#x)", get(t, cpuA.Regs).RIP, guestEntry+6)
	completeExit(t, cpuA)
	if rip := get(t, cpuA.Regs).RIP; rip != guestEntry+8 {
		t.Fatalf("after completing the OUT, RIP = %#x, want %#x", rip, guestEntry+8)
	}

	// State worth carrying: debug registers, XCR0, an armed TSC-deadline
	// timer, kvmclock enabled, a PIC mask, a kvmclock some way ahead.
	d := get(t, cpuA.DebugRegs)
	d.DB = [4]uint64{0x1000, 0x2000, 0x3000, 0x4000}
	check(t, cpuA.SetDebugRegs(d))
	x := get(t, cpuA.XCRs)
	if x.NrXCRs > 0 {
		x.XCRs[0].Value = 0x3
		check(t, cpuA.SetXCRs(x))
	}
	l := get(t, cpuA.LAPIC)
	if deadline {
		setLAPICReg(&l, apicLVTT, 2<<17|1<<16|0xec) // TSC-deadline mode, masked
	}
	check(t, cpuA.SetLAPIC(l))
	tsc := readMSRs(t, cpuA, msrTSC)[0].Data
	check(t, cpuA.SetMSRs([]kvm.MSREntry{{Index: msrKVMSystemTime, Data: kvmclockPage | 1}, {Index: msrTSCDeadline, Data: tsc + 1<<40}}))
	pic := irqChip(t, vmA, kvm.IRQChipPICMaster)
	p := pic.PIC()
	p.IMR = 0xfb
	pic.SetPIC(p)
	check(t, vmA.SetIRQChip(pic))
	clk := get(t, vmA.Clock)
	check(t, vmA.SetClock(kvm.ClockData{Clock: clk.Clock + 3_600_000_000_000}))

	msrs, refused := readableMSRs(t, cpuA, get(t, sys.MSRIndexList))
	t.Logf("saving %d MSRs (refused: %#x)", len(msrs), refused)
	indices := msrIndices(msrs)
	savedA := saveVCPU(t, cpuA, indices)
	vmSavedA := saveVM(t, vmA)
	if deadline && msrValue(savedA.MSRs, msrTSCDeadline) == 0 {
		t.Errorf("TSC deadline not saved: LVTT %#x", lapicReg(&savedA.LAPIC, apicLVTT))
	}

	// Restore into a new VM: memory copied, state in the documented order.
	vmB, memB := newStateVM(t, sys, nil)
	copy(memB, memA)
	cpuB := createVCPU(t, vmB)
	restore(t, restoreSteps(vmB, cpuB, savedA, vmSavedA))

	savedB := saveVCPU(t, cpuB, indices)
	vmSavedB := saveVM(t, vmB)
	compareSaved(t, savedB, savedA, vmSavedB, vmSavedA)

	// And it runs on: the next instruction is the second OUT.
	if r := runToExit(t, cpuB); r != kvm.ExitIO {
		t.Fatalf("restored guest: %v, want KVM_EXIT_IO", r)
	}
	if io := get(t, cpuB.IO); io.Port != 0x81 || !bytes.Equal(io.Data, []byte{0x34}) {
		t.Errorf("restored guest wrote %#x to port %#x, want 0x34 to 0x81", io.Data, io.Port)
	}

	// The order matters: MSRs restored before the LAPIC lose the TSC
	// deadline, which KVM drops while the timer is not in TSC-deadline mode.
	if deadline {
		vmC, memC := newStateVM(t, sys, nil)
		copy(memC, memA)
		cpuC := createVCPU(t, vmC)
		steps := restoreSteps(vmC, cpuC, savedA, vmSavedA)
		i := slices.IndexFunc(steps, func(s restoreStep) bool { return s.name == "lapic" })
		steps[i], steps[i+1] = steps[i+1], steps[i] // msrs, then lapic
		restore(t, steps)
		got := msrValue(readMSRs(t, cpuC, msrTSCDeadline), msrTSCDeadline)
		t.Logf("MSRs before LAPIC: TSC deadline %#x, saved %#x", got, msrValue(savedA.MSRs, msrTSCDeadline))
	}
}

func msrValue(entries []kvm.MSREntry, index uint32) uint64 {
	for _, e := range entries {
		if e.Index == index {
			return e.Data
		}
	}
	return 0
}

func compareSaved(t *testing.T, got, want savedVCPU, gotVM, wantVM savedVM) {
	t.Helper()
	if got.MP != want.MP {
		t.Errorf("mp state %d, want %d", got.MP, want.MP)
	}
	if got.Events != want.Events {
		t.Errorf("vcpu events\n%+v\nwant\n%+v", got.Events, want.Events)
	}
	if got.Regs != want.Regs {
		t.Errorf("regs\n%+v\nwant\n%+v", got.Regs, want.Regs)
	}
	if got.Sregs != want.Sregs {
		t.Errorf("sregs\n%+v\nwant\n%+v", got.Sregs, want.Sregs)
	}
	if !bytes.Equal(got.XSave, want.XSave) {
		t.Errorf("xsave: %s", firstDiff(got.XSave, want.XSave))
	}
	if got.XCRs != want.XCRs {
		t.Errorf("xcrs %+v, want %+v", got.XCRs, want.XCRs)
	}
	compareMSRs(t, "MSRs", got.MSRs, want.MSRs)
	if g, w := msrValue(got.MSRs, msrTSC), msrValue(want.MSRs, msrTSC); g < w {
		t.Errorf("TSC went back: %#x, saved %#x", g, w)
	}
	if got.LAPIC != want.LAPIC {
		t.Errorf("lapic: %s", firstDiff(got.LAPIC.Regs[:], want.LAPIC.Regs[:]))
	}
	if got.Debug != want.Debug {
		t.Errorf("debugregs %+v, want %+v", got.Debug, want.Debug)
	}
	if !slices.Equal(got.CPUID, want.CPUID) {
		t.Errorf("cpuid: %d entries, want %d, or different values", len(got.CPUID), len(want.CPUID))
	}
	if got.TSCKHz != want.TSCKHz {
		t.Errorf("TSC %d kHz, want %d", got.TSCKHz, want.TSCKHz)
	}
	for i := range wantVM.Chips {
		if gotVM.Chips[i] != wantVM.Chips[i] {
			t.Errorf("irqchip %d: %s", i, firstDiff(gotVM.Chips[i].Chip[:], wantVM.Chips[i].Chip[:]))
		}
	}
	if !samePIT(gotVM.PIT, wantVM.PIT) {
		t.Errorf("pit2\n%+v\nwant\n%+v", gotVM.PIT, wantVM.PIT)
	}
	if g, w := gotVM.Clock.Clock, wantVM.Clock.Clock; g < w || g > w+60_000_000_000 {
		t.Errorf("kvmclock %d ns, saved %d", g, w)
	}
}
