package virtio_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/sailbox-dev/sailbox/devices/virtio"
	"github.com/sailbox-dev/sailbox/devices/virtio/blk"
	vt "github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// Layout of FuzzQueuePop's guest memory: the fuzzer's bytes fill it from
// address 0, so they are the descriptor table, the rings and the buffers.
const (
	fuzzMemSize   = 0x2000
	fuzzDescTable = 0x000 // up to 16 descriptors: 0x100 bytes
	fuzzAvailRing = 0x100
	fuzzUsedRing  = 0x200
)

// FuzzQueuePop pops chains from arbitrary descriptor tables and available
// rings. Pop must never panic; guest memory bounds-checks every access, so
// nothing outside it can be touched; and whatever Pop accepts must be a
// chain the device can use safely: at most Size buffers, all inside guest
// memory, 32 bits long in total, readable and writable through the chain's
// reader and writer, and returnable with PushUsed.
func FuzzQueuePop(f *testing.F) {
	f.Fuzz(func(t *testing.T, sizeLog uint8, image []byte) {
		mem, err := memory.New(fuzzMemSize)
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		mem.WriteAt(image[:min(len(image), fuzzMemSize)], 0)

		size := uint16(1) << (sizeLog % 5)
		q := virtio.NewQueue(16)
		q.Size, q.DescTable, q.AvailRing, q.UsedRing, q.Ready = size, fuzzDescTable, fuzzAvailRing, fuzzUsedRing, true
		if err := q.Validate(mem); err != nil {
			t.Fatal(err)
		}

		for range 3*int(size) + 2 {
			c, ok, err := q.Pop(mem)
			switch {
			case !ok && err == nil:
				return
			case !ok:
				continue // a corrupt available ring entry: nothing to return
			case c.Head >= size:
				t.Fatalf("Pop returned head %d in a queue of %d (err %v)", c.Head, size, err)
			case err != nil:
				if err := q.PushUsed(mem, c.Head, 0); err != nil {
					t.Fatalf("return malformed chain %d: %v", c.Head, err)
				}
				continue
			}

			if n := len(c.Readable) + len(c.Writable); n == 0 || n > int(size) {
				t.Fatalf("chain %d has %d buffers, queue size %d", c.Head, n, size)
			}
			for _, b := range append(c.Readable, c.Writable...) {
				if b.Len > 0 && (b.Addr >= fuzzMemSize || uint64(b.Len) > fuzzMemSize-b.Addr) {
					t.Fatalf("chain %d: buffer [%#x,+%d) outside guest memory", c.Head, b.Addr, b.Len)
				}
			}
			if c.ReadableLen()+c.WritableLen() > math.MaxUint32 {
				t.Fatalf("chain %d: %d bytes", c.Head, c.ReadableLen()+c.WritableLen())
			}
			if n, err := io.Copy(io.Discard, c.Reader(mem)); err != nil || uint64(n) != c.ReadableLen() {
				t.Fatalf("chain %d: read %d of %d readable bytes: %v", c.Head, n, c.ReadableLen(), err)
			}
			w := c.Writer(mem)
			if _, err := w.Write(make([]byte, c.WritableLen())); err != nil || uint64(w.Written()) != c.WritableLen() {
				t.Fatalf("chain %d: wrote %d of %d writable bytes: %v", c.Head, w.Written(), c.WritableLen(), err)
			}
			if err := q.PushUsed(mem, c.Head, w.Written()); err != nil {
				t.Fatalf("return chain %d: %v", c.Head, err)
			}
			q.NeedsInterrupt(mem)
		}
	})
}

// Block request statuses (virtio spec §5.2.6).
const (
	blkStatusOK     = 0
	blkStatusIOErr  = 1
	blkStatusUnsupp = 2
)

// Buffer placements in FuzzBlockRequest's layout.
const (
	placeInside   = iota // a fresh buffer in guest memory
	placeInside2         // the same, to weight valid buffers
	placeStraddle        // across the end of guest memory
	placeOutside         // far beyond it
)

// FuzzBlockRequest sends arbitrary request chains through the whole path
// (fake driver, MMIO transport, queue, block device on an image): the
// device must not panic, must return every chain, and whenever a chain is
// well-formed and has a byte to put a status in, that status must be OK,
// IOERR or UNSUPP.
//
// layout describes the chain, 3 bytes per buffer: flags (bit 0: device-
// writable; bits 1-2: a placement), then a little-endian 16-bit length.
// Readable buffers carry, in order, a request header (typ, sector) and
// then data.
func FuzzBlockRequest(f *testing.F) {
	image := filepath.Join(f.TempDir(), "disk.img")
	if err := os.WriteFile(image, make([]byte, 16*blk.SectorSize), 0o600); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, typ uint32, sector uint64, layout []byte) {
		const memSize = 4 << 20
		if len(layout) < 3 || len(layout) > 3*32 {
			return
		}
		file, err := os.OpenFile(image, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		be, err := blk.FileBackend(file)
		if err != nil {
			file.Close()
			t.Fatal(err)
		}
		dev, err := blk.New(be, blk.Config{})
		if err != nil {
			be.Close()
			t.Fatal(err)
		}
		defer dev.Close()
		d := vt.New(t, dev, memSize)
		if err := d.Start(math.MaxUint64, 1); err != nil {
			t.Fatal(err)
		}

		stream := make([]byte, 16) // the header, then data as buffers need it
		binary.LittleEndian.PutUint32(stream[0:], typ)
		binary.LittleEndian.PutUint64(stream[8:], sector)

		var bufs []vt.Buf
		wellFormed, seenWritable := true, false
		var status *vt.Buf // the buffer holding the last writable byte
		for i := 0; i+3 <= len(layout); i += 3 {
			flags, n := layout[i], uint32(binary.LittleEndian.Uint16(layout[i+1:]))
			b := vt.Buf{Len: n, Writable: flags&1 != 0}
			switch flags >> 1 & 3 {
			case placeInside, placeInside2:
				b.Addr = d.Alloc(uint64(n), 1)
				if b.Writable {
					d.Mem.WriteAt(bytes.Repeat([]byte{0xff}, int(n)), int64(b.Addr))
				} else {
					for len(stream) < int(n) {
						stream = append(stream, byte(len(stream)))
					}
					d.Mem.WriteAt(stream[:n], int64(b.Addr))
					stream = stream[n:]
				}
			case placeStraddle:
				b.Addr = memSize - uint64(n)/2
				wellFormed = wellFormed && n == 0
			case placeOutside:
				b.Addr = 1 << 40
				wellFormed = wellFormed && n == 0
			}
			if b.Writable {
				seenWritable = true
				if n > 0 {
					status = &b
				}
			} else if seenWritable {
				wellFormed = false
			}
			bufs = append(bufs, b)
		}

		if _, err := d.Queue(0).Offer(bufs...); err != nil {
			t.Fatal(err)
		}
		d.Kick(0)
		used, err := d.WaitUsed(0, 1)
		if err != nil || len(used) != 1 {
			t.Fatalf("used %+v, %v; want the chain back", used, err)
		}
		var writable uint64
		for _, b := range bufs {
			if b.Writable {
				writable += uint64(b.Len)
			}
		}
		if uint64(used[0].Len) > writable {
			t.Fatalf("used length %d, but the chain has %d writable bytes", used[0].Len, writable)
		}
		if !wellFormed || status == nil {
			if used[0].Len != 0 {
				t.Fatalf("used length %d for a chain the device cannot answer", used[0].Len)
			}
			return
		}
		var s [1]byte
		d.Mem.ReadAt(s[:], int64(status.Addr+uint64(status.Len)-1))
		if s[0] != blkStatusOK && s[0] != blkStatusIOErr && s[0] != blkStatusUnsupp {
			t.Fatalf("status byte %#x", s[0])
		}
		if used[0].Len == 0 {
			t.Fatal("used length 0 for an answered request")
		}
	})
}
