package virtio

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/internal/guestlog"
)

// MMIOSize is the size of a virtio-mmio device's register window: the
// registers, then the device configuration space from configSpaceOffset.
const MMIOSize = 0x1000

// Register offsets of the virtio-mmio transport, version 2 (spec §4.2.2,
// "MMIO Device Register Layout"). All are 32 bits wide.
const (
	regMagicValue        = 0x000 // R
	regVersion           = 0x004 // R
	regDeviceID          = 0x008 // R
	regVendorID          = 0x00c // R
	regDeviceFeatures    = 0x010 // R: 32 feature bits, selected by DeviceFeaturesSel
	regDeviceFeaturesSel = 0x014 // W
	regDriverFeatures    = 0x020 // W: 32 feature bits, selected by DriverFeaturesSel
	regDriverFeaturesSel = 0x024 // W
	regQueueSel          = 0x030 // W: the queue the Queue* registers refer to
	regQueueNumMax       = 0x034 // R
	regQueueNum          = 0x038 // W
	regQueueReady        = 0x044 // RW
	regQueueNotify       = 0x050 // W: a queue index
	regInterruptStatus   = 0x060 // R
	regInterruptACK      = 0x064 // W
	regStatus            = 0x070 // RW
	regQueueDescLow      = 0x080 // W
	regQueueDescHigh     = 0x084 // W
	regQueueDriverLow    = 0x090 // W: the available ring
	regQueueDriverHigh   = 0x094 // W
	regQueueDeviceLow    = 0x0a0 // W: the used ring
	regQueueDeviceHigh   = 0x0a4 // W
	regConfigGeneration  = 0x0fc // R
	configSpaceOffset    = 0x100 // device configuration space, any width
)

const (
	mmioMagicValue = 0x74726976 // "virt"
	mmioVersion    = 2          // the virtio 1.x ("modern") register layout
	vendorID       = 0x53424f58 // "SBOX"
)

// Device status bits (spec §2.1).
const (
	statusAcknowledge      = 1   // ACKNOWLEDGE: the guest found the device
	statusDriver           = 2   // DRIVER: the guest has a driver for it
	statusDriverOK         = 4   // DRIVER_OK: the driver is set up; the device is live
	statusFeaturesOK       = 8   // FEATURES_OK: feature negotiation is complete
	statusDeviceNeedsReset = 64  // DEVICE_NEEDS_RESET: set by the device on a fatal error
	statusFailed           = 128 // FAILED: the driver gave up on the device
)

// InterruptStatus bits (spec §4.2.2).
const (
	interruptUsedBuffer   = 1 // Used Buffer Notification
	interruptConfigChange = 2 // Configuration Change Notification
)

// statusOrder lists the status bits a driver sets during initialisation,
// each with the bit that must already be set (spec §3.1.1).
var statusOrder = [...]struct{ bit, after uint32 }{
	{statusAcknowledge, 0},
	{statusDriver, statusAcknowledge},
	{statusFeaturesOK, statusDriver},
	{statusDriverOK, statusFeaturesOK},
}

// MMIO is the virtio-mmio transport (spec §4.2), version 2: the register
// file a guest driver programs to negotiate features, set up the queues and
// start a Device. Map it on the MMIO bus with MMIOSize bytes and declare it
// to Linux with KernelCmdline.
//
// Bus accesses arrive on vCPU goroutines, and Kick on the goroutines that
// wait for kicks the kernel caught; the transport serializes them, and
// its calls into the device (Activate, Notify, Reset, ReadConfig,
// WriteConfig), under one lock. The device raises its used-buffer
// interrupt from any goroutine through the signal function given to
// Activate, which does not take that lock.
type MMIO struct {
	// Logger receives the transport's logs: protocol errors of the driver
	// and failed activations, at most warnsPerSecond a second, which the
	// guest can cause at will. Nil discards them. Set it before the guest
	// runs.
	Logger *slog.Logger

	logLimit *guestlog.Limiter // set by NewMMIO; one budget for the transport's life

	dev     Device
	mem     devices.GuestMemory
	irq     devices.Interrupt
	offered uint64 // features offered to the driver: dev.Features() | FeatureVersion1

	// interruptStatus is the InterruptStatus register. It is atomic, not
	// guarded by mu, because devices raise interrupts from their own
	// goroutines and also from inside Notify, while a vCPU holds mu.
	interruptStatus atomic.Uint32

	// registerKicks and caughtKicks count kicks (KickCounts); atomic so
	// that reading them needs no lock.
	registerKicks, caughtKicks atomic.Uint64

	// mu guards the fields below and serializes calls into dev.
	mu                sync.Mutex
	status            uint32 // Status register (status* bits)
	deviceFeaturesSel uint32
	driverFeaturesSel uint32
	driverFeatures    uint64 // the features the driver accepted
	queueSel          uint32
	// queues are the device's queues, one per dev.QueueSizes(). The
	// transport configures them until it activates the device; from then
	// until the device's Reset returns they are the device's, and the
	// transport only reads Ready.
	queues    []*Queue
	activated bool // dev.Activate succeeded and Reset has not been called since
	// configGeneration is the ConfigGeneration register. No device
	// changes its configuration space while the driver runs, so it never
	// moves; it is state so that a snapshot keeps what the driver saw.
	configGeneration uint32
	// paused is set between Pause and Resume (persist.go); kicks that
	// arrive meanwhile are recorded in deferredKicks, by queue index, and
	// delivered by Resume.
	paused        bool
	deferredKicks []bool
}

// NewMMIO returns the transport for dev, whose queues live in mem and whose
// interrupts are raised on irq.
func NewMMIO(dev Device, mem devices.GuestMemory, irq devices.Interrupt) *MMIO {
	m := &MMIO{
		dev:      dev,
		mem:      mem,
		irq:      irq,
		offered:  dev.Features() | FeatureVersion1,
		logLimit: guestlog.NewLimiter(warnsPerSecond, time.Second),
	}
	for i, size := range dev.QueueSizes() {
		q := NewQueue(size)
		q.index = i
		m.queues = append(m.queues, q)
	}
	m.deferredKicks = make([]bool, len(m.queues))
	return m
}

// KernelCmdline returns the Linux command-line fragment that declares a
// virtio-mmio device whose register window is at base and whose interrupt
// is irq (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).
func KernelCmdline(base uint64, irq uint32) string {
	return fmt.Sprintf("virtio_mmio.device=%dK@%#x:%d", MMIOSize>>10, base, irq)
}

// Read implements devices.BusDevice. Registers are 32 bits wide and
// aligned (spec §4.2.2.2); any other access to them reads zeros.
func (m *MMIO) Read(offset uint64, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if offset >= configSpaceOffset {
		m.dev.ReadConfig(offset-configSpaceOffset, data)
		return
	}
	clear(data)
	if len(data) == 4 {
		binary.LittleEndian.PutUint32(data, m.readRegister(offset))
	}
}

func (m *MMIO) readRegister(offset uint64) uint32 {
	switch offset {
	case regMagicValue:
		return mmioMagicValue
	case regVersion:
		return mmioVersion
	case regDeviceID:
		return m.dev.Type()
	case regVendorID:
		return vendorID
	case regDeviceFeatures:
		switch m.deviceFeaturesSel {
		case 0:
			return uint32(m.offered)
		case 1:
			return uint32(m.offered >> 32)
		}
	case regQueueNumMax:
		// Zero tells the driver the queue does not exist.
		if q := m.selectedQueue(); q != nil {
			return uint32(q.MaxSize)
		}
	case regQueueReady:
		if q := m.selectedQueue(); q != nil && q.Ready {
			return 1
		}
	case regInterruptStatus:
		return m.interruptStatus.Load()
	case regStatus:
		return m.status
	case regConfigGeneration:
		return m.configGeneration
	}
	return 0
}

// Write implements devices.BusDevice. Writes to registers that are not 32
// bits wide and aligned, or read-only, are ignored.
func (m *MMIO) Write(offset uint64, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if offset >= configSpaceOffset {
		m.dev.WriteConfig(offset-configSpaceOffset, data)
		return
	}
	if len(data) != 4 {
		return
	}
	v := binary.LittleEndian.Uint32(data)
	switch offset {
	case regDeviceFeaturesSel:
		m.deviceFeaturesSel = v
	case regDriverFeaturesSel:
		m.driverFeaturesSel = v
	case regDriverFeatures:
		m.writeDriverFeatures(v)
	case regQueueSel:
		m.queueSel = v
	case regQueueNum:
		if q := m.configurableQueue(); q != nil {
			// A size beyond 16 bits becomes 0, which Validate refuses
			// when the driver sets DRIVER_OK.
			q.Size = 0
			if v <= 0xffff {
				q.Size = uint16(v)
			}
		}
	case regQueueReady:
		if q := m.settableQueue(); q != nil {
			q.Ready = v == 1
		}
	case regQueueDescLow, regQueueDescHigh:
		if q := m.configurableQueue(); q != nil {
			setHalf(&q.DescTable, offset == regQueueDescHigh, v)
		}
	case regQueueDriverLow, regQueueDriverHigh:
		if q := m.configurableQueue(); q != nil {
			setHalf(&q.AvailRing, offset == regQueueDriverHigh, v)
		}
	case regQueueDeviceLow, regQueueDeviceHigh:
		if q := m.configurableQueue(); q != nil {
			setHalf(&q.UsedRing, offset == regQueueDeviceHigh, v)
		}
	case regQueueNotify:
		// Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
		m.registerKicks.Add(1)
		m.kickLocked(uint64(v))
	case regInterruptACK:
		m.interruptStatus.And(^v)
	case regStatus:
		m.writeStatus(v)
	}
}

// QueueNotifyOffset is the offset of the QueueNotify register in the
// transport's window. The driver kicks queue i by writing i there, 4
// bytes wide; a VMM that has the kernel catch those writes (KVM's
// ioeventfds) delivers them with Kick instead.
const QueueNotifyOffset = regQueueNotify

// Queues is the number of the device's queues: the values a driver
// writes to QueueNotify are 0 to Queues()-1.
func (m *MMIO) Queues() int { return len(m.queues) }

// Kick is the driver's kick of queue index, caught before it reached the
// QueueNotify register (KVM signalled an eventfd for the write): the
// transport handles it as it handles the write. Safe from any goroutine.
func (m *MMIO) Kick(index int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.caughtKicks.Add(1)
	m.kickLocked(uint64(index))
}

// kickLocked delivers the driver's kick of queue index. Kicks before
// DRIVER_OK, or for queues the device does not have, are the driver's
// bug and go nowhere; kicks while the transport is paused wait for
// Resume. Called with mu held.
func (m *MMIO) kickLocked(index uint64) {
	if !m.activated || index >= uint64(len(m.queues)) {
		return
	}
	if m.paused {
		m.deferredKicks[index] = true
		return
	}
	m.dev.Notify(int(index))
}

// KickCounts counts the driver's kicks by the way they reached the
// transport, whether or not they went anywhere.
type KickCounts struct {
	Register uint64 // writes to QueueNotify on the bus: each one a vCPU's exit to the VMM
	Caught   uint64 // Kick: writes the kernel caught before they left the guest
}

// KickCounts returns the transport's counts of kicks.
func (m *MMIO) KickCounts() KickCounts {
	return KickCounts{Register: m.registerKicks.Load(), Caught: m.caughtKicks.Load()}
}

// setHalf sets the high or low 32 bits of *addr to v.
func setHalf(addr *uint64, high bool, v uint32) {
	if high {
		*addr = *addr&0xffffffff | uint64(v)<<32
	} else {
		*addr = *addr&^0xffffffff | uint64(v)
	}
}

// selectedQueue is the queue QueueSel selects, or nil if there is none.
func (m *MMIO) selectedQueue() *Queue {
	if m.queueSel >= uint32(len(m.queues)) {
		return nil
	}
	return m.queues[m.queueSel]
}

// settableQueue is the selected queue if the driver may set it up now:
// after feature negotiation and before DRIVER_OK (spec §3.1.1 step 7).
func (m *MMIO) settableQueue() *Queue {
	if m.status&(statusFeaturesOK|statusDriverOK) != statusFeaturesOK {
		return nil
	}
	return m.selectedQueue()
}

// configurableQueue is the selected queue if the driver may change its size
// and addresses now: it must be settable and not ready (spec §4.2.2.2).
func (m *MMIO) configurableQueue() *Queue {
	if q := m.settableQueue(); q != nil && !q.Ready {
		return q
	}
	return nil
}

// writeDriverFeatures records 32 of the features the driver accepts. The
// driver writes them after setting DRIVER and before FEATURES_OK
// (spec §3.1.1 steps 4-5); other writes are ignored.
func (m *MMIO) writeDriverFeatures(v uint32) {
	if m.status&(statusDriver|statusFeaturesOK) != statusDriver {
		m.logger().Debug("virtio-mmio: driver features written outside negotiation; ignored", "status", m.status)
		return
	}
	switch m.driverFeaturesSel {
	case 0:
		m.driverFeatures = m.driverFeatures&^0xffffffff | uint64(v)
	case 1:
		m.driverFeatures = m.driverFeatures&0xffffffff | uint64(v)<<32
	}
}

// writeStatus handles a write to the Status register: zero resets the
// device; otherwise the driver adds status bits in initialisation order
// (spec §3.1.1). It may not clear bits but by resetting (§2.1.1), nor set
// DEVICE_NEEDS_RESET; writes that try, or that skip a step, are ignored.
func (m *MMIO) writeStatus(v uint32) {
	if v == 0 {
		m.reset()
		return
	}
	set := v &^ m.status
	if v&m.status != m.status || set&statusDeviceNeedsReset != 0 {
		m.logger().Debug("virtio-mmio: invalid status write; ignored", "status", m.status, "write", v)
		return
	}
	if set&statusFailed != 0 {
		m.status |= statusFailed
	}
	for _, step := range statusOrder {
		if set&step.bit == 0 {
			continue
		}
		if m.status&step.after != step.after {
			m.logger().Debug("virtio-mmio: status bit set out of order; ignored", "status", m.status, "write", v)
			return
		}
		switch step.bit {
		case statusFeaturesOK:
			if err := m.checkFeatures(); err != nil {
				// Leaving FEATURES_OK clear is how the device refuses
				// (spec §3.1.1 step 6); the driver reads it back.
				m.logger().Info("virtio-mmio: features refused", "err", err)
				return
			}
		case statusDriverOK:
			m.status |= statusDriverOK
			m.activate()
			return
		}
		m.status |= step.bit
	}
}

// checkFeatures checks the features the driver accepted: only offered ones,
// and VIRTIO_F_VERSION_1, which the modern transport requires (spec §6.1).
func (m *MMIO) checkFeatures() error { return checkFeatures(m.driverFeatures, m.offered) }

func checkFeatures(accepted, offered uint64) error {
	if extra := accepted &^ offered; extra != 0 {
		return fmt.Errorf("driver accepted features %#x that were not offered (offered %#x)", extra, offered)
	}
	if accepted&FeatureVersion1 == 0 {
		return fmt.Errorf("driver did not accept VIRTIO_F_VERSION_1 (accepted %#x)", accepted)
	}
	return nil
}

// activate validates the ready queues and starts the device. On failure
// the device needs a reset: it sets DEVICE_NEEDS_RESET and raises a
// configuration change interrupt, so the driver notices (spec §2.1.2).
func (m *MMIO) activate() {
	err := m.validateQueues()
	if err == nil {
		err = m.dev.Activate(m.mem, m.driverFeatures, m.queues, m.signalUsedBuffer)
	}
	if err == nil {
		m.activated = true
		return
	}
	m.logger().Warn("virtio-mmio: activation failed; device needs reset", "device_type", m.dev.Type(), "err", err)
	m.status |= statusDeviceNeedsReset
	m.interruptStatus.Or(interruptConfigChange)
	if err := m.irq.Trigger(); err != nil {
		m.logger().Warn("virtio-mmio: configuration change interrupt", "device_type", m.dev.Type(), "err", err)
	}
}

func (m *MMIO) validateQueues() error {
	for _, q := range m.queues {
		if !q.Ready {
			continue
		}
		if err := q.Validate(m.mem); err != nil {
			return err
		}
	}
	return nil
}

// signalUsedBuffer is the signal function given to the device: it raises
// a used buffer notification (spec §4.2.3.4).
//
// The interrupt is asserted while InterruptStatus is not zero, as QEMU's
// virtio-mmio drives its line: a notification while the used-buffer bit
// is still set, because the driver has not yet acknowledged the last
// one, raises nothing more. The driver acknowledges before it looks at
// its queues (Linux's vm_interrupt reads InterruptStatus, writes it to
// InterruptACK, then walks every queue's used ring), and a device
// publishes its used entries before it signals, so the handler that
// clears the bit sees them; a signal after the acknowledgement finds the
// bit clear and raises a new interrupt. Raising one each time instead
// gave the guest interrupts whose handler found nothing new, each with
// two register exits, and made a vsock round trip cost more KVM exits
// than QEMU's vhost-vsock (sailbox-bench's kvm.* rows).
func (m *MMIO) signalUsedBuffer() error {
	if m.interruptStatus.Or(interruptUsedBuffer)&interruptUsedBuffer != 0 {
		return nil // still asserted: the driver's handler has yet to acknowledge it
	}
	return m.irq.Trigger()
}

// reset returns the device and the transport to their initial state
// (spec §2.4): the driver wrote 0 to Status.
func (m *MMIO) reset() {
	if m.activated {
		m.dev.Reset()
		m.activated = false
	}
	for _, q := range m.queues {
		q.Reset()
	}
	m.status = 0
	m.deviceFeaturesSel, m.driverFeaturesSel, m.queueSel = 0, 0, 0
	m.driverFeatures = 0
	m.interruptStatus.Store(0)
}

// logger returns Logger, rate-limited.
func (m *MMIO) logger() *slog.Logger { return m.logLimit.Logger(m.Logger) }

// warnsPerSecond bounds the transport's logs.
const warnsPerSecond = 10

// Describe says where the transport and its queues are (Queue.Describe),
// for a guest that stopped answering. The device must be paused (Pause)
// so that its queues hold still.
func (m *MMIO) Describe() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := m.KickCounts()
	s := fmt.Sprintf("type=%d status=%#x activated=%v paused=%v interrupt_status=%#x kicks=%d+%d deferred=%v",
		m.dev.Type(), m.status, m.activated, m.paused, m.interruptStatus.Load(), k.Register, k.Caught, m.deferredKicks)
	for _, q := range m.queues {
		s += "\n  " + q.Describe(m.mem)
	}
	if d, ok := m.dev.(Describer); ok {
		s += "\n  " + d.Describe()
	}
	return s
}

// Describer is a device that can say where it is beyond its queues, for
// a guest that stopped answering (MMIO.Describe). It is called paused.
type Describer interface {
	Describe() string
}
