package guestlog

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"sync"
)

// CappedFile is a log file of bounded size. When a write would take it
// past its cap, the file is renamed to path+".1", replacing the previous
// backup, and a new one is started: the two never hold more than twice
// the cap between them. A file already past the cap when opened (written
// without one) is rotated at the first write, and its oversized backup is
// replaced at the next rotation.
//
// Write never fails and never retries: the console is best effort, and a
// guest's output must neither stall nor stop on the host's disk. Bytes
// that could not be written are counted (Lost); the first failure is
// logged, later ones are not. After a failed open the file is tried again
// at the next rotation, a cap's worth of output later, so a lasting
// failure costs nothing per write.
//
// A CappedFile made by AdoptCapped rotates in place instead (see there).
//
// Its methods are safe for concurrent use.
type CappedFile struct {
	// Set by OpenCapped or AdoptCapped, then read-only.
	path string
	max  int64
	log  *slog.Logger

	mu     sync.Mutex // guards the fields below
	f      *os.File   // nil after a failed open, and after Close
	backup *os.File   // AdoptCapped's backup, rotated into in place; nil for OpenCapped's
	reader *os.File   // AdoptCapped's file opened for reading (its starter's may be write-only)
	size   int64      // bytes written, or lost, into f since it was opened
	lost   int64      // bytes not written because of failures
	failed bool       // a failure was logged: later ones are only counted
	closed bool
}

// OpenCapped opens the log file at path for appending, creating it if
// needed, with a cap of maxBytes per file. Failures after this go to log
// (nil discards them).
func OpenCapped(path string, maxBytes int64, log *slog.Logger) (*CappedFile, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("log file %s: cap of %d bytes", path, maxBytes)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f, err := openLog(path, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &CappedFile{path: path, max: maxBytes, log: log, f: f, size: fi.Size()}, nil
}

// AdoptCapped caps f, a log file that other writers share by its
// descriptor: a process's stderr, which its starter opened and where the
// Go runtime writes a crash's trace, bypassing any writer. Rotation then
// keeps f the log: it copies f's contents into the backup, path+".1"
// (opened now, with f's path for reading, since f may be write-only, so
// that a rotation needs no path operation, which a sandbox installed
// later may forbid), and truncates f in place. Only
// writes through the CappedFile count toward the cap; f's other writers
// must be few (a dying runtime's one trace).
func AdoptCapped(f *os.File, path string, maxBytes int64, log *slog.Logger) (*CappedFile, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("log file %s: cap of %d bytes", path, maxBytes)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("log file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("log file %s: not a regular file", path)
	}
	reader, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	if rfi, err := reader.Stat(); err != nil || !os.SameFile(fi, rfi) {
		reader.Close()
		return nil, fmt.Errorf("log file %s: the path does not name the file", path)
	}
	backup, err := os.OpenFile(path+".1", os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		reader.Close()
		return nil, fmt.Errorf("log file backup: %w", err)
	}
	return &CappedFile{path: path, max: maxBytes, log: log, f: f, backup: backup, reader: reader, size: fi.Size()}, nil
}

func openLog(path string, flag int) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|flag, 0o644)
}

// Write writes p, rotating the file as often as the cap requires. It
// always returns len(p), nil; writes after Close are discarded.
func (c *CappedFile) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return len(p), nil
	}
	for rest := p; len(rest) > 0; {
		if c.size >= c.max {
			c.rotateLocked()
		}
		n := min(int64(len(rest)), c.max-c.size)
		c.writeLocked(rest[:n])
		rest = rest[n:]
	}
	return len(p), nil
}

// writeLocked writes p, which fits under the cap, into the current file.
// Lost bytes count toward the file's size too, which is what schedules
// the next attempt to reopen a file that failed.
func (c *CappedFile) writeLocked(p []byte) {
	c.size += int64(len(p))
	if c.f == nil {
		c.lost += int64(len(p))
		return
	}
	if n, err := c.f.Write(p); err != nil {
		c.lost += int64(len(p) - n)
		c.failLocked("write", err)
	}
}

// rotateLocked moves the current file to the backup and starts a new one.
// The new file is truncated: if the rename failed, dropping the current
// file's contents is what keeps the bound.
func (c *CappedFile) rotateLocked() {
	if c.backup != nil {
		c.rotateInPlaceLocked()
		return
	}
	c.size = 0
	if c.f != nil {
		if err := c.f.Close(); err != nil {
			c.failLocked("close", err)
		}
		c.f = nil
	}
	if err := os.Rename(c.path, c.path+".1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.failLocked("rotate", err)
	}
	f, err := openLog(c.path, os.O_TRUNC)
	if err != nil {
		c.failLocked("reopen", err)
		return
	}
	c.f = f
}

// rotateInPlaceLocked copies the file into the backup and empties it.
// The file is emptied even if the copy failed: that keeps the bound.
func (c *CappedFile) rotateInPlaceLocked() {
	c.size = 0
	if err := copyInto(c.backup, c.reader); err != nil {
		c.failLocked("rotate", err)
	}
	if err := c.f.Truncate(0); err != nil {
		c.failLocked("truncate", err)
	}
	// Without O_APPEND the next write would land past the new end.
	if _, err := c.f.Seek(0, io.SeekStart); err != nil {
		c.failLocked("truncate", err)
	}
}

// copyInto makes dst's contents src's, with positioned reads and writes
// only (pread64, pwrite64, ftruncate).
func copyInto(dst, src *os.File) error {
	if err := dst.Truncate(0); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	for off := int64(0); ; {
		n, err := src.ReadAt(buf, off)
		if n > 0 {
			if _, werr := dst.WriteAt(buf[:n], off); werr != nil {
				return werr
			}
			off += int64(n)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (c *CappedFile) failLocked(op string, err error) {
	if c.failed {
		return
	}
	c.failed = true
	c.log.Warn("log file failed; output is lost until it recovers, and further failures are not logged",
		"path", c.path, "op", op, "err", err)
}

// Lost returns how many bytes were not written because of failures.
func (c *CappedFile) Lost() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lost
}

// Close closes the file, reporting to the log how many bytes were lost, if
// any.
func (c *CappedFile) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.lost > 0 {
		c.log.Warn("log file: bytes lost to failures", "path", c.path, "bytes", c.lost)
	}
	var err error
	if c.backup != nil {
		// An adopted file is its other writers' too: only the backup
		// is this CappedFile's to close.
		err = errors.Join(c.backup.Close(), c.reader.Close())
		c.backup, c.reader, c.f = nil, nil, nil
	}
	if c.f == nil {
		return err
	}
	err = c.f.Close()
	c.f = nil
	return err
}
