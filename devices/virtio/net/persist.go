package net

import (
	"encoding/json"
	"fmt"
	"log/slog"
	stdnet "net"
	"sync"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/virtio"
)

// Saving and restoring a virtio-net device.
//
// The link does not survive a snapshot: its peer is a socket of the
// process that took it, and a restored device connects to the socket
// given to Restore (a new peer, for a fork too). So the state is the
// device's identity, its MAC, which the guest read from the
// configuration space, and whether it offered the transmit offloads,
// which the transport's state holds as negotiated and checks against
// what the restored device offers; the two queues' state is the
// transport's (virtio.MMIOState). Frames the device held for the guest, and frames
// on their way to the old peer, are not saved: they are lost, as on a
// link that was reset. The device never holds a chain between events, so
// the saved queues own no buffer in flight.

// StateVersion is the version of State that Save writes. Restore also
// accepts stateVersionNoOffloads.
const StateVersion = 2

// stateVersionNoOffloads is the version written before the transmit
// offloads: such a device offered none, and its restored self offers
// none either (Offloads is false), so that the driver's negotiated
// features stay valid.
const stateVersionNoOffloads = 1

// State is a virtio-net device's state.
type State struct {
	Version uint32 // StateVersion, or stateVersionNoOffloads
	// MAC is the guest's, as MAC.String writes it; a restored device
	// offers the same, whatever its Config would say.
	MAC string
	// Offloads: the device offers VIRTIO_NET_F_CSUM and
	// VIRTIO_NET_F_HOST_TSO4. Absent (false) in version 1.
	Offloads bool `json:",omitempty"`
}

// pauseState is a Device's pause: while paused, the event loop runs a
// function that waits until resume is closed.
type pauseState struct {
	mu     sync.Mutex      // guards the field below; held by Pause, Resume and Save throughout
	resume chan<- struct{} // closed to resume the loop; nil when not paused
}

var (
	_ virtio.Persistent = (*Device)(nil)
	_ virtio.Pauser     = (*Device)(nil)
)

// Pause implements virtio.Pauser: it waits for the event loop to finish
// the event it is handling, then holds it until Resume. A held loop
// touches neither guest memory nor the queues and raises no interrupt.
// Frames from the peer wait (rxHandoff of them in the hand-over, then in
// the socket); the writer goes on sending frames already copied out of
// guest memory. Pausing a paused device does nothing. Close ends a
// pause; Reset and Activate wait for Resume.
func (d *Device) Pause() error {
	p := &d.paused
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resume != nil {
		return nil
	}
	resume, held := make(chan struct{}), make(chan struct{})
	ok := d.post(func(*loop) {
		close(held)
		select {
		case <-resume:
		case <-d.done:
		}
	})
	if !ok {
		return fmt.Errorf("virtio-net: pause: %w", errClosed)
	}
	<-held
	p.resume = resume
	return nil
}

// Resume implements virtio.Pauser.
func (d *Device) Resume() {
	p := &d.paused
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resume != nil {
		close(p.resume)
		p.resume = nil
	}
}

// Save returns the device's state. The device must be paused (Pause).
func (d *Device) Save() (State, error) {
	p := &d.paused
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resume == nil {
		return State{}, fmt.Errorf("virtio-net: save: %w", virtio.ErrNotPaused)
	}
	return State{Version: StateVersion, MAC: d.mac.String(), Offloads: d.features&offloadFeatures != 0}, nil
}

// SaveState implements virtio.Persistent.
func (d *Device) SaveState() (json.RawMessage, error) {
	st, err := d.Save()
	if err != nil {
		return nil, err
	}
	return json.Marshal(st)
}

// Restore returns a device in state st, connected to the host network's
// socket at socketPath: a new peer (the restored guest's connections are
// not its). log is as in Config. The transport (virtio.RestoreMMIO)
// activates it again if the driver was active.
func Restore(st State, socketPath string, log *slog.Logger) (*Device, error) {
	mac, err := checkState(st)
	if err != nil {
		return nil, err
	}
	conn, err := Dial(socketPath)
	if err != nil {
		return nil, err
	}
	return newDevice(conn, mac, st.Offloads, log), nil
}

// restoreOn is Restore on a connected socket.
func restoreOn(st State, conn *stdnet.UnixConn, log *slog.Logger) (*Device, error) {
	mac, err := checkState(st)
	if err != nil {
		return nil, err
	}
	return newDevice(conn, mac, st.Offloads, log), nil
}

// checkState checks st and returns its MAC.
func checkState(st State) (MAC, error) {
	switch {
	case st.Version == stateVersionNoOffloads && st.Offloads:
		return MAC{}, fmt.Errorf("virtio-net: restore: %w: offloads in a version %d state", devices.ErrInvalidState, st.Version)
	case st.Version != stateVersionNoOffloads:
		if err := devices.CheckStateVersion("virtio-net", st.Version, StateVersion); err != nil {
			return MAC{}, err
		}
	}
	mac, err := ParseMAC(st.MAC)
	if err != nil {
		return MAC{}, fmt.Errorf("virtio-net: restore: %w: %w", devices.ErrInvalidState, err)
	}
	return mac, nil
}
