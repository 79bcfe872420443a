package imagestore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// shellPath is the shell the guest agent runs commands with.
const shellPath = "bin/sh"

// checkShell refuses a tree without /bin/sh resolving, as the guest will
// resolve it (absolute links from the image's root), to an executable
// regular file.
func checkShell(root *os.Root) error {
	phys, err := walk(root, shellPath, guestWalk, true, nil)
	if errors.Is(err, fs.ErrNotExist) {
		if _, lerr := root.Lstat(shellPath); lerr == nil {
			return fmt.Errorf("%w: /%s is a dangling link", ErrNoShell, shellPath)
		}
		return fmt.Errorf("%w: /%s is missing", ErrNoShell, shellPath)
	}
	if err != nil {
		return fmt.Errorf("%w: /%s: %w", ErrNoShell, shellPath, err)
	}
	fi, err := root.Lstat(phys)
	if err != nil {
		return fmt.Errorf("%w: /%s: %w", ErrNoShell, shellPath, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%w: /%s (/%s) is not an executable file", ErrNoShell, shellPath, phys)
	}
	return nil
}
