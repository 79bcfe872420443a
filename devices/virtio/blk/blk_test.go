package blk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/devices/virtio"
	vt "github.com/sailbox-dev/sailbox/devices/virtio/virtiotest"
)

const testSectors = 64

// newImage creates a raw image of n bytes holding a pattern that differs
// in every sector, and returns its path.
func newImage(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	data := make([]byte, n)
	for i := range data {
		data[i] = pattern(i)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// newDevice returns a block device on a fresh image of testSectors sectors,
// with a driver that negotiated features, and the image's path.
func newDevice(t *testing.T, readOnly bool, features uint64) (*Block, *vt.Driver, string) {
	t.Helper()
	path := newImage(t, testSectors*SectorSize)
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	be := openImage(t, path, flag)
	b, err := New(be, Config{ReadOnly: readOnly, ID: be.ID()})
	if err != nil {
		be.Close()
		t.Fatal(err)
	}
	d := vt.New(t, b, 4<<20)
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := d.Start(features, 1); err != nil {
		t.Fatal(err)
	}
	return b, d, path
}

// openImage opens the image at path as a backend.
func openImage(t *testing.T, path string, flag int) *File {
	t.Helper()
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	be, err := FileBackend(f)
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	return be
}

// pattern is the byte at offset i of a fresh image.
func pattern(i int) byte { return byte(i/SectorSize) ^ byte(i) }

func header(typ uint32, sector uint64) []byte {
	h := make([]byte, headerSize)
	binary.LittleEndian.PutUint32(h[0:], typ)
	binary.LittleEndian.PutUint64(h[8:], sector)
	return h
}

// result is what the driver sees of a completed request.
type result struct {
	status byte   // the status byte, 0xff if the device did not write it
	data   []byte // the device-writable data buffers' contents
	len    uint32 // the used length
}

// submit offers the request of bufs, then a 1-byte status buffer,
// and waits for it to complete.
func submit(t *testing.T, d *vt.Driver, bufs ...vt.Buf) result {
	t.Helper()
	status := d.Readable([]byte{0xff})
	status.Writable = true
	if _, err := d.Queue(0).Offer(append(bufs, status)...); err != nil {
		t.Fatal(err)
	}
	d.Kick(0)
	used, err := d.WaitUsed(0, 1)
	if err != nil || len(used) != 1 {
		t.Fatalf("used %+v, %v", used, err)
	}
	r := result{status: d.Bytes(status)[0], len: used[0].Len}
	for _, b := range bufs {
		if b.Writable {
			r.data = append(r.data, d.Bytes(b)...)
		}
	}
	return r
}

func readSectors(t *testing.T, d *vt.Driver, sector uint64, n uint32) result {
	t.Helper()
	return submit(t, d, d.Readable(header(typeIn, sector)), d.Writable(n))
}

func writeSectors(t *testing.T, d *vt.Driver, sector uint64, data []byte) result {
	t.Helper()
	return submit(t, d, d.Readable(header(typeOut, sector)), d.Readable(data))
}

func TestNewRejectsBadImages(t *testing.T) {
	for _, n := range []int{1, 511, 1000} {
		be := openImage(t, newImage(t, n), os.O_RDONLY)
		if _, err := New(be, Config{}); err == nil {
			t.Errorf("New on a %d-byte image succeeded", n)
		}
		be.Close()
	}
	dir, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	if _, err := FileBackend(dir); err == nil {
		t.Error("FileBackend on a directory succeeded")
	}
	be := openImage(t, newImage(t, SectorSize), os.O_RDONLY)
	defer be.Close()
	for _, id := range []string{"this ID is 21 bytes!!", "tab\t", "caf\u00e9"} {
		if _, err := New(be, Config{ID: id}); err == nil {
			t.Errorf("New with device ID %q succeeded", id)
		}
	}
}

func TestConfigAndFeatures(t *testing.T) {
	b, d, _ := newDevice(t, false, featureFlush)
	if got := binary.LittleEndian.Uint64(d.ReadConfig(configCapacity, 8)); got != testSectors {
		t.Errorf("capacity = %d, want %d", got, testSectors)
	}
	// Linux reads the 64-bit capacity as two 32-bit halves.
	lo, hi := d.ReadConfig(0, 4), d.ReadConfig(4, 4)
	if got := uint64(binary.LittleEndian.Uint32(lo)) | uint64(binary.LittleEndian.Uint32(hi))<<32; got != testSectors {
		t.Errorf("capacity in halves = %d", got)
	}
	if got := binary.LittleEndian.Uint32(d.ReadConfig(configSegMax, 4)); got != segMax {
		t.Errorf("seg_max = %d, want %d", got, segMax)
	}
	if got := d.ReadConfig(20, 4); !bytes.Equal(got, make([]byte, 4)) {
		t.Errorf("blk_size (not offered) = %x, want zeros", got)
	}
	if got, want := d.DeviceFeatures(), uint64(featureFlush|featureSegMax)|virtio.FeatureVersion1; got != want {
		t.Errorf("features = %#x, want %#x", got, want)
	}
	if b.Type() != virtio.TypeBlock || d.Read32(vt.RegDeviceID) != virtio.TypeBlock {
		t.Errorf("device type %d", d.Read32(vt.RegDeviceID))
	}
}

func TestWriteThenReadBack(t *testing.T) {
	for _, features := range []uint64{featureFlush, 0} { // write-back and write-through
		t.Run(fmt.Sprintf("features %#x", features), func(t *testing.T) {
			_, d, path := newDevice(t, false, features)
			data := bytes.Repeat([]byte("sailbox!"), 2*SectorSize/8)
			if r := writeSectors(t, d, 3, data); r.status != statusOK || r.len != 1 {
				t.Fatalf("write: status %d, used length %d", r.status, r.len)
			}
			r := readSectors(t, d, 3, 2*SectorSize)
			if r.status != statusOK || !bytes.Equal(r.data, data) || r.len != 2*SectorSize+1 {
				t.Fatalf("read back: status %d, used length %d, data equal %v", r.status, r.len, bytes.Equal(r.data, data))
			}
			img, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(img[3*SectorSize:5*SectorSize], data) {
				t.Error("the image does not hold the written sectors")
			}
			if img[5*SectorSize] != pattern(5*SectorSize) {
				t.Error("the write spilled past its sectors")
			}
		})
	}
}

// TestFraming checks that the device assumes nothing about how a request
// is split into buffers (spec §2.7.4): a header split in two, data spread
// over buffers of odd sizes, the status byte at the end of a data buffer.
func TestFraming(t *testing.T) {
	_, d, path := newDevice(t, false, featureFlush)
	img, _ := os.ReadFile(path)

	h := header(typeIn, 7)
	first, second, last := d.Writable(100), d.Writable(412), d.Writable(SectorSize+1)
	if _, err := d.Queue(0).Offer(d.Readable(h[:5]), d.Readable(h[5:]), first, second, last); err != nil {
		t.Fatal(err)
	}
	d.Kick(0)
	used, err := d.WaitUsed(0, 1)
	if err != nil || used[0].Len != 2*SectorSize+1 {
		t.Fatalf("used %+v, %v", used, err)
	}
	got := append(append(d.Bytes(first), d.Bytes(second)...), d.Bytes(last)...)
	if got[2*SectorSize] != statusOK {
		t.Fatalf("status %d", got[2*SectorSize])
	}
	if !bytes.Equal(got[:2*SectorSize], img[7*SectorSize:9*SectorSize]) {
		t.Error("the data read is not the image's")
	}

	// A write whose header and data share one buffer.
	data := bytes.Repeat([]byte{0x42}, SectorSize)
	if r := submit(t, d, d.Readable(append(header(typeOut, 1), data...))); r.status != statusOK {
		t.Fatalf("write: status %d", r.status)
	}
	if r := readSectors(t, d, 1, SectorSize); !bytes.Equal(r.data, data) {
		t.Error("read back a different sector")
	}
}

func TestFlushAndGetID(t *testing.T) {
	_, d, path := newDevice(t, false, featureFlush)
	if r := submit(t, d, d.Readable(header(typeFlush, 0))); r.status != statusOK || r.len != 1 {
		t.Errorf("flush: status %d, used length %d", r.status, r.len)
	}

	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, idBytes)
	copy(want, fmt.Sprintf("sbox-%x-%x", st.Dev, st.Ino))
	r := submit(t, d, d.Readable(header(typeGetID, 0)), d.Writable(idBytes))
	if r.status != statusOK || !bytes.Equal(r.data, want) || r.len != idBytes+1 {
		t.Errorf("get ID: status %d, %q, used length %d; want %q", r.status, r.data, r.len, want)
	}
	if r := submit(t, d, d.Readable(header(typeGetID, 0)), d.Writable(idBytes-1)); r.status != statusIOErr {
		t.Errorf("get ID into %d bytes: status %d, want IOERR", idBytes-1, r.status)
	}
}

func TestBadRequests(t *testing.T) {
	_, d, _ := newDevice(t, false, featureFlush)
	for _, tc := range []struct {
		name string
		bufs func() []vt.Buf
		want byte
	}{
		{"read past the end", func() []vt.Buf {
			return []vt.Buf{d.Readable(header(typeIn, testSectors-1)), d.Writable(2 * SectorSize)}
		}, statusIOErr},
		{"read at the capacity", func() []vt.Buf {
			return []vt.Buf{d.Readable(header(typeIn, testSectors)), d.Writable(SectorSize)}
		}, statusIOErr},
		{"read at a huge sector", func() []vt.Buf {
			return []vt.Buf{d.Readable(header(typeIn, 1<<63)), d.Writable(SectorSize)}
		}, statusIOErr},
		{"write past the end", func() []vt.Buf {
			return []vt.Buf{d.Readable(header(typeOut, testSectors)), d.Readable(make([]byte, SectorSize))}
		}, statusIOErr},
		{"partial sector read", func() []vt.Buf {
			return []vt.Buf{d.Readable(header(typeIn, 0)), d.Writable(100)}
		}, statusIOErr},
		{"partial sector write", func() []vt.Buf {
			return []vt.Buf{d.Readable(header(typeOut, 0)), d.Readable(make([]byte, 100))}
		}, statusIOErr},
		{"short header", func() []vt.Buf {
			return []vt.Buf{d.Readable(header(typeIn, 0)[:8]), d.Writable(SectorSize)}
		}, statusIOErr},
		{"unsupported type", func() []vt.Buf {
			return []vt.Buf{d.Readable(header(11, 0))} // VIRTIO_BLK_T_DISCARD, not offered
		}, statusUnsupp},
	} {
		if r := submit(t, d, tc.bufs()...); r.status != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, r.status, tc.want)
		}
	}

	// Chains the device cannot answer come back untouched, with length 0.
	status := d.Writable(1)
	if _, err := d.Queue(0).Offer(d.Readable(header(typeIn, 0)), vt.Buf{Addr: 1 << 40, Len: SectorSize, Writable: true}, status); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Queue(0).Offer(d.Readable(header(typeFlush, 0))); err != nil { // no status byte
		t.Fatal(err)
	}
	d.Kick(0)
	used, err := d.WaitUsed(0, 2)
	if err != nil || len(used) != 2 || used[0].Len != 0 || used[1].Len != 0 {
		t.Fatalf("used %+v, %v; want two chains of length 0", used, err)
	}
	if d.Bytes(status)[0] != 0 {
		t.Error("the device wrote a status into a malformed chain")
	}

	// The device still works.
	if r := readSectors(t, d, 0, SectorSize); r.status != statusOK {
		t.Errorf("read after bad requests: status %d", r.status)
	}
}

// lineCounter counts the lines written into it, from any goroutine.
type lineCounter struct {
	mu sync.Mutex
	n  int
}

func (c *lineCounter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n += bytes.Count(p, []byte("\n"))
	return len(p), nil
}

func (c *lineCounter) lines() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// TestBadRequestFloodLogsBounded has a guest send thousands of requests
// the device warns about: the warnings logged are bounded by the time the
// flood took, not by its size, across resets of the device.
func TestBadRequestFloodLogsBounded(t *testing.T) {
	b, d, _ := newDevice(t, false, featureFlush)
	var logged lineCounter
	b.Logger = slog.New(slog.NewTextHandler(&logged, nil))

	// The buffers are reused: the device only reads and writes them.
	pastEnd := d.Readable(header(typeIn, testSectors))
	data := d.Writable(SectorSize)
	status := d.Writable(1)
	noStatus := d.Readable(header(typeFlush, 0))

	const rounds = 40
	requests := 0
	start := time.Now()
	for round := range rounds {
		// The Logger is read at activation, as a reset-and-restart loop
		// of a hostile driver would have it read again and again.
		d.Reset()
		if err := d.Start(featureFlush, 1); err != nil {
			t.Fatal(err)
		}
		n := 0
		for ; n < queueSize/3; n++ {
			bufs := []vt.Buf{pastEnd, data, status}
			if (round+n)%2 == 0 {
				bufs = []vt.Buf{noStatus}
			}
			if _, err := d.Queue(0).Offer(bufs...); err != nil {
				t.Fatal(err)
			}
		}
		d.Kick(0)
		if used, err := d.WaitUsed(0, n); err != nil || len(used) != n {
			t.Fatalf("round %d: used %d of %d, %v", round, len(used), n, err)
		}
		requests += n
	}
	elapsed := time.Since(start)

	// Each second the flood lasted, or part of one, starts at most one
	// interval of the limiter: warnsPerSecond warnings and a count of
	// those suppressed.
	bound := (int(elapsed/time.Second) + 1) * (warnsPerSecond + 1)
	if got := logged.lines(); got > bound || got == 0 {
		t.Errorf("%d bad requests in %v logged %d lines, want 1 to %d", requests, elapsed, got, bound)
	}
}

func TestReadOnly(t *testing.T) {
	_, d, path := newDevice(t, true, featureFlush)
	if d.DeviceFeatures()&featureRO == 0 {
		t.Error("VIRTIO_BLK_F_RO not offered")
	}
	before, _ := os.ReadFile(path)
	if r := writeSectors(t, d, 0, make([]byte, SectorSize)); r.status != statusIOErr {
		t.Errorf("write: status %d, want IOERR", r.status)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("a read-only image changed")
	}
	if r := readSectors(t, d, 2, SectorSize); r.status != statusOK || !bytes.Equal(r.data, before[2*SectorSize:3*SectorSize]) {
		t.Errorf("read: status %d", r.status)
	}
	if r := submit(t, d, d.Readable(header(typeFlush, 0))); r.status != statusOK {
		t.Errorf("flush: status %d", r.status)
	}
}

// TestBatch offers many requests at once: one kick, every request
// completed, and at least one interrupt.
func TestBatch(t *testing.T) {
	_, d, path := newDevice(t, false, featureFlush)
	img, _ := os.ReadFile(path)
	const n = queueSize / 2 // two descriptors each
	var data []vt.Buf
	for i := range n {
		w := d.Writable(SectorSize)
		data = append(data, w)
		status := d.Writable(1)
		if _, err := d.Queue(0).Offer(d.Readable(header(typeIn, uint64(i%testSectors))), w, status); err != nil {
			t.Fatal(err)
		}
		if i == n/2-1 {
			// Half of them do not fit: the rest go in after these return.
			d.Kick(0)
			if _, err := d.WaitUsed(0, n/2); err != nil {
				t.Fatal(err)
			}
		}
	}
	d.Kick(0)
	if used, err := d.WaitUsed(0, n/2); err != nil || len(used) != n/2 {
		t.Fatalf("used %d, %v", len(used), err)
	}
	for i, w := range data {
		s := i % testSectors
		if !bytes.Equal(d.Bytes(w), img[s*SectorSize:(s+1)*SectorSize]) {
			t.Fatalf("request %d read the wrong data", i)
		}
	}
}

func TestResetAndClose(t *testing.T) {
	b, d, _ := newDevice(t, false, featureFlush)
	if r := readSectors(t, d, 0, SectorSize); r.status != statusOK {
		t.Fatalf("status %d", r.status)
	}
	d.Reset()
	d.Kick(0) // ignored: not active
	if err := d.Start(featureFlush, 1); err != nil {
		t.Fatal(err)
	}
	if r := readSectors(t, d, 1, SectorSize); r.status != statusOK {
		t.Fatalf("after reset: status %d", r.status)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(featureFlush, 1); err == nil {
		t.Error("a closed device started")
	}
}
