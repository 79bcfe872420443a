package guestlog

import (
	"fmt"
	"io"
	"log/slog"
	"os"
)

// CapOutput returns w capped at maxBytes when w is a regular file: the
// stderr of a process whose starter pointed it at a log file, as sailboxd
// does for sailbox-vmm (vmm.log) and sailbox-net (net.log). The file
// then rotates in place to one backup beside it (AdoptCapped), so the
// pair holds at most twice the cap, plus a crash's trace that the Go
// runtime writes past the cap. Anything else (a terminal, a pipe, a
// test's buffer, a log file that was deleted) is returned as it is.
// The file's path is the one the kernel reports for its descriptor.
func CapOutput(w io.Writer, maxBytes int64) io.Writer {
	f, ok := w.(*os.File)
	if !ok {
		return w
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return w
	}
	path, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		return w
	}
	if named, err := os.Stat(path); err != nil || !os.SameFile(fi, named) {
		return w // deleted or replaced: no path to put a backup beside
	}
	// A failure of the log itself can only be said in it, once, past
	// the cap.
	c, err := AdoptCapped(f, path, maxBytes, slog.New(slog.NewTextHandler(f, nil)))
	if err != nil {
		fmt.Fprintf(f, "log file %s is not capped: %v\n", path, err)
		return w
	}
	return c
}
