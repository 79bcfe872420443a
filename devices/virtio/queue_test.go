package virtio_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/devices/virtio"
	"github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// ringBase is where the tests below lay their rings out; buffers go at
// bufBase and after.
const (
	ringBase = 0x1000
	bufBase  = 0x8000
)

// newRing returns memSize bytes of guest memory with a ring of size
// descriptors at ringBase, and the device-side queue on it.
func newRing(t *testing.T, memSize uint64, size uint16) (*memory.Memory, *virtiotest.Ring, *virtio.Queue) {
	t.Helper()
	mem, err := memory.New(memSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	r, err := virtiotest.NewRing(mem, ringBase, size)
	if err != nil {
		t.Fatal(err)
	}
	q := r.Queue()
	if err := q.Validate(mem); err != nil {
		t.Fatal(err)
	}
	return mem, r, q
}

func pop(t *testing.T, q *virtio.Queue, mem *memory.Memory) virtio.Chain {
	t.Helper()
	c, ok, err := q.Pop(mem)
	if !ok || err != nil {
		t.Fatalf("Pop = ok %v, %v; want a chain", ok, err)
	}
	return c
}

func TestQueueChains(t *testing.T) {
	const size = 8
	for n := 1; n <= size; n++ {
		for readable := 0; readable <= n; readable++ {
			t.Run(fmt.Sprintf("%d-readable-%d-writable", readable, n-readable), func(t *testing.T) {
				mem, r, q := newRing(t, 1<<20, size)
				var bufs []virtiotest.Buf
				var want []byte
				for i := range n {
					b := virtiotest.Buf{Addr: bufBase + uint64(i)*0x100, Len: uint32(i + 3), Writable: i >= readable}
					if !b.Writable {
						data := bytes.Repeat([]byte{byte('a' + i)}, int(b.Len))
						mem.WriteAt(data, int64(b.Addr))
						want = append(want, data...)
					}
					bufs = append(bufs, b)
				}
				head, err := r.Offer(bufs...)
				if err != nil {
					t.Fatal(err)
				}

				c := pop(t, q, mem)
				if c.Head != head || len(c.Readable) != readable || len(c.Writable) != n-readable {
					t.Fatalf("chain head %d, %d readable, %d writable; want %d, %d, %d", c.Head, len(c.Readable), len(c.Writable), head, readable, n-readable)
				}
				var wantWritable uint64
				for i, b := range bufs {
					got := c.Readable
					j := i
					if b.Writable {
						got, j = c.Writable, i-readable
						wantWritable += uint64(b.Len)
					}
					if got[j] != (virtio.Buffer{Addr: b.Addr, Len: b.Len}) {
						t.Errorf("buffer %d = %+v, want %+v", i, got[j], b)
					}
				}
				if c.ReadableLen() != uint64(len(want)) || c.WritableLen() != wantWritable {
					t.Errorf("lengths %d readable, %d writable; want %d, %d", c.ReadableLen(), c.WritableLen(), len(want), wantWritable)
				}

				got, err := io.ReadAll(c.Reader(mem))
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("Reader read %q, %v; want %q", got, err, want)
				}

				w := c.Writer(mem)
				fill := bytes.Repeat([]byte{0x5a}, int(wantWritable))
				if n, err := w.Write(fill); n != len(fill) || err != nil {
					t.Errorf("Write of the writable length = %d, %v", n, err)
				}
				if n, err := w.Write([]byte{1}); n != 0 || !errors.Is(err, io.ErrShortWrite) {
					t.Errorf("Write past the end = %d, %v; want 0, io.ErrShortWrite", n, err)
				}
				for _, b := range c.Writable {
					got := make([]byte, b.Len)
					mem.ReadAt(got, int64(b.Addr))
					if !bytes.Equal(got, fill[:b.Len]) {
						t.Errorf("writable buffer at %#x holds %x", b.Addr, got)
					}
				}

				if err := q.PushUsed(mem, c.Head, w.Written()); err != nil {
					t.Fatal(err)
				}
				used, err := r.Used()
				if err != nil || len(used) != 1 || used[0] != (virtiotest.Used{Head: head, Len: uint32(wantWritable)}) {
					t.Fatalf("used = %+v, %v; want head %d len %d", used, err, head, wantWritable)
				}
				if _, ok, err := q.Pop(mem); ok || err != nil {
					t.Fatalf("Pop on an empty ring = ok %v, %v", ok, err)
				}
			})
		}
	}
}

func TestChainReaderWriterSpanBuffers(t *testing.T) {
	mem, r, q := newRing(t, 1<<20, 8)
	mem.WriteAt([]byte("hello, "), bufBase)
	mem.WriteAt([]byte("world"), bufBase+0x100)
	if _, err := r.Offer(
		virtiotest.Buf{Addr: bufBase, Len: 7},
		virtiotest.Buf{Addr: 1 << 62, Len: 0}, // empty buffers are skipped, wherever they point
		virtiotest.Buf{Addr: bufBase + 0x100, Len: 5},
		virtiotest.Buf{Addr: bufBase + 0x200, Len: 3, Writable: true},
		virtiotest.Buf{Addr: 1 << 62, Len: 0, Writable: true},
		virtiotest.Buf{Addr: bufBase + 0x300, Len: 4, Writable: true},
	); err != nil {
		t.Fatal(err)
	}
	c := pop(t, q, mem)

	// Small reads cross buffer boundaries; io.EOF comes after the last byte.
	rd := c.Reader(mem)
	var got []byte
	p := make([]byte, 5)
	for {
		n, err := rd.Read(p)
		got = append(got, p[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if string(got) != "hello, world" {
		t.Errorf("read %q", got)
	}

	w := c.Writer(mem)
	for _, s := range []string{"ab", "cdef"} {
		if _, err := w.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := w.Write([]byte("gh")); n != 1 || !errors.Is(err, io.ErrShortWrite) || w.Written() != 7 {
		t.Errorf("Write overflowing by one = %d, %v, Written %d; want 1, io.ErrShortWrite, 7", n, err, w.Written())
	}
	a, b := make([]byte, 3), make([]byte, 4)
	mem.ReadAt(a, bufBase+0x200)
	mem.ReadAt(b, bufBase+0x300)
	if string(a)+string(b) != "abcdefg" {
		t.Errorf("writable buffers hold %q %q", a, b)
	}
}

// TestQueueWraparound runs the free-running ring indexes past 2^16, with
// several chains in flight across the wrap.
func TestQueueWraparound(t *testing.T) {
	const size, batch = 8, 3
	mem, r, q := newRing(t, 1<<20, size)
	for i := 0; i < 70000; i += batch {
		var heads []uint16
		for j := range batch {
			h, err := r.Offer(
				virtiotest.Buf{Addr: bufBase, Len: 1},
				virtiotest.Buf{Addr: bufBase + uint64(j)*8, Len: 8, Writable: true},
			)
			if err != nil {
				t.Fatalf("iteration %d: %v", i, err)
			}
			heads = append(heads, h)
		}
		for j := range batch {
			c := pop(t, q, mem)
			if c.Head != heads[j] {
				t.Fatalf("iteration %d: popped head %d, want %d", i, c.Head, heads[j])
			}
			if err := q.PushUsed(mem, c.Head, uint32(i+j)); err != nil {
				t.Fatal(err)
			}
		}
		used, err := r.Used()
		if err != nil || len(used) != batch {
			t.Fatalf("iteration %d: used %+v, %v", i, used, err)
		}
		for j, u := range used {
			if u.Head != heads[j] || u.Len != uint32(i+j) {
				t.Fatalf("iteration %d: used %+v, want head %d len %d", i, u, heads[j], i+j)
			}
		}
	}
}

// TestQueueMalformedChains checks that every malformed chain is an error
// naming the problem and the chain's head, and that the chain can then be
// returned.
func TestQueueMalformedChains(t *testing.T) {
	const (
		memSize = 64 << 20
		size    = 128
	)
	type desc = virtiotest.Desc
	const next, write, indirect = virtiotest.FlagNext, virtiotest.FlagWrite, virtiotest.FlagIndirect
	buf := func(flags, n uint16) desc { return desc{Addr: bufBase, Len: 16, Flags: flags, Next: n} }

	for _, tc := range []struct {
		name  string
		head  uint16
		descs map[uint16]desc
		want  string
	}{
		{"self loop", 0, map[uint16]desc{0: buf(next, 0)}, "loop"},
		{"loop", 5, map[uint16]desc{5: buf(next, 6), 6: buf(next, 7), 7: buf(next, 6)}, "loop"},
		{"next out of range", 1, map[uint16]desc{1: buf(next, size)}, "next descriptor 128 out of range"},
		{"readable after writable", 2, map[uint16]desc{2: buf(write|next, 3), 3: buf(0, 0)}, "device-readable descriptor after a device-writable one"},
		{"buffer past the end", 0, map[uint16]desc{0: {Addr: memSize - 8, Len: 9}}, "outside guest memory"},
		{"buffer far away", 0, map[uint16]desc{0: {Addr: 1 << 63, Len: 1}}, "outside guest memory"},
		{"buffer wrapping", 0, map[uint16]desc{0: {Addr: math.MaxUint64 - 1, Len: 4}}, "outside guest memory"},
		{"writable buffer outside", 0, map[uint16]desc{0: buf(next, 1), 1: {Addr: memSize, Len: 1, Flags: write}}, "descriptor 1: buffer"},
		{"indirect", 3, map[uint16]desc{3: buf(indirect, 0)}, "indirect descriptor"},
		{"total length", 0, func() map[uint16]desc {
			// 65 buffers of all of memory (64 MiB) are more than 2^32 bytes.
			m := map[uint16]desc{}
			for i := range uint16(65) {
				m[i] = desc{Addr: 0, Len: memSize, Flags: next, Next: i + 1}
			}
			m[64] = desc{Addr: 0, Len: memSize}
			return m
		}(), "exceeds 4294967295 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem, r, q := newRing(t, memSize, size)
			for i, d := range tc.descs {
				if err := r.WriteDesc(i, d); err != nil {
					t.Fatal(err)
				}
			}
			if err := r.Publish(tc.head); err != nil {
				t.Fatal(err)
			}
			c, ok, err := q.Pop(mem)
			if !ok || err == nil {
				t.Fatalf("Pop = %+v, ok %v, %v; want an error", c, ok, err)
			}
			if c.Head != tc.head || !strings.Contains(err.Error(), fmt.Sprintf("chain %d: ", tc.head)) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Pop = head %d, %q; want head %d and an error naming the chain and %q", c.Head, err, tc.head, tc.want)
			}
			if err := q.PushUsed(mem, c.Head, 0); err != nil {
				t.Fatal(err)
			}
			if used, err := r.Used(); err != nil || len(used) != 1 || used[0] != (virtiotest.Used{Head: tc.head}) {
				t.Errorf("used = %+v, %v; want the chain back with length 0", used, err)
			}
		})
	}
}

// TestQueueCorruptAvailRing checks the errors that leave no chain to return.
func TestQueueCorruptAvailRing(t *testing.T) {
	const size = 8
	t.Run("head out of range", func(t *testing.T) {
		mem, r, q := newRing(t, 1<<20, size)
		if err := r.Publish(size); err != nil {
			t.Fatal(err)
		}
		if _, ok, err := q.Pop(mem); ok || err == nil || !strings.Contains(err.Error(), "head descriptor 8 out of range") {
			t.Fatalf("Pop = ok %v, %v; want a head out of range error", ok, err)
		}
		// The entry was consumed; the queue goes on.
		if _, err := r.Offer(virtiotest.Buf{Addr: bufBase, Len: 1}); err != nil {
			t.Fatal(err)
		}
		pop(t, q, mem)
	})
	t.Run("index jump", func(t *testing.T) {
		mem, r, q := newRing(t, 1<<20, size)
		if err := r.SetAvailIdx(size + 1); err != nil {
			t.Fatal(err)
		}
		for range 2 { // and it stays an error
			if _, ok, err := q.Pop(mem); ok || err == nil || !strings.Contains(err.Error(), "more than the queue size") {
				t.Fatalf("Pop = ok %v, %v; want an index error", ok, err)
			}
		}
	})
}

func TestQueueNeedsInterrupt(t *testing.T) {
	mem, r, q := newRing(t, 1<<20, 8)
	if !q.NeedsInterrupt(mem) {
		t.Error("NeedsInterrupt = false with no flags set")
	}
	r.SetNoInterrupt(true)
	if q.NeedsInterrupt(mem) {
		t.Error("NeedsInterrupt = true with VIRTQ_AVAIL_F_NO_INTERRUPT")
	}
	r.SetNoInterrupt(false)
	if !q.NeedsInterrupt(mem) {
		t.Error("NeedsInterrupt = false after the flag was cleared")
	}
}

// TestQueueAvailIndexAlignment pops from an available ring that is 2-byte
// but not 4-byte aligned, where the index shares its 32-bit word with the
// first ring entry.
func TestQueueAvailIndexAlignment(t *testing.T) {
	mem, r, _ := newRing(t, 1<<20, 8)
	q := virtio.NewQueue(8)
	q.DescTable, q.UsedRing, q.Ready = r.DescTable, r.UsedRing, true
	// A second available ring, two bytes further on, fed by hand.
	q.AvailRing = 0x4002
	if err := q.Validate(mem); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteDesc(5, virtiotest.Desc{Addr: bufBase, Len: 1}); err != nil {
		t.Fatal(err)
	}
	mem.WriteAt([]byte{0, 0, 1, 0, 5, 0}, 0x4002) // flags 0, idx 1, ring[0] = 5
	if c := pop(t, q, mem); c.Head != 5 {
		t.Fatalf("popped head %d, want 5", c.Head)
	}
}

func TestQueueValidate(t *testing.T) {
	const memSize = 1 << 20
	mem, err := memory.New(memSize)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	valid := func() *virtio.Queue {
		q := virtio.NewQueue(16)
		q.DescTable, q.AvailRing, q.UsedRing = 0x1000, 0x2000, 0x3000
		return q
	}
	if err := valid().Validate(mem); err != nil {
		t.Fatalf("valid queue: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(q *virtio.Queue)
		want   string
	}{
		{"size 0", func(q *virtio.Queue) { q.Size = 0 }, "size 0"},
		{"size not a power of two", func(q *virtio.Queue) { q.Size = 12 }, "size 12"},
		{"size beyond max", func(q *virtio.Queue) { q.Size = 32 }, "size 32"},
		{"descriptor table misaligned", func(q *virtio.Queue) { q.DescTable = 0x1008 }, "descriptor table at 0x1008 is not 16-byte aligned"},
		{"available ring misaligned", func(q *virtio.Queue) { q.AvailRing = 0x2001 }, "available ring at 0x2001 is not 2-byte aligned"},
		{"used ring misaligned", func(q *virtio.Queue) { q.UsedRing = 0x3002 }, "used ring at 0x3002 is not 4-byte aligned"},
		{"descriptor table outside", func(q *virtio.Queue) { q.DescTable = memSize - 0xf0 }, "descriptor table"},
		{"available ring outside", func(q *virtio.Queue) { q.AvailRing = memSize - 36 }, "available ring"},
		{"used ring outside", func(q *virtio.Queue) { q.UsedRing = memSize - 132 }, "used ring"},
		{"used ring wrapping", func(q *virtio.Queue) { q.UsedRing = math.MaxUint64 - 3 }, "used ring"},
	} {
		q := valid()
		tc.change(q)
		if err := q.Validate(mem); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate = %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

func TestQueueNotReadyAndReset(t *testing.T) {
	mem, r, q := newRing(t, 1<<20, 8)
	if _, err := r.Offer(virtiotest.Buf{Addr: bufBase, Len: 1}); err != nil {
		t.Fatal(err)
	}
	q.Ready = false
	if _, ok, err := q.Pop(mem); ok || err != nil {
		t.Errorf("Pop on a queue not ready = ok %v, %v; want nothing", ok, err)
	}
	if err := q.PushUsed(mem, 0, 0); err == nil {
		t.Error("PushUsed on a queue not ready succeeded")
	}
	q.Ready = true
	pop(t, q, mem)

	q.Reset()
	if q.Ready || q.Size != q.MaxSize || q.DescTable != 0 || q.AvailRing != 0 || q.UsedRing != 0 {
		t.Errorf("after Reset: %+v", q)
	}
	// Indexes restart at 0 with a fresh ring.
	r2, err := virtiotest.NewRing(mem, 0x10000, 8)
	if err != nil {
		t.Fatal(err)
	}
	q.DescTable, q.AvailRing, q.UsedRing, q.Ready = r2.DescTable, r2.AvailRing, r2.UsedRing, true
	h, _ := r2.Offer(virtiotest.Buf{Addr: bufBase, Len: 1})
	if c := pop(t, q, mem); c.Head != h {
		t.Errorf("popped head %d after reset, want %d", c.Head, h)
	}
	if err := q.PushUsed(mem, 8, 0); err == nil {
		t.Error("PushUsed of head 8 in a queue of 8 succeeded")
	}
}

func TestNewQueuePanicsOnBadSize(t *testing.T) {
	for _, size := range []uint16{0, 3, 65535} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewQueue(%d) did not panic", size)
				}
			}()
			virtio.NewQueue(size)
		}()
	}
}
