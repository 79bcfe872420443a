package vmmapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/vmm"
)

type fakeVM struct {
	saves     atomic.Int32
	shutdowns atomic.Int32
	paused    atomic.Bool
}

func (f *fakeVM) Status() Status {
	return Status{State: "running", VCPUs: 2, MemoryMiB: 256, PID: 42, StartedAt: time.Unix(1700000000, 0).UTC(),
		WorkingSet: &MappedAhead{From: "tpl-1", Pages: 3000, Copied: 400, Entered: 3000}, Network: fakeNetwork()}
}

// fakeNetwork has every field set, each counter to a different value.
func fakeNetwork() *NetworkStats {
	return &NetworkStats{FramesOut: 1, BytesOut: 2, InvalidOut: 3, DroppedOut: 4, FramesIn: 5, BytesIn: 6, InvalidIn: 7, DroppedIn: 8, PeerGone: true}
}
func (f *fakeVM) Shutdown() { f.shutdowns.Add(1) }
func (f *fakeVM) Pause() error {
	if f.paused.Swap(true) {
		return fmt.Errorf("pause: %w", vmm.ErrNotRunning)
	}
	return nil
}
func (f *fakeVM) Resume() error { f.paused.Store(false); return nil }
func (f *fakeVM) Checkpoint(req CheckpointRequest) (CheckpointResult, error) {
	return CheckpointResult{ID: req.ID, Pages: 7, PauseNanos: 100, PauseParts: fakeParts()}, nil
}

// fakeParts has every field set, each to a different value.
func fakeParts() *PauseParts {
	return &PauseParts{StopNanos: 1, DirtyLogNanos: 2, CopyNanos: 3, VMStateNanos: 4, VCPUStateNanos: 5, DevicesNanos: 6, DiskSwitchNanos: 7, ResumeNanos: 8}
}
func (f *fakeVM) DescribeVCPUs() string { return "vcpu 0 rip=0x1000\n" }
func (f *fakeVM) SaveWorkingSet() (WorkingSetResult, error) {
	if f.saves.Add(1) > 1 {
		return WorkingSetResult{}, nil
	}
	return WorkingSetResult{Saved: true}, nil
}

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
	if !reflect.DeepEqual(st, vm.Status()) {
		t.Errorf("status = %+v, want %+v", st, vm.Status())
	}
	if err := c.Shutdown(ctx); err != nil || vm.shutdowns.Load() != 1 {
		t.Errorf("shutdown: %v, %d calls", err, vm.shutdowns.Load())
	}
	if err := c.Pause(ctx); err != nil {
		t.Errorf("pause: %v", err)
	}
	var e *Error
	if err := c.Pause(ctx); !errors.As(err, &e) || e.Status != 409 || !errors.Is(err, ErrConflict) || !strings.Contains(e.Message, "machine not running") {
		t.Errorf("second pause: %#v, want an *Error of status 409 matching ErrConflict with the VMM's message", err)
	}
	if err := c.Resume(ctx); err != nil {
		t.Errorf("resume: %v", err)
	}
	if res, err := c.Checkpoint(ctx, "c1"); err != nil || res.ID != "c1" || res.Pages != 7 || res.PauseParts == nil || *res.PauseParts != *fakeParts() {
		t.Errorf("checkpoint = %+v (parts %+v), %v; want parts %+v", res, res.PauseParts, err, fakeParts())
	}
	if d, err := c.DescribeVCPUs(ctx); err != nil || d != vm.DescribeVCPUs() {
		t.Errorf("vcpus = %q, %v; want %q", d, err, vm.DescribeVCPUs())
	}
	for _, want := range []bool{true, false} {
		if res, err := c.SaveWorkingSet(ctx); err != nil || res.Saved != want {
			t.Errorf("working set = %+v, %v; want saved %v", res, err, want)
		}
	}
	for _, bad := range []string{`{"id": 1}`, `{"idd": "x"}`, `{}`, `nope`} {
		err := c.send(ctx, "POST", "/checkpoint", strings.NewReader(bad), 200, nil)
		if !errors.Is(err, ErrBadRequest) || strings.Contains(err.Error(), "(500)") {
			t.Errorf("checkpoint %s: %v, want a 400", bad, err)
		}
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

// statusOf is the one place a Controller's errors get their status: the
// VMM's refusals are 409 however deeply wrapped, a bad request 400, any
// other failure 500.
func TestStatusOf(t *testing.T) {
	for err, want := range map[error]int{
		fmt.Errorf("checkpoint c1: %w", vmm.ErrNotRunning):                  409,
		fmt.Errorf("checkpoint c1: %w: disk 0", vmm.ErrNotCheckpointable):   409,
		fmt.Errorf("checkpoint c1: %w", snapshot.ErrExists):                 409,
		fmt.Errorf("working set: %w: booted", ErrConflict):                  409,
		fmt.Errorf("fork: %w: -fork-name needs -restore", ErrBadRequest):    400,
		errors.New("seal disk vda: no space left on device"):                500,
		&os.PathError{Op: "write", Path: "memory.tmp", Err: syscall.ENOSPC}: 507,
		fmt.Errorf("checkpoint c1: %w", ErrNoSpace):                         507,
		fmt.Errorf("restore: %w", errors.New("ErrConflict in the message")): 500,
	} {
		if got := statusOf(err); got != want {
			t.Errorf("statusOf(%v) = %d, want %d", err, got, want)
		}
	}
}

// A client's *Error matches the sentinel of its status and no other.
func TestErrorIs(t *testing.T) {
	for status, want := range map[int]error{409: ErrConflict, 400: ErrBadRequest, 500: nil, 404: nil} {
		e := &Error{Op: "POST /pause", Status: status, Message: "m"}
		for _, s := range []error{ErrConflict, ErrBadRequest} {
			if got := errors.Is(e, s); got != (s == want) {
				t.Errorf("status %d: errors.Is(%v) = %v", status, s, got)
			}
		}
	}
}

// A status from a VMM without a network device, or older than the
// field, has no network counters, and says so by leaving them out.
func TestStatusWithoutNetwork(t *testing.T) {
	var st Status
	if err := json.Unmarshal([]byte(`{"state":"running","vcpus":1,"memory_mib":256,"pid":7}`), &st); err != nil {
		t.Fatal(err)
	}
	if st.Network != nil {
		t.Errorf("network = %+v, want none", st.Network)
	}
	b, err := json.Marshal(Status{State: "running"})
	if err != nil || strings.Contains(string(b), "network") {
		t.Errorf("status without a network device encodes as %s, %v", b, err)
	}
	b, _ = json.Marshal(Status{Network: &NetworkStats{}})
	if !strings.Contains(string(b), `"network":{"frames_out":0,`) {
		t.Errorf("zero counters of a device encode as %s", b)
	}
}

// A checkpoint result from a VMM that does not report the pause's parts
// (older than the field) still decodes, with none.
func TestCheckpointResultWithoutPauseParts(t *testing.T) {
	var res CheckpointResult
	if err := json.Unmarshal([]byte(`{"id":"c1","pages":7,"pause_ns":5000000}`), &res); err != nil {
		t.Fatal(err)
	}
	if res.ID != "c1" || res.PauseNanos != 5000000 || res.PauseParts != nil {
		t.Errorf("result = %+v, want no parts", res)
	}
}
