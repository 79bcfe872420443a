package vmm

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// HostRIP is how DescribeVCPUs marks a vCPU whose guest RIP is an address
// of the host kernel: the sign of a guest the KVM lab's emulated SVM
// broke, which the lab's tests and the bench look for.
const HostRIP = "rip is the host's "

// DescribeVCPUs pauses the machine for a moment and describes where each
// vCPU is: its registers, pending interrupts and events, one paragraph
// each. It is for a guest that stopped answering (sailbox-vmm logs it on
// SIGUSR1). A guest RIP that is an address of the host kernel is named:
// the guest's state was mixed with its host's, which the KVM lab's
// emulated SVM does now and then.
func (m *Machine) DescribeVCPUs() string {
	if err := m.Pause(); err != nil {
		return "pause: " + err.Error()
	}
	defer m.Resume()
	s := ""
	for _, v := range m.vcpus {
		v.do(func(cpu *kvm.VCPU) error {
			r, err := cpu.Regs()
			sr, _ := cpu.Sregs()
			l, _ := cpu.LAPIC()
			ev, _ := cpu.VCPUEvents()
			mp, _ := cpu.MPState()
			reg := func(off int) uint32 {
				return uint32(l.Regs[off]) | uint32(l.Regs[off+1])<<8 | uint32(l.Regs[off+2])<<16 | uint32(l.Regs[off+3])<<24
			}
			var irr, isr string
			for i := 7; i >= 0; i-- {
				irr += fmt.Sprintf("%08x", reg(0x200+i*0x10))
				isr += fmt.Sprintf("%08x", reg(0x100+i*0x10))
			}
			s += fmt.Sprintf("vcpu %d err=%v rip=%#x rflags=%#x mp=%v lvtt=%#x tmict=%#x tmcct=%#x\n cr2=%#x cr3=%#x idt=%#x/%#x rsp=%#x\n irr=%s\n isr=%s\n events=%+v\n",
				v.id, err, r.RIP, r.RFLAGS, mp, reg(0x320), reg(0x380), reg(0x390), sr.CR2, sr.CR3, sr.IDT.Base, sr.IDT.Limit, r.RSP, irr, isr, ev)
			s += describeDeadline(cpu)
			if sym := hostSymbol(r.RIP); sym != "" {
				s += " " + HostRIP + sym + "\n"
			}
			return nil
		})
	}
	return s + m.describeInterruptPaths()
}

// MSRs describeDeadline reads: the guest's TSC and its LAPIC timer's
// TSC deadline (0: disarmed).
const (
	msrTSC         = 0x10
	msrTSCDeadline = 0x6e0
)

// describeDeadline says when cpu's LAPIC timer fires in TSC-deadline mode
// (which Linux guests use when offered it, see hostCPUID), against the guest's TSC now: a guest idle
// with its deadline disarmed or far ahead for good waits for an
// interrupt only a device can send, so whatever it waits on a timer for
// never comes. An error reading the MSRs is said instead.
func describeDeadline(cpu *kvm.VCPU) string {
	msrs, err := cpu.GetMSRs([]uint32{msrTSC, msrTSCDeadline})
	if err != nil || len(msrs) != 2 {
		return fmt.Sprintf(" tsc deadline: %v\n", err)
	}
	tsc, deadline := msrs[0].Data, msrs[1].Data
	if deadline == 0 {
		return fmt.Sprintf(" tsc=%#x deadline=0 (disarmed)\n", tsc)
	}
	in := "ms"
	khz, err := cpu.TSCKHz()
	delta := float64(int64(deadline - tsc))
	if err != nil || khz == 0 {
		in = "ticks"
	} else {
		delta /= float64(khz)
	}
	return fmt.Sprintf(" tsc=%#x deadline=%#x (in %.3f %s)\n", tsc, deadline, delta, in)
}

// describeInterruptPaths says, for a guest that stopped answering while
// its vCPUs idle, where each virtio device's queues and interrupt are
// (virtio.MMIO.Describe) and the IOAPIC pin of each: its redirection
// entry (bit 16 masked, bit 14 remote IRR of a level-triggered line in
// service, bit 12 delivery pending). A kick or an interrupt lost on the
// way shows here. The machine is paused.
func (m *Machine) describeInterruptPaths() string {
	var ioapic *kvm.IOAPICState
	if c, err := m.vm.IRQChip(kvm.IRQChipIOAPIC); err == nil {
		st := c.IOAPIC()
		ioapic = &st
	}
	s := ""
	for i, sl := range m.slots {
		if sl.transport == nil {
			continue
		}
		s += fmt.Sprintf("device %d (%s) gsi %d", i, sl.kind, sl.gsi)
		if ioapic != nil && sl.gsi < uint32(len(ioapic.RedirTbl)) {
			s += fmt.Sprintf(" ioapic=%#x", ioapic.RedirTbl[sl.gsi])
		}
		s += ": " + sl.transport.Describe() + "\n"
	}
	if ioapic != nil {
		s += fmt.Sprintf("ioapic irr=%#x\n", ioapic.IRR)
	}
	return s
}

// hostSymbol names the host kernel symbol at addr, from /proc/kallsyms
// (readable with addresses as root), or "". A guest RIP that is a host
// kernel address means the guest's state was mixed with the host's: in
// the KVM lab, a fault of the emulated SVM under it.
func hostSymbol(addr uint64) string {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return ""
	}
	defer f.Close()
	var best uint64
	var name string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		a, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil || a == 0 || a > addr || a < best {
			continue
		}
		best, name = a, strings.Join(fields[2:], " ")
	}
	if name == "" || addr-best > 1<<20 {
		return ""
	}
	return fmt.Sprintf("%s+%#x", name, addr-best)
}
