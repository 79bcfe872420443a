package api

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
)

// SocketEnv names the environment variable that overrides DefaultSocket.
const SocketEnv = "SAILBOX_SOCKET"

// DefaultSocket is where sailboxd listens and clients dial unless told
// otherwise: $SAILBOX_SOCKET if set; for root /run/sailbox/sailboxd.sock;
// for others $XDG_RUNTIME_DIR/sailbox/sailboxd.sock, or without it
// $TMPDIR/sailbox-UID/sailboxd.sock.
func DefaultSocket() string {
	if p := os.Getenv(SocketEnv); p != "" {
		return p
	}
	if os.Geteuid() == 0 {
		return "/run/sailbox/sailboxd.sock"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "sailbox", "sailboxd.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("sailbox-%d", os.Geteuid()), "sailboxd.sock")
}

// UnixHTTPClient is an HTTP client whose every request goes to the Unix
// socket at path, whatever the URL's host: the transport of sailboxd's
// client and of each VMM's control socket.
func UnixHTTPClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}
