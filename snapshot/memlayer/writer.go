package memlayer

import (
	"bufio"
	"errors"
	"fmt"
	"math/bits"
	"os"

	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
)

// Extent is a run of consecutive page numbers, [Start, Start+Count).
type Extent = format.Extent

// Info describes a finished layer file.
type Info struct {
	Path      string
	Pages     uint64 // pages held
	Extents   int    // runs of consecutive pages in the index
	DataBytes int64  // page data written: Pages*PageSize
	FileBytes int64  // the whole file: header, data and index
	Checksum  uint32 // the header's CRC-32C; it covers the index and data checksums
}

// Writer writes a new layer file. Pages must be given in strictly
// ascending page order. A Writer is not safe for concurrent use.
//
// The file is locked (flock) while it is written, so a debris scan by
// another process leaves it alone; Finish or Abort releases it.
type Writer struct {
	path string
	f    *os.File
	bw   *bufio.Writer

	index []Extent
	pages uint64
	next  uint64 // the lowest page number the next write may use
	crc   uint32 // CRC-32C of the page data so far
	err   error  // the first error; every later call returns it
	done  bool
}

// writeBuffer batches page writes into large write(2)s.
const writeBuffer = 256 << 10

// Create creates a new layer file at path, which must not exist.
func Create(path string) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create memory layer: %w", err)
	}
	w := &Writer{path: path, f: f}
	if err := format.Lock(f); err != nil {
		w.Abort()
		return nil, fmt.Errorf("create memory layer: %w", err)
	}
	if _, err := f.Seek(dataOffset, 0); err != nil {
		w.Abort()
		return nil, fmt.Errorf("create memory layer %s: %w", path, err)
	}
	w.bw = bufio.NewWriterSize(f, writeBuffer)
	return w, nil
}

// WritePages adds len(data)/PageSize consecutive pages starting at page
// number first. len(data) must be a non-zero multiple of PageSize and first
// must be above every page written before.
func (w *Writer) WritePages(first uint64, data []byte) error {
	if w.err != nil {
		return w.err
	}
	if w.done {
		return fmt.Errorf("memory layer %s: write after Finish or Abort", w.path)
	}
	if len(data) == 0 || len(data)%PageSize != 0 {
		return fmt.Errorf("memory layer %s: write of %d bytes at page %d: not a whole number of pages", w.path, len(data), first)
	}
	n := uint64(len(data) / PageSize)
	if first < w.next {
		return fmt.Errorf("memory layer %s: page %d written after page %d: pages must ascend", w.path, first, w.next-1)
	}
	if first >= MaxPages || n > MaxPages-first {
		return fmt.Errorf("memory layer %s: pages [%d, +%d) beyond the %d-page limit", w.path, first, n, uint64(MaxPages))
	}
	if _, err := w.bw.Write(data); err != nil {
		w.err = fmt.Errorf("write memory layer %s: %w", w.path, err)
		return w.err
	}
	w.crc = format.UpdateChecksum(w.crc, data)
	if last := len(w.index) - 1; last >= 0 && w.index[last].End() == first {
		w.index[last].Count += n
	} else {
		w.index = append(w.index, Extent{Start: first, Count: n})
	}
	w.pages += n
	w.next = first + n
	return nil
}

// dirtyChunk is how many pages WriteDirty asks its read function for at
// once.
const dirtyChunk = 64

// WriteDirty adds the pages set in a dirty bitmap: bit i of bitmap (bit
// i%64 of word i/64, KVM_GET_DIRTY_LOG's layout) stands for page first+i.
// read fills dst with len(dst)/PageSize consecutive pages starting at page
// pfn; it is called with runs of up to 64 pages, in ascending order. first
// must be above every page written before.
func (w *Writer) WriteDirty(first uint64, bitmap []uint64, read func(pfn uint64, dst []byte) error) error {
	buf := make([]byte, dirtyChunk*PageSize)
	var runStart, runLen uint64 // the run of set bits not yet written
	flush := func() error {
		for runLen > 0 {
			n := min(runLen, dirtyChunk)
			dst := buf[:n*PageSize]
			if err := read(first+runStart, dst); err != nil {
				return fmt.Errorf("memory layer %s: read pages [%d, +%d): %w", w.path, first+runStart, n, err)
			}
			if err := w.WritePages(first+runStart, dst); err != nil {
				return err
			}
			runStart += n
			runLen -= n
		}
		return nil
	}
	for wi, word := range bitmap {
		for word != 0 {
			tz := bits.TrailingZeros64(word)
			ones := bits.TrailingZeros64(^(word >> tz)) // the run of set bits from tz up
			p := uint64(wi)*64 + uint64(tz)
			if runLen == 0 || runStart+runLen != p {
				if err := flush(); err != nil {
					return err
				}
				runStart = p
			}
			runLen += uint64(ones)
			word &^= (uint64(1)<<ones - 1) << tz // 1<<64 is 0 in Go: ones == 64 clears all
		}
	}
	return flush()
}

// Finish writes the index and the header, fsyncs the file, makes it
// read-only and closes it. The layer is complete, and immutable, once
// Finish returns nil; on error the file is removed.
func (w *Writer) Finish() (Info, error) {
	if w.done {
		return Info{}, fmt.Errorf("memory layer %s: Finish after Finish or Abort", w.path)
	}
	if w.err != nil {
		w.Abort()
		return Info{}, w.err
	}
	index := format.AppendExtents(nil, w.index)
	h := newHeader(w.pages, uint64(len(w.index)), format.Checksum(index), w.crc)
	err := func() error {
		if _, err := w.bw.Write(index); err != nil {
			return err
		}
		if err := w.bw.Flush(); err != nil {
			return err
		}
		// The whole header page, so that even a layer without pages
		// has its data offset inside the file.
		hp := make([]byte, dataOffset)
		copy(hp, h.encode())
		if _, err := w.f.WriteAt(hp, 0); err != nil {
			return err
		}
		if err := w.f.Sync(); err != nil {
			return err
		}
		return w.f.Chmod(0o444)
	}()
	if err != nil {
		w.Abort()
		return Info{}, fmt.Errorf("finish memory layer %s: %w", w.path, err)
	}
	w.done = true
	if err := w.f.Close(); err != nil {
		os.Remove(w.path)
		return Info{}, fmt.Errorf("finish memory layer %s: %w", w.path, err)
	}
	return Info{
		Path:      w.path,
		Pages:     w.pages,
		Extents:   len(w.index),
		DataBytes: int64(w.pages) * PageSize,
		FileBytes: h.fileSize(),
		Checksum:  h.HeaderCRC,
	}, nil
}

// Abort closes and removes an unfinished layer file. It is a no-op after
// Finish or Abort.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.f.Close()
	if err := os.Remove(w.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		w.err = err
	}
}
