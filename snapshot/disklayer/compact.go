package disklayer

import (
	"fmt"
	"os"
)

// Compact writes a new sealed layer at dst holding every block of the
// chain of sealed layers (ordered base→top), each from the topmost layer
// holding it: one layer that reads exactly as the chain does over the same
// base. The chain's files are only read; disks using them are undisturbed.
func Compact(chain []*Layer, dst string) (Info, error) {
	if len(chain) == 0 {
		return Info{}, fmt.Errorf("compact disk layers: empty chain")
	}
	size := chain[0].Size()
	for _, l := range chain {
		if l.Size() != size {
			return Info{}, fmt.Errorf("compact disk layers: %s is for a disk of %d bytes, %s of %d", l.path, l.Size(), chain[0].path, size)
		}
	}
	t, err := createTop(dst, size)
	if err != nil {
		return Info{}, fmt.Errorf("compact disk layers: %w", err)
	}
	info, err := compact(chain, t, size)
	if cerr := t.f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return Info{}, fmt.Errorf("compact disk layers into %s: %w", dst, err)
	}
	return info, nil
}

func compact(chain []*Layer, t *top, size int64) (Info, error) {
	buf := make([]byte, copyChunk)
	// copyRun copies blocks [b, b+n) of layer l into the new file.
	copyRun := func(l *Layer, b, n uint64) error {
		for off, end := blockOffset(b), blockOffset(b+n); off < end; {
			k := min(int64(len(buf)), end-off)
			if _, err := l.f.ReadAt(buf[:k], off); err != nil {
				return fmt.Errorf("read %s: %w", l.path, err)
			}
			if _, err := t.f.WriteAt(buf[:k], off); err != nil {
				return err
			}
			off += k
		}
		for i := range n {
			t.present.add(b + i)
		}
		return nil
	}
	for i := len(chain) - 1; i >= 0; i-- {
		l := chain[i]
		for _, e := range l.index {
			// Runs of e's blocks that no layer above holds.
			for b := e.Start; b < e.End(); {
				if t.present.has(b) {
					b++
					continue
				}
				n := uint64(1)
				for b+n < e.End() && !t.present.has(b+n) {
					n++
				}
				if err := copyRun(l, b, n); err != nil {
					return Info{}, err
				}
				b += n
			}
		}
	}
	l := &Layer{path: t.path, f: t.f, index: t.present.extents()}
	h, err := sealFile(t.f, size, l.index, t.present.n)
	if err != nil {
		return Info{}, err
	}
	l.h = h
	return l.Info(), nil
}
