package imagestore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
)

// How a walk treats links that leave the root.
type walkMode int

const (
	// strictWalk is the unpack's: an absolute symlink, or a `..` above
	// the root, followed on the way to an entry is an escape. The host
	// would resolve either outside the staging directory; layers that
	// docker or buildkit build never write through a symlink, so only a
	// crafted layer does this.
	strictWalk walkMode = iota
	// guestWalk resolves as the guest will, chrooted in the image: an
	// absolute target starts at the root, `..` at the root stays there.
	guestWalk
)

// maxLinkHops bounds symlinks followed in one walk, as Linux's 40.
const maxLinkHops = 40

// escapeError says which link would have taken a walk out of the root.
type escapeError struct {
	link, target string // "" link: a `..` above the root in the name itself
}

func (e *escapeError) Error() string {
	if e.link == "" {
		return "path climbs above the root"
	}
	return fmt.Sprintf("symlink %q -> %q leads outside the root", "/"+e.link, e.target)
}

// walk resolves name (slash-separated, relative to root) one component
// at a time, with root.Lstat and root.Readlink on paths that hold no
// symlink, and returns its physical path: no component of it is a
// symlink, "." is the root. The last component is followed only with
// followLast. With mkdir set (name is then a directory to make), a
// missing component is made by mkdir(physical path); otherwise the walk
// fails with fs.ErrNotExist.
func walk(root *os.Root, name string, mode walkMode, followLast bool, mkdir func(string) error) (string, error) {
	todo := components(name)
	cur := ""
	hops := 0
	var via escapeError // the last link followed, to name in an escape
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if cur == "" {
				if mode == strictWalk {
					return "", &via
				}
				continue
			}
			cur = parentOf(cur)
			continue
		}
		next := path.Join(cur, c)
		fi, err := root.Lstat(next)
		if errors.Is(err, fs.ErrNotExist) && mkdir != nil {
			if err := mkdir(next); err != nil {
				return "", err
			}
			cur = next
			continue
		}
		if err != nil {
			return "", err
		}
		last := len(todo) == 0
		if fi.Mode()&fs.ModeSymlink != 0 && (!last || followLast) {
			if hops++; hops > maxLinkHops {
				return "", &fs.PathError{Op: "walk", Path: name, Err: syscall.ELOOP}
			}
			target, err := root.Readlink(next)
			if err != nil {
				return "", err
			}
			via = escapeError{link: next, target: target}
			if path.IsAbs(target) {
				if mode == strictWalk {
					return "", &escapeError{link: next, target: target}
				}
				cur = ""
			}
			rest := components(target)
			if mode == strictWalk && climbsAbove(cur, rest) {
				return "", &escapeError{link: next, target: target}
			}
			todo = append(rest, todo...)
			continue
		}
		if !last && !fi.IsDir() {
			return "", &fs.PathError{Op: "walk", Path: next, Err: syscall.ENOTDIR}
		}
		cur = next
	}
	if cur == "" {
		return ".", nil
	}
	return cur, nil
}

// climbsAbove reports whether the `..`s of a relative link target,
// resolved from directory dir, would go above the root before any
// symlink among its components could say otherwise. It gives the error
// the link's name; the walk would find the escape one step later anyway.
func climbsAbove(dir string, target []string) bool {
	depth := 0
	if dir != "" {
		depth = len(components(dir))
	}
	for _, c := range target {
		switch c {
		case "", ".":
		case "..":
			if depth--; depth < 0 {
				return true
			}
		default:
			return false
		}
	}
	return false
}

func components(p string) []string {
	return strings.Split(strings.Trim(p, "/"), "/")
}

func parentOf(p string) string {
	if d := path.Dir(p); d != "." {
		return d
	}
	return ""
}
