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
	if f, ok := d.find(name, false); ok {
		return f.Path, nil
	}
	return "", fmt.Errorf("image %q: %w", name, ErrNotImage)
}

// Found is an image Find resolved.
type Found struct {
	// Path is canonical: a regular file, or with Dir a directory holding
	// an oci-layout file (an OCI image layout).
	Path string
	Dir  bool
	// Selector is what followed the path in the name: empty, or ":…" or
	// "@…", which picks an image in a layout or a tarball.
	Selector string
}

// Find resolves name like Resolve, and also to a directory that holds an
// oci-layout file; the name may end with a selector (":TAG",
// "@sha256:…", ":NAME:TAG") after the path, which the longest path that
// resolves leaves. It fails with ErrNotImage for anything else.
func (d *Dirs) Find(name string) (Found, error) {
	if name == "" || strings.ContainsRune(name, 0) {
		return Found{}, fmt.Errorf("image %q: %w", name, ErrNotImage)
	}
	if f, ok := d.find(name, true); ok {
		return f, nil
	}
	for i := len(name) - 1; i > 0; i-- {
		if name[i] != ':' && name[i] != '@' {
			continue
		}
		if f, ok := d.find(name[:i], true); ok {
			f.Selector = name[i:]
			return f, nil
		}
	}
	return Found{}, fmt.Errorf("image %q: %w", name, ErrNotImage)
}

// find resolves name in the first image directory that holds it: a
// regular file, or with layouts also an OCI layout directory.
func (d *Dirs) find(name string, layouts bool) (Found, bool) {
	for _, dir := range d.dirs {
		rel := name
		if filepath.IsAbs(name) {
			r, err := filepath.Rel(dir, filepath.Clean(name))
			if err != nil || !filepath.IsLocal(r) {
				continue
			}
			rel = r
		}
		if p, isDir, ok := d.open(dir, rel, layouts); ok {
			return Found{Path: p, Dir: isDir}, true
		}
	}
	return Found{}, false
}

// open resolves rel beneath dir to the canonical path of a regular file,
// or with layouts, of a directory holding a regular file oci-layout.
func (d *Dirs) open(dir, rel string, layouts bool) (string, bool, bool) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", false, false
	}
	defer root.Close()
	f, err := root.Open(rel)
	if err != nil {
		return "", false, false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", false, false
	}
	isDir := st.IsDir()
	switch {
	case isDir && layouts:
		sub, err := root.OpenRoot(rel)
		if err != nil {
			return "", false, false
		}
		lst, err := sub.Lstat("oci-layout")
		sub.Close()
		if err != nil || !lst.Mode().IsRegular() {
			return "", false, false
		}
	case !st.Mode().IsRegular():
		return "", false, false
	}
	// The path of what was opened, as the kernel knows it: no symlink
	// left in it, so the VMM that opens it later gets this file (clients
	// cannot write in the image directories to swap it).
	p, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil || !within(p, dir) {
		return "", false, false
	}
	for _, priv := range d.private {
		if within(p, priv) {
			return "", false, false
		}
	}
	return p, isDir, true
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
