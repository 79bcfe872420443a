package main

import (
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// testNoDaemon: with no socket, or a socket no daemon listens on (a
// daemon killed with SIGKILL leaves its socket file), every call says in
// one line that no daemon listens there, and how to start one or point
// -socket at it.
func testNoDaemon(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	for _, sock := range []string{filepath.Join(dir, "none.sock"), stale} {
		for _, args := range [][]string{{"ls"}, {"get", "sb-x"}, {"exec", "sb-x", "true"}} {
			_, _, err := (&sailer{t: t, sock: sock}).sail(args...)
			if !errors.Is(err, errNoDaemon) {
				t.Errorf("sail %q on %s: %v, want no daemon", args, sock, err)
				continue
			}
			msg := err.Error()
			for _, want := range []string{sock, "sailboxd", "-socket"} {
				if !strings.Contains(msg, want) {
					t.Errorf("sail %q: %q does not mention %q", args, msg, want)
				}
			}
			if strings.Contains(msg, "\n") || strings.Contains(msg, "dial unix") {
				t.Errorf("sail %q: not one plain line: %q", args, msg)
			}
		}
	}
}
