package blk

import (
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// File is a Backend on a raw image file.
type File struct {
	f    *os.File
	size int64
	id   string
}

var _ Backend = (*File)(nil)

// FileBackend returns a Backend on f, a regular file. Its size is read
// once, now. The backend owns f: Close closes it.
func FileBackend(f *os.File) (*File, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("virtio-blk: stat image: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("virtio-blk: image %s is not a regular file", f.Name())
	}
	b := &File{f: f, size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		b.id = fmt.Sprintf("sbox-%x-%x", st.Dev, st.Ino)
		b.id = b.id[:min(len(b.id), idBytes)]
	}
	return b, nil
}

// ID is a device ID (Config.ID) derived from the identity of the image
// file, its device and inode numbers, so that it is stable across runs.
// A restore keeps the ID saved in the device's State instead, as the
// image it restores onto is usually another file.
func (b *File) ID() string { return b.id }

// ReadAt implements io.ReaderAt.
func (b *File) ReadAt(p []byte, off int64) (int, error) { return b.f.ReadAt(p, off) }

// WriteAt implements io.WriterAt.
func (b *File) WriteAt(p []byte, off int64) (int, error) { return b.f.WriteAt(p, off) }

// Size is the file's size when FileBackend opened it.
func (b *File) Size() int64 { return b.size }

// Sync makes completed writes durable with fdatasync: the image's size
// never changes, so its data is all that needs writing.
func (b *File) Sync() error {
	rc, err := b.f.SyscallConn()
	if err != nil {
		return err
	}
	var syncErr error
	if err := rc.Control(func(fd uintptr) {
		for {
			if syncErr = unix.Fdatasync(int(fd)); syncErr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if syncErr != nil {
		return fmt.Errorf("fdatasync: %w", syncErr)
	}
	return nil
}

// Close closes the file.
func (b *File) Close() error { return b.f.Close() }
