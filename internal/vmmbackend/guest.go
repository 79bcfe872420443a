package vmmbackend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/devices/virtio/vsock"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/daemon"
)

// Calls that reach the guest agent.

func (b *Backend) Exec(ctx context.Context, box string, req api.ExecRequest, stdout, stderr io.Writer) (api.ExecResult, error) {
	v, err := b.get(box)
	if err != nil {
		return api.ExecResult{}, err
	}
	var stdin io.Reader
	if len(req.Stdin) > 0 {
		stdin = bytes.NewReader(req.Stdin)
	}
	res, err := v.agent.Exec(ctx, guestagent.ExecRequest{
		Argv: req.Argv, Env: req.Env, Dir: req.Dir, User: req.User, Timeout: time.Duration(req.TimeoutMS) * time.Millisecond,
	}, stdin, stdout, stderr)
	if err != nil {
		return api.ExecResult{}, agentError(err)
	}
	b.recordWorkingSet(box, v)
	return api.ExecResult{ExitCode: res.ExitCode, Signal: res.Signal, TimedOut: res.TimedOut}, nil
}

// agentKinds are the daemon's error kinds for the guest agent's error
// codes that are the caller's doing: a guest file (or a directory on its
// path) that does not exist is the API's 404, a path or program the call
// cannot use (a directory read as a file, a relative path, no such
// program or user) its 400. Every other code, and a code this host does
// not know (a newer agent's), stays an internal error.
//
// Agents have sent these codes since the first guest schema version
// (guestagent.CodeNotFound and the others were in schema 1), so no agent
// a box can run needs a fallback that reads the message.
var agentKinds = map[string]error{
	guestagent.CodeNotFound:   daemon.ErrNotFound,
	guestagent.CodeBadRequest: daemon.ErrInvalidArgument,
	guestagent.CodeExecFailed: daemon.ErrInvalidArgument,
}

// agentError is err from a call to a guest agent as the daemon sees it:
// an agent's *guestagent.Error whose code agentKinds names also matches
// that daemon kind (errors.Is), and keeps the agent's message.
func agentError(err error) error {
	var ae *guestagent.Error
	if !errors.As(err, &ae) {
		return err
	}
	kind := agentKinds[ae.Code]
	if kind == nil {
		return err
	}
	return &agentRefusal{kind: kind, err: err}
}

// agentRefusal is an agent's error of a daemon kind.
type agentRefusal struct{ kind, err error }

func (e *agentRefusal) Error() string   { return e.err.Error() }
func (e *agentRefusal) Unwrap() []error { return []error{e.kind, e.err} }

// recordWorkingSet has a restored VM record its working set once its
// first exec is done: the pages its guest needed to wake and serve it,
// which later restores of the box's checkpoints (wakes, forks) map ahead
// (vmm.Machine.SaveWorkingSet). Once per VM, in the background.
func (b *Backend) recordWorkingSet(box string, v *vm) {
	if !v.restored || !v.wsAsked.CompareAndSwap(false, true) {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		res, err := v.ctl.SaveWorkingSet(ctx)
		select {
		case <-v.exited:
			return // stopped meanwhile: nothing to say
		default:
		}
		if err != nil {
			b.log.Warn("record working set", "box", box, "err", err)
			return
		}
		b.log.Debug("record working set", "box", box, "saved", res.Saved)
	}()
}

// agentSchema is the GuestSchemaVersion of v's agent: known since v's
// start, or asked once (a VM found by Attach).
func agentSchema(ctx context.Context, v *vm) (int, error) {
	if s := v.schema.Load(); s != 0 {
		return int(s), nil
	}
	h, err := v.agent.Health(ctx)
	if err != nil {
		return 0, fmt.Errorf("guest agent: %w", err)
	}
	v.schema.Store(int32(h.GuestSchemaVersion))
	return h.GuestSchemaVersion, nil
}

func (b *Backend) ReadFile(ctx context.Context, box, path string, w io.Writer) (int64, error) {
	v, err := b.get(box)
	if err != nil {
		return 0, err
	}
	n, err := v.agent.ReadFile(ctx, path, w)
	return n, agentError(err)
}

func (b *Backend) WriteFile(ctx context.Context, box, path string, r io.Reader, opts daemon.FileOptions) (int64, error) {
	v, err := b.get(box)
	if err != nil {
		return 0, err
	}
	n, err := v.agent.WriteFile(ctx, path, r, guestagent.WriteOptions{Mode: fs.FileMode(opts.Mode), Append: opts.Append, CreateDirs: opts.CreateDirs})
	return n, agentError(err)
}

// agentConnReserve is how many of a VM's vsock connections are left for
// the daemon's own calls to its guest agent (exec, files, health, the
// restored op) when the guest holds every connection it may and the
// box's exposed ports every one the daemon allows, each forwarded
// through the agent: the device's host share less the daemon's cap on
// forwards, 768 − 512 = 256. That many calls may be in flight at once
// before one is refused ("connection table full"), not counting the
// forwards a box with a network makes through it instead.
const agentConnReserve = vsock.HostConnections - daemon.MaxForwardConns

// minAgentConnReserve is the least agentConnReserve may be: a change to
// the device's share or to the daemon's cap that leaves less does not
// build (a negative constant does not convert to uint).
const minAgentConnReserve = 128

const _ uint = agentConnReserve - minAgentConnReserve

// DialGuest reaches TCP port port of box's guest. For a box with a
// network whose agent configured it (guestagent.NetworkSchemaVersion),
// through the network (sailbox-net's dial): the guest's server is
// reached on its own interface (netapi.GuestIP), from the gateway, with
// no agent in the data path. Otherwise (a box without a network, an
// older agent until the box is upgraded, a network gone) through the
// agent's dial_tcp op, to the guest's 127.0.0.1. ctx bounds the dial
// only. The connection half-closes (it has CloseWrite) and lasts until
// it is closed. A box reached through an agent that predates dial_tcp
// (guestagent.DialTCPSchemaVersion) fails with an error that wraps
// errors.ErrUnsupported: it needs an upgrade.
func (b *Backend) DialGuest(ctx context.Context, box string, port int) (net.Conn, error) {
	v, err := b.get(box)
	if err != nil {
		return nil, err
	}
	if v.net != nil && v.net.alive() {
		schema, err := agentSchema(ctx, v)
		if err != nil {
			return nil, fmt.Errorf("box %s: guest port %d: %w", box, port, err)
		}
		if schema >= guestagent.NetworkSchemaVersion {
			return dialNet(ctx, box, v.net, port)
		}
	}
	conn, err := v.agent.DialTCP(ctx, "", port)
	if errors.Is(err, errors.ErrUnsupported) {
		return nil, fmt.Errorf("box %s needs an upgrade to reach guest port %d: %w", box, port, err)
	}
	if err != nil {
		return nil, fmt.Errorf("box %s: guest port %d: %w", box, port, err)
	}
	return conn, nil
}
