package daemon_test

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
)

// recorder is a daemon.Observer that keeps what it hears.
type recorder struct {
	mu     sync.Mutex
	ckpts  []daemon.CheckpointInfo
	starts []daemon.StartKind
	wakes  []daemon.WakeReason
}

func (r *recorder) Checkpointed(info daemon.CheckpointInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ckpts = append(r.ckpts, info)
}

func (r *recorder) Started(how daemon.StartKind, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.starts = append(r.starts, how)
}

func (r *recorder) Woke(reason daemon.WakeReason) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.wakes = append(r.wakes, reason)
}

func (r *recorder) get() ([]daemon.CheckpointInfo, []daemon.StartKind, []daemon.WakeReason) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ckpts), slices.Clone(r.starts), slices.Clone(r.wakes)
}

// The Observer hears each start with its kind, each checkpoint with what
// the backend said it cost, and each wake with its reason.
func TestObserver(t *testing.T) {
	cat, err := catalog.Open(filepath.Join(t.TempDir(), "catalog.db"), &catalog.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	fake := fakebackend.New(2)
	rec := &recorder{}
	m, err := daemon.New(daemon.Config{Catalog: cat, Backend: fake, HostID: "h", Observer: rec})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b, err := m.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	mustOK := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mustOK(m.Pause(ctx, b.ID))
	mustOK(m.Resume(ctx, b.ID))
	mustOK(m.Sleep(ctx, b.ID))
	mustOK(m.WriteFile(ctx, b.ID, "/f", bytes.NewReader([]byte("x")), daemon.FileOptions{}))
	mustOK(nil, m.InferenceCall(ctx, b.ID, func(context.Context) error { return nil }))
	mustOK(m.Fork(ctx, b.ID, api.ForkRequest{}))
	fake.Crash(b.ID)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, _, wakes := rec.get(); len(wakes) == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the crashed box was not restored")
		}
	}
	ckpts, starts, wakes := rec.get()
	wantWakes := []daemon.WakeReason{daemon.WakeResume, daemon.WakeFile, daemon.WakeInferenceEnd, daemon.WakeCrashRecovery}
	if !slices.Equal(wakes, wantWakes) {
		t.Errorf("wakes = %q, want %q", wakes, wantWakes)
	}
	wantStarts := []daemon.StartKind{daemon.StartBoot, daemon.StartRestore, daemon.StartRestore, daemon.StartRestore, daemon.StartFork, daemon.StartRestore}
	if !slices.Equal(starts, wantStarts) {
		t.Errorf("starts = %q, want %q", starts, wantStarts)
	}
	// pause, sleep, inference, fork
	if len(ckpts) != 4 || ckpts[0].Bytes != fakebackend.CheckpointBytes || ckpts[0].Pause != fakebackend.CheckpointPause {
		t.Errorf("checkpoints = %+v", ckpts)
	}
}
