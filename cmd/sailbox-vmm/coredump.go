package main

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// forbidCoreDumps makes sure a crash of this VMM (a Go fatal error, a
// seccomp kill) writes no core file: one would hold the guest's memory,
// readable wherever the kernel's core pattern puts it.
func forbidCoreDumps() error {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return fmt.Errorf("forbid core dumps: %w", err)
	}
	return nil
}
