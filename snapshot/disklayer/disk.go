package disklayer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"

	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
)

// BlockDevice is what the virtio-blk device needs from its back end. *Disk
// implements it; so does a plain image file wrapped with its size.
type BlockDevice interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Size() int64
}

var _ BlockDevice = (*Disk)(nil)

// Layout names what a Disk is made of, below its top.
type Layout struct {
	// Base is a read-only raw image, or "" for none: blocks in no layer
	// then read as zeros. A base shorter than the disk reads as zeros
	// past its end.
	Base string
	// Layers are sealed layer files, ordered base→top.
	Layers []string
	// Size is the virtual disk size in bytes. Zero means the layers'
	// size, or the base's when there are no layers.
	Size int64
}

// Disk is a virtual disk: a base image, a chain of sealed layers and a
// writable top. Reads take each block from the topmost of top, layers
// and base that holds it; writes go to the top only.
//
// Concurrency: ReadAt, WriteAt and Sync may be called from any goroutine
// (the virtio-blk worker) while Seal runs on another (the checkpoint).
// Lock order: sealMu before mu.
type Disk struct {
	size int64
	base *os.File // nil when there is no base; never written
	// baseSize is the base image's length; blocks past it read as zeros.
	baseSize int64

	// sealMu serializes Seal and Close, and is held for a seal's whole
	// duration so that the slow part (fsync, checksums) runs without mu.
	sealMu sync.Mutex

	// mu guards the fields below. ReadAt holds it shared; WriteAt, and
	// Seal while it swaps tops, hold it exclusively.
	mu     sync.RWMutex
	layers []*Layer // sealed chain, base→top; sealing ones included
	top    *top
	// sealing are layers already in layers whose files Seal has not
	// finished (fsync, index, header): Sync must fsync them too, and the
	// next Seal retries the ones a failed Seal left.
	sealing []*Layer
	scratch []byte // one block, for copy-up; used under mu
	closed  bool
}

// top is the writable top layer.
type top struct {
	path    string
	f       *os.File // read-write; locked (flock) for the Disk's life
	present blockSet // blocks written since the top was created
}

// Open opens a disk: the base and sealed layers of l, read-only, and a new
// top at top, which must not exist. Parent and child of a fork each Open
// their own top over the same chain.
func Open(l Layout, top string) (*Disk, error) {
	d := &Disk{scratch: make([]byte, BlockSize)}
	if err := d.open(l, top); err != nil {
		d.closeFiles()
		return nil, fmt.Errorf("open disk: %w", err)
	}
	return d, nil
}

func (d *Disk) open(l Layout, topPath string) error {
	size := l.Size
	if l.Base != "" {
		f, err := os.Open(l.Base)
		if err != nil {
			return err
		}
		d.base = f
		st, err := f.Stat()
		if err != nil {
			return err
		}
		d.baseSize = st.Size()
	}
	for _, p := range l.Layers {
		ly, err := OpenLayer(p)
		if err != nil {
			return err
		}
		d.layers = append(d.layers, ly)
		if size == 0 {
			size = ly.Size()
		}
		if ly.Size() != size {
			return fmt.Errorf("layer %s is for a disk of %d bytes, not %d", p, ly.Size(), size)
		}
	}
	if size == 0 {
		size = d.baseSize
	}
	if size <= 0 || size > MaxSize {
		return fmt.Errorf("disk size %d out of range (1 to %d): give Layout.Size or a non-empty base", size, int64(MaxSize))
	}
	d.size = size
	t, err := createTop(topPath, size)
	if err != nil {
		return err
	}
	d.top = t
	return nil
}

// createTop creates an empty top file for a disk of size bytes: a header
// marking it unsealed, and a sparse data area.
func createTop(path string, size int64) (*top, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create top: %w", err)
	}
	err = format.Lock(f)
	if err == nil {
		_, err = f.WriteAt(newHeader(stateTop, size, 0, 0, 0, 0).encode(), 0)
	}
	if err == nil {
		err = f.Truncate(dataOffset + int64(blockCount(size))*BlockSize)
	}
	if err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("create top %s: %w", path, err)
	}
	return &top{path: path, f: f}, nil
}

// Size returns the virtual disk size in bytes.
func (d *Disk) Size() int64 { return d.size }

// blockLen is the length of block b: BlockSize but for a short last block.
func (d *Disk) blockLen(b uint64) int64 {
	return min(BlockSize, d.size-int64(b)*BlockSize)
}

// source says where block b is read from: the top (layer == -1), sealed
// layer i, the base (f == d.base) or nowhere (f nil: zeros). run > 0 is
// how many blocks from b on come from the same place, capped at
// maxRunBlocks. It runs under mu, shared or exclusive.
func (d *Disk) source(b uint64) (f *os.File, layer int, run uint64) {
	if d.top.present.has(b) {
		run = 1
		for run < maxRunBlocks && d.top.present.has(b+run) {
			run++
		}
		return d.top.f, -1, run
	}
	run = 1
	for run < maxRunBlocks && !d.top.present.has(b+run) {
		run++
	}
	// The topmost layer holding b wins; a run from it (or from below all
	// layers) ends where a layer above starts holding blocks.
	for i := len(d.layers) - 1; i >= -1; i-- {
		if i >= 0 {
			n, ok := d.layers[i].has(b)
			if !ok {
				continue
			}
			run = min(run, n)
		}
		for _, above := range d.layers[i+1:] {
			if next, ok := above.next(b); ok {
				run = min(run, next-b)
			}
		}
		if i >= 0 {
			return d.layers[i].f, i, run
		}
	}
	if d.base != nil && int64(b)*BlockSize < d.baseSize {
		return d.base, len(d.layers), run
	}
	return nil, len(d.layers), run
}

// readsZeros reports whether block b reads as zeros because nothing holds
// it: not the top, no layer, not the base. It runs under mu, once per
// block a guest writes zeros to, so unlike source it looks no further.
func (d *Disk) readsZeros(b uint64) bool {
	if d.top.present.has(b) || (d.base != nil && int64(b)*BlockSize < d.baseSize) {
		return false
	}
	for _, l := range d.layers {
		if _, ok := l.has(b); ok {
			return false
		}
	}
	return true
}

// zeroBlock is a block of zeros, for comparisons.
var zeroBlock [BlockSize]byte

// maxRunBlocks bounds the runs source returns, and so the cost of finding
// them and the size of one read(2).
const maxRunBlocks = copyChunk / BlockSize

// ReadAt reads the virtual disk. It implements io.ReaderAt: reading past
// Size returns io.EOF.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read disk at %d: negative offset", off)
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return 0, fmt.Errorf("read disk at %d: %w", off, os.ErrClosed)
	}
	if off >= d.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), d.size-off))
	if err := d.readLocked(p[:n], off); err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// readLocked fills p from the chain and top; off+len(p) <= size.
func (d *Disk) readLocked(p []byte, off int64) error {
	for done := 0; done < len(p); {
		pos := off + int64(done)
		b := uint64(pos / BlockSize)
		f, layer, run := d.source(b)
		end := min(int64(b+run)*BlockSize, off+int64(len(p)))
		dst := p[done : done+int(end-pos)]
		switch {
		case f == nil:
			clear(dst)
		case f == d.base:
			n, err := f.ReadAt(dst, pos)
			if err != nil && err != io.EOF {
				return fmt.Errorf("read disk at %d: base: %w", pos, err)
			}
			clear(dst[n:]) // past the base's end
		default:
			if _, err := f.ReadAt(dst, dataOffset+pos); err != nil {
				name := d.top.path
				if layer >= 0 {
					name = d.layers[layer].path
				}
				return fmt.Errorf("read disk at %d: layer %s: %w", pos, name, err)
			}
		}
		done += len(dst)
	}
	return nil
}

// WriteAt writes to the top layer. A write that covers part of a block
// the top does not hold yet first copies the block up from below. A
// block of zeros written whole where the disk reads zeros already (past
// the base's end, in no layer, not in the top) is not stored: a guest
// whose file system grew into a disk larger than its base writes whole
// inode tables of zeros there, which would cost the host as much as data.
// Writes past Size fail without writing.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, fmt.Errorf("write disk at %d: %w", off, os.ErrClosed)
	}
	if off < 0 || off > d.size || int64(len(p)) > d.size-off {
		return 0, fmt.Errorf("write disk: %d bytes at %d: outside the disk's %d bytes", len(p), off, d.size)
	}
	t := d.top
	// direct is a run of p that goes straight to the top: blocks the top
	// holds, or blocks written whole.
	var directFrom, directTo int
	flush := func() error {
		if directFrom == directTo {
			return nil
		}
		pos := off + int64(directFrom)
		if _, err := t.f.WriteAt(p[directFrom:directTo], dataOffset+pos); err != nil {
			return fmt.Errorf("write disk at %d: top %s: %w", pos, t.path, err)
		}
		for b := uint64(pos / BlockSize); int64(b)*BlockSize < off+int64(directTo); b++ {
			t.present.add(b)
		}
		directFrom = directTo
		return nil
	}
	for done := 0; done < len(p); {
		pos := off + int64(done)
		b := uint64(pos / BlockSize)
		inBlock := pos - int64(b)*BlockSize
		n := int(min(d.blockLen(b)-inBlock, int64(len(p)-done)))
		whole := inBlock == 0 && int64(n) == d.blockLen(b)
		if whole && !t.present.has(b) && bytes.Equal(p[done:done+n], zeroBlock[:n]) && d.readsZeros(b) {
			if err := flush(); err != nil {
				return directFrom, err
			}
			done += n
			directFrom, directTo = done, done
			continue
		}
		if t.present.has(b) || whole {
			directTo = done + n
			done += n
			continue
		}
		if err := flush(); err != nil {
			return directFrom, err
		}
		// Copy up: the block as the layers below have it, overlaid
		// with the write.
		blk := d.scratch
		if err := d.readLocked(blk[:d.blockLen(b)], int64(b)*BlockSize); err != nil {
			return directFrom, fmt.Errorf("write disk at %d: copy up block %d: %w", pos, b, err)
		}
		clear(blk[d.blockLen(b):])
		copy(blk[inBlock:], p[done:done+n])
		if _, err := t.f.WriteAt(blk, blockOffset(b)); err != nil {
			return directFrom, fmt.Errorf("write disk at %d: top %s: %w", pos, t.path, err)
		}
		t.present.add(b)
		done += n
		directFrom, directTo = done, done
	}
	if err := flush(); err != nil {
		return directFrom, err
	}
	return len(p), nil
}

// Sync makes every completed write durable (fsync of the top, and of a
// layer being sealed).
func (d *Disk) Sync() error {
	d.mu.RLock()
	if d.closed {
		d.mu.RUnlock()
		return fmt.Errorf("sync disk: %w", os.ErrClosed)
	}
	files := []*os.File{d.top.f}
	for _, l := range d.sealing {
		files = append(files, l.f)
	}
	path := d.top.path
	d.mu.RUnlock()
	for _, f := range files {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("sync disk (top %s): %w", path, err)
		}
	}
	return nil
}

// Seal turns the top into a sealed layer, in place and without copying,
// and opens a new empty top at newTop (which must not exist). Writes
// continue to the new top as soon as it is open; the rest of the seal
// (fsync, index, checksums) runs without blocking I/O. The returned Info
// names the sealed file, which stays at the old top's path. It is
// SwitchTop then FinishSeal.
//
// If Seal fails after the new top opened, the disk stays usable and the
// failed layer remains in its chain; the next Seal finishes it first.
func (d *Disk) Seal(newTop string) (Info, error) {
	d.sealMu.Lock()
	defer d.sealMu.Unlock()
	d.mu.RLock()
	closed, pending := d.closed, slices.Clone(d.sealing)
	d.mu.RUnlock()
	if closed {
		return Info{}, fmt.Errorf("seal disk: %w", os.ErrClosed)
	}
	for _, l := range pending {
		if err := d.finishSeal(l); err != nil {
			return Info{}, fmt.Errorf("seal disk: finish earlier seal: %w", err)
		}
	}
	l, err := d.switchTop(newTop)
	if err != nil {
		return Info{}, err
	}
	if err := d.finishSeal(l); err != nil {
		return Info{}, fmt.Errorf("seal disk: %w", err)
	}
	return l.Info(), nil
}

// SwitchTop is the part of a seal that must happen at one instant of the
// disk (for a checkpoint, while its guest is stopped): the top leaves the
// disk's writes as a layer to seal, and a new empty top at newTop takes
// them from then on. It costs a file creation, whatever the top holds;
// FinishSeal does the rest, which costs as much as the layer's data.
// Until then the layer is in the disk's chain, read from as before, and a
// Seal finishes it first.
func (d *Disk) SwitchTop(newTop string) (*Layer, error) {
	d.sealMu.Lock()
	defer d.sealMu.Unlock()
	d.mu.RLock()
	closed := d.closed
	d.mu.RUnlock()
	if closed {
		return nil, fmt.Errorf("seal disk: %w", os.ErrClosed)
	}
	return d.switchTop(newTop)
}

// FinishSeal makes a layer SwitchTop returned durable and valid (fsync,
// index, checksums) and returns its Info; for one finished already (by
// an earlier FinishSeal or a Seal), only its Info.
func (d *Disk) FinishSeal(l *Layer) (Info, error) {
	d.sealMu.Lock()
	defer d.sealMu.Unlock()
	d.mu.RLock()
	pending := slices.Contains(d.sealing, l)
	d.mu.RUnlock()
	if pending {
		if err := d.finishSeal(l); err != nil {
			return Info{}, fmt.Errorf("seal disk: %w", err)
		}
	}
	return l.Info(), nil
}

// switchTop does SwitchTop's work; d.sealMu is held.
func (d *Disk) switchTop(newTop string) (*Layer, error) {
	nt, err := createTop(newTop, d.size)
	if err != nil {
		return nil, fmt.Errorf("seal disk: %w", err)
	}
	d.mu.Lock()
	old := d.top
	l := &Layer{path: old.path, f: old.f, index: old.present.extents()}
	l.h = newHeader(stateSealed, d.size, old.present.n, uint64(len(l.index)), 0, 0)
	d.layers = append(d.layers, l)
	d.sealing = append(d.sealing, l)
	d.top = nt
	d.mu.Unlock()
	return l, nil
}

// finishSeal makes a layer that left the top durable and valid (see
// sealFile). The layer is no longer written to, so this runs without mu;
// readers use its in-memory index meanwhile.
func (d *Disk) finishSeal(l *Layer) error {
	h, err := sealFile(l.f, d.size, l.index, l.h.blocks)
	if err != nil {
		return fmt.Errorf("seal layer %s: %w", l.path, err)
	}
	d.mu.Lock()
	l.h = h
	d.sealing = slices.DeleteFunc(d.sealing, func(x *Layer) bool { return x == l })
	d.mu.Unlock()
	return nil
}

// sealFile turns a file holding the blocks of index into a sealed layer:
// fsync the data, write the index and the header with its checksums,
// fsync, make it read-only.
func sealFile(f *os.File, size int64, index []Extent, blocks uint64) (header, error) {
	if err := f.Sync(); err != nil {
		return header{}, err
	}
	crc, err := dataChecksum(f, index)
	if err != nil {
		return header{}, err
	}
	ib := format.AppendExtents(nil, index)
	h := newHeader(stateSealed, size, blocks, uint64(len(index)), format.Checksum(ib), crc)
	if _, err := f.WriteAt(ib, int64(h.IndexOffset)); err != nil {
		return header{}, err
	}
	if _, err := f.WriteAt(h.encode(), 0); err != nil {
		return header{}, err
	}
	if err := f.Sync(); err != nil {
		return header{}, err
	}
	return h, f.Chmod(0o444)
}

// Close closes the disk's files and removes its top: writes made since the
// last Seal belong to no checkpoint and are discarded. Sealed layers are
// left in place.
func (d *Disk) Close() error {
	d.sealMu.Lock()
	defer d.sealMu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	err := d.closeFiles()
	if rerr := os.Remove(d.top.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
		err = fmt.Errorf("close disk: remove top: %w", rerr)
	}
	return err
}

// closeFiles closes every file the disk opened, returning the first error.
func (d *Disk) closeFiles() error {
	var err error
	keep := func(e error) {
		if e != nil && err == nil && !errors.Is(e, os.ErrClosed) {
			err = fmt.Errorf("close disk: %w", e)
		}
	}
	if d.base != nil {
		keep(d.base.Close())
	}
	for _, l := range d.layers {
		keep(l.f.Close())
	}
	if d.top != nil {
		keep(d.top.f.Close())
	}
	return err
}
