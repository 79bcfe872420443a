package imagestore

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// checkedImage is the image mutate.Extract flattens: each layer's
// uncompressed stream is checked as Extract reads it, with one
// decompression and one download.
//
//   - Its sha256 must be the diff_id the config lists. The base is keyed
//     by the config digest, which covers the diff_ids and not the
//     compressed blobs a registry or file serves, so without this check a
//     source could store other content under an image's digest.
//   - It may not exceed Options.MaxImageBytes.
//   - No entry name or link may climb out of the root, and no entry may
//     lie beneath a symlink of its own layer. Extract itself fails on a
//     `../` name, but skips links whose relative target leaves the root,
//     and entries beneath a link, without a word; a scanner beside it
//     sees every header, so the import is refused, naming the entry.
type checkedImage struct {
	v1.Image // only Layers is used by mutate.Extract
	layers   []v1.Layer
}

func (c *checkedImage) Layers() ([]v1.Layer, error) { return c.layers, nil }

// firstError keeps the first error any layer reports.
type firstError struct {
	mu  sync.Mutex
	err error
}

func (f *firstError) set(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

func (f *firstError) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// checkLayers wraps img's layers; failures are also kept in found, so
// that the caller can tell them from the errors Extract wraps them in.
func checkLayers(img v1.Image, cf *v1.ConfigFile, limit int64, found *firstError) (*checkedImage, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("%w: layers: %w", ErrBadImage, err)
	}
	diffIDs := cf.RootFS.DiffIDs
	if len(diffIDs) != len(layers) {
		return nil, fmt.Errorf("%w: %d layers but the config lists %d diff_ids", ErrBadImage, len(layers), len(diffIDs))
	}
	c := &checkedImage{Image: img}
	for i, l := range layers {
		c.layers = append(c.layers, &checkedLayer{Layer: l, index: i + 1, count: len(layers), diffID: diffIDs[i], limit: limit, found: found})
	}
	return c, nil
}

type checkedLayer struct {
	v1.Layer
	index, count int // 1-based, for messages
	diffID       v1.Hash
	limit        int64
	found        *firstError
}

func (l *checkedLayer) String() string {
	return fmt.Sprintf("layer %d of %d (%s)", l.index, l.count, l.diffID)
}

func (l *checkedLayer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Uncompressed()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l, err)
	}
	pr, pw := io.Pipe()
	r := &checkedReader{layer: l, rc: rc, sum: sha256.New(), pw: pw, done: make(chan struct{})}
	go r.scan(pr)
	return r, nil
}

// checkedReader passes a layer's bytes to Extract, hashing and counting
// them and copying them to the scanner.
type checkedReader struct {
	layer *checkedLayer
	rc    io.ReadCloser
	sum   hash.Hash
	n     int64
	pw    *io.PipeWriter
	done  chan struct{} // closed when scan returns
}

func (r *checkedReader) fail(err error) error {
	r.layer.found.set(err)
	return err
}

func (r *checkedReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if n > 0 {
		r.sum.Write(p[:n])
		r.n += int64(n)
		if r.n > r.layer.limit {
			return 0, r.fail(fmt.Errorf("%w: %s is over %d bytes uncompressed", ErrTooLarge, r.layer, r.layer.limit))
		}
		// The scanner drains to the end, so this returns once it has
		// the bytes.
		if _, werr := r.pw.Write(p[:n]); werr != nil {
			return 0, werr
		}
		if ferr := r.layer.found.get(); ferr != nil {
			return 0, ferr
		}
	}
	switch {
	case err == io.EOF:
		r.pw.Close()
		<-r.done
		if ferr := r.layer.found.get(); ferr != nil {
			return n, ferr
		}
		if got := "sha256:" + hex.EncodeToString(r.sum.Sum(nil)); got != r.layer.diffID.String() {
			return n, r.fail(fmt.Errorf("%w: %s: content is %s, not the diff_id of the config", ErrBadImage, r.layer, got))
		}
		return n, io.EOF
	case err != nil:
		return n, fmt.Errorf("%s: %w", r.layer, err)
	}
	return n, nil
}

func (r *checkedReader) Close() error {
	r.pw.Close()
	<-r.done
	return r.rc.Close()
}

// scan reads the layer's headers as Extract does and reports the first
// entry that climbs out of the root. It always drains its input.
func (r *checkedReader) scan(pr *io.PipeReader) {
	defer close(r.done)
	tr := tar.NewReader(pr)
	symlinks := map[string]string{} // this layer's symlinks: name → target
	for {
		hdr, err := tr.Next()
		if err != nil {
			// A malformed header is in the layer's bytes: named here,
			// as Extract's own error ("reading tar: …") names no layer.
			// A stream cut short is not always the layer's (Extract
			// closes a layer it stops reading): Extract reports it.
			if err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) {
				r.layer.found.set(fmt.Errorf("%w: %s: %w", ErrBadImage, r.layer, err))
			}
			break
		}
		err = escapesLexically(hdr)
		if err == nil {
			err = beneathSymlink(hdr, symlinks)
		}
		if err != nil {
			r.layer.found.set(fmt.Errorf("%w: %s: %w", ErrUnsafeEntry, r.layer, err))
			break
		}
	}
	io.Copy(io.Discard, pr)
}

// beneathSymlink refuses an entry whose path goes through a symlink of
// the same layer, such as "etc/passwd" after "etc -> /etc". Unpacking it
// would write where the link points, and Extract (which lets a
// non-directory hide every path below its name) drops it silently.
// Layers that docker or buildkit make never hold one: a symlink has no
// children in the file system they were diffed from.
func beneathSymlink(hdr *tar.Header, symlinks map[string]string) error {
	name := path.Clean(strings.TrimLeft(path.Clean(hdr.Name), "/"))
	for dir := path.Dir(name); dir != "." && dir != "/"; dir = path.Dir(dir) {
		if target, ok := symlinks[dir]; ok {
			return fmt.Errorf("entry %q lies beneath the symlink %q -> %q of the same layer", hdr.Name, dir, target)
		}
	}
	if hdr.Typeflag == tar.TypeSymlink {
		symlinks[name] = hdr.Linkname
	} else {
		delete(symlinks, name) // a later entry of the name replaces the link
	}
	return nil
}

// escapesLexically mirrors mutate.Extract's checks (v0.22): a name that
// cleans to `..` or below, and a symlink or hard link whose relative
// target, joined to the entry's directory, does. Extract fails on the
// first and drops the second; both are refused here.
func escapesLexically(hdr *tar.Header) error {
	name := path.Clean(strings.ReplaceAll(hdr.Name, "\\", "/"))
	if name == ".." || strings.HasPrefix(name, "../") {
		return fmt.Errorf("entry %q", hdr.Name)
	}
	if hdr.Typeflag != tar.TypeSymlink && hdr.Typeflag != tar.TypeLink {
		return nil
	}
	target := path.Clean(strings.ReplaceAll(hdr.Linkname, "\\", "/"))
	if path.IsAbs(target) {
		return nil
	}
	if resolved := path.Clean(path.Join(path.Dir(name), target)); strings.HasPrefix(resolved, "..") {
		return fmt.Errorf("entry %q: link to %q points outside the root", hdr.Name, hdr.Linkname)
	}
	return nil
}
