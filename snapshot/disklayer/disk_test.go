package disklayer

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// testDisk is a helper that names tops and sealed layers in a temporary
// directory.
type testDisk struct {
	t   *testing.T
	dir string
	n   int
}

func newTestDisk(t *testing.T) *testDisk { return &testDisk{t: t, dir: t.TempDir()} }

func (td *testDisk) path(prefix string) string {
	td.n++
	return filepath.Join(td.dir, fmt.Sprintf("%s%d", prefix, td.n))
}

func (td *testDisk) base(b []byte) string {
	p := td.path("base")
	if err := os.WriteFile(p, b, 0o444); err != nil {
		td.t.Fatal(err)
	}
	return p
}

func (td *testDisk) open(l Layout) *Disk {
	td.t.Helper()
	d, err := Open(l, td.path("top"))
	if err != nil {
		td.t.Fatal(err)
	}
	td.t.Cleanup(func() { d.Close() })
	return d
}

func (td *testDisk) seal(d *Disk) Info {
	td.t.Helper()
	info, err := d.Seal(td.path("top"))
	if err != nil {
		td.t.Fatal(err)
	}
	return info
}

func random(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func mustWrite(t *testing.T, d *Disk, p []byte, off int64) {
	t.Helper()
	if n, err := d.WriteAt(p, off); err != nil || n != len(p) {
		t.Fatalf("WriteAt(%d bytes, %d) = %d, %v", len(p), off, n, err)
	}
}

func contents(t *testing.T, d *Disk) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if n, err := d.ReadAt(b, 0); err != nil || n != len(b) {
		t.Fatalf("ReadAt whole disk = %d, %v", n, err)
	}
	return b
}

func TestReadWriteSeal(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	td := newTestDisk(t)
	const size = 10*BlockSize + 100     // a short last block
	base := random(rng, size-BlockSize) // a base shorter than the disk
	d := td.open(Layout{Base: td.base(base), Size: size})
	model := append(bytes.Clone(base), make([]byte, BlockSize)...)
	if got := contents(t, d); !bytes.Equal(got, model) {
		t.Fatal("fresh disk differs from its base")
	}
	write := func(off int64, n int) {
		p := random(rng, n)
		mustWrite(t, d, p, off)
		copy(model[off:], p)
	}
	write(10, 5)                      // partial block: copy up
	write(BlockSize, BlockSize)       // a whole block
	write(3*BlockSize-7, 2*BlockSize) // unaligned, across blocks
	write(size-50, 50)                // the short last block, partly
	if got := contents(t, d); !bytes.Equal(got, model) {
		t.Fatal("disk differs from the model after writes")
	}
	info := td.seal(d)
	if info.Blocks != 6 || info.DataBytes != 6*BlockSize || info.Size != size {
		t.Errorf("sealed info = %+v", info)
	}
	st, err := os.Stat(info.Path)
	if err != nil || st.Mode().Perm() != 0o444 {
		t.Errorf("sealed layer mode %v (%v), want read-only", st.Mode(), err)
	}
	l, err := OpenLayer(info.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Verify(); err != nil {
		t.Fatal(err)
	}
	if l.Checksum() != info.Checksum {
		t.Errorf("checksum %08x, Seal said %08x", l.Checksum(), info.Checksum)
	}
	// Blocks 0 (copied up), 1, 2-4 (copied up at both ends) and 10.
	if got := l.Extents(); fmt.Sprint(got) != fmt.Sprint([]Extent{{Start: 0, Count: 5}, {Start: 10, Count: 1}}) {
		t.Errorf("extents = %v", got)
	}
	// Writes after the seal go to the new top; the disk still reads right.
	write(0, 3)
	if got := contents(t, d); !bytes.Equal(got, model) {
		t.Fatal("disk differs from the model after the seal")
	}
	// Reading and writing at and past the end.
	if n, err := d.ReadAt(make([]byte, 10), size-5); n != 5 || err == nil {
		t.Errorf("ReadAt across the end = %d, %v; want 5, io.EOF", n, err)
	}
	if _, err := d.WriteAt(make([]byte, 10), size-5); err == nil {
		t.Error("WriteAt across the end succeeded")
	}
	if got := contents(t, d); !bytes.Equal(got, model) {
		t.Fatal("a failed write changed the disk")
	}
}

// TestForkIsolation: two tops over one sealed chain do not see each other's
// writes, and the sealed chain is unchanged by either.
func TestForkIsolation(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	td := newTestDisk(t)
	const size = 16 * BlockSize
	baseImg := random(rng, size)
	base := td.base(baseImg)
	parent := td.open(Layout{Base: base})
	mustWrite(t, parent, []byte("parent before fork"), 100)
	l1 := td.seal(parent)
	child := td.open(Layout{Base: base, Layers: []string{l1.Path}})
	atFork := contents(t, parent)
	if !bytes.Equal(contents(t, child), atFork) {
		t.Fatal("child differs from parent at fork")
	}
	mustWrite(t, parent, []byte("PARENT"), 100)
	mustWrite(t, child, []byte("CHILD!"), 100)
	mustWrite(t, child, bytes.Repeat([]byte{7}, BlockSize), 5*BlockSize)
	pw, cw := contents(t, parent), contents(t, child)
	if string(pw[100:106]) != "PARENT" || string(cw[100:106]) != "CHILD!" {
		t.Fatalf("parent reads %q, child %q", pw[100:106], cw[100:106])
	}
	if !bytes.Equal(pw[5*BlockSize:6*BlockSize], atFork[5*BlockSize:6*BlockSize]) {
		t.Fatal("the child's write reached the parent")
	}
	// A third disk over the same chain still sees the chain as sealed.
	other := td.open(Layout{Base: base, Layers: []string{l1.Path}})
	if !bytes.Equal(contents(t, other), atFork) {
		t.Fatal("the sealed chain changed after fork")
	}
	// And both sides can seal and fork again.
	c2 := td.seal(child)
	grandchild := td.open(Layout{Base: base, Layers: []string{l1.Path, c2.Path}})
	if !bytes.Equal(contents(t, grandchild), cw) {
		t.Fatal("grandchild differs from child")
	}
}

// TestModel runs random reads, writes, seals, reopens and a compaction
// against a plain byte slice.
func TestModel(t *testing.T) {
	for seed := uint64(0); seed < 6; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			td := newTestDisk(t)
			size := int64(1+rng.IntN(40))*BlockSize - int64(rng.IntN(2))*int64(rng.IntN(BlockSize))
			var layout Layout
			model := make([]byte, size)
			if rng.IntN(2) == 0 {
				b := random(rng, int(size)-rng.IntN(int(size)))
				copy(model, b)
				layout.Base = td.base(b)
			}
			layout.Size = size
			d := td.open(layout)
			sealedModel := bytes.Clone(model) // the disk as of the last seal
			for op := 0; op < 300; op++ {
				switch k := rng.IntN(20); {
				case k < 10:
					off := rng.Int64N(size)
					n := rng.IntN(int(min(size-off, 3*BlockSize))) + 1
					p := random(rng, n)
					if rng.IntN(4) == 0 {
						clear(p) // zeros: some need not be stored
					}
					mustWrite(t, d, p, off)
					copy(model[off:], p)
				case k < 17:
					off := rng.Int64N(size + 10)
					n := rng.IntN(3 * BlockSize)
					got := make([]byte, n)
					k, err := d.ReadAt(got, off)
					want := model[min(off, size):min(off+int64(n), size)]
					if k != len(want) || !bytes.Equal(got[:k], want) || (k < n) != (err != nil) {
						t.Fatalf("op %d: ReadAt(%d, %d) = %d, %v: content differs", op, n, off, k, err)
					}
				case k < 19:
					info := td.seal(d)
					layout.Layers = append(layout.Layers, info.Path)
					sealedModel = bytes.Clone(model)
				default:
					// What a restore sees: the chain as of the last seal.
					if err := d.Close(); err != nil {
						t.Fatal(err)
					}
					d = td.open(layout)
					model = bytes.Clone(sealedModel)
				}
			}
			if !bytes.Equal(contents(t, d), model) {
				t.Fatal("final content differs from the model")
			}
			if len(layout.Layers) == 0 {
				return
			}
			// Compaction reads exactly as the chain does.
			var chain []*Layer
			for _, p := range layout.Layers {
				l, err := OpenLayer(p)
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				chain = append(chain, l)
			}
			info, err := Compact(chain, td.path("compact"))
			if err != nil {
				t.Fatal(err)
			}
			c := td.open(Layout{Base: layout.Base, Layers: []string{info.Path}, Size: size})
			if !bytes.Equal(contents(t, c), sealedModel) {
				t.Fatal("compacted chain differs from the chain")
			}
			for _, l := range chain {
				if err := l.Verify(); err != nil {
					t.Fatalf("compaction disturbed a layer: %v", err)
				}
			}
		})
	}
}

// Zeros written over blocks that read as zeros because nothing holds
// them (past the base, in no layer) are not stored; zeros over anything
// else are, and every block reads what was written last.
func TestZeroWrites(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	td := newTestDisk(t)
	const size = 8 * BlockSize
	base := random(rng, 2*BlockSize)
	d := td.open(Layout{Base: td.base(base), Size: size})
	model := append(bytes.Clone(base), make([]byte, size-len(base))...)
	write := func(p []byte, off int64) {
		mustWrite(t, d, p, off)
		copy(model[off:], p)
	}
	zeros := func(n int) []byte { return make([]byte, n) }
	write(zeros(2*BlockSize), 4*BlockSize)                                        // past the base: not stored
	write(zeros(BlockSize), BlockSize)                                            // over the base: stored
	write(random(rng, BlockSize), 6*BlockSize)                                    // data past the base
	write(zeros(10), 7*BlockSize+5)                                               // part of a block: copied up, stored
	write(append(random(rng, 10), zeros(BlockSize+BlockSize-10)...), 2*BlockSize) // 2 stored, 3 not
	info := td.seal(d)
	if info.Blocks != 4 {
		t.Errorf("sealed %d blocks, want 4 (1, 2, 6, 7)", info.Blocks)
	}
	l, err := OpenLayer(info.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := fmt.Sprint(l.Extents()); got != fmt.Sprint([]Extent{{Start: 1, Count: 2}, {Start: 6, Count: 2}}) {
		t.Errorf("extents %s", got)
	}
	// Zeros over a block a layer holds are stored, in the new top.
	write(zeros(BlockSize), 6*BlockSize)
	if got := contents(t, d); !bytes.Equal(got, model) {
		t.Fatal("disk differs from the model")
	}
	if info := td.seal(d); info.Blocks != 1 {
		t.Errorf("zeros over a layer's block: sealed %d blocks, want 1", info.Blocks)
	}
	if got := contents(t, d); !bytes.Equal(got, model) {
		t.Fatal("disk differs from the model after the seal")
	}
}

func TestNoBase(t *testing.T) {
	td := newTestDisk(t)
	if _, err := Open(Layout{}, td.path("top")); err == nil {
		t.Error("Open without base, layers or size succeeded")
	}
	d := td.open(Layout{Size: 3 * BlockSize})
	if got := contents(t, d); !bytes.Equal(got, make([]byte, 3*BlockSize)) {
		t.Error("a disk without base does not read zeros")
	}
	mustWrite(t, d, []byte{1, 2, 3}, BlockSize+1)
	got := contents(t, d)
	if got[BlockSize] != 0 || got[BlockSize+1] != 1 || got[BlockSize+4] != 0 {
		t.Errorf("partial write without base: %v", got[BlockSize:BlockSize+5])
	}
	info := td.seal(d)
	// The layer gives its size to a disk opened over it.
	e := td.open(Layout{Layers: []string{info.Path}})
	if e.Size() != 3*BlockSize || !bytes.Equal(contents(t, e), got) {
		t.Error("reopened disk differs")
	}
	if _, err := Open(Layout{Layers: []string{info.Path}, Size: 4 * BlockSize}, td.path("top")); err == nil {
		t.Error("Open accepted a layer of another size")
	}
}

func TestTopLifecycle(t *testing.T) {
	td := newTestDisk(t)
	top := td.path("top")
	d, err := Open(Layout{Size: BlockSize}, top)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Layout{Size: BlockSize}, top); err == nil {
		t.Error("two disks opened one top")
	}
	// An unsealed top is not a layer.
	if _, err := OpenLayer(top); err == nil || !errors.Is(err, ErrCorrupt) {
		t.Errorf("OpenLayer(top) = %v, want ErrCorrupt", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(top); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left the top: %v", err)
	}
	if _, err := d.ReadAt(make([]byte, 1), 0); err == nil {
		t.Error("ReadAt after Close succeeded")
	}
	if _, err := d.Seal(td.path("top")); err == nil {
		t.Error("Seal after Close succeeded")
	}
}

// TestConcurrentSeal writes and reads on one goroutine while another
// seals, and checks the chain as a whole. Run with -race.
func TestConcurrentSeal(t *testing.T) {
	td := newTestDisk(t)
	const size = 64 * BlockSize
	d := td.open(Layout{Size: size})
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		sealed []string
		tops   []string
	)
	for i := 0; i < 8; i++ {
		tops = append(tops, td.path("top"))
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, p := range tops {
			info, err := d.Seal(p)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			sealed = append(sealed, info.Path)
			mu.Unlock()
		}
	}()
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := 0; i < 400; i++ {
		off := rng.Int64N(size - 100)
		p := random(rng, 1+rng.IntN(100))
		mustWrite(t, d, p, off)
		copy(model[off:], p)
		got := make([]byte, len(p))
		if _, err := d.ReadAt(got, off); err != nil || !bytes.Equal(got, p) {
			t.Fatalf("read back differs (%v)", err)
		}
		if i%50 == 0 {
			if err := d.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
	wg.Wait()
	if !bytes.Equal(contents(t, d), model) {
		t.Fatal("disk differs from the model")
	}
	info := td.seal(d)
	check := td.open(Layout{Layers: append(sealed, info.Path)})
	if !bytes.Equal(contents(t, check), model) {
		t.Fatal("the sealed chain differs from the model")
	}
}

// SwitchTop only swaps the top (a checkpoint does it with its guest
// stopped): the layer it returns is not sealed yet, no index or checksum
// written, whatever it holds; the disk reads and writes right meanwhile;
// FinishSeal then seals it exactly as Seal would, and again does nothing.
func TestSwitchTopThenFinishSeal(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	td := newTestDisk(t)
	const size = 64 * BlockSize
	d := td.open(Layout{Size: size})
	model := make([]byte, size)
	write := func(off int64, n int) {
		p := random(rng, n)
		mustWrite(t, d, p, off)
		copy(model[off:], p)
	}
	write(0, 40*BlockSize)
	l, err := d.SwitchTop(td.path("top"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLayer(l.path); err == nil {
		t.Error("the switched-out top is a sealed layer already: SwitchTop did the seal's work")
	}
	write(BlockSize/2, BlockSize) // to the new top
	if got := contents(t, d); !bytes.Equal(got, model) {
		t.Fatal("disk differs from the model between SwitchTop and FinishSeal")
	}
	info, err := d.FinishSeal(l)
	if err != nil {
		t.Fatal(err)
	}
	if info.Blocks != 40 || info.Path != l.path {
		t.Errorf("sealed info = %+v, want 40 blocks at %s", info, l.path)
	}
	sealed, err := OpenLayer(info.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer sealed.Close()
	if err := sealed.Verify(); err != nil || sealed.Checksum() != info.Checksum {
		t.Errorf("sealed layer: verify %v, checksum %08x, FinishSeal said %08x", err, sealed.Checksum(), info.Checksum)
	}
	if again, err := d.FinishSeal(l); err != nil || again != info {
		t.Errorf("second FinishSeal = %+v, %v; want %+v", again, err, info)
	}
	if next := td.seal(d); next.Blocks != 2 {
		t.Errorf("next seal = %+v, want the 2 blocks written after the switch", next)
	}
	if got := contents(t, d); !bytes.Equal(got, model) {
		t.Fatal("disk differs from the model after the seals")
	}
}
