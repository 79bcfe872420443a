// Package images decides which host files may become a box's base disk:
// only regular files inside the image directories the operator
// configured, resolved so that no name a client sends (a "..", an
// absolute path, a symlink) reaches a file outside them, and never one
// under a directory the daemon keeps private (its state: the catalog,
// other boxes' memory and disk layers).
package images

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrNotImage is the one answer to a name that is not an image: it does
// not say whether the name exists outside the image directories, is a
// directory, or is unreadable, so a client cannot probe the host.
var ErrNotImage = errors.New("not a regular file inside the image directories")

// Dirs resolves image names inside the image directories.
type Dirs struct {
	dirs    []string // canonical: absolute, symlinks resolved
	private []string // canonical; no image may lie under these
}

// NewDirs returns the resolver of images inside dirs. No image may lie
// under a private directory; a dir inside one, or holding one, is refused.
func NewDirs(dirs []string, private ...string) (*Dirs, error) {
	d := &Dirs{}
	for _, p := range private {
		c, err := canonical(p)
		if errors.Is(err, os.ErrNotExist) {
			c, err = filepath.Abs(p)
		}
		if err != nil {
			return nil, fmt.Errorf("image directories: %w", err)
		}
		d.private = append(d.private, c)
	}
	for _, dir := range dirs {
		c, err := canonical(dir)
		if err != nil {
			return nil, fmt.Errorf("image directory: %w", err)
		}
		if st, err := os.Stat(c); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("image directory %s: not a directory", dir)
		}
		for _, p := range d.private {
			if within(c, p) || within(p, c) {
				return nil, fmt.Errorf("image directory %s: overlaps the private directory %s", dir, p)
			}
		}
		d.dirs = append(d.dirs, c)
	}
	return d, nil
}

// Resolve returns the canonical path of image name: a path relative to
// an image directory (the first that holds it), or an absolute path
// inside one. Symbolic links are followed only while they stay inside
// the directory (os.Root). It fails with ErrNotImage for anything else.
func (d *Dirs) Resolve(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("image %q: %w", name, ErrNotImage)
	}
	for _, dir := range d.dirs {
		rel := name
		if filepath.IsAbs(name) {
			r, err := filepath.Rel(dir, filepath.Clean(name))
			if err != nil || !filepath.IsLocal(r) {
				continue
			}
			rel = r
		}
		if p, ok := d.open(dir, rel); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("image %q: %w", name, ErrNotImage)
}

// open resolves rel beneath dir to the canonical path of a regular file.
func (d *Dirs) open(dir, rel string) (string, bool) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", false
	}
	defer root.Close()
	f, err := root.Open(rel)
	if err != nil {
		return "", false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return "", false
	}
	// The path of what was opened, as the kernel knows it: no symlink
	// left in it, so the VMM that opens it later gets this file (clients
	// cannot write in the image directories to swap it).
	p, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil || !within(p, dir) {
		return "", false
	}
	for _, priv := range d.private {
		if within(p, priv) {
			return "", false
		}
	}
	return p, true
}

// canonical is p absolute with every symlink resolved.
func canonical(p string) (string, error) {
	a, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(a)
}

// within reports whether p is dir or lies under it; both are clean and
// absolute.
func within(p, dir string) bool {
	r, err := filepath.Rel(dir, p)
	return err == nil && filepath.IsLocal(r)
}
