package vmm

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/snapshot/disklayer"
	"github.com/sailbox-dev/sailbox/snapshot/memlayer"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// RestoreConfig says which checkpoint to restore and how the new machine
// meets the host.
type RestoreConfig struct {
	Root *snapshot.Root
	ID   string // the checkpoint
	// VsockUDSPath is where the restored vsock device listens, if the
	// checkpoint has one. It must not exist: the original's path once its
	// VMM is gone (and its socket file removed), a new one for a fork.
	VsockUDSPath string
	// NetSocketPath is the network stack's socket the restored network
	// device connects to, if the checkpoint has one: a new peer, since
	// the old one's connections are not this machine's. A checkpoint
	// with a network device is not restored without it.
	NetSocketPath string
	// TopPrefix names the new writable disk tops, in Root's tops:
	// "<TopPrefix>-<disk ID>.top". Empty means a random prefix. Every
	// machine restored from one checkpoint gets its own tops.
	TopPrefix string
	Serial    io.Writer    // the guest console; nil discards it
	Logger    *slog.Logger // device diagnostics; nil discards them
	// WorkingSet is mapped before the guest runs. Nil means the one
	// recorded nearest the checkpoint in Root (Root.WorkingSet: saved by
	// an earlier machine restored from it or an ancestor, see
	// Machine.SaveWorkingSet), if any. Its written pages are copied for
	// this VM at once (they would be at the guest's first write anyway),
	// and all its pages are entered in KVM's page tables
	// (KVM_PRE_FAULT_MEMORY), so that the guest's first touch of each
	// costs no exit to the host. Pages only read stay shared with the
	// layers. The copied pages count as dirtied: the machine's next
	// checkpoint holds them. Without KVM_PRE_FAULT_MEMORY (before Linux
	// 6.10) or nested paging, only the copies are made.
	WorkingSet *memory.WorkingSet
	// NoWorkingSet maps nothing ahead: every page faults in when first
	// touched.
	NoWorkingSet bool
}

// Restore builds a machine from a checkpoint, ready to Run from the
// instant the checkpoint was taken. Guest memory maps the checkpoint's
// memory layers copy-on-write (MAP_PRIVATE): nothing is copied, pages load
// from the page cache when first touched, and every machine restored from
// the same layers shares them until it writes. Each disk gets a new
// writable top over the checkpoint's sealed chain. vsock connections do
// not survive: the guest is sent a transport reset, its listeners stay.
// The network device's link is new (RestoreConfig.NetSocketPath): frames
// in flight at the checkpoint are lost, as on a link that was reset.
//
// The restored machine continues the checkpoint's chain: its own
// checkpoints are incremental over it.
func Restore(sys *kvm.System, rc RestoreConfig) (*Machine, error) {
	man, err := rc.Root.Load(rc.ID)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	m, err := restore(sys, rc, man)
	if err != nil {
		return nil, fmt.Errorf("restore checkpoint %s: %w", rc.ID, err)
	}
	return m, nil
}

func restore(sys *kvm.System, rc RestoreConfig, man *snapshot.Manifest) (*Machine, error) {
	host, err := snapshot.HostCPU()
	if err != nil {
		return nil, err
	}
	if err := man.Compatible(host); err != nil {
		return nil, err
	}
	supported, err := hostCPUID(sys)
	if err != nil {
		return nil, err
	}
	// Compared with what this VMM would give the same guest: the bits
	// the VMM sets itself (hypervisor present, topology) are on both sides.
	if err := man.CompatibleCPUID(snapshotCPUID(guestCPUID(supported, 0, man.VCPUs))); err != nil {
		return nil, err
	}
	shape, err := decodeMachine(man)
	if err != nil {
		return nil, err
	}
	if shape.MemoryBytes != man.MemorySize || shape.VCPUs != man.VCPUs || shape.VCPUs < 1 {
		return nil, fmt.Errorf("section %s: %d bytes and %d vCPUs, the manifest says %d and %d", sectionMachine, shape.MemoryBytes, shape.VCPUs, man.MemorySize, man.VCPUs)
	}
	if len(shape.Slots) > len(deviceIRQs) {
		return nil, fmt.Errorf("section %s: %d MMIO devices, at most %d", sectionMachine, len(shape.Slots), len(deviceIRQs))
	}
	if rc.TopPrefix == "" {
		rc.TopPrefix = randomTopPrefix(rc.ID)
	}

	cfg := Config{
		MemoryMiB: int(man.MemorySize >> 20),
		VCPUs:     man.VCPUs,
		Serial:    rc.Serial,
		Logger:    rc.Logger,
	}
	m := &Machine{cfg: cfg, exitCh: make(chan struct{}), pendingSeals: map[string][]*disklayer.Layer{}, chain: man, workingSet: rc.WorkingSet, restoredFrom: rc.ID, restoredRoot: rc.Root}
	built := false
	defer func() {
		if !built {
			m.Close()
		}
	}()
	m.restored = make([]VCPUState, man.VCPUs)
	for i := range m.restored {
		if m.restored[i], err = decodeVCPU(man, i); err != nil {
			return nil, err
		}
		if m.restored[i].ID != i {
			return nil, fmt.Errorf("section %s: holds vCPU %d", sectionVCPU(i), m.restored[i].ID)
		}
	}
	vmState, err := decodeVM(man)
	if err != nil {
		return nil, err
	}

	// Memory: the chain's layers mapped copy-on-write over zeros.
	chain, err := rc.Root.OpenMemory(man)
	if err != nil {
		return nil, err
	}
	plan, err := memoryPlan(chain, man.MemorySize)
	if err == nil {
		m.mem, err = memory.NewFromFiles(man.MemorySize, plan)
	}
	for _, l := range chain {
		l.Close()
	}
	if err != nil {
		return nil, err
	}

	if m.workingSet == nil && !rc.NoWorkingSet {
		// Only a head start: a damaged file costs the restore nothing.
		switch ws, from, err := rc.Root.WorkingSet(man); {
		case err != nil:
			deviceLogger(cfg).Warn("restore: working set", "err", err)
		case from != "":
			mws := memory.WorkingSet(ws)
			m.workingSet, m.workingSetFrom = &mws, from
			deviceLogger(cfg).Debug("restore: working set", "from", from, "pages", ws.Pages())
		}
	}
	if rc.NoWorkingSet {
		m.workingSet = nil
	}
	// Tell the pages the guest writes from here, for SaveWorkingSet,
	// unless the checkpoint holds a working set already (the first
	// recording stays): write-protecting guest memory costs about 10 ms
	// a GiB here, before the guest runs.
	if !rc.Root.HasWorkingSet(rc.ID) {
		if way, err := m.mem.TrackWrites(); err != nil {
			deviceLogger(cfg).Warn("restore: the working set this machine records will name no written pages", "err", err)
		} else {
			deviceLogger(cfg).Debug("restore: tracking written pages", "way", way)
		}
	}

	if err := m.createVM(sys); err != nil {
		return nil, err
	}
	for _, c := range []kvm.IRQChip{vmState.PICMaster, vmState.PICSlave, vmState.IOAPIC} {
		if err := m.vm.SetIRQChip(c); err != nil {
			return nil, err
		}
	}
	if err := m.vm.SetPIT2(vmState.PIT); err != nil {
		return nil, err
	}

	// Devices after the irqchip: a restored device re-raises an
	// interrupt that was pending.
	if err := m.restoreDevices(rc, man, shape.Slots); err != nil {
		return nil, err
	}
	if rc.NetSocketPath != "" && m.cfg.Net == nil {
		deviceLogger(cfg).Warn("restore: a network socket was given, but the checkpoint has no network device: the guest has no network", "socket", rc.NetSocketPath)
	}

	// The clock last: it runs from here.
	clock := vmState.Clock
	clock.Flags &^= kvm.ClockRealtime
	if err := m.vm.SetClock(clock); err != nil {
		return nil, err
	}
	built = true
	return m, nil
}

// raisePendingInterrupts raises again every device interrupt that is
// pending, once the vCPUs of a restored machine exist: restoring and
// activating the devices happens before, and an interrupt raised then has
// no LAPIC to reach and is lost (a restored vsock's TRANSPORT_RESET event,
// say, whose loss left the guest unaware of the reset until another
// interrupt came, and the first host connection waiting out its deadline).
func (m *Machine) raisePendingInterrupts() {
	if err := m.serial.RaisePending(); err != nil {
		deviceLogger(m.cfg).Warn("restore: serial interrupt", "err", err)
	}
	for i, s := range m.slots {
		if s.transport == nil {
			continue
		}
		if err := s.transport.RaisePending(); err != nil {
			deviceLogger(m.cfg).Warn("restore: device interrupt", "slot", i, "kind", s.kind, "err", err)
		}
	}
}

// memoryPlan maps a chain of memory layers: each guest page from the
// topmost layer holding it.
func memoryPlan(chain []*memlayer.Layer, size uint64) ([]memory.FileRange, error) {
	maps, err := memlayer.Plan(chain, size)
	if err != nil {
		return nil, err
	}
	out := make([]memory.FileRange, len(maps))
	for i, mp := range maps {
		out[i] = memory.FileRange{GuestOffset: mp.GuestOffset, Length: mp.Length, File: chain[mp.Layer].File(), FileOffset: mp.FileOffset}
	}
	return out, nil
}
