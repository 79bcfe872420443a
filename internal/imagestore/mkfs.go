package imagestore

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"strconv"
	"strings"
)

// The ext4 file system of a base, and how big it is made.
//
// Sizes come from the tree the unpack wrote, counted per entry:
//
//	data    = Σ regular files: size rounded up to 4 KiB blocks
//	        + Σ directories: their entries (8 bytes + name, to 4) rounded
//	          up to blocks, at least one block
//	        + one block per symlink whose target does not fit in the inode
//	          (60 bytes or more) and per entry with kept xattrs
//	inodes  = entries + entries/4 + spare/16 KiB + 1024
//	used    = data + data/16 (extent index blocks, bitmaps, descriptors)
//	          + inodes × 256 (the inode tables) + 32 MiB journal + 16 MiB
//	size    = used + spare, rounded up to 1 MiB, at least 128 MiB (the
//	          journal may take at most half of it)
//
// where spare is Options.SpareBytes, room for what a box writes. The
// host must have data + data/16 + entries × 256 + 8 MiB free for it. The
// file is sparse and mke2fs is asked to zero nothing (it discards the new
// file, which makes it read as zeros), so the host pays for the tree and
// the metadata mke2fs writes, not for the spare room or the journal; and
// the guest kernel finds every inode table marked initialised, so it
// writes no zeros into a box's disk layer either.
const (
	blockSize         = 4096
	inodeSize         = 256
	journalBytes      = 32 << 20
	fixedOverhead     = 16 << 20
	bytesPerSpareNode = 16 << 10
	fastSymlinkMax    = 60 // a shorter target is stored in the inode
	minFSBytes        = 128 << 20
)

// treeSize counts what the unpack wrote.
type treeSize struct {
	entries   int64
	dataBytes int64            // blocks of files, symlinks and xattrs so far
	dirents   map[string]int64 // directory (physical path) → bytes of its entries
	skipped   int64            // device nodes and fifos not unpacked
}

func newTreeSize() treeSize { return treeSize{dirents: map[string]int64{".": 0}} }

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

func (t *treeSize) addEntry(phys string, hdr *tar.Header) {
	t.entries++
	parent := path.Dir(phys)
	t.dirents[parent] += 8 + roundUp(int64(len(path.Base(phys))), 4)
	switch hdr.Typeflag {
	case tar.TypeReg:
		t.dataBytes += roundUp(hdr.Size, blockSize)
	case tar.TypeDir:
		if _, ok := t.dirents[phys]; !ok {
			t.dirents[phys] = 0
		}
	case tar.TypeSymlink:
		if len(hdr.Linkname) >= fastSymlinkMax {
			t.dataBytes += blockSize
		}
	}
	if hasKeptXattrs(hdr) {
		t.dataBytes += blockSize
	}
}

// fsLayout is the file system made for a tree.
type fsLayout struct {
	bytes  int64 // the file system's size
	inodes int64
	// host is what the base takes on the host's disk: the tree, its
	// overhead, the used inodes and the 8 MiB or so mke2fs writes of
	// superblocks, descriptors and bitmaps; not the journal nor unused
	// inode tables, which stay holes.
	host int64
}

func (t *treeSize) layout(spare int64) fsLayout {
	data := t.dataBytes
	for _, b := range t.dirents {
		data += max(roundUp(b, blockSize), blockSize)
	}
	inodes := t.entries + t.entries/4 + spare/bytesPerSpareNode + 1024
	used := data + data/16 + inodes*inodeSize + journalBytes + fixedOverhead
	return fsLayout{
		bytes:  max(roundUp(used+spare, 1<<20), minFSBytes),
		inodes: inodes,
		host:   data + data/16 + t.entries*inodeSize + 8<<20,
	}
}

// makeFS makes image, an ext4 file system of l.bytes holding the tree in
// staging, and checks it.
func makeFS(ctx context.Context, staging, image string, l fsLayout) error {
	f, err := os.OpenFile(image, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(l.bytes)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("size %s: %w", image, err)
	}
	if err := run(ctx, "mke2fs", "-q", "-F", "-t", "ext4",
		"-b", strconv.Itoa(blockSize), "-I", strconv.Itoa(inodeSize),
		"-N", strconv.FormatInt(l.inodes, 10),
		"-m", "0", // no blocks kept for root: the guest's root is the box's user too
		"-J", "size="+strconv.Itoa(journalBytes>>20),
		"-E", "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=1",
		"-d", staging, image); err != nil {
		return err
	}
	// -n: read-only, any problem is exit status 4.
	return run(ctx, "e2fsck", "-f", "-n", image)
}

// run runs an e2fsprogs tool, with its output in the error.
func run(ctx context.Context, tool string, args ...string) error {
	bin, err := toolPath(tool)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		msg := strings.TrimSpace(out.String())
		if strings.Contains(msg, "No space left on device") {
			return fmt.Errorf("%w: %s: %s", ErrNoSpace, tool, msg)
		}
		return fmt.Errorf("%s: %w: %s", tool, err, msg)
	}
	return nil
}

// toolPath finds an e2fsprogs tool on PATH or in the sbin directories a
// daemon's PATH may lack.
func toolPath(tool string) (string, error) {
	if p, err := exec.LookPath(tool); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := dir + "/" + tool
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (Debian package e2fsprogs)", tool)
}
