package vmm

import (
	"fmt"

	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// memorySlot is the KVM memory slot holding all of guest RAM.
const memorySlot = 0

// dirtyLog tracks which guest pages changed since the last checkpoint (or
// since the machine was built): the guest's writes, from KVM's dirty log
// on the RAM slot, and the VMM's own (devices writing used rings and disk
// reads, the boot loader), from memory.Memory.TakeWritten.
type dirtyLog struct {
	vm     *kvm.VM
	manual bool // KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is on: Take clears what it reads
	words  int
	pages  uint64
}

// enableDirtyLog turns on manual dirty-log protection where KVM offers it
// (before the slot is mapped) and returns the flags to map RAM with.
func (m *Machine) enableDirtyLog() (uint32, error) {
	d := &dirtyLog{vm: m.vm, words: kvm.DirtyBitmapWords(m.mem.Size()), pages: m.mem.Size() / kvm.DirtyPageSize}
	if n, err := m.vm.CheckExtension(kvm.CapManualDirtyLogProtect2); err == nil && n != 0 {
		if err := m.vm.EnableManualDirtyLogProtect(); err != nil {
			return 0, err
		}
		d.manual = true
	}
	m.dirty = d
	return kvm.MemLogDirtyPages, nil
}

// take returns the pages changed since the previous take, and starts
// tracking anew: a page written after take returns (or while the caller
// copies it) is reported by the next take.
func (m *Machine) takeDirty() ([]uint64, error) {
	d := m.dirty
	bitmap := make([]uint64, d.words)
	if err := d.vm.GetDirtyLog(memorySlot, bitmap); err != nil {
		return nil, fmt.Errorf("dirty log: %w", err)
	}
	if d.manual {
		// Clear (and write-protect again) exactly the pages read, before
		// the caller copies them.
		if err := d.vm.ClearDirtyLog(memorySlot, 0, d.pages, bitmap); err != nil {
			return nil, fmt.Errorf("dirty log: %w", err)
		}
	}
	m.mem.TakeWritten(bitmap)
	return bitmap, nil
}
