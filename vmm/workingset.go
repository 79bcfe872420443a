package vmm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// MappedAhead is what a restore mapped of a recorded working set before
// its guest ran, as it happened: how many pages the working set named and
// how many of them went in each way. It is what tells a restore that
// found a working set from one that did not, or that found one and could
// do nothing with it.
type MappedAhead struct {
	// From names the checkpoint the working set was recorded for: the
	// one restored or an ancestor (snapshot.Root.WorkingSet); "" for one
	// given in RestoreConfig.WorkingSet.
	From string
	// Pages counts the pages the working set names, touched or written,
	// within guest memory.
	Pages uint64
	// Copied counts the written pages given this VM's own copies
	// (MADV_POPULATE_WRITE).
	Copied uint64
	// Entered counts the pages entered in KVM's page tables
	// (KVM_PRE_FAULT_MEMORY): 0 where the host kernel lacks the call
	// (before Linux 6.10) or nested paging.
	Entered uint64
}

// MappedAhead reports what this machine mapped of a working set before
// its guest ran. ok is false for a booted machine, a restore that found no
// working set (or was told to map none), and before vCPU 0 was set up.
func (m *Machine) MappedAhead() (MappedAhead, bool) {
	if p := m.mappedAhead.Load(); p != nil {
		return *p, true
	}
	return MappedAhead{}, false
}

// prefault maps m.workingSet through cpu before any vCPU runs
// (KVM_PRE_FAULT_MEMORY works on the calling vCPU's thread and takes its
// lock): its written pages copied for this VM, then every page entered in
// KVM's page tables. Bits beyond guest memory are ignored. What it did,
// up to an error, is kept for MappedAhead.
func (m *Machine) prefault(cpu *kvm.VCPU) error {
	ws := m.workingSet
	if ws == nil {
		return nil
	}
	enter := func(first, n uint64) error {
		return cpu.PreFaultMemory(first*memory.PageSize, n*memory.PageSize)
	}
	if n, err := m.vm.CheckExtension(kvm.CapPreFaultMemory); err != nil || n == 0 {
		enter = nil
	}
	done, err := mapAhead(*ws, m.mem.Size()/memory.PageSize, m.mem.PopulateWrite, enter)
	done.From = m.workingSetFrom
	m.mappedAhead.Store(&done)
	return err
}

// mapAhead maps working set ws of a guest of limit pages: populate for each
// run of its written pages, then enter, if not nil, for each run of all
// its pages. It returns what it did up to its first error; an enter
// refused with EOPNOTSUPP (no nested paging: nothing to enter ahead) is
// none.
func mapAhead(ws memory.WorkingSet, limit uint64, populate, enter func(first, n uint64) error) (MappedAhead, error) {
	all := make([]uint64, max(len(ws.Touched), len(ws.Written)))
	for i := range all {
		if i < len(ws.Touched) {
			all[i] |= ws.Touched[i]
		}
		if i < len(ws.Written) {
			all[i] |= ws.Written[i]
		}
	}
	var done MappedAhead
	forRuns(all, limit, func(_, n uint64) error { done.Pages += n; return nil })
	if err := forRuns(ws.Written, limit, func(first, n uint64) error {
		if err := populate(first, n); err != nil {
			return err
		}
		done.Copied += n
		return nil
	}); err != nil {
		return done, err
	}
	if enter == nil {
		return done, nil
	}
	err := forRuns(all, limit, func(first, n uint64) error {
		if err := enter(first, n); err != nil {
			return err
		}
		done.Entered += n
		return nil
	})
	if errors.Is(err, unix.EOPNOTSUPP) {
		return done, nil // no nested paging: nothing to enter ahead
	}
	return done, err
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
