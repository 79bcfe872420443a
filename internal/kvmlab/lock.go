package kvmlab

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// LockWorkDir takes dir (a run's work directory: test binaries, the lab's
// initramfs and console log) for this process until unlock, waiting while
// another run holds it, so that concurrent runs never replace each
// other's binaries mid-run. It says so on log when it has to wait.
func LockWorkDir(dir string, log io.Writer) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock work dir: %w", err)
	}
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		fmt.Fprintf(log, "kvmlab: another run is using %s; waiting for it to end\n", dir)
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock work dir %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}
