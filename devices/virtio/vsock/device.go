package vsock

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/sailbox-dev/sailbox/devices/virtio"
)

// queueSize is the maximum size of each of the three queues.
const queueSize = 256

// Config configures a Device.
type Config struct {
	// GuestCID is the guest's context ID: at least 3 (0-2 are reserved)
	// and below 2^32-1 (VMADDR_CID_ANY); the spec reserves the upper 32
	// bits of the config field (§5.10.4).
	GuestCID uint64
	// UDSPath is the Unix socket the device listens on for host-initiated
	// connections. Guest-initiated connections to port P are dialled at
	// UDSPath + "_" + P.
	UDSPath string
	// Logger receives the device's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Device is a virtio-vsock device whose host side is Unix sockets. It
// implements virtio.Device.
type Device struct {
	config [configSize]byte // struct virtio_vsock_config, read-only
	m      *muxer
	ln     *net.UnixListener
	cancel context.CancelFunc
	closed sync.Once
	paused pauseState // Pause, Resume and Save (persist.go)
}

// New creates the device and starts listening on cfg.UDSPath, which must
// not exist. Host clients may connect at once; their requests reach the
// guest once its driver is active.
func New(cfg Config) (*Device, error) { return newDevice(cfg, defaultLimits) }

func newDevice(cfg Config, lim limits) (*Device, error) {
	if cfg.GuestCID < minGuestCID || cfg.GuestCID >= 1<<32-1 {
		return nil, fmt.Errorf("vsock: guest CID %d: want 3 to 2^32-2", cfg.GuestCID)
	}
	if cfg.UDSPath == "" {
		return nil, errors.New("vsock: no Unix socket path")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("device", "vsock", "guest_cid", cfg.GuestCID)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.UDSPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vsock: listen on host socket: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &Device{m: newMuxer(ctx, cfg.GuestCID, cfg.UDSPath, log, lim), ln: ln, cancel: cancel}
	binary.LittleEndian.PutUint64(d.config[:], cfg.GuestCID)
	d.m.spawn(d.m.run)
	d.m.spawn(func() { d.m.acceptLoop(ln) })
	return d, nil
}

// Type is virtio.TypeVsock.
func (d *Device) Type() uint32 { return virtio.TypeVsock }

// Features offers no device-specific feature: stream sockets only, which
// is what a driver gets when it negotiates none (spec §5.10.3).
func (d *Device) Features() uint64 { return 0 }

// QueueSizes lists the rx, tx and event queues' maximum sizes.
func (d *Device) QueueSizes() []uint16 { return []uint16{queueSize, queueSize, queueSize} }

// ReadConfig reads struct virtio_vsock_config; bytes past it read as zero.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	clear(data)
	if offset < configSize {
		copy(data, d.config[offset:])
	}
}

// WriteConfig ignores the write: the configuration is read-only.
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// Notify tells the device that the driver made buffers available. It
// never blocks.
func (d *Device) Notify(index int) { d.m.notify() }

// Reset stops the device after a driver reset: every connection is
// closed, its host client or socket with it, and the queues are dropped.
// The listening socket stays.
func (d *Device) Reset() {
	d.m.call(func(m *muxer) error {
		m.removeAll()
		m.q, m.eventPending, m.resetUnacked = nil, false, false
		return nil
	})
}

// ResetTransport closes every connection and sends the driver
// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (spec §5.10.6.7), on which it
// resets its own sockets; listening sockets on both sides survive. It is
// meant for after a snapshot restore, when the guest's connections point
// at host sockets that no longer exist. The event waits for an event
// buffer if the driver has posted none; a device whose driver is not
// active only closes its connections.
func (d *Device) ResetTransport() error {
	err := d.m.call(func(m *muxer) error {
		m.removeAll()
		m.eventPending = m.q != nil
		return nil
	})
	if err != nil {
		return fmt.Errorf("vsock: transport reset: %w", err)
	}
	return nil
}

// Close stops the device: it closes every connection and the listening
// socket, removes the socket's file, and waits for the device's
// goroutines to end.
func (d *Device) Close() error {
	var err error
	d.closed.Do(func() {
		d.cancel()
		err = d.ln.Close()
		close(d.m.done)
		d.m.wg.Wait()
	})
	if err != nil {
		return fmt.Errorf("vsock: close host socket: %w", err)
	}
	return nil
}
