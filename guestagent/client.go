package guestagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/sailbox-dev/sailbox/devices/virtio/vsock"
)

// Client is the host side of the agent protocol. Each call dials a new
// connection, sends one request, reads the answer and closes the
// connection, so a Client is safe for concurrent use. DialTCP is the
// exception: its connection lasts until the caller closes the net.Conn it
// returns.
type Client struct {
	// Dial opens a connection to the agent. For a guest behind a hybrid
	// vsock device, NewHybridClient sets it.
	Dial func(ctx context.Context) (net.Conn, error)
}

// Health asks the agent whether it is up and which protocol revision it
// speaks. Callers should check the response's GuestSchemaVersion before
// relying on any other op.
func (c *Client) Health(ctx context.Context) (HealthResponse, error) {
	var resp HealthResponse
	if err := c.do(ctx, &call{op: OpHealth}, &resp); err != nil {
		return HealthResponse{}, err
	}
	return resp, nil
}

// Exec runs a process in the guest, as req describes, and returns how it
// ended. A non-zero exit or a signal is reported in the result, not as an
// error; errors report a request the agent refused (an *Error, with
// CodeExecFailed for a process that could not be started) or an exchange
// that failed.
//
// The process's output is written to stdout and stderr as it arrives; nil
// discards it. The writers are called from Exec's goroutine, one at a time,
// and must keep up: an agent that cannot send output for its
// RequestTimeout kills the process. If stdin is not nil, Exec copies it to
// the process, concurrently, until it reaches EOF, and then closes the
// process's stdin; if stdin is nil, the process reads from /dev/null.
//
// If ctx is done before the process has ended, or writing its output
// fails, Exec asks the agent to kill the process group with SIGKILL, closes
// the connection (which kills it too) and returns the error.
//
// Exec does not wait for a Read of stdin that is in progress when the
// exchange ends, as it does when the process exits without reading all its
// input: the goroutine copying stdin exits when that Read returns, and
// discards what it read.
//
// A request with a User first asks the agent which protocol revision it
// speaks (one more round trip): an agent older than ExecUserSchemaVersion
// would run the process as root, so Exec then fails with an
// *AgentTooOldError, which matches errors.ErrUnsupported, and runs
// nothing.
func (c *Client) Exec(ctx context.Context, req ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (ExecResult, error) {
	if req.User != "" {
		h, err := c.Health(ctx)
		if err != nil {
			return ExecResult{}, err
		}
		if h.GuestSchemaVersion < ExecUserSchemaVersion {
			return ExecResult{}, &AgentTooOldError{
				Op:               opExec + " as a user",
				AgentVersion:     h.AgentVersion,
				SchemaVersion:    h.GuestSchemaVersion,
				MinSchemaVersion: ExecUserSchemaVersion,
			}
		}
	}
	args := &execArgs{
		ExecRequest: req,
		Stdin:       stdin != nil,
	}
	if req.Timeout > 0 {
		args.TimeoutMS = int64((req.Timeout-1)/time.Millisecond) + 1 // rounded up
	}
	var name string
	if len(req.Argv) > 0 {
		name = strconv.Quote(req.Argv[0])
	}
	output := func(typ FrameType, p []byte) error {
		w := stdout
		if typ == FrameStderr {
			w = stderr
		}
		if w == nil {
			return nil
		}
		if _, err := w.Write(p); err != nil {
			return fmt.Errorf("write %v: %w", typ, err)
		}
		return nil
	}
	var res ExecResult
	err := c.do(ctx, &call{op: opExec, subject: name, args: args, stdin: stdin, output: output, kill: true, signals: req.Signals}, &res)
	if err != nil {
		return ExecResult{}, err
	}
	return res, nil
}

// maxRunOutput is the most of each of stdout and stderr that Run collects.
const maxRunOutput = 64 << 20

// Run runs argv in the guest with no input, as Exec does, and returns what
// it wrote and its exit code. It is meant for tests and small commands:
// more than 64 MiB of output on either stream fails the call and
// kills the process. If a signal killed the process, code is -1 and err
// says which signal; code is -1 too if err reports another failure.
func (c *Client) Run(ctx context.Context, argv ...string) (stdout, stderr []byte, code int, err error) {
	outBuf := &cappedBuffer{name: "stdout", max: maxRunOutput}
	errBuf := &cappedBuffer{name: "stderr", max: maxRunOutput}
	res, err := c.Exec(ctx, ExecRequest{Argv: argv}, nil, outBuf, errBuf)
	switch {
	case err != nil:
		return outBuf.b, errBuf.b, -1, err
	case res.Signal != 0:
		return outBuf.b, errBuf.b, -1, fmt.Errorf("agent exec %q: killed by signal %d", argv[0], res.Signal)
	}
	return outBuf.b, errBuf.b, res.ExitCode, nil
}

// cappedBuffer collects up to max bytes and fails writes beyond that.
type cappedBuffer struct {
	name string
	max  int
	b    []byte
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if len(p) > b.max-len(b.b) {
		return 0, fmt.Errorf("%s exceeds %d bytes", b.name, b.max)
	}
	b.b = append(b.b, p...)
	return len(p), nil
}

// ReadFile copies the whole file at path in the guest to w, and returns how
// many bytes it copied. It reads until the end of the file, so it works on
// files in /proc and on devices; a file with no end makes it run until ctx
// is done. If ReadFile fails after copying some bytes, w holds them.
//
// Agent errors are *Error values: CodeNotFound, CodePermission, and
// CodeBadRequest for a path that is relative or a directory.
func (c *Client) ReadFile(ctx context.Context, path string, w io.Writer) (int64, error) {
	return c.ReadFileRange(ctx, path, 0, 0, w)
}

// ReadFileRange is ReadFile for part of a file: it copies at most length
// bytes from offset on, or everything from offset on if length is 0.
func (c *Client) ReadFileRange(ctx context.Context, path string, offset, length int64, w io.Writer) (int64, error) {
	var n int64
	output := func(typ FrameType, p []byte) error {
		if typ != FrameStdout {
			return fmt.Errorf("read response: unexpected %v frame", typ)
		}
		m, err := w.Write(p)
		n += int64(m)
		if err != nil {
			return fmt.Errorf("write file data: %w", err)
		}
		return nil
	}
	var res readFileResult
	args := &readFileArgs{Path: path, Offset: offset, Length: length}
	if err := c.do(ctx, &call{op: opReadFile, subject: path, args: args, output: output}, &res); err != nil {
		return n, err
	}
	if res.Size != n {
		return n, fmt.Errorf("agent read_file %s: agent sent %d bytes but counted %d", path, n, res.Size)
	}
	return n, nil
}

// WriteFile writes what r holds to the file at path in the guest, as opts
// say, and returns how many bytes the agent wrote. r is read until EOF; nil
// writes an empty file. Unless opts.Append, the file is replaced whole or
// not at all, even if the exchange fails. A symbolic link at path is
// replaced by the file, not followed.
//
// Agent errors are *Error values: CodeNotFound for a missing parent
// directory (see opts.CreateDirs), CodePermission, and CodeBadRequest for a
// path that is relative or a directory, or a mode with bits other than
// permissions.
func (c *Client) WriteFile(ctx context.Context, path string, r io.Reader, opts WriteOptions) (int64, error) {
	if r == nil {
		r = strings.NewReader("")
	}
	var res writeFileResult
	args := &writeFileArgs{Path: path, WriteOptions: opts}
	if err := c.do(ctx, &call{op: opWriteFile, subject: path, args: args, stdin: r}, &res); err != nil {
		return 0, err
	}
	return res.Written, nil
}

// Stat describes the file at path in the guest, following symbolic links.
// Agent errors are as for ReadFile.
func (c *Client) Stat(ctx context.Context, path string) (FileInfo, error) {
	var fi FileInfo
	if err := c.do(ctx, &call{op: opStat, subject: path, args: &statArgs{Path: path}}, &fi); err != nil {
		return FileInfo{}, err
	}
	return fi, nil
}

// Restored fixes up a guest that has just been restored or forked from a
// snapshot, as args say: it sets the guest's wall clock to the host's,
// reseeds the guest kernel's random number generator with args.Entropy,
// and, for a fork, gives the guest a new hostname and machine ID. Build
// args with RestoreArgs after a restore and with ForkArgs after a fork;
// call Restored before anything else runs in the guest on the host's
// behalf. Restored succeeds only if the agent applied everything; the
// result says what the clock read before and after.
//
// Agents older than RestoredSchemaVersion do not have the op: Restored
// then fails with an *AgentTooOldError, which matches
// errors.ErrUnsupported. Such a guest must not be used as a fork, since it
// shares its parent's random state and identity. Other agent errors are
// *Error values: CodeBadRequest for invalid args, CodePermission or
// CodeInternal for a step that failed (the message says which steps were
// applied), and CodeUnknownOp from an agent that is not a guest's (see
// Server.Guest) or not on Linux.
func (c *Client) Restored(ctx context.Context, args RestoredArgs) (RestoredResult, error) {
	t := args.Time
	if t.IsZero() {
		t = time.Now()
	}
	if t.Before(minUnixNano) || t.After(maxUnixNano) {
		return RestoredResult{}, fmt.Errorf("agent %s: time %v cannot be sent as Unix nanoseconds", opRestored, t)
	}
	wire := &restoredArgs{RestoredArgs: args, TimeUnixNano: t.UnixNano()}
	var res restoredResult
	if err := c.do(ctx, &call{op: opRestored, args: wire}, &res); err != nil {
		return RestoredResult{}, c.tooOld(ctx, opRestored, RestoredSchemaVersion, err)
	}
	out := res.RestoredResult
	out.ClockBefore = time.Unix(0, res.ClockBeforeUnixNano)
	out.ClockAfter = time.Unix(0, res.ClockAfterUnixNano)
	return out, nil
}

// The range of times that travel as Unix nanoseconds in an int64.
var (
	minUnixNano = time.Unix(0, math.MinInt64)
	maxUnixNano = time.Unix(0, math.MaxInt64)
)

// AgentTooOldError reports a call to an op that the agent's protocol
// revision predates. The guest's agent needs an upgrade.
type AgentTooOldError struct {
	// Op is the op called, such as "restored" or "dial_tcp", or the
	// feature of one, such as "exec as a user".
	Op string
	// AgentVersion and SchemaVersion are the agent's AgentVersion and
	// GuestSchemaVersion, as its health op reports them.
	AgentVersion  string
	SchemaVersion int
	// MinSchemaVersion is the first GuestSchemaVersion that has Op.
	MinSchemaVersion int
}

func (e *AgentTooOldError) Error() string {
	return fmt.Sprintf("agent %s: agent %s speaks guest schema version %d, and %s needs version %d or later: upgrade the guest's agent",
		e.Op, e.AgentVersion, e.SchemaVersion, e.Op, e.MinSchemaVersion)
}

// Is reports that an AgentTooOldError is an errors.ErrUnsupported.
func (e *AgentTooOldError) Is(target error) bool { return target == errors.ErrUnsupported }

// tooOld returns err, the failure of a call to op, unless the agent
// answered that it does not know op and its protocol revision predates
// minSchema, the first that has op: it then returns an *AgentTooOldError.
func (c *Client) tooOld(ctx context.Context, op string, minSchema int, err error) error {
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != CodeUnknownOp {
		return err
	}
	// An older agent does not know the op, and has done nothing. Ask it
	// which revision it speaks, to say so.
	h, herr := c.Health(ctx)
	if herr != nil || h.GuestSchemaVersion >= minSchema {
		return err
	}
	return &AgentTooOldError{
		Op:               op,
		AgentVersion:     h.AgentVersion,
		SchemaVersion:    h.GuestSchemaVersion,
		MinSchemaVersion: minSchema,
	}
}

// NewHybridClient returns a client of the agent of the guest behind the
// hybrid vsock device whose host socket is at path (see vsock.Dial).
func NewHybridClient(path string) *Client {
	return &Client{Dial: func(ctx context.Context) (net.Conn, error) {
		return vsock.Dial(ctx, path, Port)
	}}
}

// ErrGone reports that the VM stopped while WaitHealthy waited for its agent.
var ErrGone = errors.New("the VM stopped")

// WaitHealthy polls Health every interval until the agent answers, and
// returns its answer. It is how a host waits for a booting guest: until the
// agent listens, connections fail or go unanswered. It gives up when ctx
// ends, or with ErrGone when gone (the VM's exit, nil if none) is closed,
// naming the last error seen.
func (c *Client) WaitHealthy(ctx context.Context, interval time.Duration, gone <-chan struct{}) (HealthResponse, error) {
	for {
		attempt, cancel := context.WithTimeout(ctx, healthAttemptTimeout)
		h, err := c.Health(attempt)
		cancel()
		if err == nil {
			return h, nil
		}
		select {
		case <-ctx.Done():
			return HealthResponse{}, fmt.Errorf("agent not healthy: %w (last error: %w)", context.Cause(ctx), err)
		case <-gone:
			return HealthResponse{}, fmt.Errorf("agent not healthy: %w (last error: %w)", ErrGone, err)
		case <-time.After(interval):
		}
	}
}

// healthAttemptTimeout bounds one health check while waiting for an agent.
const healthAttemptTimeout = 10 * time.Second
