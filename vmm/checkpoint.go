package vmm

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/snapshot/disklayer"
	"github.com/sailbox-dev/sailbox/snapshot/memlayer"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// CheckpointOptions says where a checkpoint goes and what it records.
type CheckpointOptions struct {
	Root *snapshot.Root
	ID   string // the new checkpoint's ID in Root
	// GuestSchemaVersion is the guest agent's, recorded in the manifest.
	GuestSchemaVersion int
	VMMVersion         string
}

// CheckpointStats says what a checkpoint cost.
type CheckpointStats struct {
	Pages       uint64        // guest pages in the new memory layer
	PageBytes   int64         // their bytes: what the layer's data costs
	LayerBytes  int64         // the memory layer file: data, index and header
	PausedPages uint64        // pages copied while the guest was stopped
	DiskBytes   int64         // blocks sealed into new disk layers
	Pause       time.Duration // how long the guest was stopped
	// PauseParts is where Pause went.
	PauseParts PauseParts
	// RunningParts is where the rest of Total went, while the guest ran.
	RunningParts RunningParts
	Total        time.Duration
}

// RunningParts is where the running part of a checkpoint went: before
// the pause, the first copy of the dirty pages (and each disk's flush);
// after it, the layers' files, then the commit of the manifest. Write
// and Seal run side by side, within Files.
type RunningParts struct {
	PreCopy time.Duration // the first copy of dirty pages, and each disk's flush
	Files   time.Duration // the memory layer written and the disk layers sealed, side by side, and all added to the checkpoint
	Write   time.Duration // of Files: writing the memory layer
	Seal    time.Duration // of Files, beside Write: sealing the disk layers switched out
	Commit  time.Duration // the manifest written and renamed into place
}

// PauseParts is where a checkpoint's pause went: the parts of the step
// the guest was stopped for, one after the other, so that they sum to at
// most CheckpointStats.Pause (the rest is bookkeeping between them).
// Stop and Resume are zero for a machine that was paused already.
type PauseParts struct {
	Stop       time.Duration // stopping every vCPU and device
	DirtyLog   time.Duration // fetching and clearing the dirty log: KVM's and the VMM's own writes
	Copy       time.Duration // copying the pages dirtied since the first copy
	VMState    time.Duration // saving the in-kernel irqchip, PIT and clock
	VCPUState  time.Duration // saving every vCPU's registers, MSRs, LAPIC and events
	Devices    time.Duration // saving every device's state
	DiskSwitch time.Duration // switching each layered disk to a new top (its seal runs after)
	Resume     time.Duration // letting every device and vCPU run again
}

// Sum is the parts' total.
func (p PauseParts) Sum() time.Duration {
	return p.Stop + p.DirtyLog + p.Copy + p.VMState + p.VCPUState + p.Devices + p.DiskSwitch + p.Resume
}

// lap measures consecutive parts: each call returns the time since the
// previous one (or since the lap was started).
type lap struct{ last time.Time }

func startLap() *lap { return &lap{last: time.Now()} }

func (l *lap) next() time.Duration {
	now := time.Now()
	d := now.Sub(l.last)
	l.last = now
	return d
}

// ErrNotCheckpointable reports a machine Checkpoint cannot capture: one
// with a raw disk (only layered disks have a chain a restore can rebuild)
// or an extra MMIO device (Config.MMIODevices: state unknown to the VMM).
var ErrNotCheckpointable = errors.New("machine cannot be checkpointed")

// Checkpoint writes a checkpoint of the machine while it runs (or while
// it is paused, then it stays paused): a memory layer holding the pages
// changed since the machine's previous checkpoint (or since it was built
// or restored), each layered disk's top sealed in place as a new disk
// layer, and the state of every vCPU, the in-kernel irqchip, PIT and
// clock, and every device. It builds on the machine's chain: the
// checkpoint it was restored from, then each checkpoint it took.
//
// The guest stops only for the final step: the pages changed since a
// first copy made while it ran are copied again (to a spill file), the state
// is saved and each disk switched to a new top, and it runs on. Sealing
// the disks' layers (fsync, checksums), writing the memory layer and the
// manifest happen after, while it runs. The checkpoint exists once
// Checkpoint returns without error.
func (m *Machine) Checkpoint(opts CheckpointOptions) (*snapshot.Manifest, CheckpointStats, error) {
	start := time.Now()
	var stats CheckpointStats
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if !m.running {
		return nil, stats, fmt.Errorf("checkpoint %s: %w", opts.ID, ErrNotRunning)
	}
	if err := m.checkpointable(); err != nil {
		return nil, stats, fmt.Errorf("checkpoint %s: %w", opts.ID, err)
	}
	p, err := opts.Root.Begin(opts.ID)
	if err != nil {
		return nil, stats, err
	}
	man, err := m.checkpoint(p, opts, &stats)
	if err != nil {
		p.Abort()
		return nil, stats, fmt.Errorf("checkpoint %s: %w", opts.ID, err)
	}
	m.chain = man
	stats.Total = time.Since(start)
	return man, stats, nil
}

func (m *Machine) checkpointable() error {
	for i, s := range m.slots {
		if s.kind == kindExtra {
			return fmt.Errorf("%w: mmio device %d is not the VMM's own", ErrNotCheckpointable, i)
		}
	}
	for i, d := range m.cfg.Disks {
		if d.Layered == nil {
			// A restore rebuilds every disk from the checkpoint's chain;
			// a raw image has none (a read-only one could be a chain's
			// base: not done yet).
			return fmt.Errorf("%w: disk %d (%s) is a raw image, not a layered disk", ErrNotCheckpointable, i, d.Path)
		}
	}
	return nil
}

// sealPending seals every disk's layers switched out and not yet in a
// committed checkpoint: those of checkpoints that failed after their
// pause, then this one's. It returns their infos by disk index, in
// chain order.
func (m *Machine) sealPending() ([][]disklayer.Info, error) {
	sealed := make([][]disklayer.Info, len(m.cfg.Disks))
	for i := range m.cfg.Disks {
		id := diskID(m.cfg, i)
		for _, l := range m.pendingSeals[id] {
			info, err := m.cfg.Disks[i].Layered.FinishSeal(l)
			if err != nil {
				return nil, fmt.Errorf("seal disk %s: %w", id, err)
			}
			sealed[i] = append(sealed[i], info)
		}
	}
	return sealed, nil
}

// checkpoint does Checkpoint's work; m.lifeMu is held.
func (m *Machine) checkpoint(p *snapshot.Pending, opts CheckpointOptions, stats *CheckpointStats) (*snapshot.Manifest, error) {
	pages, err := newPageCopy(m.mem.Host(), m.dirty.words, p.StagingPath("memory-copy"))
	if err != nil {
		return nil, err
	}
	defer pages.close()
	// Anything taken from the dirty log goes back to it if the checkpoint
	// fails: the next one must still write those pages.
	committed := false
	defer func() {
		if !committed {
			m.carryDirty = pages.taken(m.carryDirty)
		}
	}()

	// First copy, while the guest runs.
	run := &stats.RunningParts
	rl := startLap()
	wasPaused := m.paused
	if !wasPaused {
		bm, err := m.takeDirtyBitmap()
		if err != nil {
			return nil, err
		}
		if err := pages.take(bm); err != nil {
			return nil, err
		}
		for i, d := range m.cfg.Disks {
			if d.Layered != nil {
				if err := d.Layered.Sync(); err != nil {
					return nil, fmt.Errorf("disk %s: %w", diskID(m.cfg, i), err)
				}
			}
		}
	}

	run.PreCopy = rl.next()

	// The stop.
	paused := time.Now()
	parts := &stats.PauseParts
	l := startLap()
	if !wasPaused {
		if err := m.pauseLocked(); err != nil {
			m.resumeLocked()
			return nil, err
		}
		parts.Stop = l.next()
	}
	state, err := m.captureLocked(p, opts.Root, pages, l, parts)
	if !wasPaused {
		m.resumeLocked()
		parts.Resume = l.next()
	}
	stats.Pause = time.Since(paused)
	stats.PausedPages = pages.last
	if err != nil {
		return nil, err
	}

	// Files, while the guest runs again: the memory layer is written on
	// its own goroutine while the disks' layers are sealed here, so that
	// their writes and fsyncs overlap.
	rl = startLap()
	type written struct {
		info memlayer.Info
		err  error
		took time.Duration
	}
	wrote := make(chan written, 1)
	go func() {
		t := time.Now()
		info, err := pages.write(p.StagingPath("memory"))
		wrote <- written{info, err, time.Since(t)}
	}()
	t := time.Now()
	sealed, sealErr := m.sealPending()
	run.Seal = time.Since(t)
	w := <-wrote // pages is closed on return: the write must be over
	run.Write = w.took
	if w.err != nil {
		return nil, w.err
	}
	if sealErr != nil {
		return nil, sealErr
	}
	info := w.info
	stats.Pages, stats.PageBytes, stats.LayerBytes = info.Pages, info.DataBytes, info.FileBytes
	man := &snapshot.Manifest{
		ID:                 opts.ID,
		Created:            time.Now(),
		VMMVersion:         opts.VMMVersion,
		GuestSchemaVersion: opts.GuestSchemaVersion,
		MemorySize:         m.mem.Size(),
		VCPUs:              m.cfg.VCPUs,
		Disks:              map[string]snapshot.DiskChain{},
		State:              state,
	}
	if man.HostCPU, err = snapshot.HostCPU(); err != nil {
		return nil, err
	}
	var vcpu0 vcpuSection
	if err := json.Unmarshal(state[sectionVCPU(0)], &vcpu0); err != nil {
		return nil, err
	}
	man.CPUID = snapshotCPUID(vcpu0.CPUID)
	if m.chain != nil {
		man.Parent = m.chain.ID
		man.Memory = slices.Clone(m.chain.Memory)
	}
	ref, err := p.AddMemoryLayer(opts.ID+"-memory", info)
	if err != nil {
		return nil, err
	}
	man.Memory = append(man.Memory, ref)
	for i := range m.cfg.Disks {
		id := diskID(m.cfg, i)
		chain := m.diskChain(i)
		for j, info := range sealed[i] {
			ref, err := p.AddDiskLayer(fmt.Sprintf("%s-%s-%d", opts.ID, id, j), info)
			if err != nil {
				return nil, err
			}
			chain.Layers = append(chain.Layers, ref)
			stats.DiskBytes += info.DataBytes
		}
		man.Disks[id] = chain
	}
	run.Files = rl.next()
	if err := p.Commit(man); err != nil {
		return nil, err
	}
	run.Commit = rl.next()
	committed = true
	clear(m.pendingSeals)
	return man, nil
}

// captureLocked runs while the guest is stopped: it copies the pages
// changed since the first copy, saves every part's state and switches
// each layered disk to a new top in root. The switched-out layers join
// m.pendingSeals until a checkpoint seals and commits them. Each part's
// time, from the lap l started at, goes in parts.
func (m *Machine) captureLocked(p *snapshot.Pending, root *snapshot.Root, pages *pageCopy, l *lap, parts *PauseParts) (map[string][]byte, error) {
	bm, err := m.takeDirtyBitmap()
	if err != nil {
		return nil, err
	}
	parts.DirtyLog = l.next()
	if err := pages.take(bm); err != nil {
		return nil, err
	}
	parts.Copy = l.next()
	state := map[string][]byte{}
	put := func(id string, v any) (err error) {
		state[id], err = encodeSection(id, v)
		return err
	}
	vmState, err := m.saveVM()
	if err != nil {
		return nil, err
	}
	if err := put(sectionVM, vmSection{Version: vmStateVersion, VMState: vmState}); err != nil {
		return nil, err
	}
	parts.VMState = l.next()
	for _, v := range m.vcpus {
		var st VCPUState
		err := v.do(func(cpu *kvm.VCPU) error {
			if v.msrs == nil {
				var err error
				if v.msrs, err = savableMSRs(cpu, m.msrIndex); err != nil {
					return err
				}
			}
			var err error
			st, err = saveVCPU(cpu, v.msrs)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("save vcpu %d: %w", v.id, err)
		}
		if err := put(sectionVCPU(v.id), vcpuSection{Version: vcpuStateVersion, VCPUState: st}); err != nil {
			return nil, err
		}
	}
	parts.VCPUState = l.next()
	slots, err := m.saveDevices(state)
	if err != nil {
		return nil, err
	}
	shape := machineState{Version: machineStateVersion, MemoryBytes: m.mem.Size(), VCPUs: m.cfg.VCPUs, Slots: slots}
	if err := put(sectionMachine, shape); err != nil {
		return nil, err
	}
	parts.Devices = l.next()
	for i, d := range m.cfg.Disks {
		if d.Layered == nil {
			continue
		}
		id := diskID(m.cfg, i)
		// Only the switch to a new top: the seal's fsyncs and checksums
		// wait until the guest runs again.
		l, err := d.Layered.SwitchTop(root.TopPath(fmt.Sprintf("%s-%s.top", p.ID(), id)))
		if err != nil {
			return nil, fmt.Errorf("seal disk %s: %w", id, err)
		}
		m.pendingSeals[id] = append(m.pendingSeals[id], l)
	}
	parts.DiskSwitch = l.next()
	return state, nil
}

func snapshotCPUID(entries []kvm.CPUIDEntry) []snapshot.CPUIDEntry {
	out := make([]snapshot.CPUIDEntry, len(entries))
	for i, e := range entries {
		out[i] = snapshot.CPUIDEntry{Function: e.Function, Index: e.Index, Flags: e.Flags, EAX: e.EAX, EBX: e.EBX, ECX: e.ECX, EDX: e.EDX}
	}
	return out
}

// takeDirtyBitmap returns the guest pages changed since the last take
// (with, the first time, those a failed checkpoint left behind).
func (m *Machine) takeDirtyBitmap() ([]uint64, error) {
	bm, err := m.takeDirty()
	if err != nil {
		return nil, err
	}
	if m.carryDirty != nil {
		for i := range bm {
			bm[i] |= m.carryDirty[i]
		}
		m.carryDirty = nil
	}
	return bm, nil
}
