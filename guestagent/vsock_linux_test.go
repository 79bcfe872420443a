package guestagent

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// TestHealthOverVsockLoopback runs the agent on a real vsock listener and
// dials it through the kernel's loopback transport (CID 1). It is skipped
// where the kernel has no vsock or no vsock_loopback.
func TestHealthOverVsockLoopback(t *testing.T) {
	l, err := ListenVsock(0) // any free port
	if err != nil {
		t.Skipf("no vsock: %v", err)
	}
	port := l.Addr().(*vsock.Addr).Port
	serve(t, &Server{Logger: testLogger(t)}, l)

	c := &Client{Dial: func(ctx context.Context) (net.Conn, error) {
		return vsock.DialContext(ctx, unix.VMADDR_CID_LOCAL, port, nil)
	}}
	// Loopback connects at once; elsewhere, connect times out.
	probeCtx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	conn, err := c.Dial(probeCtx)
	if err != nil {
		t.Skipf("no vsock loopback: %v", err)
	}
	conn.Close()
	checkHealth(t, testContext(t), c)
}
