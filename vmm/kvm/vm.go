package kvm

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// VM is one KVM virtual machine. Its methods may be called from any
// goroutine; KVM serialises VM ioctls itself.
type VM struct {
	fd      int
	runSize int // size of each vCPU's kvm_run mapping

	mu        sync.Mutex
	slotPages map[uint32]uint64 // guarded by mu: pages in each slot MapMemory registered, to bound dirty bitmaps
}

// Close releases the VM's file descriptor. The kernel frees the VM once its
// vCPUs are closed too.
func (vm *VM) Close() error {
	return unix.Close(vm.fd)
}

// CheckExtension is KVM_CHECK_EXTENSION on the VM, which answers for this
// VM's type (some capabilities differ from the system-wide answer).
func (vm *VM) CheckExtension(c Capability) (int, error) {
	r, err := ioctl(vm.fd, ioctlCheckExtension, uintptr(c))
	if err != nil {
		return 0, fmt.Errorf("vm KVM_CHECK_EXTENSION %d: %w", c, err)
	}
	return int(r), nil
}

// MapMemory registers host memory mem as guest-physical memory at gpa in
// the given slot (KVM_SET_USER_MEMORY_REGION). mem must come from mmap and
// stay mapped for the VM's lifetime; its length must be page aligned.
func (vm *VM) MapMemory(slot uint32, gpa uint64, mem []byte, flags uint32) error {
	if len(mem) == 0 || len(mem)%unix.Getpagesize() != 0 {
		return fmt.Errorf("map memory slot %d at %#x: size %d is not a positive multiple of the page size", slot, gpa, len(mem))
	}
	r := UserspaceMemoryRegion{
		Slot:          slot,
		Flags:         flags,
		GuestPhysAddr: gpa,
		MemorySize:    uint64(len(mem)),
		UserspaceAddr: addressOf(mem),
	}
	if _, err := ioctlValue(vm.fd, ioctlSetUserMemoryRegion, &r); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d gpa %#x size %#x: %w", slot, gpa, len(mem), err)
	}
	vm.recordSlot(slot, r.MemorySize)
	return nil
}

// SetTSSAddr places the three-page region Intel VMX needs for real-mode
// emulation (KVM_SET_TSS_ADDR). It must not overlap guest RAM or devices.
func (vm *VM) SetTSSAddr(addr uint64) error {
	if _, err := ioctl(vm.fd, ioctlSetTSSAddr, uintptr(addr)); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR %#x: %w", addr, err)
	}
	return nil
}

// CreateVCPU creates vCPU id and maps its kvm_run region.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	xsaveSize, err := vm.XSaveSize()
	if err != nil {
		return nil, fmt.Errorf("create vcpu %d: %w", id, err)
	}
	r, err := ioctl(vm.fd, ioctlCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	fd := int(r)
	run, err := unix.Mmap(fd, 0, vm.runSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mmap kvm_run of vcpu %d: %w", id, err)
	}
	return &VCPU{id: id, fd: fd, run: run, xsaveSize: xsaveSize}, nil
}

// SetIdentityMapAddr places the one-page identity map Intel VMX needs for
// real-mode emulation (KVM_SET_IDENTITY_MAP_ADDR). Call before CreateVCPU.
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	if _, err := ioctlValue(vm.fd, ioctlSetIdentityMapAddr, &addr); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR %#x: %w", addr, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PIC, IOAPIC and local APICs.
func (vm *VM) CreateIRQChip() error {
	if _, err := ioctl(vm.fd, ioctlCreateIRQChip, 0); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// CreatePIT2 creates the in-kernel i8254 timer, with port 0x61 as a dummy
// speaker. Requires CreateIRQChip first.
func (vm *VM) CreatePIT2() error {
	if _, err := ioctlValue(vm.fd, ioctlCreatePIT2, &pitConfig{Flags: pitSpeakerDummy}); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// SetIRQLine drives interrupt line gsi of the in-kernel irqchip
// (KVM_IRQ_LINE). Safe from any goroutine.
func (vm *VM) SetIRQLine(gsi uint32, high bool) error {
	l := irqLevel{IRQ: gsi}
	if high {
		l.Level = 1
	}
	if _, err := ioctlValue(vm.fd, ioctlIRQLine, &l); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE gsi %d level %d: %w", gsi, l.Level, err)
	}
	return nil
}
