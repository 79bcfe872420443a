package virtio

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/sailbox-dev/sailbox/devices"
)

// Saving and restoring a virtio device (see package devices for the
// contract every device follows).
//
// The transport saves its registers, every queue's state and, through
// Persistent, the device's own state, in one MMIOState:
//
//	m.Pause()            // vCPUs already paused: quiesce the device's goroutines
//	st, err := m.Save()  // registers, queues, st.Device = the device's State as JSON
//	...                  // snapshot guest memory (and the disk) while paused
//	m.Resume()           // if the VM goes on
//
// A restore rebuilds the device from st.Device with its own package's
// Restore constructor, then the transport around it, against guest memory
// restored from the same snapshot:
//
//	var bs blk.State
//	err := devices.DecodeState("virtio-blk", st.Device, &bs)
//	dev, err := blk.Restore(bs, backend)
//	m, err := virtio.RestoreMMIO(st, dev, mem, irq)
//
// RestoreMMIO re-activates a device that was active, with the saved queues,
// without the driver negotiating again: to the guest nothing happened.

// MMIOStateVersion is the version of MMIOState and QueueState that Save
// writes and RestoreMMIO accepts.
const MMIOStateVersion = 1

// ErrNotPaused reports a Save of a transport that was not paused first.
var ErrNotPaused = errors.New("virtio: save of a device that is not paused")

// Persistent is a Device whose state the transport saves with its own.
// Its package provides a Restore constructor that takes the State back.
type Persistent interface {
	Device
	// SaveState returns the JSON encoding of the device's State. The
	// transport calls it from Save, under its lock, with the vCPUs and
	// the device paused.
	SaveState() (json.RawMessage, error)
}

// Pauser is a Device whose back end runs on goroutines of its own and can
// touch guest memory, its queues or its interrupt without a driver kick
// (a host socket's data, a disk request still running). The transport's
// Pause and Resume call it. A device without such goroutines needs no
// Pauser: with the vCPUs paused, nothing reaches it.
type Pauser interface {
	// Pause returns once the device has finished the requests in flight
	// and will neither touch guest memory, use a queue, nor raise an
	// interrupt until Resume. It is called under the transport's lock.
	Pause() error
	// Resume undoes Pause.
	Resume()
}

// QueueState is a split virtqueue's state (Queue's fields). There is no
// event-index shadow state: VIRTIO_F_EVENT_IDX is not offered, and
// interrupt suppression reads the driver's flag every time.
type QueueState struct {
	MaxSize uint16 // the device's maximum size; must match on restore
	Size    uint16 // as the driver set it (QueueNum)
	Ready   bool   // QueueReady
	// Guest-physical addresses of the descriptor table, the available
	// ring and the used ring.
	DescTable, AvailRing, UsedRing uint64
	// NextAvail is the free-running index of the next available ring
	// entry the device consumes; NextUsed that of the next used ring
	// entry it fills. Both wrap at 2^16.
	NextAvail, NextUsed uint16
}

// State returns the queue's state. The queue's user must be quiescent:
// the transport before activation, a paused device after.
func (q *Queue) State() QueueState {
	return QueueState{
		MaxSize: q.MaxSize, Size: q.Size, Ready: q.Ready,
		DescTable: q.DescTable, AvailRing: q.AvailRing, UsedRing: q.UsedRing,
		NextAvail: q.nextAvail, NextUsed: q.nextUsed,
	}
}

// PutBack undoes the last Pop, whose chain the device has not returned:
// the next Pop takes the same available ring entry, and so the same chain,
// again. The driver cannot have reused that entry, as the chain is still
// its outstanding buffer. A device uses it to let go of a chain it took
// ahead of need (vsock holds an rx buffer before it has a packet for it),
// so that its saved state owns no chain in flight.
func (q *Queue) PutBack() { q.nextAvail-- }

// MMIOState is the state of a virtio-mmio transport and the device behind
// it: the transport's registers, its queues, and the device's own State.
type MMIOState struct {
	Version uint32 // MMIOStateVersion

	// DeviceType and OfferedFeatures identify the device the driver
	// negotiated with; the restored device must be the same type and
	// offer the same features.
	DeviceType      uint32
	OfferedFeatures uint64

	Status            uint32 // the Status register
	DeviceFeaturesSel uint32
	DriverFeaturesSel uint32
	DriverFeatures    uint64 // the features the driver accepted
	QueueSel          uint32
	InterruptStatus   uint32 // used-buffer and configuration-change bits not yet acknowledged
	ConfigGeneration  uint32
	// Activated reports that the device was running: the driver set
	// DRIVER_OK and the device accepted its queues.
	Activated bool
	// Queues are the device's queues, in order.
	Queues []QueueState
	// Device is the JSON encoding of the device's State (Persistent).
	Device json.RawMessage
}

// Pause quiesces the device for Save: a Pauser device finishes its
// requests in flight and stops its goroutines' work, and kicks from the
// driver wait until Resume. Call it with the vCPUs paused. Pausing a
// paused transport does nothing.
func (m *MMIO) Pause() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.paused {
		return nil
	}
	if p, ok := m.dev.(Pauser); ok {
		if err := p.Pause(); err != nil {
			return fmt.Errorf("virtio-mmio: pause device type %d: %w", m.dev.Type(), err)
		}
	}
	m.paused = true
	return nil
}

// Resume lets a paused device go on and delivers the kicks that arrived
// while it was paused.
func (m *MMIO) Resume() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.paused {
		return
	}
	m.paused = false
	if p, ok := m.dev.(Pauser); ok {
		p.Resume()
	}
	for i, kicked := range m.deferredKicks {
		m.deferredKicks[i] = false
		if kicked && m.activated {
			m.dev.Notify(i)
		}
	}
}

// Save returns the state of the transport, its queues and its device,
// which must be Persistent. The transport must be paused (Pause), and the
// vCPUs with it.
func (m *MMIO) Save() (MMIOState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.paused {
		return MMIOState{}, fmt.Errorf("virtio-mmio: save device type %d: %w", m.dev.Type(), ErrNotPaused)
	}
	p, ok := m.dev.(Persistent)
	if !ok {
		return MMIOState{}, fmt.Errorf("virtio-mmio: save: device type %d (%T) does not save its state", m.dev.Type(), m.dev)
	}
	dev, err := p.SaveState()
	if err != nil {
		return MMIOState{}, fmt.Errorf("virtio-mmio: save device type %d: %w", m.dev.Type(), err)
	}
	st := MMIOState{
		Version:           MMIOStateVersion,
		DeviceType:        m.dev.Type(),
		OfferedFeatures:   m.offered,
		Status:            m.status,
		DeviceFeaturesSel: m.deviceFeaturesSel,
		DriverFeaturesSel: m.driverFeaturesSel,
		DriverFeatures:    m.driverFeatures,
		QueueSel:          m.queueSel,
		InterruptStatus:   m.interruptStatus.Load(),
		ConfigGeneration:  m.configGeneration,
		Activated:         m.activated,
		Device:            dev,
	}
	for _, q := range m.queues {
		st.Queues = append(st.Queues, q.State())
	}
	return st, nil
}

// RestoreMMIO builds the transport st describes around dev, a device
// restored from st.Device, with its queues in mem and its interrupts on
// irq. If the device was active it activates it again with the features
// the driver accepted and the saved queues, then notifies every ready
// queue, in case the driver made buffers available that the device had
// not seen: a spurious notification costs a look at the ring, a lost one
// would stall the driver. For the same reason it raises the interrupt
// again if InterruptStatus has bits the driver has not acknowledged; so
// that this edge is not lost, restore the interrupt controller first.
//
// It refuses, with an error wrapping devices.ErrInvalidState, a state no
// transport could have been in, one that does not fit dev (another type,
// other features or queues), and ready queues of an active device that
// are malformed or outside mem.
func RestoreMMIO(st MMIOState, dev Device, mem devices.GuestMemory, irq devices.Interrupt) (*MMIO, error) {
	if err := devices.CheckStateVersion("virtio-mmio", st.Version, MMIOStateVersion); err != nil {
		return nil, err
	}
	m := NewMMIO(dev, mem, irq)
	if err := m.checkState(&st); err != nil {
		return nil, fmt.Errorf("virtio-mmio: restore device type %d: %w: %w", dev.Type(), devices.ErrInvalidState, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.status = st.Status
	m.deviceFeaturesSel, m.driverFeaturesSel = st.DeviceFeaturesSel, st.DriverFeaturesSel
	m.driverFeatures = st.DriverFeatures
	m.queueSel = st.QueueSel
	m.interruptStatus.Store(st.InterruptStatus)
	m.configGeneration = st.ConfigGeneration
	for i, qs := range st.Queues {
		q := m.queues[i]
		q.Size, q.Ready = qs.Size, qs.Ready
		q.DescTable, q.AvailRing, q.UsedRing = qs.DescTable, qs.AvailRing, qs.UsedRing
		q.nextAvail, q.nextUsed = qs.NextAvail, qs.NextUsed
	}
	if !st.Activated {
		return m, m.reraise()
	}
	if err := m.validateQueues(); err != nil {
		return nil, fmt.Errorf("virtio-mmio: restore device type %d: %w: %w", dev.Type(), devices.ErrInvalidState, err)
	}
	if err := dev.Activate(mem, m.driverFeatures, m.queues, m.signalUsedBuffer); err != nil {
		return nil, fmt.Errorf("virtio-mmio: restore device type %d: activate: %w", dev.Type(), err)
	}
	m.activated = true
	for i, q := range m.queues {
		if q.Ready {
			dev.Notify(i)
		}
	}
	return m, m.reraise()
}

// RaisePending raises the device's interrupt again if InterruptStatus has
// bits set. RestoreMMIO does so itself, and a restored device may raise
// its interrupt as soon as it is active; a VMM whose vCPUs (and so their
// interrupt controllers) are created after the devices calls this once
// they exist, because an interrupt with nowhere to go is lost. A spurious
// interrupt is harmless: the driver reads InterruptStatus.
func (m *MMIO) RaisePending() error { return m.reraise() }

// reraise raises the interrupt if InterruptStatus has bits set.
func (m *MMIO) reraise() error {
	if m.interruptStatus.Load() == 0 {
		return nil
	}
	if err := m.irq.Trigger(); err != nil {
		return fmt.Errorf("virtio-mmio: restore device type %d: raise pending interrupt: %w", m.dev.Type(), err)
	}
	return nil
}

// checkState checks that st is a state the transport could be in, for
// its device. It checks the invariants the register handlers keep.
func (m *MMIO) checkState(st *MMIOState) error {
	if st.DeviceType != m.dev.Type() {
		return fmt.Errorf("saved device type %d", st.DeviceType)
	}
	if st.OfferedFeatures != m.offered {
		return fmt.Errorf("saved offered features %#x, the device offers %#x", st.OfferedFeatures, m.offered)
	}
	const knownStatus = statusAcknowledge | statusDriver | statusFeaturesOK | statusDriverOK | statusDeviceNeedsReset | statusFailed
	if extra := st.Status &^ knownStatus; extra != 0 {
		return fmt.Errorf("status %#x: unknown bits %#x", st.Status, extra)
	}
	for _, step := range statusOrder {
		if st.Status&step.bit != 0 && st.Status&step.after != step.after {
			return fmt.Errorf("status %#x: bit %#x set without %#x", st.Status, step.bit, step.after)
		}
	}
	driverOK := st.Status&statusDriverOK != 0
	needsReset := st.Status&statusDeviceNeedsReset != 0
	switch {
	case st.Activated && (!driverOK || needsReset):
		return fmt.Errorf("status %#x: active device without DRIVER_OK, or needing reset", st.Status)
	case driverOK && !st.Activated && !needsReset:
		return fmt.Errorf("status %#x: DRIVER_OK, but the device is neither active nor failed", st.Status)
	case needsReset && !driverOK:
		return fmt.Errorf("status %#x: DEVICE_NEEDS_RESET before DRIVER_OK", st.Status)
	}
	if st.Status&statusDriver == 0 && st.DriverFeatures != 0 {
		return fmt.Errorf("status %#x: driver features %#x before DRIVER", st.Status, st.DriverFeatures)
	}
	featuresOK := st.Status&statusFeaturesOK != 0
	if featuresOK {
		if err := checkFeatures(st.DriverFeatures, m.offered); err != nil {
			return fmt.Errorf("status %#x: %w", st.Status, err)
		}
	}
	if extra := st.InterruptStatus &^ (interruptUsedBuffer | interruptConfigChange); extra != 0 {
		return fmt.Errorf("interrupt status %#x: unknown bits %#x", st.InterruptStatus, extra)
	}
	if len(st.Queues) != len(m.queues) {
		return fmt.Errorf("%d queues saved, the device has %d", len(st.Queues), len(m.queues))
	}
	for i, qs := range st.Queues {
		if qs.MaxSize != m.queues[i].MaxSize {
			return fmt.Errorf("queue %d: saved maximum size %d, the device's is %d", i, qs.MaxSize, m.queues[i].MaxSize)
		}
		// The driver configures queues only after FEATURES_OK; until then
		// they are as Reset leaves them. The device moves the indexes only
		// once active.
		reset := QueueState{MaxSize: qs.MaxSize, Size: qs.MaxSize}
		if !featuresOK && qs != reset {
			return fmt.Errorf("queue %d: configured (%+v) before FEATURES_OK", i, qs)
		}
		if !st.Activated && (qs.NextAvail != 0 || qs.NextUsed != 0) {
			return fmt.Errorf("queue %d: ring indexes %d/%d moved, but the device is not active", i, qs.NextAvail, qs.NextUsed)
		}
	}
	return nil
}
