package format

import "io"

// GapReader is an io.ReaderAt over Head, then Gap zero bytes, then Tail:
// a layer file whose large all-zero middle (the rest of the header page
// and the page or block data) need not exist. The fuzzers use it so that
// their inputs stay small while offsets stay realistic.
type GapReader struct {
	Head []byte
	Gap  int64
	Tail []byte
}

// Size returns the length of the virtual file.
func (g *GapReader) Size() int64 { return int64(len(g.Head)) + g.Gap + int64(len(g.Tail)) }

// ReadAt implements io.ReaderAt.
func (g *GapReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		switch h := int64(len(g.Head)); {
		case pos < h:
			n += copy(p[n:], g.Head[pos:])
		case pos < h+g.Gap:
			k := min(int64(len(p)-n), h+g.Gap-pos)
			clear(p[n : n+int(k)])
			n += int(k)
		case pos < g.Size():
			n += copy(p[n:], g.Tail[pos-h-g.Gap:])
		default:
			return n, io.EOF
		}
	}
	return n, nil
}

// SplitGap turns a whole file into a GapReader's parts: the first head
// bytes, and what follows gap more bytes. The fuzzers build their seeds
// with it from golden files.
func SplitGap(b []byte, head int, gap int64) ([]byte, uint64, []byte) {
	return b[:head], uint64(gap), b[int64(head)+gap:]
}
