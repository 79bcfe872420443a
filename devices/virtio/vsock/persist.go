package vsock

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/virtio"
)

// Saving and restoring a vsock device.
//
// Connections do not survive a snapshot: their host ends are sockets of
// the process that took it. So the state is the device's identity and
// bookkeeping, not its connection table; the three queues' state is the
// transport's (virtio.MMIOState). A device restored for an active driver
// sends it VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (spec §5.10.6.7) as soon as
// the driver has an event buffer posted (Linux keeps some posted at all
// times): the guest then resets every connected socket and re-reads its
// CID. Listening sockets survive on both sides: the restored device
// listens on the Unix socket path given to Restore, and host clients
// reconnect.
//
// A host client that connects to the restored device before the guest has
// handled the reset may have its new connection reset with the old ones;
// like any client after a restore, it retries.

// StateVersion is the version of State that Save writes and Restore
// accepts.
const StateVersion = 1

// State is a vsock device's state.
type State struct {
	Version  uint32 // StateVersion
	GuestCID uint64 // the guest's CID, 3 to 2^32-2
	// DriverActive reports that the driver was active: a restored device
	// owes it TRANSPORT_RESET. (An event owed at save time is not
	// recorded: the restored device owes one anyway.)
	DriverActive bool
	// NextLocalPort is the host-side port the device allocates next to a
	// host-initiated connection, so that the ports of connections the
	// guest still holds until it handles the reset are not reused at once.
	NextLocalPort uint32
}

// pauseState is a Device's pause: while paused, the event loop runs a
// function that serves ctl until resume is closed.
type pauseState struct {
	mu     sync.Mutex        // guards the fields below; held by Pause, Resume and Save throughout
	ctl    chan func(*muxer) // work for the paused loop; nil when not paused
	resume chan<- struct{}   // closed to resume the loop
}

var (
	_ virtio.Persistent = (*Device)(nil)
	_ virtio.Pauser     = (*Device)(nil)
)

// Pause implements virtio.Pauser: it waits for the event loop to finish
// the event it is handling, then holds it until Resume. A held loop
// touches neither guest memory nor the queues and raises no interrupt;
// host sockets' data and new host clients wait (in the sockets' buffers,
// in the goroutines that hand them over), and connection deadlines that
// pass meanwhile take effect on Resume.
//
// Pausing lets go of the rx buffer the device may hold before it has a
// packet for it (virtio.Queue.PutBack), so that the saved queues own no
// buffer in flight; the loop takes it again after Resume. Pausing a
// paused device does nothing. Close ends a pause; Reset, Activate and
// ResetTransport wait for Resume.
func (d *Device) Pause() error {
	p := &d.paused
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctl != nil {
		return nil
	}
	ctl, resume, held := make(chan func(*muxer)), make(chan struct{}), make(chan struct{})
	ok := d.m.post(func(m *muxer) {
		m.releaseRx()
		close(held)
		for {
			select {
			case f := <-ctl:
				f(m)
			case <-resume:
				return // the loop pumps next, catching up with what waited
			case <-m.done:
				return
			}
		}
	})
	if !ok {
		return fmt.Errorf("vsock: pause: %w", errClosed)
	}
	<-held
	p.ctl, p.resume = ctl, resume
	return nil
}

// Resume implements virtio.Pauser.
func (d *Device) Resume() {
	p := &d.paused
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctl != nil {
		close(p.resume)
		p.ctl, p.resume = nil, nil
	}
}

// releaseRx puts back the rx chain the device holds, if any: one it took
// for a packet that did not fit. Runs on the event loop.
func (m *muxer) releaseRx() {
	if v, ok := m.q.(*virtqueues); ok && v.held != nil {
		v.held = nil
		v.q[rxQueue].PutBack()
	}
}

// Save returns the device's state. The device must be paused (Pause).
func (d *Device) Save() (State, error) {
	p := &d.paused
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctl == nil {
		return State{}, fmt.Errorf("vsock: save: %w", virtio.ErrNotPaused)
	}
	res := make(chan State, 1)
	select {
	case p.ctl <- func(m *muxer) {
		res <- State{Version: StateVersion, GuestCID: m.guestCID, DriverActive: m.q != nil, NextLocalPort: m.nextPort}
	}:
		return <-res, nil
	case <-d.m.done:
		return State{}, fmt.Errorf("vsock: save: %w", errClosed)
	}
}

// SaveState implements virtio.Persistent.
func (d *Device) SaveState() (json.RawMessage, error) {
	st, err := d.Save()
	if err != nil {
		return nil, err
	}
	return json.Marshal(st)
}

// Restore returns a device in state st, listening for host clients on
// udsPath, which must not exist: the path of the saved device if it is
// gone (after removing its stale socket file), another one for a fork
// while the original runs. Guest-initiated connections to port P are
// dialled at udsPath + "_" + P. log is as in Config.
//
// The device sends the driver TRANSPORT_RESET once the transport
// (virtio.RestoreMMIO) activates it again, if the driver was active.
func Restore(st State, udsPath string, log *slog.Logger) (*Device, error) {
	return restore(st, udsPath, log, defaultLimits)
}

func restore(st State, udsPath string, log *slog.Logger, lim limits) (*Device, error) {
	if err := devices.CheckStateVersion("vsock", st.Version, StateVersion); err != nil {
		return nil, err
	}
	if st.GuestCID < minGuestCID || st.GuestCID >= 1<<32-1 {
		return nil, fmt.Errorf("vsock: restore: guest CID %d: %w", st.GuestCID, devices.ErrInvalidState)
	}
	if st.NextLocalPort < firstLocalPort || st.NextLocalPort >= portAny {
		return nil, fmt.Errorf("vsock: restore: next local port %d outside [%d, %d): %w", st.NextLocalPort, firstLocalPort, uint32(portAny), devices.ErrInvalidState)
	}
	d, err := newDevice(Config{GuestCID: st.GuestCID, UDSPath: udsPath, Logger: log}, lim)
	if err != nil {
		return nil, err
	}
	err = d.m.call(func(m *muxer) error {
		m.nextPort = st.NextLocalPort
		m.eventPending = st.DriverActive
		return nil
	})
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("vsock: restore: %w", err)
	}
	return d, nil
}

// Describe implements virtio.Describer: the device's connections and
// what it owes the driver, for a guest that stopped answering. The
// device must be paused (Pause), as the transport's Describe has it.
func (d *Device) Describe() string {
	p := &d.paused
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctl == nil {
		return "vsock: not paused"
	}
	res := make(chan string, 1)
	select {
	case p.ctl <- func(m *muxer) {
		held := false
		if v, ok := m.q.(*virtqueues); ok {
			held = v.held != nil
		}
		res <- fmt.Sprintf("vsock: active=%v conns=%d (guest-initiated %d) ready=%d resets_owed=%d event_pending=%v reset_unacked=%v events_left=%d rx_held=%v",
			m.q != nil, len(m.conns), m.guestConns, len(m.ready), len(m.resets), m.eventPending, m.resetUnacked, m.eventsLeft, held)
	}:
		return <-res
	case <-d.m.done:
		return "vsock: closed"
	}
}
