package snapshot

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/snapshot/disklayer"
	"github.com/sailbox-dev/sailbox/snapshot/layerstore"
	"github.com/sailbox-dev/sailbox/snapshot/memlayer"
)

// box is a toy VM for the store tests: guest memory as a byte slice with a
// dirty bitmap, and one layered disk.
type box struct {
	t      *testing.T
	root   *Root
	name   string
	mem    []byte
	dirty  []uint64
	disk   *disklayer.Disk
	diskSz int64
	base   string
	tops   int
	last   *Manifest // the last checkpoint
	rng    *rand.Rand
}

const (
	testMemSize  = 64 * memlayer.PageSize
	testDiskSize = 32 * disklayer.BlockSize
)

func newBox(t *testing.T, root *Root, name string) *box {
	b := &box{t: t, root: root, name: name, mem: make([]byte, testMemSize), dirty: make([]uint64, 1), diskSz: testDiskSize, rng: rand.New(rand.NewPCG(1, 2))}
	b.base = filepath.Join(t.TempDir(), "base.img")
	img := make([]byte, testDiskSize/2)
	for i := range img {
		img[i] = byte(i * 13)
	}
	if err := os.WriteFile(b.base, img, 0o444); err != nil {
		t.Fatal(err)
	}
	d, err := disklayer.Open(disklayer.Layout{Base: b.base, Size: testDiskSize}, b.nextTop())
	if err != nil {
		t.Fatal(err)
	}
	b.disk = d
	t.Cleanup(func() { b.disk.Close() })
	return b
}

func (b *box) nextTop() string {
	b.tops++
	return b.root.TopPath(fmt.Sprintf("%s-vda-%d", b.name, b.tops))
}

// run dirties some memory pages and disk blocks.
func (b *box) run() {
	for range 10 {
		pfn := b.rng.IntN(testMemSize / memlayer.PageSize)
		off := pfn*memlayer.PageSize + b.rng.IntN(memlayer.PageSize-8)
		copy(b.mem[off:], fmt.Sprintf("%08d", b.rng.IntN(1e8)))
		b.dirty[pfn/64] |= 1 << (pfn % 64)
	}
	for range 5 {
		p := []byte(fmt.Sprintf("disk %d", b.rng.IntN(1e6)))
		if _, err := b.disk.WriteAt(p, b.rng.Int64N(testDiskSize-int64(len(p)))); err != nil {
			b.t.Fatal(err)
		}
	}
}

// checkpoint writes checkpoint id the way the VMM does.
func (b *box) checkpoint(id string) *Manifest {
	t := b.t
	p, err := b.root.Begin(id)
	if err != nil {
		t.Fatal(err)
	}
	w, err := memlayer.Create(p.StagingPath("memory"))
	if err != nil {
		t.Fatal(err)
	}
	err = w.WriteDirty(0, b.dirty, func(pfn uint64, dst []byte) error {
		copy(dst, b.mem[pfn*memlayer.PageSize:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	info, err := w.Finish()
	if err != nil {
		t.Fatal(err)
	}
	dirtied := int64(0)
	for _, w := range b.dirty {
		dirtied += int64(popcount(w)) * memlayer.PageSize
	}
	if info.DataBytes > dirtied*105/100 {
		t.Errorf("memory layer data %d bytes for %d dirtied", info.DataBytes, dirtied)
	}
	clear(b.dirty)
	mem, err := p.AddMemoryLayer(id+"-mem", info)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := b.disk.Seal(b.nextTop())
	if err != nil {
		t.Fatal(err)
	}
	vda, err := p.AddDiskLayer(id+"-vda", sealed)
	if err != nil {
		t.Fatal(err)
	}
	host := CPU{Vendor: "AuthenticAMD", Family: 0x17, Model: 0x31}
	m := &Manifest{
		ID: id, Created: time.Now(), VMMVersion: "test", GuestSchemaVersion: 1,
		HostCPU: host, MemorySize: testMemSize, VCPUs: 1,
		Memory: []LayerRef{mem},
		Disks:  map[string]DiskChain{"vda": {Base: b.base, BaseSize: testDiskSize / 2, Size: testDiskSize, Layers: []LayerRef{vda}}},
		State:  map[string][]byte{"vcpu/0": []byte("regs of " + id)},
	}
	if b.last != nil {
		m.Parent = b.last.ID
		m.Memory = append(slices.Clone(b.last.Memory), mem)
		m.Disks["vda"] = DiskChain{Base: b.base, BaseSize: testDiskSize / 2, Size: testDiskSize, Layers: append(slices.Clone(b.last.Disks["vda"].Layers), vda)}
	}
	if err := p.Commit(m); err != nil {
		t.Fatal(err)
	}
	b.last = m
	return m
}

func popcount(w uint64) int {
	n := 0
	for ; w != 0; w &= w - 1 {
		n++
	}
	return n
}

func (b *box) diskContents(d *disklayer.Disk) []byte {
	buf := make([]byte, d.Size())
	if _, err := d.ReadAt(buf, 0); err != nil {
		b.t.Fatal(err)
	}
	return buf
}

// restore loads checkpoint id and checks it against want memory and disk.
func restore(t *testing.T, root *Root, id string, wantMem, wantDisk []byte, top string) *disklayer.Disk {
	t.Helper()
	m, err := root.Load(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Compatible(CPU{Vendor: "AuthenticAMD", Family: 0x17, Model: 0x31}); err != nil {
		t.Fatal(err)
	}
	chain, err := root.OpenMemory(m)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, l := range chain {
			l.Close()
		}
	}()
	view, err := memlayer.NewView(chain, m.MemorySize)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, m.MemorySize)
	if _, err := view.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, wantMem) {
		t.Fatalf("checkpoint %s: restored memory differs", id)
	}
	d, err := root.OpenDisk(m, "vda", top)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	buf := make([]byte, d.Size())
	if _, err := d.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, wantDisk) {
		t.Fatalf("checkpoint %s: restored disk differs", id)
	}
	return d
}

func eachStore(t *testing.T, fn func(t *testing.T, root *Root)) {
	t.Run("dir", func(t *testing.T) {
		root, err := OpenRoot(t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		fn(t, root)
	})
	t.Run("zstd", func(t *testing.T) {
		dir := t.TempDir()
		s, err := layerstore.NewZstd(filepath.Join(dir, "layers"), filepath.Join(dir, "cache"))
		if err != nil {
			t.Fatal(err)
		}
		root, err := OpenRoot(dir, s)
		if err != nil {
			t.Fatal(err)
		}
		fn(t, root)
	})
}

// TestCheckpointRestoreForkCompact runs a box through two checkpoints,
// restores each, forks, and compacts.
func TestCheckpointRestoreForkCompact(t *testing.T) {
	eachStore(t, func(t *testing.T, root *Root) {
		b := newBox(t, root, "box1")
		b.run()
		b.checkpoint("c1")
		mem1, disk1 := bytes.Clone(b.mem), b.diskContents(b.disk)
		b.run()
		b.checkpoint("c2")
		mem2, disk2 := bytes.Clone(b.mem), b.diskContents(b.disk)
		b.run() // not in any checkpoint

		restore(t, root, "c1", mem1, disk1, root.TopPath("r1"))
		child := restore(t, root, "c2", mem2, disk2, root.TopPath("child"))
		other := restore(t, root, "c2", mem2, disk2, root.TopPath("other"))
		// Forks over one chain are isolated.
		if _, err := child.WriteAt([]byte("child only"), 0); err != nil {
			t.Fatal(err)
		}
		if got := b.diskContents(other); !bytes.Equal(got, disk2) {
			t.Fatal("a sibling saw the child's write")
		}

		ids, err := root.List()
		if err != nil || !slices.Equal(ids, []string{"c1", "c2"}) {
			t.Fatalf("List = %v, %v", ids, err)
		}
		m2, err := root.Load("c2")
		if err != nil {
			t.Fatal(err)
		}
		if m2.Parent != "c1" || len(m2.Memory) != 2 || string(m2.State["vcpu/0"]) != "regs of c2" {
			t.Errorf("c2 manifest: %+v", m2)
		}

		c3, err := root.Compact("c2", "c2z")
		if err != nil {
			t.Fatal(err)
		}
		if len(c3.Memory) != 1 || len(c3.Disks["vda"].Layers) != 1 || !reflect.DeepEqual(c3.State, m2.State) {
			t.Errorf("compacted manifest: %+v", c3)
		}
		restore(t, root, "c2z", mem2, disk2, root.TopPath("rz"))
		// The old chain is untouched and still restores.
		restore(t, root, "c2", mem2, disk2, root.TopPath("r2"))
	})
}

// TestCompactOnto merges a chain's layers above an ancestor's, which stay
// shared: the new checkpoint restores as the old one did, and its parent
// is the ancestor.
func TestCompactOnto(t *testing.T) {
	eachStore(t, func(t *testing.T, root *Root) {
		b := newBox(t, root, "box1")
		b.run()
		b.checkpoint("tpl") // the template every box builds on
		for _, id := range []string{"c1", "c2", "c3"} {
			b.run()
			b.checkpoint(id)
		}
		mem3, disk3 := bytes.Clone(b.mem), b.diskContents(b.disk)
		tpl, err := root.Load("tpl")
		if err != nil {
			t.Fatal(err)
		}
		m3, err := root.Load("c3")
		if err != nil {
			t.Fatal(err)
		}
		z, err := root.CompactOnto("c3", "c3z", "tpl")
		if err != nil {
			t.Fatal(err)
		}
		if z.Parent != "tpl" || len(z.Memory) != 2 || z.Memory[0] != tpl.Memory[0] || z.Memory[1] == m3.Memory[3] {
			t.Errorf("memory chain %+v (parent %q), want tpl's layer then one new one", z.Memory, z.Parent)
		}
		if l := z.Disks["vda"].Layers; len(l) != 2 || l[0] != tpl.Disks["vda"].Layers[0] {
			t.Errorf("disk chain %+v, want tpl's layer then one new one", l)
		}
		restore(t, root, "c3z", mem3, disk3, root.TopPath("rz"))
		// Checkpoints chained onto the compacted one read through it.
		if _, err := root.CompactOnto("c3z", "c3zz", "tpl"); err != nil {
			t.Fatal(err)
		}
		restore(t, root, "c3zz", mem3, disk3, root.TopPath("rzz"))
		// Onto a checkpoint whose chains are not all a prefix (c1's
		// memory layer is not c3z's): what the two share stays, the
		// rest is merged, and there is no parent.
		o, err := root.CompactOnto("c3", "c3o", "c3z")
		if err != nil {
			t.Fatal(err)
		}
		if o.Parent != "" || len(o.Memory) != 2 || o.Memory[0] != tpl.Memory[0] {
			t.Errorf("compacted onto a non-ancestor: memory %+v, parent %q; want tpl's layer then one, no parent", o.Memory, o.Parent)
		}
		restore(t, root, "c3o", mem3, disk3, root.TopPath("ro"))
	})
}

func TestNeverOverwrite(t *testing.T) {
	root, err := OpenRoot(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	m := &Manifest{ID: "c1", MemorySize: 4096, VCPUs: 1, VMMVersion: "first"}
	p, err := root.Begin("c1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.Begin("c1"); err == nil || errors.Is(err, ErrExists) {
		t.Errorf("Begin of a checkpoint in progress = %v, want an in-progress error", err)
	}
	if err := p.Commit(m); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Begin("c1"); !errors.Is(err, ErrExists) {
		t.Errorf("Begin of a completed checkpoint = %v, want ErrExists", err)
	}
	// A manifest that appears under a pending checkpoint (a racing
	// writer) is not replaced either.
	p2, err := root.Begin("c2")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root.checkpointDir("c2"), manifestName), []byte("other"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := p2.Commit(&Manifest{ID: "c2", MemorySize: 4096, VCPUs: 1}); !errors.Is(err, ErrExists) {
		t.Errorf("Commit over an existing manifest = %v, want ErrExists", err)
	}
	if b, _ := os.ReadFile(filepath.Join(root.checkpointDir("c2"), manifestName)); string(b) != "other" {
		t.Error("Commit replaced an existing manifest")
	}
	got, err := root.Load("c1")
	if err != nil || got.VMMVersion != "first" {
		t.Errorf("Load(c1) = %+v, %v", got, err)
	}
	if _, err := root.Load("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Load(nope) = %v, want ErrNotFound", err)
	}
	if err := p.Commit(m); err == nil {
		t.Error("a second Commit succeeded")
	}
}

// TestCommitChecksLayers: a manifest referencing a layer the store lacks,
// or with the wrong size, is not committed.
func TestCommitChecksLayers(t *testing.T) {
	root, err := OpenRoot(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := root.Begin("c1")
	if err != nil {
		t.Fatal(err)
	}
	m := &Manifest{ID: "c1", MemorySize: 4096, VCPUs: 1, Memory: []LayerRef{{ID: "missing", Size: 4096}}}
	if err := p.Commit(m); !errors.Is(err, layerstore.ErrNotFound) {
		t.Errorf("Commit = %v, want ErrNotFound for the layer", err)
	}
	if err := p.Abort(); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Load("c1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("an aborted checkpoint exists: %v", err)
	}
	if _, err := os.Stat(root.checkpointDir("c1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Abort left the directory: %v", err)
	}
}

// TestRestoreDetectsSwappedLayer: a layer whose checksum differs from the
// manifest's is refused at restore.
func TestRestoreDetectsSwappedLayer(t *testing.T) {
	root, err := OpenRoot(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	b := newBox(t, root, "b")
	b.run()
	b.checkpoint("c1")
	m, err := root.Load("c1")
	if err != nil {
		t.Fatal(err)
	}
	m.Memory[0].Checksum ^= 1
	if _, err := root.OpenMemory(m); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "memory layer 0") {
		t.Errorf("OpenMemory = %v, want ErrCorrupt naming memory layer 0", err)
	}
	m.Disks["vda"].Layers[0].Checksum ^= 1
	if _, err := root.OpenDisk(m, "vda", root.TopPath("x")); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), `disk "vda" layer 0`) {
		t.Errorf("OpenDisk = %v, want ErrCorrupt naming the disk layer", err)
	}
}

// TestClean: debris goes, live work and completed checkpoints stay.
func TestClean(t *testing.T) {
	dir := t.TempDir()
	root, err := OpenRoot(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	root.SetLogger(slog.New(slog.NewTextHandler(&log, nil)))
	b := newBox(t, root, "live") // holds its top
	b.run()
	b.checkpoint("done")

	// A checkpoint whose writer died: its directory lock is gone.
	crashed, err := root.Begin("crashed")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crashed.StagingPath("memory"), []byte("half a layer"), 0o644); err != nil {
		t.Fatal(err)
	}
	crashed.lock.Close() // what the kernel does when the process dies
	// A checkpoint in progress.
	inflight, err := root.Begin("inflight")
	if err != nil {
		t.Fatal(err)
	}
	defer inflight.Abort()
	// A leftover temporary file in a completed checkpoint.
	stray := filepath.Join(root.checkpointDir("done"), "manifest.tmp")
	if err := os.WriteFile(stray, []byte("half a manifest"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A dead box's top, and a dead Put's temporary layer file.
	deadTop := root.TopPath("dead-vda-1")
	if err := os.WriteFile(deadTop, []byte("a top's header"), 0o644); err != nil {
		t.Fatal(err)
	}
	deadTmp := filepath.Join(dir, "layers", ".tmp-999")
	if err := os.WriteFile(deadTmp, []byte("half a layer"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Files created an instant ago, whose writers are about to lock them.
	newTop := root.TopPath("new-vda-1")
	newTmp := filepath.Join(dir, "layers", ".tmp-1000")
	for _, p := range []string{newTop, newTmp} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	removed, err := root.Clean()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{root.checkpointDir("crashed"), stray, deadTmp, deadTop}
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Errorf("Clean removed\n%v\nwant\n%v", removed, want)
	}
	if _, err := root.Load("done"); err != nil {
		t.Errorf("Clean broke a completed checkpoint: %v", err)
	}
	if n := strings.Count(log.String(), "checkpoint removed from the store"); n != 1 || !strings.Contains(log.String(), "checkpoint=crashed why=\"debris:") {
		t.Errorf("Clean's log of the checkpoints it removed:\n%s", log.String())
	}
	if _, err := os.Stat(root.checkpointDir("inflight")); err != nil {
		t.Errorf("Clean removed a checkpoint in progress: %v", err)
	}
	for _, p := range []string{newTop, newTmp} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("Clean removed a file just created: %v", err)
		}
		os.Remove(p)
	}
	if _, err := b.disk.WriteAt([]byte("still fine"), 0); err != nil {
		t.Errorf("Clean broke a live disk: %v", err)
	}
	b.checkpoint("after")
	if removed, err := root.Clean(); err != nil || len(removed) != 0 {
		t.Errorf("second Clean removed %v, %v", removed, err)
	}
}

// cleanLoop runs root.Clean over and over, beside what a test does, until
// the stop it returns is called; stop returns Clean's error, if any.
func cleanLoop(root *Root) (stop func() error) {
	done := make(chan struct{})
	cleaned := make(chan error, 1)
	go func() {
		for {
			select {
			case <-done:
				cleaned <- nil
				return
			default:
			}
			if _, err := root.Clean(); err != nil {
				cleaned <- err
				return
			}
		}
	}()
	return func() error {
		close(done)
		return <-cleaned
	}
}

// TestCleanBesideCommits: a Clean running while checkpoints commit never
// removes one that completed. Clean used to decide that a directory was
// debris from a look for its manifest taken before the directory's lock,
// so a commit finishing between the two lost its manifest.
func TestCleanBesideCommits(t *testing.T) {
	root, err := OpenRoot(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 60
	stopCleaning := cleanLoop(root)
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			for i := range each {
				id := fmt.Sprintf("w%d-c%d", w, i)
				p, err := root.Begin(id)
				if err == nil {
					err = p.Commit(&Manifest{ID: id, MemorySize: 4096, VCPUs: 1})
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if err := stopCleaning(); err != nil {
		t.Error(err)
	}
	ids, err := root.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != writers*each {
		t.Errorf("%d of %d committed checkpoints left after Clean ran beside their commits", len(ids), writers*each)
	}
}

// TestCleanWhileCommitFinishes: a checkpoint whose commit finishes while
// Clean looks at its directory is kept. Clean used to look for the
// manifest first and ask whether the directory was locked after, and
// removed the checkpoint that committed in between.
func TestCleanWhileCommitFinishes(t *testing.T) {
	root, err := OpenRoot(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := root.Begin("c1")
	if err != nil {
		t.Fatal(err)
	}
	committed := false
	testHookCleanDir = func(dir string) {
		if dir == root.checkpointDir("c1") && !committed {
			committed = true
			if err := p.Commit(&Manifest{ID: "c1", MemorySize: 4096, VCPUs: 1}); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(func() { testHookCleanDir = nil })
	removed, err := root.Clean()
	if err != nil {
		t.Fatal(err)
	}
	if !committed {
		t.Fatal("Clean did not look at the checkpoint in progress")
	}
	if len(removed) != 0 {
		t.Errorf("Clean removed %v", removed)
	}
	if _, err := root.Load("c1"); err != nil {
		t.Errorf("the checkpoint committed while Clean ran is gone: %v", err)
	}
}

// TestCleanBesideDisks: a Clean running while disks open and seal never
// removes a live disk's top. Clean used to ask whether a top was locked
// and then remove it, and a top is created an instant before its disk
// locks it, so a top made in between went.
func TestCleanBesideDisks(t *testing.T) {
	root, err := OpenRoot(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	const disks, seals = 4, 100
	stopCleaning := cleanLoop(root)
	errs := make(chan error, disks)
	for n := range disks {
		go func() {
			errs <- func() error {
				top := func(i int) string { return root.TopPath(fmt.Sprintf("d%d-vda-%d", n, i)) }
				d, err := disklayer.Open(disklayer.Layout{Size: testDiskSize}, top(0))
				if err != nil {
					return err
				}
				defer d.Close()
				for i := 1; i <= seals; i++ {
					if _, err := d.WriteAt([]byte("data"), int64(i)*512); err != nil {
						return err
					}
					info, err := d.Seal(top(i))
					if err != nil {
						return err
					}
					for _, p := range []string{info.Path, top(i)} {
						if _, err := os.Stat(p); err != nil {
							return fmt.Errorf("seal %d: a live disk's file is gone: %w", i, err)
						}
					}
				}
				return nil
			}()
		}()
	}
	for range disks {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if err := stopCleaning(); err != nil {
		t.Error(err)
	}
}
