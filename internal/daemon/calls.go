package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// The Manager's public calls, one per API operation.

// Create boots a new box. It is recorded as Creating while its VM boots,
// and deleted if the boot fails.
func (m *Manager) Create(ctx context.Context, req api.CreateRequest) (api.Box, error) {
	spec := catalog.Spec{MemoryMiB: req.MemoryMiB, VCPUs: req.VCPUs, Image: m.defaults.Image, Root: m.defaults.Root}
	if spec.MemoryMiB == 0 {
		spec.MemoryMiB = m.defaults.MemoryMiB
	}
	if spec.VCPUs == 0 {
		spec.VCPUs = m.defaults.VCPUs
	}
	switch {
	case spec.MemoryMiB < MinMemoryMiB || spec.MemoryMiB > MaxMemoryMiB:
		return api.Box{}, fmt.Errorf("create: %w: memory_mib %d is outside [%d, %d]", ErrInvalidArgument, spec.MemoryMiB, MinMemoryMiB, MaxMemoryMiB)
	case spec.VCPUs < 1 || spec.VCPUs > MaxVCPUs:
		return api.Box{}, fmt.Errorf("create: %w: vcpus %d is outside [1, %d]", ErrInvalidArgument, spec.VCPUs, MaxVCPUs)
	}
	if req.Image != "" {
		// A client names an image: one in the operator's image
		// directories, or a registry's (see images.go); the default
		// image is the operator's own choice.
		p, root, err := m.clientImage(ctx, req.Image)
		if err != nil {
			return api.Box{}, fmt.Errorf("create: %w", err)
		}
		spec.Image, spec.Root = p, root
	}
	size, err := diskSize(spec, req.DiskSizeBytes) // see disksize.go
	if err != nil {
		return api.Box{}, fmt.Errorf("create: %w", err)
	}
	spec.DiskSizeBytes = size
	if spec.Net, err = netPolicy(req); err != nil { // see network.go
		return api.Box{}, fmt.Errorf("create: %w", err)
	}
	pol, err := createPolicies(req) // see policies.go
	if err != nil {
		return api.Box{}, fmt.Errorf("create: %w", err)
	}
	release, err := m.admit("create", spec.MemoryMiB)
	if err != nil {
		return api.Box{}, err
	}
	b := catalog.Box{ID: m.newID(), State: lifecycle.Creating, Created: m.clock.Now().UTC(), HostID: m.hostID, Spec: spec}
	pol.setOn(&b)
	unlock := m.lock(b.ID)
	defer unlock()
	err = m.cat.Update(func(tx *catalog.Tx) error { return tx.CreateBox(b) })
	release() // recorded Creating: the catalog counts it now
	if err != nil {
		return api.Box{}, fmt.Errorf("create: %w", err)
	}
	// Like every change, a boot runs to its end (see apply).
	ctx = context.WithoutCancel(ctx)
	inst, err := m.start(ctx, &b)
	if err == nil {
		b.GuestSchemaVersion = inst.GuestSchemaVersion
		if err = m.save(b); err == nil {
			b, err = m.apply(ctx, b.ID, lifecycle.OpBooted, nil)
		}
	}
	if err != nil {
		m.discardNewBox(ctx, b.ID)
		return api.Box{}, fmt.Errorf("create box %s: %w", b.ID, err)
	}
	m.armExpiry(b) // its idle timer started with OpBooted
	m.log.Info("box created", "box", b.ID, "memory_mib", spec.MemoryMiB, "vcpus", spec.VCPUs, "guest_schema_version", b.GuestSchemaVersion, "template", b.Template, "network", spec.Net != nil)
	return m.box(b.ID)
}

// start starts the first VM of new box b, recorded Creating: restored
// from its spec's template (see templates.go), or booted when templates
// are off.
func (m *Manager) start(ctx context.Context, b *catalog.Box) (Instance, error) {
	if !m.templates {
		return m.be.Boot(ctx, b.ID, b.Spec)
	}
	tp, err := m.template(ctx, b.Spec)
	if err != nil {
		return Instance{}, err
	}
	// Recorded before the restore: the box builds on the template's
	// checkpoint from its first instant.
	b.Template, b.BaseCheckpoint = tp.ID, tp.Checkpoint
	if err := m.save(*b); err != nil {
		return Instance{}, err
	}
	inst, err := m.be.Restore(startingAs(ctx, StartCreate), b.ID, b.Spec, tp.Checkpoint, true)
	if err != nil {
		// A template the store lost is made again by the next create.
		if _, ok, cerr := m.be.Completed(ctx, tp.Checkpoint); cerr == nil && !ok {
			m.log.Error("the store lost a template's checkpoint; forgetting the template", "template", tp.ID, "checkpoint", tp.Checkpoint)
			b.Template, b.BaseCheckpoint = "", ""
			if serr := m.save(*b); serr == nil {
				m.dropTemplate(ctx, tp.ID)
			}
		}
	}
	return inst, err
}

// box returns box id as the API reports it.
func (m *Manager) box(id string) (api.Box, error) {
	var out api.Box
	err := m.cat.View(func(tx *catalog.Tx) error {
		b, err := tx.Box(id)
		if err != nil {
			return err
		}
		out, err = toAPI(tx, b)
		return err
	})
	if errors.Is(err, catalog.ErrNotFound) {
		return out, fmt.Errorf("box %s: %w", id, ErrNotFound)
	}
	return out, err
}

func toAPI(tx *catalog.Tx, b catalog.Box) (api.Box, error) {
	out := api.Box{
		ID: b.ID, State: b.State, GuestSchemaVersion: b.GuestSchemaVersion, Created: b.Created,
		LastCheckpointID: b.LastCheckpoint, ParentID: b.ParentID, HostID: b.HostID,
		PendingUpgrade: b.PendingUpgrade, MemoryMiB: b.Spec.MemoryMiB, VCPUs: b.Spec.VCPUs, DiskSizeBytes: b.Spec.DiskSizeBytes,
		Ports: []api.Port{}, Network: networkToAPI(b.Spec.Net),
		Labels: maps.Clone(b.Labels), IdleTimeoutSeconds: b.IdleTimeoutSeconds, TTLSeconds: b.TTLSeconds,
	}
	if !b.ExpiresAt.IsZero() {
		t := b.ExpiresAt.UTC()
		out.ExpiresAt = &t
	}
	if b.LastCheckpoint != "" {
		ck, err := tx.Checkpoint(b.LastCheckpoint)
		if err != nil {
			return out, fmt.Errorf("box %s: %w", b.ID, err)
		}
		t := ck.Created
		out.LastCheckpoint = &t
	}
	for _, p := range b.Ports {
		out.Ports = append(out.Ports, api.Port(p))
	}
	return out, nil
}

func checkpointToAPI(c catalog.Checkpoint) api.Checkpoint {
	return api.Checkpoint{ID: c.ID, BoxID: c.BoxID, ParentID: c.ParentID, Created: c.Created, Completed: c.Completed}
}

// Get returns box id.
func (m *Manager) Get(ctx context.Context, id string) (api.Box, error) { return m.box(id) }

// ListFilter narrows List.
type ListFilter struct {
	// MaxGuestSchemaVersion, if not nil, keeps boxes whose guest agent
	// reports at most this version: those that still need an upgrade.
	MaxGuestSchemaVersion *int
	// Labels keeps boxes that carry every one of these labels.
	Labels map[string]string
}

// List returns the boxes that pass f, sorted by ID.
func (m *Manager) List(ctx context.Context, f ListFilter) ([]api.Box, error) {
	out := []api.Box{}
	err := m.cat.View(func(tx *catalog.Tx) error {
		boxes, err := tx.Boxes()
		if err != nil {
			return err
		}
		for _, b := range boxes {
			if f.MaxGuestSchemaVersion != nil && b.GuestSchemaVersion > *f.MaxGuestSchemaVersion {
				continue
			}
			if !hasLabels(b, f.Labels) {
				continue
			}
			ab, err := toAPI(tx, b)
			if err != nil {
				return err
			}
			out = append(out, ab)
		}
		return nil
	})
	return out, err
}

// Checkpoints returns box id's chain, newest first.
func (m *Manager) Checkpoints(ctx context.Context, id string) ([]api.Checkpoint, error) {
	out := []api.Checkpoint{}
	err := m.cat.View(func(tx *catalog.Tx) error {
		chain, err := tx.Chain(id)
		for _, c := range chain {
			out = append(out, checkpointToAPI(c))
		}
		return err
	})
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, fmt.Errorf("box %s: %w", id, ErrNotFound)
	}
	return out, err
}

// change runs op on box id under its lock.
func (m *Manager) change(ctx context.Context, id string, op lifecycle.Op, out *outcome) (api.Box, error) {
	unlock := m.lock(id)
	defer unlock()
	if _, err := m.apply(ctx, id, op, out); err != nil {
		return api.Box{}, err
	}
	return m.box(id)
}

// Checkpoint takes a live checkpoint of running box id.
func (m *Manager) Checkpoint(ctx context.Context, id string) (api.Checkpoint, error) {
	var out outcome
	if _, err := m.change(ctx, id, lifecycle.OpCheckpoint, &out); err != nil {
		return api.Checkpoint{}, err
	}
	return checkpointToAPI(out.checkpoint), nil
}

// Fork starts req.Count (0: 1) new running boxes from box id, all from
// one checkpoint: live from a running box, from its last checkpoint
// (without waking it) from a paused or sleeping one. The children start
// concurrently; if one fails, those that started are stopped and
// forgotten, and the error is returned.
func (m *Manager) Fork(ctx context.Context, id string, req api.ForkRequest) (api.ForkResponse, error) {
	if req.Count == 0 {
		req.Count = 1
	}
	if req.Count < 1 || req.Count > api.MaxForkCount {
		return api.ForkResponse{}, fmt.Errorf("fork: %w: count %d is outside [1, %d]", ErrInvalidArgument, req.Count, api.MaxForkCount)
	}
	out := outcome{forkCount: req.Count}
	if _, err := m.change(ctx, id, lifecycle.OpFork, &out); err != nil {
		return api.ForkResponse{}, err
	}
	res := api.ForkResponse{Checkpoint: checkpointToAPI(out.checkpoint)}
	for _, c := range out.children {
		child, err := m.box(c.ID)
		if err != nil {
			return api.ForkResponse{}, err
		}
		res.Boxes = append(res.Boxes, child)
	}
	res.Box = res.Boxes[0]
	return res, nil
}

// Pause checkpoints running box id and powers it down until a resume or
// connect.
func (m *Manager) Pause(ctx context.Context, id string) (api.Box, error) {
	return m.change(ctx, id, lifecycle.OpPause, nil)
}

// Sleep checkpoints running box id and powers it down until it is used
// (exec, files, a connection to an exposed port) or resumed.
func (m *Manager) Sleep(ctx context.Context, id string) (api.Box, error) {
	return m.change(ctx, id, lifecycle.OpSleep, nil)
}

// Resume restores paused, sleeping or failed box id.
func (m *Manager) Resume(ctx context.Context, id string) (api.Box, error) {
	return m.change(ctx, id, lifecycle.OpResume, nil)
}

// Connect checks that box id lives on this host, resumes it if it is down
// and returns it.
func (m *Manager) Connect(ctx context.Context, id string) (api.Box, error) {
	b, err := m.record(id)
	if err != nil {
		return api.Box{}, err
	}
	if b.HostID != m.hostID {
		return api.Box{}, fmt.Errorf("box %s: %w: %s", id, ErrWrongHost, b.HostID)
	}
	return m.change(ctx, id, lifecycle.OpConnect, nil)
}

// Upgrade moves box id onto the current guest agent: a running box
// reboots on its disk (true), a box that is down records it for its next
// wake (false), a box already current reports true and is left alone.
func (m *Manager) Upgrade(ctx context.Context, id string) (api.UpgradeResponse, error) {
	unlock := m.lock(id)
	defer unlock()
	b, err := m.record(id)
	if err != nil {
		return api.UpgradeResponse{}, err
	}
	if !lifecycle.Allowed(b.State, lifecycle.OpUpgrade) {
		_, err := lifecycle.Next(b.State, lifecycle.OpUpgrade)
		return api.UpgradeResponse{}, fmt.Errorf("box %s: %w", id, err)
	}
	if b.GuestSchemaVersion >= m.be.GuestSchemaVersion() {
		if b.PendingUpgrade {
			b.PendingUpgrade = false
			if err := m.save(b); err != nil {
				return api.UpgradeResponse{}, err
			}
		}
		ab, err := m.box(id)
		return api.UpgradeResponse{Upgraded: true, Box: ab}, err
	}
	var out outcome
	if _, err := m.apply(ctx, id, lifecycle.OpUpgrade, &out); err != nil {
		return api.UpgradeResponse{}, err
	}
	ab, err := m.box(id)
	return api.UpgradeResponse{Upgraded: out.upgraded, Box: ab}, err
}

// Terminate destroys box id and frees the checkpoints no other box's
// chain references.
func (m *Manager) Terminate(ctx context.Context, id string) (api.TerminateResponse, error) {
	unlock := m.lock(id)
	defer unlock()
	return m.terminate(ctx, id)
}

// terminate terminates box id, whose lock the caller holds.
func (m *Manager) terminate(ctx context.Context, id string) (api.TerminateResponse, error) {
	var out outcome
	b, err := m.apply(ctx, id, lifecycle.OpTerminate, &out)
	if err != nil {
		return api.TerminateResponse{}, err
	}
	freed := out.freed
	if freed == nil {
		freed = []string{}
	}
	return api.TerminateResponse{ID: id, State: string(b.State), FreedCheckpoints: freed}, nil
}

// use makes box id ready for op (exec, file, ingress): a running box as
// it is, a sleeping one woken.
func (m *Manager) use(ctx context.Context, id string, op lifecycle.Op) error {
	unlock := m.lock(id)
	defer unlock()
	_, err := m.apply(ctx, id, op, nil)
	return err
}

// Exec runs req in box id's guest, waking a sleeping box first. Output is
// written to stdout and stderr as it arrives. A state change of the box
// while the process runs (a pause, say) cuts it short with an error.
func (m *Manager) Exec(ctx context.Context, id string, req api.ExecRequest, stdout, stderr io.Writer) (api.ExecResult, error) {
	if len(req.Argv) > 0 && req.Argv[0] == "" {
		return api.ExecResult{}, fmt.Errorf("exec: %w: argv[0] is empty", ErrInvalidArgument)
	}
	if req.TimeoutMS < 0 {
		return api.ExecResult{}, fmt.Errorf("exec: %w: negative timeout", ErrInvalidArgument)
	}
	defer m.beginUse(id)()
	if err := m.use(ctx, id, lifecycle.OpExec); err != nil {
		return api.ExecResult{}, err
	}
	var root *catalog.RootImage
	if err := m.cat.View(func(tx *catalog.Tx) error {
		b, err := tx.Box(id)
		root = b.Spec.Root
		return err
	}); err != nil {
		return api.ExecResult{}, fmt.Errorf("box %s: exec: %w", id, err)
	}
	req = withImageConfig(req, root)
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return api.ExecResult{}, fmt.Errorf("box %s: exec: %w: argv is empty, and the box's image has no Entrypoint or Cmd", id, ErrInvalidArgument)
	}
	res, err := m.be.Exec(ctx, id, req, stdout, stderr)
	if err != nil {
		return res, fmt.Errorf("box %s: exec %q: %w", id, req.Argv[0], err)
	}
	return res, nil
}

func checkGuestPath(p string) error {
	if !path.IsAbs(p) {
		return fmt.Errorf("%w: guest path %q is not absolute", ErrInvalidArgument, p)
	}
	return nil
}

// ReadFile writes the guest file at p of box id to w, waking a sleeping
// box first.
func (m *Manager) ReadFile(ctx context.Context, id, p string, w io.Writer) (int64, error) {
	if err := checkGuestPath(p); err != nil {
		return 0, err
	}
	defer m.beginUse(id)()
	if err := m.use(ctx, id, lifecycle.OpFile); err != nil {
		return 0, err
	}
	n, err := m.be.ReadFile(ctx, id, p, w)
	if err != nil {
		return n, fmt.Errorf("box %s: read %s: %w", id, p, err)
	}
	return n, nil
}

// WriteFile writes r to the guest file at p of box id, waking a sleeping
// box first.
func (m *Manager) WriteFile(ctx context.Context, id, p string, r io.Reader, opts FileOptions) (int64, error) {
	if err := checkGuestPath(p); err != nil {
		return 0, err
	}
	if opts.Mode > 0o777 {
		return 0, fmt.Errorf("%w: mode %#o has bits beyond 0777", ErrInvalidArgument, opts.Mode)
	}
	defer m.beginUse(id)()
	if err := m.use(ctx, id, lifecycle.OpFile); err != nil {
		return 0, err
	}
	n, err := m.be.WriteFile(ctx, id, p, r, opts)
	if err != nil {
		return n, fmt.Errorf("box %s: write %s: %w", id, p, err)
	}
	return n, nil
}

// InferenceCall runs call, an upstream inference request made for box id,
// with the box asleep: it is put to sleep first and resumed when call
// returns (unless something else woke or changed it meanwhile).
func (m *Manager) InferenceCall(ctx context.Context, id string, call func(context.Context) error) error {
	if _, err := m.change(ctx, id, lifecycle.OpInference, nil); err != nil {
		return err
	}
	callErr := call(ctx)
	unlock := m.lock(id)
	defer unlock()
	b, err := m.record(id)
	if err != nil {
		return errors.Join(callErr, err)
	}
	if b.State == lifecycle.Sleeping {
		if _, err := m.apply(wakingFor(context.WithoutCancel(ctx), WakeInferenceEnd), id, lifecycle.OpResume, nil); err != nil {
			return errors.Join(callErr, fmt.Errorf("resume after inference: %w", err))
		}
	}
	return callErr
}
