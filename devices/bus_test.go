package devices

import "testing"

type recorder struct {
	reads, writes []uint64
}

func (r *recorder) Read(off uint64, data []byte) {
	r.reads = append(r.reads, off)
	for i := range data {
		data[i] = byte(off) + byte(i)
	}
}
func (r *recorder) Write(off uint64, data []byte) { r.writes = append(r.writes, off) }

func TestBusDispatch(t *testing.T) {
	var b Bus
	a, c := &recorder{}, &recorder{}
	if err := b.Insert(a, 0x3f8, 8); err != nil {
		t.Fatal(err)
	}
	if err := b.Insert(c, 0x60, 1); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][2]uint64{{0x3f0, 9}, {0x3ff, 1}, {0x3f8, 8}, {0x10, 0}, {^uint64(0), 2}} {
		if err := b.Insert(&recorder{}, bad[0], bad[1]); err == nil {
			t.Errorf("Insert at %#x size %#x succeeded, want overlap/size error", bad[0], bad[1])
		}
	}
	data := make([]byte, 2)
	if !b.Read(0x3fd, data) || data[0] != 5 || data[1] != 6 {
		t.Fatalf("read at 0x3fd = %v %v", b.Read(0x3fd, data), data)
	}
	if !b.Write(0x60, []byte{1}) || len(c.writes) != 1 || c.writes[0] != 0 {
		t.Fatalf("write to 0x60 not dispatched: %v", c.writes)
	}
	// Accesses that fall off a device, or hit nothing, are not dispatched.
	for _, addr := range []uint64{0x3ff, 0x61, 0x0, ^uint64(0)} {
		if b.Read(addr, make([]byte, 2)) {
			t.Errorf("read of 2 bytes at %#x dispatched", addr)
		}
	}
}
