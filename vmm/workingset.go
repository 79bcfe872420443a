package vmm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// prefault maps m.workingSet through cpu before any vCPU runs
// (KVM_PRE_FAULT_MEMORY works on the calling vCPU's thread and takes its
// lock): its written pages copied for this VM, then every page entered in
// KVM's page tables. Bits beyond guest memory are ignored.
func (m *Machine) prefault(cpu *kvm.VCPU) error {
	ws := m.workingSet
	if ws == nil {
		return nil
	}
	limit := m.mem.Size() / memory.PageSize
	if err := forRuns(ws.Written, limit, m.mem.PopulateWrite); err != nil {
		return err
	}
	if n, err := m.vm.CheckExtension(kvm.CapPreFaultMemory); err != nil || n == 0 {
		return nil
	}
	all := make([]uint64, max(len(ws.Touched), len(ws.Written)))
	for i := range all {
		if i < len(ws.Touched) {
			all[i] |= ws.Touched[i]
		}
		if i < len(ws.Written) {
			all[i] |= ws.Written[i]
		}
	}
	err := forRuns(all, limit, func(first, n uint64) error {
		return cpu.PreFaultMemory(first*memory.PageSize, n*memory.PageSize)
	})
	if errors.Is(err, unix.EOPNOTSUPP) {
		return nil // no nested paging (npt=0): nothing to enter ahead
	}
	return err
}

// SaveWorkingSet records the pages the guest has touched and written
// since this machine was restored (written as far as the host kernel can
// tell: memory.WriteTracking) as the working set of the checkpoint it was
// restored from, unless that checkpoint has one, and stops tracking
// writes: later restores of it and of checkpoints chained onto it map
// those pages ahead. Call it once the guest has done what a restore is
// for (its first exec, say). It reports whether it saved; a machine that
// was not restored has nothing to record.
func (m *Machine) SaveWorkingSet() (saved bool, err error) {
	if m.restoredFrom == "" {
		return false, errors.New("save working set: the machine was booted, not restored")
	}
	ws, err := m.mem.WorkingSet()
	if err != nil {
		return false, err
	}
	// Recorded once: writes cost nothing extra from here on.
	if err := m.mem.StopTracking(); err != nil {
		return false, fmt.Errorf("save working set: %w", err)
	}
	return m.restoredRoot.SaveWorkingSet(m.restoredFrom, snapshot.WorkingSet(ws))
}

// forRuns calls fn for each run of consecutive pages set in bitmap below
// limit, in order, and stops at its first error.
func forRuns(bitmap []uint64, limit uint64, fn func(first, n uint64) error) error {
	pages := kvm.DirtyPages(bitmap) // the set bits, in order
	for i := 0; i < len(pages) && pages[i] < limit; {
		j := i + 1
		for j < len(pages) && pages[j] == pages[j-1]+1 && pages[j] < limit {
			j++
		}
		if err := fn(pages[i], uint64(j-i)); err != nil {
			return err
		}
		i = j
	}
	return nil
}
