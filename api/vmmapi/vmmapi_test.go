package vmmapi

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

type fakeVM struct{ shutdowns atomic.Int32 }

func (f *fakeVM) Status() Status {
	return Status{State: "running", VCPUs: 2, MemoryMiB: 256, PID: 42, StartedAt: time.Unix(1700000000, 0).UTC()}
}
func (f *fakeVM) Shutdown() { f.shutdowns.Add(1) }

func TestClientServer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vmm.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	vm := &fakeVM{}
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, vm) }()

	c := NewClient(sock)
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st != vm.Status() {
		t.Errorf("status = %+v, want %+v", st, vm.Status())
	}
	if err := c.Shutdown(ctx); err != nil || vm.shutdowns.Load() != 1 {
		t.Errorf("shutdown: %v, %d calls", err, vm.shutdowns.Load())
	}
	// Wrong method and unknown path are JSON errors naming the request.
	if err := c.do(ctx, "DELETE", "/status", 200, nil); err == nil || !strings.Contains(err.Error(), "405") && !strings.Contains(err.Error(), "no such endpoint") {
		t.Errorf("DELETE /status: %v", err)
	}
	if err := c.do(ctx, "GET", "/nope", 200, nil); err == nil || !strings.Contains(err.Error(), "no such endpoint: GET /nope") {
		t.Errorf("GET /nope: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if _, err := NewClient(filepath.Join(t.TempDir(), "none.sock")).Status(context.Background()); err == nil {
		t.Error("status on a missing socket succeeded")
	}
}
