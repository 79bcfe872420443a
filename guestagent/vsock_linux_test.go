package guestagent

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// TestOverVsockLoopback runs the agent on a real vsock listener and dials
// it through the kernel's loopback transport (CID 1), where a connection
// closed with unread data is reset as it would be between host and guest.
// It is skipped where the kernel has no vsock or no vsock_loopback.
func TestOverVsockLoopback(t *testing.T) {
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
	ctx := testContext(t)
	checkHealth(t, ctx, c)

	in := make([]byte, 1<<20)
	rand.Read(in)
	var out bytes.Buffer
	if res, err := c.Exec(ctx, ExecRequest{Argv: []string{"cat"}}, bytes.NewReader(in), &out, nil); err != nil || res.ExitCode != 0 || !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("cat over vsock: %+v, %v, %d bytes back of %d", res, err, out.Len(), len(in))
	}
	path := filepath.Join(t.TempDir(), "f")
	if _, err := c.WriteFile(ctx, path, bytes.NewReader(in), WriteOptions{}); err != nil {
		t.Fatalf("WriteFile over vsock: %v", err)
	}
	out.Reset()
	if _, err := c.ReadFile(ctx, path, &out); err != nil || !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("ReadFile over vsock: %v, %d bytes of %d", err, out.Len(), len(in))
	}
}
