package virtiotest

import (
	"encoding/binary"
	"fmt"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/virtio"
)

// Descriptor flags (virtio spec v1.2 §2.7.5), for Desc.Flags.
const (
	FlagNext     = 1 // VIRTQ_DESC_F_NEXT
	FlagWrite    = 2 // VIRTQ_DESC_F_WRITE
	FlagIndirect = 4 // VIRTQ_DESC_F_INDIRECT
)

// availFNoInterrupt is VIRTQ_AVAIL_F_NO_INTERRUPT (spec §2.7.7).
const availFNoInterrupt = 1

// Desc is one entry of a descriptor table (struct virtq_desc).
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// Buf is one buffer of a chain offered with Ring.Offer.
type Buf struct {
	Addr     uint64 // guest-physical address
	Len      uint32
	Writable bool // device-writable (VIRTQ_DESC_F_WRITE); else device-readable
}

// Used is one used ring element (struct virtq_used_elem).
type Used struct {
	Head uint16 // head of the chain the device returned
	Len  uint32 // bytes the device says it wrote into the chain
}

// Ring is the driver side of one split virtqueue (spec §2.7) in guest
// memory: a descriptor table, an available ring and a used ring. Offer
// builds well-formed chains; WriteDesc and Publish build anything, for
// tests of malformed chains. A Ring is used by one goroutine at a time.
type Ring struct {
	Mem  devices.GuestMemory
	Size uint16
	// Guest-physical addresses of the three parts.
	DescTable, AvailRing, UsedRing uint64

	// free lists the descriptors not part of an offered chain.
	free []uint16
	// outstanding maps the head of each chain made available and not yet
	// used to the descriptors Offer took for it (none for Publish).
	outstanding map[uint16][]uint16
	availIdx    uint16 // the next value of avail->idx
	lastUsed    uint16 // used ring elements consumed so far
}

// RingBytes is the guest memory NewRing lays a ring of size out in.
func RingBytes(size uint16) uint64 {
	n := uint64(size)
	return align(16*n+4+2*n+2, 4) + 4 + 8*n + 2
}

// NewRing lays out an empty ring of size descriptors at base (16-byte
// aligned) the way Linux does: the descriptor table, the available ring
// right after it, then the used ring at the next 4-byte boundary. It
// takes RingBytes(size) bytes, which it zeroes.
func NewRing(mem devices.GuestMemory, base uint64, size uint16) (*Ring, error) {
	if size == 0 || size&(size-1) != 0 || base%16 != 0 {
		return nil, fmt.Errorf("ring of %d descriptors at %#x: want a power-of-two size and a 16-byte aligned base", size, base)
	}
	n := uint64(size)
	r := &Ring{
		Mem:         mem,
		Size:        size,
		DescTable:   base,
		AvailRing:   base + 16*n,
		UsedRing:    base + align(16*n+4+2*n+2, 4),
		outstanding: make(map[uint16][]uint16),
	}
	if _, err := mem.WriteAt(make([]byte, RingBytes(size)), int64(base)); err != nil {
		return nil, fmt.Errorf("ring of %d descriptors at %#x: %w", size, base, err)
	}
	for i := range size {
		r.free = append(r.free, size-1-i)
	}
	return r, nil
}

// Queue returns a device-side queue set up on this ring and ready, as the
// transport hands it to Device.Activate, for tests that drive a device or
// a queue without the MMIO transport.
func (r *Ring) Queue() *virtio.Queue {
	q := virtio.NewQueue(r.Size)
	q.DescTable, q.AvailRing, q.UsedRing = r.DescTable, r.AvailRing, r.UsedRing
	q.Ready = true
	return q
}

// Offer makes a chain of bufs available to the device, in order, and
// returns its head. It does not notify the device.
func (r *Ring) Offer(bufs ...Buf) (head uint16, err error) {
	if len(bufs) == 0 || len(bufs) > len(r.free) {
		return 0, fmt.Errorf("offer a chain of %d buffers: %d descriptors free", len(bufs), len(r.free))
	}
	descs := make([]uint16, len(bufs))
	for i := range descs {
		descs[i] = r.free[len(r.free)-1-i]
	}
	for i, b := range bufs {
		d := Desc{Addr: b.Addr, Len: b.Len}
		if b.Writable {
			d.Flags |= FlagWrite
		}
		if i+1 < len(bufs) {
			d.Flags |= FlagNext
			d.Next = descs[i+1]
		}
		if err := r.WriteDesc(descs[i], d); err != nil {
			return 0, err
		}
	}
	r.free = r.free[:len(r.free)-len(bufs)]
	r.outstanding[descs[0]] = descs
	return descs[0], r.Publish(descs[0])
}

// WriteDesc writes descriptor i of the table as it is, valid or not.
// Descriptors written this way are not tracked: do not mix them with
// Offer's on one ring unless the test knows which ones Offer uses.
func (r *Ring) WriteDesc(i uint16, d Desc) error {
	var b [16]byte
	le := binary.LittleEndian
	le.PutUint64(b[0:], d.Addr)
	le.PutUint32(b[8:], d.Len)
	le.PutUint16(b[12:], d.Flags)
	le.PutUint16(b[14:], d.Next)
	if _, err := r.Mem.WriteAt(b[:], int64(r.DescTable+16*uint64(i))); err != nil {
		return fmt.Errorf("write descriptor %d: %w", i, err)
	}
	return nil
}

// Publish puts head in the next available ring slot, then advances the
// available index, in that order, as a driver must (spec §2.7.13).
func (r *Ring) Publish(head uint16) error {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], head)
	slot := r.availIdx & (r.Size - 1)
	if _, err := r.Mem.WriteAt(b[:], int64(r.AvailRing+4+2*uint64(slot))); err != nil {
		return fmt.Errorf("write available ring slot %d: %w", slot, err)
	}
	if _, ok := r.outstanding[head]; !ok {
		r.outstanding[head] = nil
	}
	return r.SetAvailIdx(r.availIdx + 1)
}

// SetAvailIdx writes avail->idx, for tests of a driver that moves it
// arbitrarily; Publish advances it normally.
func (r *Ring) SetAvailIdx(idx uint16) error {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], idx)
	if _, err := r.Mem.WriteAt(b[:], int64(r.AvailRing+2)); err != nil {
		return fmt.Errorf("write available index: %w", err)
	}
	r.availIdx = idx
	return nil
}

// SetNoInterrupt sets or clears VIRTQ_AVAIL_F_NO_INTERRUPT (spec §2.7.7).
func (r *Ring) SetNoInterrupt(on bool) error {
	var b [2]byte
	if on {
		binary.LittleEndian.PutUint16(b[:], availFNoInterrupt)
	}
	if _, err := r.Mem.WriteAt(b[:], int64(r.AvailRing)); err != nil {
		return fmt.Errorf("write available ring flags: %w", err)
	}
	return nil
}

// Used returns the used ring elements the device published since the last
// call, and frees the descriptors of the chains they return. It fails, as
// Linux does, if the device returns a chain that is not outstanding.
func (r *Ring) Used() ([]Used, error) {
	var b [8]byte
	if _, err := r.Mem.ReadAt(b[:2], int64(r.UsedRing+2)); err != nil {
		return nil, fmt.Errorf("read used index: %w", err)
	}
	idx := binary.LittleEndian.Uint16(b[:2])
	if n := idx - r.lastUsed; n > r.Size {
		return nil, fmt.Errorf("used index %d is %d past the last one consumed (%d), more than the ring size %d", idx, n, r.lastUsed, r.Size)
	}
	var used []Used
	for ; r.lastUsed != idx; r.lastUsed++ {
		slot := r.lastUsed & (r.Size - 1)
		if _, err := r.Mem.ReadAt(b[:], int64(r.UsedRing+4+8*uint64(slot))); err != nil {
			return used, fmt.Errorf("read used ring slot %d: %w", slot, err)
		}
		u := Used{Head: uint16(binary.LittleEndian.Uint32(b[0:])), Len: binary.LittleEndian.Uint32(b[4:])}
		descs, ok := r.outstanding[u.Head]
		if id := binary.LittleEndian.Uint32(b[0:]); id >= uint32(r.Size) || !ok {
			return used, fmt.Errorf("used ring slot %d: id %d is not the head of an outstanding chain", slot, id)
		}
		delete(r.outstanding, u.Head)
		for i := len(descs) - 1; i >= 0; i-- {
			r.free = append(r.free, descs[i])
		}
		used = append(used, u)
	}
	return used, nil
}

func align(x, a uint64) uint64 { return (x + a - 1) &^ (a - 1) }
