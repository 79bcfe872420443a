// Package blk implements a virtio block device (virtio spec v1.2 §5.2)
// backed by a raw disk image: a Backend, usually a file (FileBackend).
//
// The device has one request queue. The driver's kicks only wake the
// device's worker goroutine, which runs the requests (reads and writes of
// the file, flushes) off the vCPU goroutines, returns them and interrupts
// the guest once per batch.
package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/virtio"
	"github.com/sailbox-dev/sailbox/internal/guestlog"
)

// SectorSize is the unit of capacity and of request offsets (spec §5.2.4,
// §5.2.6), whatever the block size of the image's storage.
const SectorSize = 512

// queueSize is the maximum size of the request queue.
const queueSize = 256

// Feature bits (spec §5.2.3).
const (
	featureSegMax = 1 << 2 // VIRTIO_BLK_F_SEG_MAX: seg_max is valid
	featureRO     = 1 << 5 // VIRTIO_BLK_F_RO: the device is read-only
	featureFlush  = 1 << 9 // VIRTIO_BLK_F_FLUSH: VIRTIO_BLK_T_FLUSH is supported
)

// segMax is the most data buffers a request may carry: the whole queue
// less the header and status descriptors, as indirect descriptors are not
// offered.
const segMax = queueSize - 2

// Layout of struct virtio_blk_config (spec §5.2.4). Fields past seg_max
// belong to features not offered and read as zero.
const (
	configCapacity = 0  // le64: capacity in 512-byte sectors
	configSegMax   = 12 // le32: seg_max
	configSize     = 16
)

// Request types (spec §5.2.6).
const (
	typeIn    = 0 // VIRTIO_BLK_T_IN: read sectors
	typeOut   = 1 // VIRTIO_BLK_T_OUT: write sectors
	typeFlush = 4 // VIRTIO_BLK_T_FLUSH: make completed writes durable
	typeGetID = 8 // VIRTIO_BLK_T_GET_ID: read the device ID string
)

// Request status values, the last byte of a request (spec §5.2.6).
const (
	statusOK     = 0 // VIRTIO_BLK_S_OK
	statusIOErr  = 1 // VIRTIO_BLK_S_IOERR
	statusUnsupp = 2 // VIRTIO_BLK_S_UNSUPP
)

// headerSize is the size of the request header: le32 type, le32 reserved,
// le64 sector (spec §5.2.6).
const headerSize = 16

// idBytes is the length of the device ID string (VIRTIO_BLK_ID_BYTES),
// zero-padded when shorter.
const idBytes = 20

// copyChunk bounds the bounce buffer between the image and guest memory.
const copyChunk = 64 << 10

// warnsPerSecond bounds the device's logs: a guest can make every request
// fail, and so write a warning per request.
const warnsPerSecond = 10

// Backend is the raw image a Block serves: its bytes, read and written at
// byte offsets, and a way to make completed writes durable. Its size is
// fixed while the device uses it; the device reads it once, in New.
// ReadAt and WriteAt may be called from the device's request loop while
// other goroutines use the backend for other ranges.
type Backend interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes every completed write durable (a flush request).
	Sync() error
	// Size is the image's size in bytes.
	Size() int64
}

// Config configures a Block.
type Config struct {
	// ReadOnly makes the device offer VIRTIO_BLK_F_RO and fail every
	// write request.
	ReadOnly bool
	// ID is the device ID string the guest reads (VIRTIO_BLK_T_GET_ID,
	// Linux's /sys/block/vdX/serial): printable ASCII, at most 20 bytes;
	// empty reads as zeros. It is part of the device's state, so the
	// guest sees the same ID after a restore onto another image file.
	// FileBackend's ID derives one from the image file's identity.
	ID string
}

// Block is a virtio block device on a raw image. It implements
// virtio.Device, virtio.Persistent and virtio.Pauser.
type Block struct {
	// Logger receives the device's logs: malformed requests and I/O
	// errors, at most warnsPerSecond a second. Nil discards them. Set it
	// before the device is activated.
	Logger *slog.Logger

	// Set by New, then read-only.
	be       Backend
	readOnly bool
	capacity uint64 // in sectors
	id       [idBytes]byte
	config   [configSize]byte
	logLimit *guestlog.Limiter // one budget for the device's life: a reset does not renew it

	// mu guards the fields below and serializes Activate, Notify, Reset,
	// Pause, Resume and Close.
	mu     sync.Mutex
	worker *worker // the running request loop; nil when not activated
	// resume is closed to let a loop parked by Pause go on; nil when not
	// paused.
	resume chan struct{}
	closed bool
}

// New returns a block device on be, a raw image whose size is a multiple
// of SectorSize. The device owns be from then on: Close closes it if it is
// an io.Closer.
func New(be Backend, cfg Config) (*Block, error) {
	size := be.Size()
	if size < 0 || size%SectorSize != 0 {
		return nil, fmt.Errorf("virtio-blk: image size %d is not a multiple of %d bytes", size, SectorSize)
	}
	if err := checkID(cfg.ID); err != nil {
		return nil, fmt.Errorf("virtio-blk: %w", err)
	}
	b := &Block{
		be:       be,
		readOnly: cfg.ReadOnly,
		capacity: uint64(size) / SectorSize,
		logLimit: guestlog.NewLimiter(warnsPerSecond, time.Second),
	}
	copy(b.id[:], cfg.ID)
	binary.LittleEndian.PutUint64(b.config[configCapacity:], b.capacity)
	binary.LittleEndian.PutUint32(b.config[configSegMax:], segMax)
	return b, nil
}

// checkID checks a device ID string (Config.ID).
func checkID(id string) error {
	if len(id) > idBytes {
		return fmt.Errorf("device ID %q: longer than %d bytes", id, idBytes)
	}
	for i := range len(id) {
		if id[i] < 0x20 || id[i] > 0x7e {
			return fmt.Errorf("device ID %q: not printable ASCII", id)
		}
	}
	return nil
}

// Type is virtio.TypeBlock.
func (b *Block) Type() uint32 { return virtio.TypeBlock }

// Features offers FLUSH and SEG_MAX, and RO for a read-only image.
func (b *Block) Features() uint64 {
	f := uint64(featureFlush | featureSegMax)
	if b.readOnly {
		f |= featureRO
	}
	return f
}

// QueueSizes lists the one request queue.
func (b *Block) QueueSizes() []uint16 { return []uint16{queueSize} }

// ReadConfig reads struct virtio_blk_config; bytes past the fields this
// device fills read as zero.
func (b *Block) ReadConfig(offset uint64, data []byte) {
	clear(data)
	if offset < configSize {
		copy(data, b.config[offset:])
	}
}

// WriteConfig ignores the write: no writable field (writeback, with
// VIRTIO_BLK_F_CONFIG_WCE) is offered.
func (b *Block) WriteConfig(offset uint64, data []byte) {}

// Activate starts the request loop on the queue. Without
// VIRTIO_BLK_F_FLUSH negotiated the driver assumes a write-through device
// (spec §5.2.5), so every write is then made durable before it completes.
func (b *Block) Activate(mem devices.GuestMemory, acked uint64, queues []*virtio.Queue, signal func() error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return errors.New("virtio-blk: activate: device closed")
	case b.worker != nil:
		return errors.New("virtio-blk: activate: already active")
	case len(queues) != 1 || !queues[0].Ready:
		return errors.New("virtio-blk: activate: the request queue is not ready")
	}
	w := &worker{
		b:            b,
		log:          b.logger(),
		mem:          mem,
		queue:        queues[0],
		signal:       signal,
		writeThrough: acked&featureFlush == 0,
		kick:         make(chan struct{}, 1),
		pause:        make(chan pauseRequest),
		stop:         make(chan struct{}),
		done:         make(chan struct{}),
		buf:          make([]byte, copyChunk),
	}
	b.worker = w
	go w.run()
	return nil
}

// Notify wakes the request loop. It never blocks.
func (b *Block) Notify(index int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.worker != nil {
		b.worker.wake()
	}
}

// Reset stops the request loop, after the request it is running, if any.
// Once Reset returns the device no longer touches guest memory.
func (b *Block) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stopWorker()
}

// Close stops the device and closes the image if its backend is an
// io.Closer.
func (b *Block) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	b.stopWorker()
	if c, ok := b.be.(io.Closer); ok {
		if err := c.Close(); err != nil {
			return fmt.Errorf("virtio-blk: close image: %w", err)
		}
	}
	return nil
}

// stopWorker stops the request loop and waits for it; that ends a pause.
// b.mu must be held.
func (b *Block) stopWorker() {
	b.resume = nil
	if b.worker == nil {
		return
	}
	close(b.worker.stop)
	<-b.worker.done
	b.worker = nil
}

// logger returns Logger, rate-limited.
func (b *Block) logger() *slog.Logger { return b.logLimit.Logger(b.Logger) }

// worker is the request loop of one activation. Its fields are set before
// its goroutine starts and only that goroutine uses the queue and buf.
type worker struct {
	b            *Block
	log          *slog.Logger
	mem          devices.GuestMemory
	queue        *virtio.Queue
	signal       func() error
	writeThrough bool // sync every write: VIRTIO_BLK_F_FLUSH not negotiated

	kick  chan struct{}     // holds a token when the driver kicked since the last drain
	pause chan pauseRequest // Pause (persist.go): drain, then park
	stop  chan struct{}     // closed to stop the loop
	done  chan struct{}     // closed when the loop has stopped
	buf   []byte            // bounce buffer between the image and guest memory
}

func (w *worker) wake() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *worker) run() {
	defer close(w.done)
	for {
		select {
		case <-w.stop:
			return
		case <-w.kick:
		case p := <-w.pause:
			if !w.park(p) {
				return
			}
			continue
		}
		if !w.drain() {
			return
		}
	}
}

// drain runs every available request, then interrupts the driver if it
// returned any and the driver wants to know. It reports false if it was
// stopped on the way.
func (w *worker) drain() bool {
	returned := false
	for {
		select {
		case <-w.stop:
			return false
		default:
		}
		c, ok, err := w.queue.Pop(w.mem)
		if !ok {
			if err != nil {
				w.log.Warn("virtio-blk: request queue", "err", err)
			}
			break
		}
		var written uint32
		if err != nil {
			w.log.Warn("virtio-blk: malformed request", "err", err)
		} else {
			written = w.serve(&c)
		}
		if err := w.queue.PushUsed(w.mem, c.Head, written); err != nil {
			w.log.Warn("virtio-blk: return request", "err", err)
			break
		}
		returned = true
	}
	if returned && w.queue.NeedsInterrupt(w.mem) {
		if err := w.signal(); err != nil {
			w.log.Warn("virtio-blk: interrupt", "err", err)
		}
	}
	return true
}

// serve runs the request in c and writes its status byte: the last byte
// of the chain's writable buffers (spec §5.2.6; no assumption on how the
// driver frames the header, data and status in buffers, §2.7.4). It
// returns the number of bytes written into the chain. A chain without a
// writable byte cannot be answered and is returned untouched.
func (w *worker) serve(c *virtio.Chain) uint32 {
	statusAddr, ok := lastWritableByte(c)
	if !ok {
		w.log.Warn("virtio-blk: request without a status byte", "head", c.Head)
		return 0
	}
	// dataIn is the writable room before the status byte.
	dataIn := c.WritableLen() - 1
	out := c.Writer(w.mem)
	status := w.execute(c, dataIn, out)
	if _, err := w.mem.WriteAt([]byte{status}, int64(statusAddr)); err != nil {
		w.log.Warn("virtio-blk: write request status", "head", c.Head, "err", err)
		return out.Written()
	}
	return out.Written() + 1
}

// execute runs one request and returns its status. Reads land in out, which
// covers the dataIn bytes before the status byte.
func (w *worker) execute(c *virtio.Chain, dataIn uint64, out *virtio.ChainWriter) byte {
	in := c.Reader(w.mem)
	var hdr [headerSize]byte
	if _, err := io.ReadFull(in, hdr[:]); err != nil {
		w.log.Warn("virtio-blk: read request header", "head", c.Head, "readable", c.ReadableLen(), "err", err)
		return statusIOErr
	}
	typ := binary.LittleEndian.Uint32(hdr[0:])
	sector := binary.LittleEndian.Uint64(hdr[8:])
	dataOut := c.ReadableLen() - headerSize

	var err error
	switch typ {
	case typeIn:
		err = w.read(sector, dataIn, out)
	case typeOut:
		err = w.write(sector, dataOut, in)
	case typeFlush:
		err = w.b.flush()
	case typeGetID:
		err = w.getID(dataIn, out)
	default:
		w.log.Debug("virtio-blk: unsupported request", "head", c.Head, "type", typ)
		return statusUnsupp
	}
	if err != nil {
		w.log.Warn("virtio-blk: request failed", "head", c.Head, "type", typ, "sector", sector, "err", err)
		return statusIOErr
	}
	return statusOK
}

// read copies n bytes of the image from sector into out.
func (w *worker) read(sector, n uint64, out io.Writer) error {
	off, err := w.b.extent("read", sector, n)
	if err != nil {
		return err
	}
	copied, err := io.CopyBuffer(out, io.NewSectionReader(w.b.be, off, int64(n)), w.buf)
	if err == nil && uint64(copied) != n {
		err = io.ErrUnexpectedEOF // the image shrank under the device
	}
	if err != nil {
		return fmt.Errorf("read %d bytes at sector %d: %w", n, sector, err)
	}
	return nil
}

// write copies n bytes from in to the image at sector.
func (w *worker) write(sector, n uint64, in io.Reader) error {
	if w.b.readOnly {
		// Spec §5.2.6.2: fail writes to a read-only device, writing nothing.
		return errors.New("write to a read-only device")
	}
	off, err := w.b.extent("write", sector, n)
	if err != nil {
		return err
	}
	copied, err := io.CopyBuffer(io.NewOffsetWriter(w.b.be, off), io.LimitReader(in, int64(n)), w.buf)
	if err == nil && uint64(copied) != n {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return fmt.Errorf("write %d bytes at sector %d: %w", n, sector, err)
	}
	if w.writeThrough {
		return w.b.flush()
	}
	return nil
}

// getID writes the device ID string into out, which must hold it.
func (w *worker) getID(room uint64, out io.Writer) error {
	if room < idBytes {
		return fmt.Errorf("get ID: %d bytes of room for the %d-byte ID", room, idBytes)
	}
	_, err := out.Write(w.b.id[:])
	return err
}

// extent checks that n bytes at sector are whole sectors inside the image
// and returns their byte offset.
func (b *Block) extent(op string, sector, n uint64) (int64, error) {
	if n%SectorSize != 0 {
		return 0, fmt.Errorf("%s of %d bytes: not a multiple of %d", op, n, SectorSize)
	}
	if sector > b.capacity || n/SectorSize > b.capacity-sector {
		return 0, fmt.Errorf("%s of %d sectors at sector %d: beyond the capacity of %d sectors", op, n/SectorSize, sector, b.capacity)
	}
	return int64(sector * SectorSize), nil
}

// flush makes every completed write durable.
func (b *Block) flush() error {
	if err := b.be.Sync(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return nil
}

// lastWritableByte returns the address of the last byte of the chain's
// writable buffers, the status byte of a request.
func lastWritableByte(c *virtio.Chain) (uint64, bool) {
	for i := len(c.Writable) - 1; i >= 0; i-- {
		if b := c.Writable[i]; b.Len > 0 {
			return b.Addr + uint64(b.Len) - 1, true
		}
	}
	return 0, false
}
