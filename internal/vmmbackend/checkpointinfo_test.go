package vmmbackend

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
)

// costedVM is a VMM whose checkpoints report what they cost.
type costedVM struct{ hungVM }

func (costedVM) Status() vmmapi.Status { return vmmapi.Status{State: "running", PID: os.Getpid()} }
func (costedVM) Checkpoint(req vmmapi.CheckpointRequest) (vmmapi.CheckpointResult, error) {
	return vmmapi.CheckpointResult{ID: req.ID, Created: time.Now(), Pages: 100, PageBytes: 100 << 12, LayerBytes: 500 << 10, DiskBytes: 3 << 20, PauseNanos: 7e6,
		PauseParts: &vmmapi.PauseParts{DirtyLogNanos: 1e6, CopyNanos: 3e6, VCPUStateNanos: 2e6}}, nil
}

// A checkpoint's info carries what the VMM reports it wrote (memory layer
// and disk blocks) and how long it paused the guest: the daemon's metrics;
// its DEBUG line says where the pause went.
func TestCheckpointInfoFromVMM(t *testing.T) {
	b := newBackend(t)
	var logged bytes.Buffer
	b.log = slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := b.files("sb-1")
	os.MkdirAll(f.dir, 0o700)
	l, err := net.Listen("unix", f.apiSock)
	if err != nil {
		t.Fatal(err)
	}
	go vmmapi.Serve(ctx, l, costedVM{})
	if alive, err := b.Attach(ctx, "sb-1"); err != nil || !alive {
		t.Fatalf("attach = %v, %v", alive, err)
	}
	info, err := b.Checkpoint(ctx, "sb-1", "c1")
	if err != nil {
		t.Fatal(err)
	}
	if info.Bytes != 500<<10+3<<20 || info.Pause != 7*time.Millisecond || info.Created.IsZero() {
		t.Errorf("info = %+v", info)
	}
	for _, want := range []string{"pause=7ms", "parts.dirty_log=1ms", "parts.copy=3ms", "parts.vcpu_state=2ms", "parts.stop=0s"} {
		if !strings.Contains(logged.String(), want) {
			t.Errorf("log %q lacks %s", logged.String(), want)
		}
	}
}
