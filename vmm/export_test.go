package vmm

import (
	"fmt"

	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// DebugVCPUs pauses the machine and describes where each vCPU is.
func (m *Machine) DebugVCPUs() string {
	if err := m.Pause(); err != nil {
		return "pause: " + err.Error()
	}
	defer m.Resume()
	s := ""
	for _, v := range m.vcpus {
		v.do(func(cpu *kvm.VCPU) error {
			r, err := cpu.Regs()
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
			s += fmt.Sprintf("vcpu %d err=%v rip=%#x rflags=%#x mp=%v lvtt=%#x tmict=%#x tmcct=%#x\n irr=%s\n isr=%s\n events=%+v\n",
				v.id, err, r.RIP, r.RFLAGS, mp, reg(0x320), reg(0x380), reg(0x390), irr, isr, ev)
			return nil
		})
	}
	return s
}
