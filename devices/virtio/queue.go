package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sync/atomic"

	"github.com/sailbox-dev/sailbox/devices"
)

// MaxQueueSize is the largest size of a split virtqueue (spec §2.7).
const MaxQueueSize = 32768

// Split virtqueue layout (spec §2.7, table "Virtqueue Part Alignment Size").
const (
	descSize     = 16 // struct virtq_desc: le64 addr, le32 len, le16 flags, le16 next
	usedElemSize = 8  // struct virtq_used_elem: le32 id, le32 len

	// ringHeaderSize is the le16 flags and le16 idx that open both the
	// available ring (struct virtq_avail) and the used ring (struct
	// virtq_used); ringFooterSize is the le16 used_event / avail_event
	// that closes them (present in the layout even without EVENT_IDX).
	ringHeaderSize = 4
	ringFooterSize = 2

	descTableAlign = 16
	availRingAlign = 2
	usedRingAlign  = 4
)

// Descriptor flags (spec §2.7.5).
const (
	descFNext     = 1 // VIRTQ_DESC_F_NEXT: the chain continues at next
	descFWrite    = 2 // VIRTQ_DESC_F_WRITE: device-writable (else device-readable)
	descFIndirect = 4 // VIRTQ_DESC_F_INDIRECT: buffer holds a descriptor table
)

// availFNoInterrupt is VIRTQ_AVAIL_F_NO_INTERRUPT (spec §2.7.7): the driver
// asks not to be interrupted for used buffers. It is the only flag defined
// in the available ring's flags.
const availFNoInterrupt = 1

// Queue is the device side of one split virtqueue (spec §2.7): it takes the
// descriptor chains the driver makes available and returns them, used.
//
// The exported fields are the queue's configuration, written by the
// transport while the driver sets the queue up and read-only once the
// device is activated. A Queue is used by one goroutine at a time: the
// transport until it activates the device, then the device (which may hand
// it between its own goroutines) until the device's Reset returns.
//
// Every address and index in the rings comes from the guest. Pop validates
// each chain; every guest access goes through the bounds-checked
// devices.GuestMemory, so a hostile driver gets an error, never a panic or
// an access outside guest memory.
//
// Guest and device share the rings while both run, so accesses to them are
// ordered as the spec requires (§2.7.13, §2.7.7): a full barrier (fence)
// between reading avail->idx and reading the ring entry and descriptors it
// publishes, between writing a used element and publishing used->idx, and
// between publishing used->idx and reading the driver's interrupt
// suppression flag. The 16-bit indexes are read and written as part of the
// aligned 32-bit word that holds them, never byte by byte (see readIndex).
type Queue struct {
	MaxSize uint16 // offered in QueueNumMax; a power of two
	Size    uint16 // set by the driver (QueueNum); a power of two <= MaxSize
	Ready   bool   // set by the driver (QueueReady)

	// Guest-physical addresses of the descriptor table, the available
	// (driver) ring and the used (device) ring, set by the driver.
	DescTable, AvailRing, UsedRing uint64

	// index is the queue's position in its device, for errors.
	index int
	// nextAvail is the free-running index of the next available ring
	// entry to consume; nextUsed that of the next used ring entry to fill.
	// Both wrap at 2^16, as the ring indexes do (spec §2.7.6, §2.7.8).
	nextAvail, nextUsed uint16
	// barrier is the target of fence's atomic operation. It is the queue's
	// own, so that queues on different goroutines do not contend on it.
	barrier atomic.Uint32
}

// NewQueue returns a queue that offers maxSize descriptors, reset. It panics
// if maxSize is not a power of two in [1, MaxQueueSize]: queue sizes are
// constants of the device types.
func NewQueue(maxSize uint16) *Queue {
	if maxSize == 0 || maxSize&(maxSize-1) != 0 || maxSize > MaxQueueSize {
		panic(fmt.Sprintf("virtio: queue size %d is not a power of two in [1, %d]", maxSize, MaxQueueSize))
	}
	q := &Queue{MaxSize: maxSize}
	q.Reset()
	return q
}

// Reset returns the queue to its state after a device reset (spec §2.4):
// not ready, no rings, Size = MaxSize until the driver writes QueueNum.
func (q *Queue) Reset() {
	q.Size = q.MaxSize
	q.Ready = false
	q.DescTable, q.AvailRing, q.UsedRing = 0, 0, 0
	q.nextAvail, q.nextUsed = 0, 0
}

// Validate checks the driver's configuration of the queue before the device
// uses it: a power-of-two Size no larger than MaxSize, rings aligned as
// spec §2.7 requires and lying inside guest memory. The transport calls it
// for every ready queue when the driver sets DRIVER_OK.
func (q *Queue) Validate(mem devices.GuestMemory) error {
	if q.Size == 0 || q.Size&(q.Size-1) != 0 || q.Size > q.MaxSize {
		return fmt.Errorf("virtio queue %d: size %d is not a power of two in [1, %d]", q.index, q.Size, q.MaxSize)
	}
	n := uint64(q.Size)
	for _, r := range []struct {
		name       string
		addr, size uint64
		alignment  uint64
	}{
		{"descriptor table", q.DescTable, descSize * n, descTableAlign},
		{"available ring", q.AvailRing, ringHeaderSize + 2*n + ringFooterSize, availRingAlign},
		{"used ring", q.UsedRing, ringHeaderSize + usedElemSize*n + ringFooterSize, usedRingAlign},
	} {
		if r.addr%r.alignment != 0 {
			return fmt.Errorf("virtio queue %d: %s at %#x is not %d-byte aligned (spec §2.7)", q.index, r.name, r.addr, r.alignment)
		}
		if err := checkRange(mem, r.addr, r.size); err != nil {
			return fmt.Errorf("virtio queue %d: %s [%#x,+%d) outside guest memory: %w", q.index, r.name, r.addr, r.size, err)
		}
	}
	return nil
}

// Buffer is one guest buffer of a descriptor chain.
type Buffer struct {
	Addr uint64 // guest-physical address
	Len  uint32
}

// Chain is a descriptor chain the driver made available (spec §2.7.5): a
// request for the device. Its buffers were checked by Pop to lie inside
// guest memory; their total length fits in 32 bits.
type Chain struct {
	Head     uint16   // index of the first descriptor; identifies the chain in PushUsed
	Readable []Buffer // device-readable buffers, in order
	Writable []Buffer // device-writable buffers, in order; they follow the readable ones
}

// Pop takes the next chain the driver made available.
//
//   - ok false, err nil: there is none.
//   - ok true, err nil: c is a well-formed chain.
//   - ok true, err not nil: the chain at c.Head is malformed (a loop, more
//     descriptors than Size, a next index >= Size, a device-readable
//     descriptor after a device-writable one, a buffer outside guest
//     memory, a total length beyond 32 bits, or an indirect descriptor,
//     which is never negotiated); err names the problem. The caller must
//     still return it, with PushUsed(c.Head, 0), or the driver loses it.
//   - ok false, err not nil: the available ring itself is corrupt (an index
//     more than Size ahead, or a head >= Size): there is nothing to return.
//     The caller should stop consuming the queue until the next notification.
func (q *Queue) Pop(mem devices.GuestMemory) (c Chain, ok bool, err error) {
	if !q.Ready {
		return Chain{}, false, nil
	}
	availIdx, err := readIndex(mem, q.AvailRing+2)
	if err != nil {
		return Chain{}, false, fmt.Errorf("virtio queue %d: read available index: %w", q.index, err)
	}
	pending := availIdx - q.nextAvail
	if pending == 0 {
		return Chain{}, false, nil
	}
	if pending > q.Size {
		return Chain{}, false, fmt.Errorf("virtio queue %d: available index %d is %d entries past the next one to consume (%d), more than the queue size %d",
			q.index, availIdx, pending, q.nextAvail, q.Size)
	}
	// The driver wrote the ring entry and the descriptors before the index
	// (spec §2.7.13): read them only after it.
	q.fence()
	slot := q.nextAvail & (q.Size - 1)
	var b [2]byte
	if _, err := mem.ReadAt(b[:], int64(q.AvailRing+ringHeaderSize+2*uint64(slot))); err != nil {
		return Chain{}, false, fmt.Errorf("virtio queue %d: read available ring slot %d: %w", q.index, slot, err)
	}
	q.nextAvail++
	head := binary.LittleEndian.Uint16(b[:])
	if head >= q.Size {
		return Chain{}, false, fmt.Errorf("virtio queue %d: available ring slot %d: head descriptor %d out of range (queue size %d)", q.index, slot, head, q.Size)
	}
	c, err = q.walk(mem, head)
	if err != nil {
		return Chain{Head: head}, true, err
	}
	return c, true, nil
}

// Available reports how many chains the driver has made available and the
// device has not taken yet.
func (q *Queue) Available(mem devices.GuestMemory) (uint16, error) {
	if !q.Ready {
		return 0, nil
	}
	availIdx, err := readIndex(mem, q.AvailRing+2)
	if err != nil {
		return 0, fmt.Errorf("virtio queue %d: read available index: %w", q.index, err)
	}
	return availIdx - q.nextAvail, nil
}

// walk follows the chain starting at descriptor head, validating it.
func (q *Queue) walk(mem devices.GuestMemory, head uint16) (Chain, error) {
	c := Chain{Head: head}
	var total uint64
	i := head
	for n := 0; ; n++ {
		// The queue size is the longest possible chain (spec §2.7.5): a
		// chain visits each descriptor at most once, so a longer one has a
		// loop, which §2.7.5.2 forbids.
		if n == int(q.Size) {
			return Chain{}, fmt.Errorf("virtio queue %d: chain %d: more than %d descriptors (a loop)", q.index, head, q.Size)
		}
		var d [descSize]byte
		if _, err := mem.ReadAt(d[:], int64(q.DescTable+descSize*uint64(i))); err != nil {
			return Chain{}, fmt.Errorf("virtio queue %d: chain %d: read descriptor %d: %w", q.index, head, i, err)
		}
		buf := Buffer{Addr: binary.LittleEndian.Uint64(d[0:]), Len: binary.LittleEndian.Uint32(d[8:])}
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])

		if flags&descFIndirect != 0 {
			return Chain{}, fmt.Errorf("virtio queue %d: chain %d: descriptor %d: indirect descriptor, but VIRTIO_F_INDIRECT_DESC was not negotiated", q.index, head, i)
		}
		if err := checkRange(mem, buf.Addr, uint64(buf.Len)); err != nil {
			return Chain{}, fmt.Errorf("virtio queue %d: chain %d: descriptor %d: buffer [%#x,+%d) outside guest memory: %w", q.index, head, i, buf.Addr, buf.Len, err)
		}
		// Spec §2.7.5.2 forbids chains over 2^32 bytes and used lengths
		// are 32 bits (§2.7.8): keep the total within a uint32, so that
		// lengths and ChainWriter's count cannot wrap.
		if total += uint64(buf.Len); total > math.MaxUint32 {
			return Chain{}, fmt.Errorf("virtio queue %d: chain %d: descriptor %d: chain length %d exceeds %d bytes", q.index, head, i, total, uint32(math.MaxUint32))
		}
		if flags&descFWrite != 0 {
			c.Writable = append(c.Writable, buf)
		} else {
			// Spec §2.7.4.2: device-readable descriptors come first.
			if len(c.Writable) > 0 {
				return Chain{}, fmt.Errorf("virtio queue %d: chain %d: descriptor %d: device-readable descriptor after a device-writable one", q.index, head, i)
			}
			c.Readable = append(c.Readable, buf)
		}

		if flags&descFNext == 0 {
			return c, nil
		}
		if next >= q.Size {
			return Chain{}, fmt.Errorf("virtio queue %d: chain %d: descriptor %d: next descriptor %d out of range (queue size %d)", q.index, head, i, next, q.Size)
		}
		i = next
	}
}

// PushUsed returns the chain at head to the driver: it fills the next used
// ring element with head and written, the number of bytes the device wrote
// into the chain's writable buffers, then publishes the new used index.
func (q *Queue) PushUsed(mem devices.GuestMemory, head uint16, written uint32) error {
	if !q.Ready {
		return fmt.Errorf("virtio queue %d: return chain %d: queue not ready", q.index, head)
	}
	if head >= q.Size {
		return fmt.Errorf("virtio queue %d: return chain %d: head out of range (queue size %d)", q.index, head, q.Size)
	}
	slot := q.nextUsed & (q.Size - 1)
	var elem [usedElemSize]byte
	binary.LittleEndian.PutUint32(elem[0:], uint32(head))
	binary.LittleEndian.PutUint32(elem[4:], written)
	if _, err := mem.WriteAt(elem[:], int64(q.UsedRing+ringHeaderSize+usedElemSize*uint64(slot))); err != nil {
		return fmt.Errorf("virtio queue %d: return chain %d: write used ring slot %d: %w", q.index, head, slot, err)
	}
	// The element must be visible before the index that publishes it, as
	// the driver's ring entries must be before avail->idx (spec §2.7.13.3).
	q.fence()
	// The device owns the whole used ring header: flags (no
	// VIRTQ_USED_F_NO_NOTIFY: every kick is wanted) and idx.
	idx := q.nextUsed + 1
	var hdr [ringHeaderSize]byte
	binary.LittleEndian.PutUint16(hdr[2:], idx)
	if _, err := mem.WriteAt(hdr[:], int64(q.UsedRing)); err != nil {
		return fmt.Errorf("virtio queue %d: return chain %d: write used index: %w", q.index, head, err)
	}
	q.nextUsed = idx
	return nil
}

// NeedsInterrupt reports whether the driver wants an interrupt for the used
// buffers published so far: it has not set VIRTQ_AVAIL_F_NO_INTERRUPT
// (spec §2.7.7; VIRTIO_F_EVENT_IDX is not offered). If the available ring
// cannot be read it answers true: a spurious interrupt is harmless, a
// missing one stalls the driver.
func (q *Queue) NeedsInterrupt(mem devices.GuestMemory) bool {
	// The driver sets the flag, then rechecks the used index; the device
	// publishes the used index, then checks the flag. The barrier between
	// the store and the load keeps one of the two from missing the other.
	q.fence()
	// Only bit 0 is defined and it lives in the low byte, so reading the
	// flags byte by byte cannot tear anything that matters.
	var b [2]byte
	if _, err := mem.ReadAt(b[:], int64(q.AvailRing)); err != nil {
		return true
	}
	return binary.LittleEndian.Uint16(b[:])&availFNoInterrupt == 0
}

// readIndex reads the 16-bit ring index at addr (2-byte aligned) as part of
// the aligned 32-bit word holding it. The driver stores the index with one
// 16-bit write while the device runs, and GuestMemory (memory.Memory)
// copies with the runtime's memmove: that moves 2 bytes one byte at a
// time, which could see half an update, but an aligned 4-byte block with
// whole 32-bit loads and stores, which cannot (amd64 and arm64 alike).
// PushUsed writes used->idx the same way. The word lies inside the ring's
// 4-byte header or spans the index and the first ring entry, so it is
// inside the ring Validate checked.
func readIndex(mem devices.GuestMemory, addr uint64) (uint16, error) {
	word := addr &^ 3
	var b [4]byte
	if _, err := mem.ReadAt(b[:], int64(word)); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(b[addr-word:]), nil
}

// fence is a full memory barrier, Linux's virt_mb(): Go's atomic
// read-modify-write operations are sequentially consistent, and on amd64,
// where the VMM runs, they are LOCK-prefixed instructions, which order
// every earlier load and store before every later one. It also keeps the
// compiler from moving guest-memory accesses across it.
func (q *Queue) fence() {
	q.barrier.Add(1)
}

// checkRange returns an error unless [addr, addr+n) is guest memory.
// GuestMemory has no size query; it fails accesses outside RAM, so the
// first and last byte of the range are probed.
func checkRange(mem devices.GuestMemory, addr, n uint64) error {
	if n == 0 {
		return nil
	}
	last := addr + n - 1
	if last < addr {
		return errors.New("range wraps the address space")
	}
	var b [1]byte
	for _, a := range [...]uint64{addr, last} {
		if a > math.MaxInt64 {
			return fmt.Errorf("address %#x beyond any guest memory", a)
		}
		if _, err := mem.ReadAt(b[:], int64(a)); err != nil {
			return err
		}
	}
	return nil
}

// ReadableLen is the total length of the chain's device-readable buffers.
func (c *Chain) ReadableLen() uint64 { return totalLen(c.Readable) }

// WritableLen is the total length of the chain's device-writable buffers.
func (c *Chain) WritableLen() uint64 { return totalLen(c.Writable) }

func totalLen(bufs []Buffer) uint64 {
	var n uint64
	for _, b := range bufs {
		n += uint64(b.Len)
	}
	return n
}

// Reader returns a reader over the chain's device-readable buffers, in
// order; it returns io.EOF after their last byte.
func (c *Chain) Reader(mem devices.GuestMemory) io.Reader {
	return &chainReader{mem: mem, bufs: c.Readable}
}

type chainReader struct {
	mem  devices.GuestMemory
	bufs []Buffer // buffers not yet read to their end
	off  uint32   // bytes of bufs[0] already read
}

func (r *chainReader) Read(p []byte) (int, error) {
	n := 0
	for len(p) > 0 && len(r.bufs) > 0 {
		b := r.bufs[0]
		if r.off == b.Len {
			// Done with it, or empty: an empty buffer's address is never
			// used, so it was not checked.
			r.bufs, r.off = r.bufs[1:], 0
			continue
		}
		chunk := min(uint64(len(p)), uint64(b.Len-r.off))
		if _, err := r.mem.ReadAt(p[:chunk], int64(b.Addr+uint64(r.off))); err != nil {
			return n, fmt.Errorf("read buffer [%#x,+%d): %w", b.Addr, b.Len, err)
		}
		n += int(chunk)
		p = p[chunk:]
		r.off += uint32(chunk)
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, nil
}

// Writer returns a writer over the chain's device-writable buffers, in
// order.
func (c *Chain) Writer(mem devices.GuestMemory) *ChainWriter {
	return &ChainWriter{mem: mem, bufs: c.Writable}
}

// ChainWriter writes a chain's device-writable buffers in order, and counts
// the bytes written for PushUsed.
type ChainWriter struct {
	mem     devices.GuestMemory
	bufs    []Buffer // buffers not yet written to their end
	off     uint32   // bytes of bufs[0] already written
	written uint32   // fits: Pop bounds a chain's length to 32 bits
}

// Write writes p into the buffers after the bytes already written. Writing
// past the end of the last buffer writes what fits and returns
// io.ErrShortWrite.
func (w *ChainWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if len(w.bufs) == 0 {
			return n, io.ErrShortWrite
		}
		b := w.bufs[0]
		if w.off == b.Len {
			// Done with it, or empty (see chainReader.Read).
			w.bufs, w.off = w.bufs[1:], 0
			continue
		}
		chunk := min(uint64(len(p)), uint64(b.Len-w.off))
		if _, err := w.mem.WriteAt(p[:chunk], int64(b.Addr+uint64(w.off))); err != nil {
			return n, fmt.Errorf("write buffer [%#x,+%d): %w", b.Addr, b.Len, err)
		}
		n += int(chunk)
		p = p[chunk:]
		w.off += uint32(chunk)
		w.written += uint32(chunk)
	}
	return n, nil
}

// Written is the number of bytes written so far.
func (w *ChainWriter) Written() uint32 { return w.written }

// Describe says where the queue is, for a device whose driver stopped
// answering: the device's next available and used indexes, and the
// driver's available index and flags and the used index as they are in
// guest memory. A queue that holds chains the device has not taken
// (avail ahead of next) and was kicked lost a notification; a used index
// ahead of what the driver consumed, with no interrupt pending, lost an
// interrupt. The caller keeps the device from using the queue meanwhile.
func (q *Queue) Describe(mem devices.GuestMemory) string {
	if !q.Ready {
		return fmt.Sprintf("q%d off", q.index)
	}
	s := fmt.Sprintf("q%d size=%d next_avail=%d next_used=%d", q.index, q.Size, q.nextAvail, q.nextUsed)
	if idx, err := readIndex(mem, q.AvailRing+2); err == nil {
		s += fmt.Sprintf(" avail.idx=%d", idx)
	}
	if flags, err := readIndex(mem, q.AvailRing); err == nil {
		s += fmt.Sprintf(" avail.flags=%#x", flags)
	}
	if idx, err := readIndex(mem, q.UsedRing+2); err == nil {
		s += fmt.Sprintf(" used.idx=%d", idx)
	}
	return s
}
