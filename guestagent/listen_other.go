//go:build !linux

package guestagent

import (
	"errors"
	"fmt"
	"net"
)

// ListenVsock fails on systems other than Linux: the agent runs in a Linux
// guest. It exists so that host-side code builds everywhere.
func ListenVsock(port uint32) (net.Listener, error) {
	return nil, fmt.Errorf("listen on vsock port %d: %w", port, errors.ErrUnsupported)
}
