package vmm

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/acpi"
	"github.com/sailbox-dev/sailbox/devices/i8042"
	"github.com/sailbox-dev/sailbox/devices/serial"
	"github.com/sailbox-dev/sailbox/devices/virtio"
	"github.com/sailbox-dev/sailbox/devices/virtio/blk"
	"github.com/sailbox-dev/sailbox/devices/virtio/rng"
	"github.com/sailbox-dev/sailbox/devices/virtio/vsock"
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
	supported, err := sys.SupportedCPUID()
	if err != nil {
		return nil, err
	}
	// Compared with what this VMM would give the same guest: the bits
	// the VMM sets itself (hypervisor present, topology) are on both sides.
	if err := man.CompatibleCPUID(snapshotCPUID(guestCPUID(supported, 0, man.VCPUs))); err != nil {
		return nil, err
	}
	var shape machineState
	if err := decodeSection(man, sectionMachine, &shape); err != nil {
		return nil, err
	}
	if shape.MemoryBytes != man.MemorySize || shape.VCPUs != man.VCPUs || shape.VCPUs < 1 {
		return nil, fmt.Errorf("section %s: %d bytes and %d vCPUs, the manifest says %d and %d", sectionMachine, shape.MemoryBytes, shape.VCPUs, man.MemorySize, man.VCPUs)
	}
	if len(shape.Slots) > len(deviceIRQs) {
		return nil, fmt.Errorf("section %s: %d MMIO devices, at most %d", sectionMachine, len(shape.Slots), len(deviceIRQs))
	}
	if rc.TopPrefix == "" {
		var b [6]byte
		rand.Read(b[:])
		rc.TopPrefix = rc.ID + "-" + hex.EncodeToString(b[:])
	}

	cfg := Config{
		MemoryMiB: int(man.MemorySize >> 20),
		VCPUs:     man.VCPUs,
		Serial:    rc.Serial,
		Logger:    rc.Logger,
	}
	m := &Machine{cfg: cfg, exitCh: make(chan struct{}), pendingSeals: map[string][]disklayer.Info{}, chain: man, workingSet: rc.WorkingSet, restoredFrom: rc.ID, restoredRoot: rc.Root}
	built := false
	defer func() {
		if !built {
			m.Close()
		}
	}()
	m.restored = make([]VCPUState, man.VCPUs)
	for i := range m.restored {
		if err := decodeSection(man, sectionVCPU(i), &m.restored[i]); err != nil {
			return nil, err
		}
		if m.restored[i].ID != i {
			return nil, fmt.Errorf("section %s: holds vCPU %d", sectionVCPU(i), m.restored[i].ID)
		}
	}
	var vmState VMState
	if err := decodeSection(man, sectionVM, &vmState); err != nil {
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
			m.workingSet = &mws
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

	// Platform devices, after the irqchip: a restored device re-raises an
	// interrupt that was pending.
	serialLine, err := m.interruptLine(serialIRQ)
	if err != nil {
		return nil, err
	}
	var serialState serial.State
	var kbdState i8042.State
	var pmState acpi.State
	for id, v := range map[string]any{sectionSerial: &serialState, sectionI8042: &kbdState, sectionACPI: &pmState} {
		if err := decodeDevice(man, id, v); err != nil {
			return nil, err
		}
	}
	if m.serial, err = serial.Restore(serialState, serialLine, rc.Serial); err != nil {
		return nil, err
	}
	if m.kbd, err = i8042.Restore(kbdState, m.guestReset); err != nil {
		return nil, err
	}
	if m.pm, err = acpi.Restore(pmState, m.guestPowerOff); err != nil {
		return nil, err
	}
	if err := m.insertPlatformDevices(); err != nil {
		return nil, err
	}
	for i, ss := range shape.Slots {
		if err := m.restoreSlot(rc, man, i, ss); err != nil {
			return nil, fmt.Errorf("mmio device %d (%s): %w", i, ss.Kind, err)
		}
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

// CheckpointDisks opens the disks of completed checkpoint id for a cold
// boot on them: a new kernel and guest agent on the same disks, memory not
// restored. Each layered disk gets a new writable top over the
// checkpoint's sealed chain, named "<topPrefix>-<disk ID>.top" in root's
// tops (an empty topPrefix means a random one). The disks come in the
// checkpoint's device order, so the guest finds each where it was (vda
// stays vda), with their IDs and read-only flags. Each Disk's Chain is the
// checkpoint's: the booted machine's checkpoints build on its layers.
//
// The caller owns the disks until it gives them to New.
func CheckpointDisks(root *snapshot.Root, id, topPrefix string) ([]Disk, error) {
	man, err := root.Load(id)
	if err != nil {
		return nil, fmt.Errorf("disks of checkpoint: %w", err)
	}
	var shape machineState
	if err := decodeSection(man, sectionMachine, &shape); err != nil {
		return nil, fmt.Errorf("disks of checkpoint %s: %w", id, err)
	}
	if topPrefix == "" {
		var b [6]byte
		rand.Read(b[:])
		topPrefix = id + "-" + hex.EncodeToString(b[:])
	}
	var disks []Disk
	fail := func(err error) ([]Disk, error) {
		for _, d := range disks {
			d.Layered.Close()
		}
		return nil, err
	}
	diskErr := func(disk string, err error) error {
		return fmt.Errorf("checkpoint %s disk %q: %w", id, disk, err)
	}
	for i, ss := range shape.Slots {
		if ss.Kind != kindBlock {
			continue
		}
		chain, ok := man.Disks[ss.Disk]
		if !ok {
			return fail(diskErr(ss.Disk, fmt.Errorf("mmio device %d serves it, the manifest has no such disk", i)))
		}
		if slices.ContainsFunc(disks, func(d Disk) bool { return d.ID == ss.Disk }) {
			return fail(diskErr(ss.Disk, fmt.Errorf("mmio device %d serves it again", i)))
		}
		var st virtio.MMIOState
		if err := decodeDevice(man, sectionMMIO(i), &st); err != nil {
			return fail(diskErr(ss.Disk, err))
		}
		var bs blk.State
		if err := devices.DecodeState("virtio-blk", st.Device, &bs); err != nil {
			return fail(diskErr(ss.Disk, err))
		}
		layered, err := root.OpenDisk(man, ss.Disk, root.TopPath(topPrefix+"-"+ss.Disk+".top"))
		if err != nil {
			return fail(err) // it names the checkpoint and the disk
		}
		disks = append(disks, Disk{Layered: layered, Chain: chain, ID: ss.Disk, ReadOnly: bs.ReadOnly})
	}
	for _, disk := range slices.Sorted(maps.Keys(man.Disks)) {
		if !slices.ContainsFunc(disks, func(d Disk) bool { return d.ID == disk }) {
			return fail(diskErr(disk, errors.New("no device serves it")))
		}
	}
	return disks, nil
}

// restoreSlot rebuilds MMIO slot i from its saved transport and device.
func (m *Machine) restoreSlot(rc RestoreConfig, man *snapshot.Manifest, i int, ss slotState) error {
	if ss.Base != mmioBase(i) || ss.GSI != deviceIRQs[i] {
		return fmt.Errorf("saved at %#x, IRQ %d; this VMM puts slot %d at %#x, IRQ %d", ss.Base, ss.GSI, i, mmioBase(i), deviceIRQs[i])
	}
	var st virtio.MMIOState
	if err := decodeDevice(man, sectionMMIO(i), &st); err != nil {
		return err
	}
	var dev virtio.Device
	switch ss.Kind {
	case kindBlock:
		var bs blk.State
		if err := devices.DecodeState("virtio-blk", st.Device, &bs); err != nil {
			return err
		}
		disk, err := rc.Root.OpenDisk(man, ss.Disk, rc.Root.TopPath(rc.TopPrefix+"-"+ss.Disk+".top"))
		if err != nil {
			return err
		}
		b, err := blk.Restore(bs, disk)
		if err != nil {
			disk.Close()
			return err
		}
		m.closers = append(m.closers, b)
		chain := man.Disks[ss.Disk]
		m.cfg.Disks = append(m.cfg.Disks, Disk{Layered: disk, Chain: chain, ID: ss.Disk, ReadOnly: bs.ReadOnly})
		dev = b
	case kindEntropy:
		var rs rng.State
		if err := devices.DecodeState("virtio-rng", st.Device, &rs); err != nil {
			return err
		}
		r, err := rng.Restore(rs)
		if err != nil {
			return err
		}
		dev = r
	case kindVsock:
		var vs vsock.State
		if err := devices.DecodeState("vsock", st.Device, &vs); err != nil {
			return err
		}
		if rc.VsockUDSPath == "" {
			return fmt.Errorf("the checkpoint has a vsock device and RestoreConfig.VsockUDSPath is empty")
		}
		d, err := vsock.Restore(vs, rc.VsockUDSPath, deviceLogger(m.cfg))
		if err != nil {
			return err
		}
		m.closers = append(m.closers, d)
		m.cfg.Vsock = &Vsock{CID: vs.GuestCID, UDSPath: rc.VsockUDSPath}
		dev = d
	default:
		return fmt.Errorf("unknown device kind %q", ss.Kind)
	}
	line, err := m.interruptLine(ss.GSI)
	if err != nil {
		return err
	}
	t, err := virtio.RestoreMMIO(st, dev, m.mem, line)
	if err != nil {
		return err
	}
	t.Logger = m.cfg.Logger
	if err := m.mmio.Insert(t, ss.Base, virtio.MMIOSize); err != nil {
		return err
	}
	s := slot{kind: ss.Kind, base: ss.Base, gsi: ss.GSI, transport: t, dev: dev}
	if ss.Kind == kindBlock {
		s.disk = len(m.cfg.Disks) - 1
	}
	m.slots = append(m.slots, s)
	return nil
}

// decodeSection decodes state section id of man, which must exist.
func decodeSection(man *snapshot.Manifest, id string, v any) error {
	b, ok := man.State[id]
	if !ok {
		return fmt.Errorf("no state section %q", id)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("state section %s: %w", id, err)
	}
	return nil
}

// decodeDevice decodes a device's section strictly (devices.DecodeState).
func decodeDevice(man *snapshot.Manifest, id string, v any) error {
	b, ok := man.State[id]
	if !ok {
		return fmt.Errorf("no state section %q", id)
	}
	return devices.DecodeState(id, b, v)
}
