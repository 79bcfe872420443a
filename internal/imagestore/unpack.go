package imagestore

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Extended attributes kept from a layer's PAX records (SCHILY.xattr.*):
// file capabilities, which programs such as ping need to work unchanged,
// and user.* attributes, which are the image's own data. Others are
// dropped: trusted.* are the host's (overlayfs keeps its whiteouts
// there), security.selinux and ACLs (system.*) follow a host's policy
// and the guest kernel has neither SELinux nor ext4 ACLs.
func keepXattr(name string) bool {
	return name == "security.capability" || strings.HasPrefix(name, "user.")
}

const paxXattr = "SCHILY.xattr."

// unpacker writes the flattened tar stream of an image into a staging
// directory through an os.Root, which refuses any path that leaves it.
// Every entry's parent is first walked strictly (see walk), so that an
// escape is refused naming the entry and the link, and the entry is then
// made at the physical path the walk found.
//
// The stream is mutate.Extract's: upper layers come first, and each path
// once. So an entry whose path already exists lost to an upper layer and
// is skipped, except that a directory made only as the parent of an
// upper entry takes the metadata of its own header when that comes.
type unpacker struct {
	ctx   context.Context
	root  *os.Root
	tree  treeSize
	limit int64       // Options.MaxImageBytes
	space *spaceWatch // refuses before the store's disk fills

	implicit   map[string]bool // directories made as parents, no header yet
	dirs       []dirMeta       // headers of directories, applied at the end
	laterLinks []dirMeta       // hard links to files of lower layers, made at the end
}

type dirMeta struct {
	phys string
	hdr  *tar.Header
}

func newUnpacker(ctx context.Context, root *os.Root, limit int64, space *spaceWatch) *unpacker {
	return &unpacker{ctx: ctx, root: root, limit: limit, space: space, implicit: map[string]bool{}, tree: newTreeSize()}
}

// unpack reads the flattened stream r to its end and applies it.
func (u *unpacker) unpack(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		if err := u.ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read flattened layers: %w", err)
		}
		if err := u.entry(hdr, tr); err != nil {
			return err
		}
	}
	// mutate.Extract closes its tar writer, which writes the end-of-
	// archive blocks, before it closes the pipe with its error: a failed
	// layer looks like a complete, shorter image to a tar reader. The
	// error comes after the end.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return fmt.Errorf("flatten layers: %w", err)
	}
	for _, l := range u.laterLinks {
		if err := u.hardLink(l.phys, l.hdr, false); err != nil {
			return err
		}
	}
	// Directories last: their contents would change their times.
	for i := len(u.dirs) - 1; i >= 0; i-- {
		d := u.dirs[i]
		if err := u.dirMetadata(d.phys, d.hdr); err != nil {
			return fmt.Errorf("entry %q: %w", d.hdr.Name, err)
		}
	}
	return nil
}

// entryName is hdr's path relative to the root, "." for the root
// itself. A leading "/" is dropped, as tar tools do; `..` above the root
// is an escape (mutate.Extract fails on it before this sees it).
func entryName(hdr *tar.Header) (string, error) {
	name := path.Clean(strings.TrimLeft(path.Clean(hdr.Name), "/"))
	if name == ".." || strings.HasPrefix(name, "../") {
		return "", fmt.Errorf("%w: entry %q", ErrUnsafeEntry, hdr.Name)
	}
	return name, nil
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	name, err := entryName(hdr)
	if err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeGNUSparse || hdr.Typeflag == tar.TypeCont {
		hdr.Typeflag = tar.TypeReg // read back whole: holes as zeros
	}
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		// The guest mounts devtmpfs on /dev; a device node in an image
		// would be a way to reach the guest's disks and memory by
		// other names, a fifo is made by whoever needs one.
		u.tree.skipped++
		return nil
	case tar.TypeDir, tar.TypeReg, tar.TypeSymlink, tar.TypeLink:
	default:
		return fmt.Errorf("%w: entry %q: unsupported tar type %q", ErrBadImage, hdr.Name, hdr.Typeflag)
	}
	if name == "." {
		// mke2fs makes the root 0755 root:root whatever the tree's root.
		return nil
	}
	parent, err := walk(u.root, path.Dir(name), strictWalk, true, u.mkdirImplicit)
	if err != nil {
		return u.refuse(hdr, err)
	}
	phys := path.Join(parent, path.Base(name))
	if _, err := u.root.Lstat(phys); err == nil {
		if hdr.Typeflag == tar.TypeDir && u.implicit[phys] {
			delete(u.implicit, phys)
			u.dirs = append(u.dirs, dirMeta{phys, hdr})
		}
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return u.refuse(hdr, err)
	}
	if err := u.count(phys, hdr); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := u.root.Mkdir(phys, 0o700); err != nil {
			return u.refuse(hdr, err)
		}
		u.dirs = append(u.dirs, dirMeta{phys, hdr})
		return nil
	case tar.TypeReg:
		return u.file(phys, hdr, r)
	case tar.TypeSymlink:
		// The target is kept verbatim: it is resolved in the guest,
		// inside the image, absolute or not.
		if err := u.root.Symlink(hdr.Linkname, phys); err != nil {
			return u.refuse(hdr, err)
		}
		if err := u.root.Lchown(phys, hdr.Uid, hdr.Gid); err != nil {
			return u.refuse(hdr, err)
		}
		return u.refuse(hdr, u.times(phys, hdr))
	default: // tar.TypeLink
		return u.hardLink(phys, hdr, true)
	}
}

// refuse names the entry in err, and says escapes are escapes.
func (u *unpacker) refuse(hdr *tar.Header, err error) error {
	if err == nil {
		return nil
	}
	if esc := (*escapeError)(nil); errors.As(err, &esc) {
		return fmt.Errorf("%w: entry %q: %w", ErrUnsafeEntry, hdr.Name, err)
	}
	if isNoSpace(err) {
		return fmt.Errorf("%w: entry %q: %w", ErrNoSpace, hdr.Name, err)
	}
	return fmt.Errorf("entry %q: %w", hdr.Name, err)
}

// mkdirImplicit makes a parent no header named (yet): 0755, root's.
func (u *unpacker) mkdirImplicit(phys string) error {
	if err := u.root.Mkdir(phys, 0o755); err != nil {
		return err
	}
	u.implicit[phys] = true
	u.tree.addEntry(phys, &tar.Header{Typeflag: tar.TypeDir})
	return u.root.Chmod(phys, 0o755) // whatever the umask
}

// count adds an entry to the tree's size and refuses it past the limit
// or past the room the store's disk has, before writing it.
func (u *unpacker) count(phys string, hdr *tar.Header) error {
	u.tree.addEntry(phys, hdr)
	if u.tree.dataBytes > u.limit {
		return fmt.Errorf("%w: the flattened tree is over %d bytes at entry %q", ErrTooLarge, u.limit, hdr.Name)
	}
	return u.space.wrote(u.tree.dataBytes)
}

func (u *unpacker) file(phys string, hdr *tar.Header, r io.Reader) error {
	f, err := u.root.OpenFile(phys, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return u.refuse(hdr, err)
	}
	err = writeFile(f, hdr, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return u.refuse(hdr, err)
	}
	return u.refuse(hdr, u.times(phys, hdr))
}

// writeFile fills f and gives it hdr's owner, mode and attributes, in
// that order: chown clears setuid, setgid and file capabilities.
func writeFile(f *os.File, hdr *tar.Header, r io.Reader) error {
	if _, err := io.Copy(f, r); err != nil {
		return err
	}
	fd := int(f.Fd())
	if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, unixMode(hdr)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return setXattrs(fd, hdr)
}

// hardLink links phys to its target. A target not there yet may come
// from a lower layer, later in the stream; with canWait the link is made
// after the stream instead. Layers docker builds hold no such link (a
// link to a file of a lower layer is stored as a copy), but nothing
// forbids one.
func (u *unpacker) hardLink(phys string, hdr *tar.Header, canWait bool) error {
	// A hard link's target is a path from the archive's root; a leading
	// "/" is dropped as for names.
	target := path.Clean(strings.TrimLeft(hdr.Linkname, "/"))
	if target == ".." || strings.HasPrefix(target, "../") {
		return fmt.Errorf("%w: entry %q: hard link to %q leads outside the root", ErrUnsafeEntry, hdr.Name, hdr.Linkname)
	}
	missing := func() error {
		if canWait {
			u.laterLinks = append(u.laterLinks, dirMeta{phys, hdr})
			return nil
		}
		return fmt.Errorf("%w: entry %q: hard link to %q, which the flattened image does not hold", ErrBadImage, hdr.Name, hdr.Linkname)
	}
	tparent, err := walk(u.root, path.Dir(target), strictWalk, true, nil)
	if errors.Is(err, fs.ErrNotExist) {
		return missing()
	}
	if err != nil {
		return u.refuse(hdr, err)
	}
	tphys := path.Join(tparent, path.Base(target))
	fi, err := u.root.Lstat(tphys)
	if errors.Is(err, fs.ErrNotExist) {
		return missing()
	}
	if err != nil {
		return u.refuse(hdr, err)
	}
	if fi.IsDir() {
		return fmt.Errorf("%w: entry %q: hard link to the directory %q", ErrBadImage, hdr.Name, hdr.Linkname)
	}
	// The link shares its target's inode, owner, mode and times: the
	// header's own are not applied.
	return u.refuse(hdr, u.root.Link(tphys, phys))
}

func (u *unpacker) dirMetadata(phys string, hdr *tar.Header) error {
	d, err := u.root.Open(phys)
	if err != nil {
		return err
	}
	defer d.Close()
	fd := int(d.Fd())
	if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, unixMode(hdr)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	if err := setXattrs(fd, hdr); err != nil {
		return err
	}
	return u.times(phys, hdr)
}

// times sets phys's access and modification times, not following a
// symlink, through its parent directory opened inside the root.
func (u *unpacker) times(phys string, hdr *tar.Header) error {
	dir, err := u.root.Open(path.Dir(phys))
	if err != nil {
		return err
	}
	defer dir.Close()
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	ts := []unix.Timespec{timespec(atime), timespec(hdr.ModTime)}
	if err := unix.UtimesNanoAt(int(dir.Fd()), path.Base(phys), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

func timespec(t time.Time) unix.Timespec {
	if t.IsZero() {
		t = time.Unix(0, 0)
	}
	return unix.NsecToTimespec(t.UnixNano())
}

// unixMode is hdr's permission bits with setuid, setgid and sticky
// (tar stores them as the C mode bits).
func unixMode(hdr *tar.Header) uint32 {
	return uint32(hdr.Mode) & 0o7777
}

func setXattrs(fd int, hdr *tar.Header) error {
	for key, value := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(key, paxXattr)
		if !ok || !keepXattr(attr) {
			continue
		}
		if err := unix.Fsetxattr(fd, attr, []byte(value), 0); err != nil {
			return fmt.Errorf("set xattr %s: %w", attr, err)
		}
	}
	return nil
}

func hasKeptXattrs(hdr *tar.Header) bool {
	for key := range hdr.PAXRecords {
		if attr, ok := strings.CutPrefix(key, paxXattr); ok && keepXattr(attr) {
			return true
		}
	}
	return false
}
