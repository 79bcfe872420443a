// Package format holds what every on-disk format of package snapshot
// shares: the error types a reader returns for a damaged file or an
// unsupported version, the checksum, and the few file-system steps that
// make a write durable. The snapshot packages re-export the errors, so a
// caller needs only errors.Is(err, snapshot.ErrCorrupt) whichever file
// failed.
package format

import (
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrIncompatibleVersion is matched (errors.Is) by every *VersionError.
var ErrIncompatibleVersion = errors.New("incompatible format version")

// ErrCorrupt is matched (errors.Is) by every *CorruptError.
var ErrCorrupt = errors.New("corrupt or truncated")

// VersionError reports a file whose format version this reader does not
// accept.
type VersionError struct {
	What     string // "manifest", "memory layer", "disk layer"
	Got      uint32 // the version the file declares
	Min, Max uint32 // the versions this reader accepts
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("%s format version %d: this reader accepts versions %d to %d", e.What, e.Got, e.Min, e.Max)
}

// Is makes errors.Is(err, ErrIncompatibleVersion) true.
func (e *VersionError) Is(target error) bool { return target == ErrIncompatibleVersion }

// CorruptError reports a damaged or truncated file, naming the part that
// failed to decode or to match its checksum.
type CorruptError struct {
	What    string // "manifest", "memory layer", "disk layer"
	Section string // the section, e.g. "header", "index", `state "vcpu/0"`
	Reason  string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("%s %s: %s", e.What, e.Section, e.Reason)
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// Corrupt returns a *CorruptError.
func Corrupt(what, section, format string, args ...any) error {
	return &CorruptError{What: what, Section: section, Reason: fmt.Sprintf(format, args...)}
}

// castagnoli is the CRC-32C table (the polynomial of iSCSI and ext4, with
// hardware support on amd64 and arm64).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum returns the CRC-32C of b.
func Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// UpdateChecksum continues a CRC-32C over more bytes.
func UpdateChecksum(crc uint32, b []byte) uint32 { return crc32.Update(crc, castagnoli, b) }

// SyncDir fsyncs a directory, making the creation, rename or removal of
// its entries durable.
func SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// Lock takes an exclusive advisory lock (flock) on a file or directory
// the caller has just created. A writer holds it on every file that is
// not finished yet, so a debris scan (TryLock) can tell a file being
// written by a live process from one left behind by a dead one: the
// kernel drops the lock when its holder dies. It waits for the lock: the
// only other holder a new file can have is a scan that found it empty
// and lets go at once (RemoveDebris).
func Lock(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("flock %s: %w", f.Name(), err)
		}
		return nil
	}
}

// ErrBusy is TryLock's answer for a path whose lock another open file
// description holds.
var ErrBusy = errors.New("locked by a writer")

// TryLock opens path and takes the lock Lock takes, without blocking, for
// the caller to hold while it decides what path is and acts on it (Close
// lets go). It fails with ErrBusy when a writer holds the lock, and
// returns nil and no error for a path that no longer exists.
func TryLock(path string) (*os.File, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EWOULDBLOCK:
			f.Close()
			return nil, fmt.Errorf("flock %s: %w", path, ErrBusy)
		case err != nil:
			f.Close()
			return nil, fmt.Errorf("flock %s: %w", path, err)
		}
		return f, nil
	}
}

// RemoveDebris removes the file at path if no writer holds it (Lock) and
// it is not empty, and reports whether it did. It decides and removes
// holding the file's lock, so a writer cannot finish or start in between;
// an empty file may be one whose writer has created it and is about to
// lock it, and is left alone (a crash at that instant leaves an empty
// file behind, which costs an inode).
func RemoveDebris(path string) (bool, error) {
	f, err := TryLock(path)
	if f == nil {
		if errors.Is(err, ErrBusy) {
			err = nil
		}
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return false, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	return true, nil
}

// MoveNoReplace moves the file at src to dst, never replacing an existing
// dst, and fsyncs the directories involved. It fails with an error
// matching os.ErrExist when dst exists. Both must be on one file system:
// the data is never copied.
func MoveNoReplace(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// A file system without RENAME_NOREPLACE: link(2) also refuses
		// to replace dst.
		if err = os.Link(src, dst); err == nil {
			err = os.Remove(src)
		}
	}
	if err != nil {
		return &os.LinkError{Op: "move", Old: src, New: dst, Err: err}
	}
	if err := SyncDir(filepath.Dir(dst)); err != nil {
		return err
	}
	if filepath.Dir(src) != filepath.Dir(dst) {
		return SyncDir(filepath.Dir(src))
	}
	return nil
}
