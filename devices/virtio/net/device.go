package net

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	stdnet "net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/virtio"
	"github.com/sailbox-dev/sailbox/internal/guestlog"
)

// Feature bits (spec §5.1.3).
const (
	featureCsum     = 1 << 0  // VIRTIO_NET_F_CSUM: the device completes checksums (NEEDS_CSUM)
	featureMTU      = 1 << 3  // VIRTIO_NET_F_MTU: mtu in the configuration space
	featureMAC      = 1 << 5  // VIRTIO_NET_F_MAC: mac in the configuration space
	featureHostTSO4 = 1 << 11 // VIRTIO_NET_F_HOST_TSO4: the device takes TSO packets (GSO_TCPV4); needs featureCsum
	featureStatus   = 1 << 16 // VIRTIO_NET_F_STATUS: status in the configuration space

	// baseFeatures are offered by every device.
	baseFeatures = featureMAC | featureStatus | featureMTU
	// offloadFeatures are the transmit offloads, offered by a device
	// built by New, or restored from a state that had them.
	offloadFeatures = featureCsum | featureHostTSO4
)

// struct virtio_net_config (spec §5.1.4), as far as the offered features
// reach: mac, status, max_virtqueue_pairs (present in the layout; one
// pair), mtu.
const (
	cfgMAC       = 0
	cfgStatus    = 6
	cfgMaxPairs  = 8
	cfgMTU       = 10
	configSize   = 12
	statusLinkUp = 1 // VIRTIO_NET_S_LINK_UP
)

// Queues (spec §5.1.2): receiveq1 and transmitq1; no control queue.
const (
	rxQueue   = 0
	txQueue   = 1
	numQueues = 2
	// queueSize is each queue's maximum size.
	queueSize = 256
)

// Bounds on what the device holds.
const (
	// maxHeld bounds the frames from the peer that the device holds for
	// the guest: rxHandoff on their way from the reader to the loop, the
	// rest queued in the loop until the guest posts receive buffers.
	// Past it, frames are dropped (Stats.RxDropped).
	maxHeld   = 256
	rxHandoff = 32
	// txBuffers and tsoBuffers bound the frames copied out of the
	// transmit queue and not yet sent: txBuffers of up to MaxFrame
	// bytes, tsoBuffers of up to MaxTSOFrame for larger TSO packets.
	// While the buffers a chain needs all wait for the socket, the device
	// takes no more chains. Together at most 64 × 1530 + 8 × 65561 bytes
	// (about 608 KiB), made as needed.
	txBuffers  = 64
	tsoBuffers = 8
	// guestWarnsPerSecond bounds the warnings a guest can cause at will.
	guestWarnsPerSecond = 10
)

// MAC is an Ethernet address.
type MAC [6]byte

// DefaultMAC is the guest's MAC unless Config.MAC says otherwise: a
// locally administered unicast address, the one gvisor-tap-vsock's
// default DHCP configuration leases its first guest address to. Every
// box may have it: each box has a network of its own.
var DefaultMAC = MAC{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee}

// ParseMAC reads a unicast MAC written as six hexadecimal bytes separated
// by colons (or dashes), as net.ParseMAC does.
func ParseMAC(s string) (MAC, error) {
	hw, err := stdnet.ParseMAC(s)
	if err != nil {
		return MAC{}, err
	}
	if len(hw) != len(MAC{}) {
		return MAC{}, fmt.Errorf("MAC %q: %d bytes, want 6", s, len(hw))
	}
	m := MAC(hw)
	switch {
	case m[0]&1 != 0:
		return MAC{}, fmt.Errorf("MAC %q is a multicast address", s)
	case m == MAC{}:
		return MAC{}, fmt.Errorf("MAC %q is all zeros", s)
	}
	return m, nil
}

func (m MAC) String() string { return stdnet.HardwareAddr(m[:]).String() }

// Config configures a Device.
type Config struct {
	// SocketPath is the host network's Unix SOCK_SEQPACKET socket, which
	// the device connects to.
	SocketPath string
	// MAC is the guest's; the zero MAC means DefaultMAC.
	MAC MAC
	// Logger receives the device's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Stats are a device's counters since it was built (a restored device
// starts from zero). Bytes count frames, without the virtio-net header.
type Stats struct {
	TxFrames, TxBytes uint64 // frames from the guest sent to the peer
	// TxInvalid counts transmit chains that were not a frame: oversize,
	// runt, malformed chain or header.
	TxInvalid uint64
	// TxDropped counts valid frames from the guest that were not sent:
	// the peer was gone, or the socket refused them.
	TxDropped         uint64
	RxFrames, RxBytes uint64 // frames from the peer delivered to the guest
	// RxInvalid counts messages from the peer that were not a frame:
	// above MaxFrame, or shorter than an Ethernet header.
	RxInvalid uint64
	// RxDropped counts frames from the peer that were not delivered: the
	// driver was not active, its receive buffers were too small or did
	// not come before maxHeld frames waited, or a checkpoint or driver
	// reset came first.
	RxDropped uint64
	// PeerGone: the peer closed the link (or the socket failed); every
	// frame is dropped from then on.
	PeerGone bool
}

// counters are Stats, updated by the loop, the reader and the writer.
type counters struct {
	txFrames, txBytes, txInvalid, txDropped atomic.Uint64
	rxFrames, rxBytes, rxInvalid, rxDropped atomic.Uint64
	peerGone                                atomic.Bool
}

// Device is a virtio-net device whose host side is a Unix SOCK_SEQPACKET
// socket. It implements virtio.Device.
//
// The event loop (run, on its own goroutine) owns the loop value and
// through it the queues; the reader and writer goroutines own the socket's
// two directions. The fields below are set by newDevice, then read-only,
// but for the counters, pause and closed.
type Device struct {
	config   [configSize]byte // struct virtio_net_config, read-only
	mac      MAC
	features uint64 // offered: baseFeatures, and offloadFeatures unless restored from a state without them
	log      *slog.Logger
	guestLog *slog.Logger // what the guest or the peer can cause at will, rate-limited
	conn     *stdnet.UnixConn
	stats    counters

	events  chan func(*loop) // unbuffered: work for the loop
	kick    chan struct{}    // capacity 1: a queue has new buffers, or a transmit buffer came free
	rx      chan []byte      // capacity rxHandoff: frames from the reader, in rxPool's buffers
	out     chan txFrame     // capacity txBuffers+tsoBuffers: frames for the writer, in txPool's or tsoPool's buffers
	rxPool  *bufPool         // taken by the reader, given back by the loop
	txPool  *bufPool         // taken by the loop, given back by the writer
	tsoPool *bufPool         // the same, for packets above MaxFrame
	done    chan struct{}    // closed by Close: goroutines end, posts fail
	wg      sync.WaitGroup   // the loop, the reader and the writer

	closed sync.Once
	paused pauseState // Pause, Resume and Save (persist.go)
}

// txFrame is a frame on its way to the writer: frame is a slice of buf,
// which goes back to pool once sent.
type txFrame struct {
	buf, frame []byte
	pool       *bufPool
}

var _ virtio.Device = (*Device)(nil)

// errClosed reports a call on a closed device.
var errClosed = errors.New("virtio-net: device closed")

// New connects to cfg.SocketPath and returns the device, which carries
// frames between it and the guest once the driver is active.
func New(cfg Config) (*Device, error) {
	mac := cfg.MAC
	if mac == (MAC{}) {
		mac = DefaultMAC
	}
	conn, err := Dial(cfg.SocketPath)
	if err != nil {
		return nil, err
	}
	return newDevice(conn, mac, true, cfg.Logger), nil
}

// newDevice returns a device on conn, a connected SOCK_SEQPACKET socket,
// whose goroutines run; it offers the transmit offloads if offloads.
func newDevice(conn *stdnet.UnixConn, mac MAC, offloads bool, log *slog.Logger) *Device {
	if log == nil {
		log = slog.Default()
	}
	log = log.With("device", "virtio-net")
	d := &Device{
		mac:      mac,
		features: baseFeatures,
		log:      log,
		guestLog: guestlog.NewLimiter(guestWarnsPerSecond, time.Second).Logger(log),
		conn:     conn,
		events:   make(chan func(*loop)),
		kick:     make(chan struct{}, 1),
		rx:       make(chan []byte, rxHandoff),
		out:      make(chan txFrame, txBuffers+tsoBuffers),
		// The reader holds one buffer besides the maxHeld the loop and
		// the hand-over hold.
		rxPool:  newBufPool(maxHeld+1, MaxFrame),
		txPool:  newBufPool(txBuffers, hdrSize+MaxFrame),
		tsoPool: newBufPool(tsoBuffers, hdrSize+MaxTSOFrame),
		done:    make(chan struct{}),
	}
	if offloads {
		d.features |= offloadFeatures
	}
	copy(d.config[cfgMAC:], mac[:])
	binary.LittleEndian.PutUint16(d.config[cfgStatus:], statusLinkUp)
	binary.LittleEndian.PutUint16(d.config[cfgMaxPairs:], 1)
	binary.LittleEndian.PutUint16(d.config[cfgMTU:], MTU)
	d.spawn(d.run)
	d.spawn(d.readLoop)
	d.spawn(d.writeLoop)
	return d
}

// spawn runs f on a goroutine Close waits for.
func (d *Device) spawn(f func()) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		f()
	}()
}

// MAC returns the guest's MAC.
func (d *Device) MAC() MAC { return d.mac }

// Stats returns the device's counters.
func (d *Device) Stats() Stats {
	s := &d.stats
	return Stats{
		TxFrames: s.txFrames.Load(), TxBytes: s.txBytes.Load(), TxInvalid: s.txInvalid.Load(), TxDropped: s.txDropped.Load(),
		RxFrames: s.rxFrames.Load(), RxBytes: s.rxBytes.Load(), RxInvalid: s.rxInvalid.Load(), RxDropped: s.rxDropped.Load(),
		PeerGone: s.peerGone.Load(),
	}
}

// Type is virtio.TypeNet.
func (d *Device) Type() uint32 { return virtio.TypeNet }

// Features offers the MAC, the link status and the MTU, and the transmit
// offloads: checksum completion and TCPv4 segmentation (TSO), unless the
// device was restored from a state without them.
func (d *Device) Features() uint64 { return d.features }

// QueueSizes lists the receive and transmit queues' maximum sizes.
func (d *Device) QueueSizes() []uint16 { return []uint16{queueSize, queueSize} }

// ReadConfig reads struct virtio_net_config; bytes past it read as zero.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	clear(data)
	if offset < configSize {
		copy(data, d.config[offset:])
	}
}

// WriteConfig ignores the write: every field the device offers is
// read-only (spec §5.1.4: the driver writes mac only through the control
// queue, which is not offered).
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// Activate hands the driver's queues to the event loop. It is called by
// the transport on a vCPU goroutine, under the transport's lock; the loop
// never takes that lock (signal does not), so waiting for it is safe.
func (d *Device) Activate(mem devices.GuestMemory, acked uint64, queues []*virtio.Queue, signal func() error) error {
	if len(queues) != numQueues {
		return fmt.Errorf("virtio-net: activate: %d queues, want %d", len(queues), numQueues)
	}
	if !queues[rxQueue].Ready || !queues[txQueue].Ready {
		return errors.New("virtio-net: activate: the receive and transmit queues must both be ready")
	}
	err := d.call(func(l *loop) error {
		if l.active() {
			return errors.New("virtio-net: activate: already active")
		}
		l.mem, l.rxq, l.txq, l.signal = mem, queues[rxQueue], queues[txQueue], signal
		l.offloads = txOffloads(acked & d.features & offloadFeatures)
		return nil
	})
	if err != nil {
		return err
	}
	d.notify()
	return nil
}

// Notify tells the device that the driver made buffers available. It
// never blocks.
func (d *Device) Notify(index int) { d.notify() }

// Reset stops the device after a driver reset: it lets go of the queues
// and drops the frames held for the guest. The link stays.
func (d *Device) Reset() {
	d.call(func(l *loop) error {
		l.deactivate()
		return nil
	})
}

// Close stops the device: it closes the socket and waits for the device's
// goroutines to end.
func (d *Device) Close() error {
	var err error
	d.closed.Do(func() {
		close(d.done)
		err = d.conn.Close()
		d.wg.Wait()
	})
	if err != nil {
		return fmt.Errorf("virtio-net: close socket: %w", err)
	}
	return nil
}

// post hands f to the event loop. It reports false, with f not run, once
// the device is closed.
func (d *Device) post(f func(*loop)) bool {
	select {
	case d.events <- f:
		return true
	case <-d.done:
		return false
	}
}

// call runs f on the event loop and waits for its result.
func (d *Device) call(f func(*loop) error) error {
	res := make(chan error, 1)
	if !d.post(func(l *loop) { res <- f(l) }) {
		return errClosed
	}
	return <-res
}

// notify wakes the event loop. Kicks coalesce.
func (d *Device) notify() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// closing reports whether Close has begun.
func (d *Device) closing() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// bufPool is a bounded set of buffers of one size, made as needed: at
// most max exist. One goroutine takes them, others give them back.
type bufPool struct {
	free chan []byte // capacity max
	made atomic.Int32
	max  int32
	size int
}

func newBufPool(max, size int) *bufPool {
	return &bufPool{free: make(chan []byte, max), max: int32(max), size: size}
}

// tryGet returns a free buffer, or a new one while fewer than max exist,
// or nil.
func (p *bufPool) tryGet() []byte {
	select {
	case b := <-p.free:
		return b
	default:
	}
	if p.made.Load() < p.max {
		p.made.Add(1)
		return make([]byte, p.size)
	}
	return nil
}

// get is tryGet, but waits for a buffer to come back when max exist; it
// returns nil if done is closed first.
func (p *bufPool) get(done <-chan struct{}) []byte {
	if b := p.tryGet(); b != nil {
		return b
	}
	select {
	case b := <-p.free:
		return b
	case <-done:
		return nil
	}
}

// put gives b back.
func (p *bufPool) put(b []byte) {
	select {
	case p.free <- b[:cap(b)]:
	default:
		// More given back than taken: a bug, which costs a buffer to
		// the garbage collector rather than the VMM.
	}
}
