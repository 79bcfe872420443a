package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"

	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
	"github.com/sailbox-dev/sailbox/snapshot/memlayer"
)

// WorkingSet is what a guest restored from a checkpoint used of its memory
// soon after the restore, as two bitmaps over its pages (bit i of word
// i/64 is guest page i): the pages it touched, and of them those it wrote.
// A later restore maps them ahead (vmm.RestoreConfig.WorkingSet). It has
// the shape of vmm/memory's WorkingSet, which converts to it.
type WorkingSet struct {
	Touched []uint64
	Written []uint64
}

// Pages counts the pages of the working set (touched or written).
func (ws WorkingSet) Pages() int {
	n := 0
	for i := range max(len(ws.Touched), len(ws.Written)) {
		var w uint64
		if i < len(ws.Touched) {
			w |= ws.Touched[i]
		}
		if i < len(ws.Written) {
			w |= ws.Written[i]
		}
		n += bits.OnesCount64(w)
	}
	return n
}

// The working-set file (see FORMAT.md).
const (
	workingSetName    = "workingset"
	workingSetMagic   = "SBXWSET\n"
	WorkingSetVersion = 1
	workingSetHeader  = 8 + 4 + 8 + 4*8 + 4 // through the header CRC
	maxWorkingSet     = 64 << 20            // bytes: a working set of 2M extents
	maxChain          = 4096                // parents WorkingSet looks through
)

// EncodeWorkingSet encodes ws for a guest of pages pages. Bits at or
// beyond pages are an error.
func EncodeWorkingSet(ws WorkingSet, pages uint64) ([]byte, error) {
	touched, err := bitmapExtents(ws.Touched, pages)
	if err != nil {
		return nil, fmt.Errorf("encode working set: touched pages: %w", err)
	}
	written, err := bitmapExtents(ws.Written, pages)
	if err != nil {
		return nil, fmt.Errorf("encode working set: written pages: %w", err)
	}
	b := []byte(workingSetMagic)
	b = binary.LittleEndian.AppendUint32(b, WorkingSetVersion)
	b = binary.LittleEndian.AppendUint64(b, pages)
	for _, idx := range [][]format.Extent{touched, written} {
		b = binary.LittleEndian.AppendUint64(b, count(idx))
		b = binary.LittleEndian.AppendUint64(b, uint64(len(idx)))
	}
	b = binary.LittleEndian.AppendUint32(b, format.Checksum(b))
	body := len(b)
	b = format.AppendExtents(b, touched)
	b = format.AppendExtents(b, written)
	b = binary.LittleEndian.AppendUint32(b, format.Checksum(b[body:]))
	return b, nil
}

// DecodeWorkingSet decodes a working-set file for a guest of pages pages.
// Its allocations are bounded by len(b) and pages.
func DecodeWorkingSet(b []byte, pages uint64) (WorkingSet, error) {
	const what = "working set"
	if len(b) < workingSetHeader {
		return WorkingSet{}, format.Corrupt(what, "header", "%d bytes, want at least %d", len(b), workingSetHeader)
	}
	if string(b[:8]) != workingSetMagic {
		return WorkingSet{}, format.Corrupt(what, "header", "bad magic %q", b[:8])
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != WorkingSetVersion {
		return WorkingSet{}, &format.VersionError{What: what, Got: v, Min: WorkingSetVersion, Max: WorkingSetVersion}
	}
	h := b[:workingSetHeader-4]
	if got, want := format.Checksum(h), binary.LittleEndian.Uint32(b[workingSetHeader-4:]); got != want {
		return WorkingSet{}, format.Corrupt(what, "header", "checksum %08x, want %08x", got, want)
	}
	if got := binary.LittleEndian.Uint64(h[12:]); got != pages {
		return WorkingSet{}, format.Corrupt(what, "header", "recorded for %d guest pages, the checkpoint has %d", got, pages)
	}
	var totals, extents [2]uint64
	for i := range 2 {
		totals[i] = binary.LittleEndian.Uint64(h[20+16*i:])
		extents[i] = binary.LittleEndian.Uint64(h[28+16*i:])
		if extents[i] > pages || totals[i] > pages {
			return WorkingSet{}, format.Corrupt(what, "header", "%d pages in %d extents, for %d guest pages", totals[i], extents[i], pages)
		}
	}
	body := b[workingSetHeader:]
	if want := (extents[0]+extents[1])*format.ExtentSize + 4; uint64(len(body)) != want {
		return WorkingSet{}, format.Corrupt(what, "extents", "%d bytes, the header says %d", len(body), want)
	}
	ext := body[:len(body)-4]
	if got, want := format.Checksum(ext), binary.LittleEndian.Uint32(body[len(body)-4:]); got != want {
		return WorkingSet{}, format.Corrupt(what, "extents", "checksum %08x, want %08x", got, want)
	}
	var ws WorkingSet
	for i, dst := range []*[]uint64{&ws.Touched, &ws.Written} {
		n := extents[i] * format.ExtentSize
		idx, err := format.DecodeExtents(ext[:n], totals[i], pages)
		if err != nil {
			return WorkingSet{}, format.Corrupt(what, []string{"touched extents", "written extents"}[i], "%v", err)
		}
		ext = ext[n:]
		*dst = make([]uint64, (pages+63)/64)
		for _, e := range idx {
			for p := e.Start; p < e.End(); p++ {
				(*dst)[p/64] |= 1 << (p % 64)
			}
		}
	}
	return ws, nil
}

// bitmapExtents returns the runs of set bits of bitmap, which must all be
// below pages.
func bitmapExtents(bitmap []uint64, pages uint64) ([]format.Extent, error) {
	var idx []format.Extent
	for w, word := range bitmap {
		for word != 0 {
			b := uint64(bits.TrailingZeros64(word))
			word &^= 1 << b
			p := uint64(w)*64 + b
			if p >= pages {
				return nil, fmt.Errorf("page %d beyond the guest's %d", p, pages)
			}
			if n := len(idx); n > 0 && idx[n-1].End() == p {
				idx[n-1].Count++
			} else {
				idx = append(idx, format.Extent{Start: p, Count: 1})
			}
		}
	}
	return idx, nil
}

func count(idx []format.Extent) uint64 {
	var n uint64
	for _, e := range idx {
		n += e.Count
	}
	return n
}

// SaveWorkingSet records ws as the working set of completed checkpoint id,
// unless it has one: the first restore of a checkpoint to record wins,
// later ones find saved false. The file appears whole or not at all.
func (r *Root) SaveWorkingSet(id string, ws WorkingSet) (saved bool, err error) {
	m, err := r.Load(id)
	if err != nil {
		return false, fmt.Errorf("save working set: %w", err)
	}
	b, err := EncodeWorkingSet(ws, m.MemorySize/memlayer.PageSize)
	if err != nil {
		return false, fmt.Errorf("save working set of %s: %w", id, err)
	}
	dir := r.checkpointDir(id)
	dst := filepath.Join(dir, workingSetName)
	if _, err := os.Stat(dst); err == nil {
		return false, nil
	}
	tmp, err := os.CreateTemp(dir, workingSetName+"-*.tmp")
	if err != nil {
		return false, fmt.Errorf("save working set of %s: %w", id, err)
	}
	defer os.Remove(tmp.Name()) // gone after the move; debris otherwise
	// Held until the move: Clean removes the temporary files no one holds.
	err = format.Lock(tmp)
	if err == nil {
		_, err = tmp.Write(b)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if err == nil {
		err = format.MoveNoReplace(tmp.Name(), dst)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, os.ErrExist) {
		return false, nil // another restore recorded first
	}
	if err != nil {
		return false, fmt.Errorf("save working set of %s: %w", id, err)
	}
	return true, nil
}

// HasWorkingSet reports whether checkpoint id has a working set of its own,
// so that SaveWorkingSet would keep the one it has.
func (r *Root) HasWorkingSet(id string) bool {
	_, err := os.Stat(filepath.Join(r.checkpointDir(id), workingSetName))
	return err == nil
}

// WorkingSet returns the working set recorded nearest to checkpoint m: its
// own, else its parent's, and so on up its chain (a box's working set
// changes slowly from one checkpoint to the next), with the ID of the
// checkpoint that holds it. A checkpoint committed on a parent with a
// working set holds the same file from the start. from is "" when none in
// the chain has one. A damaged file is an error naming it.
func (r *Root) WorkingSet(m *Manifest) (ws WorkingSet, from string, err error) {
	pages := m.MemorySize / memlayer.PageSize
	for cur, depth := m, 0; cur != nil && depth < maxChain; depth++ {
		b, err := readBounded(filepath.Join(r.checkpointDir(cur.ID), workingSetName), maxWorkingSet)
		switch {
		case err == nil:
			ws, err := DecodeWorkingSet(b, pages)
			if err != nil {
				return WorkingSet{}, "", fmt.Errorf("working set of checkpoint %s: %w", cur.ID, err)
			}
			return ws, cur.ID, nil
		case !errors.Is(err, os.ErrNotExist):
			return WorkingSet{}, "", fmt.Errorf("working set of checkpoint %s: %w", cur.ID, err)
		}
		if cur.Parent == "" {
			break
		}
		if cur, err = r.Load(cur.Parent); errors.Is(err, ErrNotFound) {
			break // the parent is gone (removed, compacted away)
		} else if err != nil {
			return WorkingSet{}, "", err
		}
	}
	return WorkingSet{}, "", nil
}

// readBounded reads the file at path, refusing one larger than limit.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(f, limit+1)); err != nil {
		return nil, err
	}
	if int64(buf.Len()) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return buf.Bytes(), nil
}
