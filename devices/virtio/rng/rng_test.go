package rng

import (
	"bytes"
	"testing"

	"github.com/sailbox-dev/sailbox/devices/virtio"
	vt "github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
)

func start(t *testing.T) *vt.Driver {
	t.Helper()
	d := vt.New(t, New(), 1<<20)
	if err := d.Start(0, 1); err != nil {
		t.Fatal(err)
	}
	return d
}

// fill offers a chain of bufs, kicks and returns the used length.
func fill(t *testing.T, d *vt.Driver, bufs ...vt.Buf) uint32 {
	t.Helper()
	if _, err := d.Queue(0).Offer(bufs...); err != nil {
		t.Fatal(err)
	}
	d.Kick(0)
	used, err := d.WaitUsed(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	return used[0].Len
}

func TestFillsBuffers(t *testing.T) {
	d := start(t)
	if got := d.Read32(vt.RegDeviceID); got != virtio.TypeEntropy {
		t.Errorf("device ID %d", got)
	}
	a, b := d.Writable(64), d.Writable(100)
	if n := fill(t, d, a, b); n != 164 {
		t.Errorf("used length %d, want 164", n)
	}
	c := d.Writable(164)
	if n := fill(t, d, c); n != 164 {
		t.Errorf("used length %d, want 164", n)
	}
	first := append(d.Bytes(a), d.Bytes(b)...)
	second := d.Bytes(c)
	zero := make([]byte, 164)
	if bytes.Equal(first, zero) || bytes.Equal(second, zero) {
		t.Error("a buffer was left zero")
	}
	if bytes.Equal(first, second) {
		t.Error("two fills returned the same bytes")
	}
	// 164 random bytes with a zero run of 16 would be a broken source.
	for _, p := range [][]byte{first, second} {
		if bytes.Contains(p, make([]byte, 16)) {
			t.Errorf("fill has a run of 16 zero bytes: %x", p)
		}
	}
}

func TestRequestBound(t *testing.T) {
	d := start(t)
	big := d.Writable(MaxRequest + 4096)
	if n := fill(t, d, big); n != MaxRequest {
		t.Errorf("used length %d, want the bound %d", n, MaxRequest)
	}
	if tail := d.Bytes(big)[MaxRequest:]; !bytes.Equal(tail, make([]byte, len(tail))) {
		t.Error("the device wrote past the bound")
	}
	// A chain with nothing to fill is returned empty.
	if n := fill(t, d, d.Readable([]byte("please"))); n != 0 {
		t.Errorf("used length %d for a chain without writable buffers", n)
	}
}

func TestMalformedAndReset(t *testing.T) {
	d := start(t)
	// A buffer outside guest memory: returned with length 0.
	if n := fill(t, d, vt.Buf{Addr: 1 << 40, Len: 16, Writable: true}); n != 0 {
		t.Errorf("used length %d for a malformed chain", n)
	}
	d.Reset()
	d.Kick(0) // not active: ignored
	if err := d.Start(0, 1); err != nil {
		t.Fatal(err)
	}
	if n := fill(t, d, d.Writable(32)); n != 32 {
		t.Errorf("after reset: used length %d", n)
	}
}
