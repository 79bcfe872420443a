// Package fakebackend is an in-memory daemon.Backend for tests: boxes are
// maps of files, checkpoints are copies of them, and exec understands a
// handful of commands. It fakes the semantics (what a restore or fork
// sees, which calls need a running VM), not processes.
//
// Commands exec understands:
//
//	echo ARGS...      ARGS and a newline on stdout
//	cat PATH          the file's contents on stdout (exit 1 if none)
//	write PATH DATA   DATA into the file
//	hostname          the guest's hostname (the box ID of a fork, else "sailbox")
//	stderr TEXT       TEXT on stderr
//	exit N            exit code N
//	stdin             the request's stdin echoed to stdout
//	schema            the agent's guest schema version
//
// Any other command fails to start (an error). A connection to any guest
// port echoes what it reads.
//
// A VM booted from a spec with Net has a network device, which its
// checkpoints keep; each start (boot, restore, fork, reboot) attaches it
// to a network under the policy of the spec it was given (Network
// reports it), and a restore of a checkpoint with a network device
// without one fails, as sailbox-vmm refuses it.
//
// Like a real VMM, which goes on when its client stops waiting, the calls
// that start a VM or write a checkpoint do so even when their context is
// cancelled, and then report the cancellation.
package fakebackend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/netapi"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
)

// What every checkpoint of the fake reports it cost.
const (
	CheckpointBytes = 1 << 20
	CheckpointPause = 5 * time.Millisecond
)

// ErrNotRunning is returned by calls that need a running VM.
var ErrNotRunning = errors.New("fake: box runs no VM")

// Backend is the fake. The zero value is not usable; call New.
type Backend struct {
	mu          sync.Mutex
	schema      int               // current guest schema version
	vms         map[string]*vm    // running VMs by box ID
	checkpoints map[string]*vm    // completed checkpoints by ID (frozen copies)
	fail        map[string]error  // method name → error for its next call
	calls       []string          // "Method box [arg]" in order
	removed     []string          // checkpoint IDs freed
	dead        map[string]bool   // boxes whose VM Attach reports gone
	hook        map[string]func() // method name → run at the start of its next call
	lost        func(box string)  // Watch's function
	identity    string            // what BootIdentity adds to the schema
}

type vm struct {
	schema    int
	hostname  string
	files     map[string][]byte
	netDevice bool               // booted with a network device, which checkpoints keep
	policy    *catalog.NetPolicy // the network's policy while it runs; nil: none
	connsIn   uint64             // connections dialled through the network since it started
}

func (v *vm) clone() *vm {
	return &vm{schema: v.schema, hostname: v.hostname, files: maps.Clone(v.files), netDevice: v.netDevice}
}

// attachNet gives v, just started for box from spec, its network.
func (v *vm) attachNet(box string, spec catalog.Spec) error {
	switch {
	case v.netDevice && spec.Net == nil:
		return fmt.Errorf("fake: start %s: the checkpoint has a network device: its restore needs a network", box)
	case v.netDevice:
		p := *spec.Net
		v.policy = &p
	}
	return nil
}

// Network reports the policy of box's network (nil if it runs none) and
// whether its VM has a network device.
func (f *Backend) Network(box string) (policy *catalog.NetPolicy, device bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.vms[box]
	if v == nil {
		return nil, false
	}
	return v.policy, v.netDevice
}

// New returns a fake whose agent has guest schema version schema.
func New(schema int) *Backend {
	return &Backend{
		schema: schema, vms: map[string]*vm{}, checkpoints: map[string]*vm{},
		fail: map[string]error{}, dead: map[string]bool{}, hook: map[string]func(){},
	}
}

var _ daemon.Backend = (*Backend)(nil)

// SetSchema changes the guest schema version new boots get.
func (f *Backend) SetSchema(v int) {
	f.mu.Lock()
	f.schema = v
	f.mu.Unlock()
}

// FailNext makes the next call of method (e.g. "Boot") fail with err.
func (f *Backend) FailNext(method string, err error) {
	f.mu.Lock()
	f.fail[method] = err
	f.mu.Unlock()
}

// OnNext runs fn at the start of the next call of method, without the
// fake's lock held.
func (f *Backend) OnNext(method string, fn func()) {
	f.mu.Lock()
	f.hook[method] = fn
	f.mu.Unlock()
}

// Crash makes box's VM vanish as Kill does, and reports it to the
// function given to Watch, as a VMM that dies while the daemon runs.
func (f *Backend) Crash(box string) {
	f.Kill(box)
	f.mu.Lock()
	lost := f.lost
	f.mu.Unlock()
	if lost != nil {
		go lost(box)
	}
}

// Watch records the function Crash reports to.
func (f *Backend) Watch(lost func(box string)) {
	f.mu.Lock()
	f.lost = lost
	f.mu.Unlock()
}

// Kill makes box's VM vanish, as a crashed VMM does: Attach reports it
// gone. Nothing is reported to Watch's function (the daemon is down).
func (f *Backend) Kill(box string) {
	f.mu.Lock()
	delete(f.vms, box)
	f.dead[box] = true
	f.mu.Unlock()
}

// Running reports whether box has a VM.
func (f *Backend) Running(box string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.vms[box] != nil
}

// RunningCount is the number of VMs.
func (f *Backend) RunningCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.vms)
}

// Checkpoints returns the IDs of the stored checkpoints, sorted.
func (f *Backend) Checkpoints() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.checkpoints))
}

// Calls returns the calls made so far, as "Method box [arg]".
func (f *Backend) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// begin records a call and returns the error injected for it, if any.
// It returns with f.mu held.
func (f *Backend) begin(method string, args ...string) error {
	f.mu.Lock()
	hook := f.hook[method]
	delete(f.hook, method)
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
	f.mu.Lock()
	f.calls = append(f.calls, strings.TrimSpace(method+" "+strings.Join(args, " ")))
	err := f.fail[method]
	delete(f.fail, method)
	return err
}

func (f *Backend) GuestSchemaVersion() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.schema
}

// SetBootIdentity changes what BootIdentity reports, as a new kernel or
// VMM would.
func (f *Backend) SetBootIdentity(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.identity = id
}

// BootIdentity is the guest schema version and what SetBootIdentity set.
func (f *Backend) BootIdentity() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fmt.Sprintf("fake schema %d %s", f.schema, f.identity), nil
}

func (f *Backend) Boot(ctx context.Context, box string, spec catalog.Spec) (daemon.Instance, error) {
	err := f.begin("Boot", box)
	defer f.mu.Unlock()
	if err != nil {
		return daemon.Instance{}, err
	}
	if f.vms[box] != nil {
		return daemon.Instance{}, fmt.Errorf("fake: boot %s: already running", box)
	}
	v := &vm{schema: f.schema, hostname: "sailbox", files: map[string][]byte{"/etc/image": []byte(spec.Image)}, netDevice: spec.Net != nil}
	v.attachNet(box, spec)
	f.vms[box] = v
	delete(f.dead, box)
	return daemon.Instance{GuestSchemaVersion: f.schema}, cancelled(ctx)
}

func (f *Backend) Restore(ctx context.Context, box string, spec catalog.Spec, ckpt string, fork bool) (daemon.Instance, error) {
	err := f.begin("Restore", box, ckpt)
	defer f.mu.Unlock()
	if err != nil {
		return daemon.Instance{}, err
	}
	c := f.checkpoints[ckpt]
	switch {
	case c == nil:
		return daemon.Instance{}, fmt.Errorf("fake: restore %s: no checkpoint %s", box, ckpt)
	case f.vms[box] != nil:
		return daemon.Instance{}, fmt.Errorf("fake: restore %s: already running", box)
	}
	v := c.clone()
	if fork {
		v.hostname = box
	}
	if err := v.attachNet(box, spec); err != nil {
		return daemon.Instance{}, err
	}
	f.vms[box] = v
	delete(f.dead, box)
	return daemon.Instance{GuestSchemaVersion: v.schema}, cancelled(ctx)
}

func (f *Backend) Reboot(ctx context.Context, box string, spec catalog.Spec, ckpt string) (daemon.Instance, error) {
	err := f.begin("Reboot", box, ckpt)
	defer f.mu.Unlock()
	if err != nil {
		return daemon.Instance{}, err
	}
	c := f.checkpoints[ckpt]
	switch {
	case c == nil:
		return daemon.Instance{}, fmt.Errorf("fake: reboot %s: no checkpoint %s", box, ckpt)
	case f.vms[box] != nil:
		return daemon.Instance{}, fmt.Errorf("fake: reboot %s: still running", box)
	}
	v := c.clone() // the disk survives, the agent is new
	v.schema = f.schema
	v.netDevice = spec.Net != nil // a boot: the spec's devices
	v.attachNet(box, spec)
	f.vms[box] = v
	return daemon.Instance{GuestSchemaVersion: v.schema}, nil
}

func (f *Backend) Checkpoint(ctx context.Context, box, id string) (daemon.CheckpointInfo, error) {
	err := f.begin("Checkpoint", box, id)
	defer f.mu.Unlock()
	if err != nil {
		return daemon.CheckpointInfo{}, err
	}
	info, err := f.checkpointLocked(box, id)
	if err != nil {
		return info, err
	}
	return info, cancelled(ctx)
}

func (f *Backend) checkpointLocked(box, id string) (daemon.CheckpointInfo, error) {
	v := f.vms[box]
	switch {
	case v == nil:
		return daemon.CheckpointInfo{}, fmt.Errorf("fake: checkpoint %s: %w", box, ErrNotRunning)
	case f.checkpoints[id] != nil:
		return daemon.CheckpointInfo{}, fmt.Errorf("fake: checkpoint %s exists", id)
	}
	f.checkpoints[id] = v.clone()
	return daemon.CheckpointInfo{Created: time.Now(), Bytes: CheckpointBytes, Pause: CheckpointPause}, nil
}

func (f *Backend) Compact(ctx context.Context, from, id, base string) (daemon.CheckpointInfo, error) {
	err := f.begin("Compact", from, id, base)
	defer f.mu.Unlock()
	if err != nil {
		return daemon.CheckpointInfo{}, err
	}
	switch {
	case f.checkpoints[from] == nil:
		return daemon.CheckpointInfo{}, fmt.Errorf("fake: compact %s: no such checkpoint", from)
	case f.checkpoints[id] != nil:
		return daemon.CheckpointInfo{}, fmt.Errorf("fake: compact %s: checkpoint %s exists", from, id)
	}
	f.checkpoints[id] = f.checkpoints[from].clone()
	return daemon.CheckpointInfo{Created: time.Now(), Bytes: CheckpointBytes}, nil
}

func (f *Backend) Fork(ctx context.Context, parent, ckpt, child string, spec catalog.Spec) (daemon.CheckpointInfo, daemon.Instance, error) {
	err := f.begin("Fork", parent, ckpt, child)
	defer f.mu.Unlock()
	if err != nil {
		return daemon.CheckpointInfo{}, daemon.Instance{}, err
	}
	info, err := f.checkpointLocked(parent, ckpt)
	if err != nil {
		return info, daemon.Instance{}, err
	}
	v := f.checkpoints[ckpt].clone()
	v.hostname = child
	if err := v.attachNet(child, spec); err != nil {
		return info, daemon.Instance{}, err
	}
	f.vms[child] = v
	return info, daemon.Instance{GuestSchemaVersion: v.schema}, cancelled(ctx)
}

func (f *Backend) Stop(ctx context.Context, box string) error {
	err := f.begin("Stop", box)
	defer f.mu.Unlock()
	if err != nil {
		return err
	}
	delete(f.vms, box)
	return nil
}

func (f *Backend) Attach(ctx context.Context, box string) (bool, error) {
	err := f.begin("Attach", box)
	defer f.mu.Unlock()
	if err != nil {
		return false, err
	}
	return f.vms[box] != nil && !f.dead[box], nil
}

func (f *Backend) RemoveCheckpoints(ctx context.Context, ids []string) error {
	err := f.begin("RemoveCheckpoints", ids...)
	defer f.mu.Unlock()
	if err != nil {
		return err
	}
	for _, id := range ids {
		if f.checkpoints[id] != nil {
			f.removed = append(f.removed, id)
		}
		delete(f.checkpoints, id)
	}
	return nil
}

func (f *Backend) Completed(ctx context.Context, ckpt string) (daemon.CheckpointInfo, bool, error) {
	err := f.begin("Completed", ckpt)
	defer f.mu.Unlock()
	if err != nil {
		return daemon.CheckpointInfo{}, false, err
	}
	return daemon.CheckpointInfo{}, f.checkpoints[ckpt] != nil, nil
}

func (f *Backend) Sweep(ctx context.Context, keep []string) ([]string, error) {
	err := f.begin("Sweep", keep...)
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	var removed []string
	for id := range f.checkpoints {
		if !slices.Contains(keep, id) {
			delete(f.checkpoints, id)
			removed = append(removed, id)
		}
	}
	f.removed = append(f.removed, removed...)
	return removed, nil
}

// cancelled is what a call whose work is done reports: the cancellation
// of a client that stopped waiting, if it did.
func cancelled(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fake: the call completed, but its caller had gone: %w", err)
	}
	return nil
}

// running returns box's VM; f.mu is held.
func (f *Backend) running(box string) (*vm, error) {
	v := f.vms[box]
	if v == nil {
		return nil, fmt.Errorf("fake: %s: %w", box, ErrNotRunning)
	}
	return v, nil
}

func (f *Backend) Exec(ctx context.Context, box string, req api.ExecRequest, stdout, stderr io.Writer) (api.ExecResult, error) {
	err := f.begin("Exec", box, req.Argv[0])
	if err != nil {
		f.mu.Unlock()
		return api.ExecResult{}, err
	}
	v, err := f.running(box)
	if err != nil {
		f.mu.Unlock()
		return api.ExecResult{}, err
	}
	var out, errOut bytes.Buffer
	code := 0
	args := req.Argv[1:]
	switch req.Argv[0] {
	case "echo":
		fmt.Fprintln(&out, strings.Join(args, " "))
	case "cat":
		if data, ok := v.files[strings.Join(args, "")]; ok {
			out.Write(data)
		} else {
			fmt.Fprintf(&errOut, "cat: %s: no such file\n", strings.Join(args, ""))
			code = 1
		}
	case "write":
		if len(args) == 2 {
			v.files[args[0]] = []byte(args[1])
		}
	case "hostname":
		fmt.Fprintln(&out, v.hostname)
	case "stderr":
		fmt.Fprintln(&errOut, strings.Join(args, " "))
	case "exit":
		if len(args) == 1 {
			code, _ = strconv.Atoi(args[0])
		}
	case "stdin":
		out.Write(req.Stdin)
	case "schema":
		fmt.Fprintln(&out, v.schema)
	case "env": // the request's environment, dir and user, as sent
		for _, kv := range req.Env {
			fmt.Fprintln(&out, kv)
		}
	case "pwd":
		fmt.Fprintln(&out, req.Dir)
	case "whoami":
		fmt.Fprintln(&out, req.User)
	default:
		f.mu.Unlock()
		return api.ExecResult{}, fmt.Errorf("fake: exec %q: %w: no such command", req.Argv[0], daemon.ErrInvalidArgument)
	}
	f.mu.Unlock()
	if out.Len() > 0 && stdout != nil {
		if _, err := stdout.Write(out.Bytes()); err != nil {
			return api.ExecResult{}, err
		}
	}
	if errOut.Len() > 0 && stderr != nil {
		if _, err := stderr.Write(errOut.Bytes()); err != nil {
			return api.ExecResult{}, err
		}
	}
	return api.ExecResult{ExitCode: code}, nil
}

// ErrNoFile is the fake's missing file; it is a daemon.ErrNotFound, as
// the Backend contract says.
var ErrNoFile = fmt.Errorf("fake: no such file: %w", daemon.ErrNotFound)

func (f *Backend) ReadFile(ctx context.Context, box, path string, w io.Writer) (int64, error) {
	err := f.begin("ReadFile", box, path)
	if err != nil {
		f.mu.Unlock()
		return 0, err
	}
	v, err := f.running(box)
	if err != nil {
		f.mu.Unlock()
		return 0, err
	}
	data, ok := v.files[path]
	f.mu.Unlock()
	if !ok {
		return 0, fmt.Errorf("%s: %w", path, ErrNoFile)
	}
	n, err := w.Write(data)
	return int64(n), err
}

func (f *Backend) WriteFile(ctx context.Context, box, path string, r io.Reader, opts daemon.FileOptions) (int64, error) {
	data, rerr := io.ReadAll(r)
	err := f.begin("WriteFile", box, path)
	defer f.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if rerr != nil {
		return 0, rerr
	}
	v, err := f.running(box)
	if err != nil {
		return 0, err
	}
	n := int64(len(data))
	if opts.Append {
		data = append(slices.Clone(v.files[path]), data...)
	}
	v.files[path] = data
	return n, nil
}

func (f *Backend) DialGuest(ctx context.Context, box string, port int) (net.Conn, error) {
	err := f.begin("DialGuest", box, strconv.Itoa(port))
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	v, err := f.running(box)
	if err != nil {
		return nil, err
	}
	if v.policy != nil {
		v.connsIn++
	}
	a, b := net.Pipe()
	go func() {
		defer b.Close()
		io.Copy(b, b)
	}()
	return a, nil
}

// NetworkStats reports, of box's network, the connections DialGuest made
// through it since the VM started, and of its device a frame each way
// for each (FakeFrameBytes bytes); the other counters are zero.
func (f *Backend) NetworkStats(ctx context.Context, box string) (daemon.NetworkCounters, error) {
	err := f.begin("NetworkStats", box)
	defer f.mu.Unlock()
	if err != nil {
		return daemon.NetworkCounters{}, err
	}
	v, err := f.running(box)
	if err != nil {
		return daemon.NetworkCounters{}, fmt.Errorf("%w: %w", daemon.ErrConflict, err)
	}
	if v.policy == nil {
		return daemon.NetworkCounters{}, fmt.Errorf("fake: %s: %w: no network", box, daemon.ErrConflict)
	}
	return daemon.NetworkCounters{
		Stack: netapi.Stats{Box: box, GuestAttached: true, ConnectionsIn: v.connsIn},
		Device: &api.NetworkDeviceStats{
			FramesOut: v.connsIn, BytesOut: v.connsIn * FakeFrameBytes,
			FramesIn: v.connsIn, BytesIn: v.connsIn * FakeFrameBytes,
		},
	}, nil
}

// FakeFrameBytes is the size of each frame the fake's network devices
// count.
const FakeFrameBytes = 60
