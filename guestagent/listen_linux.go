package guestagent

import (
	"fmt"
	"net"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// ListenVsock listens for vsock connections on port.
//
// It binds to VMADDR_CID_ANY rather than to the guest's own context ID (as
// vsock.Listen would): that needs no /dev/vsock to look the ID up, and the
// listener keeps working if the VMM gives the guest a new context ID, as it
// may when it restores a snapshot into a new VM.
func ListenVsock(port uint32) (net.Listener, error) {
	l, err := vsock.ListenContextID(unix.VMADDR_CID_ANY, port, nil)
	if err != nil {
		return nil, fmt.Errorf("listen on vsock port %d: %w", port, err)
	}
	return l, nil
}
