package kvm

import (
	"fmt"
	"unsafe"
)

// PreFaultMemory maps guest-physical [gpa, gpa+size) into KVM's stage-2
// page tables now, as if this vCPU had read each page
// (KVM_PRE_FAULT_MEMORY, Linux 6.10; see CapPreFaultMemory). Guest pages
// backed by a private file mapping are mapped read-only, still shared with
// the page cache: a later guest write copies the page as it would have.
// Pages the process already holds writable are mapped writable, and in a
// slot with dirty logging KVM logs them dirty at once. gpa and size must
// be page-aligned and inside a memory slot. Issue it from the vCPU's own
// thread, before it runs.
func (v *VCPU) PreFaultMemory(gpa, size uint64) error {
	r := preFaultMemory{GPA: gpa, Size: size}
	for r.Size > 0 {
		// KVM returns after a part of the range (a signal, a resched) with
		// GPA and Size moved on; call again for the rest.
		if _, err := ioctlPtr(v.fd, ioctlPreFaultMemory, unsafe.Pointer(&r)); err != nil {
			return fmt.Errorf("KVM_PRE_FAULT_MEMORY vcpu %d [%#x, +%#x): %w", v.id, r.GPA, r.Size, err)
		}
	}
	return nil
}
