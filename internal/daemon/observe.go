package daemon

import (
	"context"
	"time"

	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Observation: what the Manager tells an Observer (sailboxd's metrics,
// internal/metrics) about boxes' VMs. It is gathered in two places: a
// wrapper around the Backend (observedBackend: every VM start and every
// checkpoint, whoever asked for it) and apply (why a box was woken). The
// calls themselves, their durations and errors, are observed where the
// API serves them (internal/apiserver), where errors are classified.

// Observer hears what the Manager does to boxes' VMs. Its methods are
// called from the goroutine making the change, often with a box's lock
// held: they must be quick and must not call the Manager.
type Observer interface {
	// Checkpointed reports a completed checkpoint: a live one, a pause's
	// or a sleep's, a live fork's, an upgrade's or a template's.
	Checkpointed(info CheckpointInfo)
	// Started reports that a box's VM came up, how, and how long the
	// backend took to start it (until its agent answered).
	Started(how StartKind, d time.Duration)
	// Woke reports that a box that was down (or whose VM was lost) runs
	// again, and why.
	Woke(reason WakeReason)
}

// StartKind says how a VM was started.
type StartKind string

const (
	// StartBoot: a fresh boot (a create with templates off, a template's
	// first boot).
	StartBoot StartKind = "boot"
	// StartCreate: a create restored from its spec's template.
	StartCreate StartKind = "create"
	// StartRestore: a wake (resume, connect, exec, file, ingress, crash
	// recovery) restored from the box's own last checkpoint.
	StartRestore StartKind = "restore"
	// StartFork: a fork's child started: from a live checkpoint of its
	// parent (the checkpoint's time included) or from the parent's last
	// one.
	StartFork StartKind = "fork"
	// StartReboot: the current agent booted on a box's disk (an upgrade).
	StartReboot StartKind = "reboot"
)

// StartKinds lists every StartKind.
var StartKinds = []StartKind{StartBoot, StartCreate, StartRestore, StartFork, StartReboot}

// WakeReason says why a box was woken.
type WakeReason string

const (
	WakeExec          WakeReason = "exec"
	WakeFile          WakeReason = "file"
	WakeResume        WakeReason = "resume"
	WakeConnect       WakeReason = "connect"
	WakeExposedPort   WakeReason = "exposed_port"   // a connection to an exposed port
	WakeInferenceEnd  WakeReason = "inference_end"  // an inference call the box slept through ended
	WakeCrashRecovery WakeReason = "crash_recovery" // its VM was lost: a crash, or a daemon restart found it dead
)

// WakeReasons lists every WakeReason.
var WakeReasons = []WakeReason{WakeExec, WakeFile, WakeResume, WakeConnect, WakeExposedPort, WakeInferenceEnd, WakeCrashRecovery}

// wakeReasons maps the ops whose transition restores a box to why.
var wakeReasons = map[lifecycle.Op]WakeReason{
	lifecycle.OpExec:    WakeExec,
	lifecycle.OpFile:    WakeFile,
	lifecycle.OpResume:  WakeResume,
	lifecycle.OpConnect: WakeConnect,
	lifecycle.OpIngress: WakeExposedPort,
	lifecycle.OpLost:    WakeCrashRecovery,
}

type ctxKey int

const (
	wakeReasonKey ctxKey = iota
	startKindKey
)

// wakingFor marks ctx's wake as done for reason, whatever op does it.
func wakingFor(ctx context.Context, reason WakeReason) context.Context {
	return context.WithValue(ctx, wakeReasonKey, reason)
}

// wakeReason is why op, which restored a box, woke it.
func wakeReason(ctx context.Context, op lifecycle.Op) WakeReason {
	if r, ok := ctx.Value(wakeReasonKey).(WakeReason); ok {
		return r
	}
	if r, ok := wakeReasons[op]; ok {
		return r
	}
	return WakeReason(op)
}

// startingAs marks the Restores made with ctx as starts of kind how: a
// Restore as a new machine is a fork's child, unless it is a create's
// (from its template) or the wake of a fork that never took a
// checkpoint of its own.
func startingAs(ctx context.Context, how StartKind) context.Context {
	return context.WithValue(ctx, startKindKey, how)
}

// nopObserver hears nothing.
type nopObserver struct{}

func (nopObserver) Checkpointed(CheckpointInfo)      {}
func (nopObserver) Started(StartKind, time.Duration) {}
func (nopObserver) Woke(WakeReason)                  {}

// observedBackend tells obs about every VM start and checkpoint of the
// Backend it wraps; the other calls pass through.
type observedBackend struct {
	Backend
	obs Observer
}

func (b observedBackend) started(how StartKind, t0 time.Time, err error) {
	if err == nil {
		b.obs.Started(how, time.Since(t0))
	}
}

func (b observedBackend) Boot(ctx context.Context, box string, spec catalog.Spec) (Instance, error) {
	t0 := time.Now()
	inst, err := b.Backend.Boot(ctx, box, spec)
	b.started(StartBoot, t0, err)
	return inst, err
}

func (b observedBackend) Restore(ctx context.Context, box string, spec catalog.Spec, ckpt string, fork bool) (Instance, error) {
	t0 := time.Now()
	inst, err := b.Backend.Restore(ctx, box, spec, ckpt, fork)
	how, ok := ctx.Value(startKindKey).(StartKind)
	switch {
	case ok:
	case fork:
		how = StartFork
	default:
		how = StartRestore
	}
	b.started(how, t0, err)
	return inst, err
}

func (b observedBackend) Reboot(ctx context.Context, box string, spec catalog.Spec, ckpt string) (Instance, error) {
	t0 := time.Now()
	inst, err := b.Backend.Reboot(ctx, box, spec, ckpt)
	b.started(StartReboot, t0, err)
	return inst, err
}

func (b observedBackend) Checkpoint(ctx context.Context, box, id string) (CheckpointInfo, error) {
	info, err := b.Backend.Checkpoint(ctx, box, id)
	if err == nil {
		b.obs.Checkpointed(info)
	}
	return info, err
}

func (b observedBackend) Fork(ctx context.Context, parent, ckpt, child string, spec catalog.Spec) (CheckpointInfo, Instance, error) {
	t0 := time.Now()
	info, inst, err := b.Backend.Fork(ctx, parent, ckpt, child, spec)
	if err == nil {
		b.obs.Checkpointed(info)
	}
	b.started(StartFork, t0, err)
	return info, inst, err
}

// BoxesByState counts the host's boxes in each state; every state but
// Terminated is present, with 0 if no box is in it. It reads the catalog,
// so it is never stale.
func (m *Manager) BoxesByState() (map[lifecycle.State]int, error) {
	out := map[lifecycle.State]int{}
	for _, s := range lifecycle.States {
		if s != lifecycle.Terminated {
			out[s] = 0
		}
	}
	err := m.cat.View(func(tx *catalog.Tx) error {
		boxes, err := tx.Boxes()
		for _, b := range boxes {
			out[b.State]++
		}
		return err
	})
	return out, err
}
