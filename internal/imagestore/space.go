package imagestore

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// freeBytes is what an unprivileged writer may still use on dir's file
// system.
func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// needFree refuses with ErrNoSpace unless dir's file system has need
// bytes free beyond reserve.
func needFree(dir string, need, reserve int64, what string) error {
	free, err := freeBytes(dir)
	if err != nil {
		return err
	}
	if free < need+reserve {
		return fmt.Errorf("%w: %s needs about %d bytes and %d stay reserved, %d are free on %s", ErrNoSpace, what, need, reserve, free, dir)
	}
	return nil
}

// spaceWatch stops an unpack before the store's disk fills: at every
// checkEvery bytes written, the disk must still have room for as much
// again (mke2fs copies the tree into the base) plus the reserve.
type spaceWatch struct {
	dir       string
	reserve   int64
	nextCheck int64
}

const checkEvery = 64 << 20

func newSpaceWatch(dir string, reserve int64) *spaceWatch {
	return &spaceWatch{dir: dir, reserve: reserve, nextCheck: checkEvery}
}

// wrote is told the bytes the tree holds so far.
func (w *spaceWatch) wrote(total int64) error {
	if total < w.nextCheck {
		return nil
	}
	w.nextCheck = total + checkEvery
	return needFree(w.dir, total, w.reserve, "copying the unpacked tree into the base")
}

// isNoSpace reports a write that found the disk or the quota full.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
