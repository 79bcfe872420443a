package apiserver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// MakeSocketDir makes the directory that is to hold the API socket at
// path, before Listen.
//
// In a directory anyone may write to, such as the $TMPDIR/sailbox-UID
// fallback of api.DefaultSocket, another user could have made it first,
// to watch the socket or put their own in its place. There it is made
// 0700 if absent, and if present must be a directory (not a symlink)
// owned by this user, with no permissions for group or others. (A socket
// shared with a group therefore cannot live there.) Elsewhere it is made
// 0755, with its parents, as needed.
func MakeSocketDir(path string) error {
	return makeSocketDir(filepath.Dir(path), os.Geteuid())
}

// makeSocketDir is MakeSocketDir for the directory dir and the user uid.
func makeSocketDir(dir string, uid int) error {
	if parent, err := os.Stat(filepath.Dir(dir)); err != nil || parent.Mode().Perm()&0o002 == 0 {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("api socket directory: %w", err)
		}
		return nil
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("api socket directory: %w", err)
	}
	// Whether just made or found, check what is there now: that is what
	// the socket will go in.
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("api socket directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("api socket directory %s is not a directory (mode %v); remove it", dir, fi.Mode())
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("api socket directory %s: cannot tell its owner", dir)
	}
	if int(st.Uid) != uid {
		return fmt.Errorf("api socket directory %s is owned by uid %d, not %d: another user may have made it", dir, st.Uid, uid)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("api socket directory %s has mode %#o; in a shared directory it must be 0700", dir, perm)
	}
	return nil
}
