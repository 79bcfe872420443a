// Package nettest holds the socket helpers that tests across Sailbox
// share: short Unix socket paths, and accept loops that end with the test.
package nettest

import (
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// SocketPath returns a path for a Unix socket in a fresh directory,
// removed when the test ends. It is short: t.TempDir can exceed the 108
// bytes a socket path may have.
func SocketPath(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sbx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "s")
}

// Serve accepts connections on l and runs handle on each in its own
// goroutine, closing the connection when handle returns. When the test
// ends it closes l and waits for every handle.
func Serve(t testing.TB, l net.Listener, handle func(net.Conn)) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
}
