package guestagent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
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
func (c *Client) Exec(ctx context.Context, req ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (ExecResult, error) {
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
	// Op is the op called, such as "restored" or "dial_tcp".
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

// restoredEntropy is how many bytes of entropy RestoreArgs sends: 512
// bits, twice a CRNG key.
const restoredEntropy = 64

// RestoreArgs returns the arguments of Restored for a box restored in
// place, which keeps its identity: fresh entropy from the host's
// crypto/rand, and a zero Time, so that Restored sends the host's clock as
// it sends the request.
func RestoreArgs() RestoredArgs {
	return RestoredArgs{Entropy: randomBytes(restoredEntropy)}
}

// ForkArgs returns the arguments of Restored for a box forked from another,
// whose own ID is boxID: those of RestoreArgs, with a new identity, the
// hostname ForkHostname(boxID) and a NewMachineID. A fork must never share
// its parent's random state, hostname or machine ID.
func ForkArgs(boxID string) (RestoredArgs, error) {
	name, err := ForkHostname(boxID)
	if err != nil {
		return RestoredArgs{}, err
	}
	args := RestoreArgs()
	args.Hostname = name
	args.MachineID = NewMachineID()
	return args, nil
}

// maxForkHostname is the longest hostname ForkHostname returns: that of a
// DNS label.
const maxForkHostname = 63

// ForkHostname returns the hostname of the box whose ID is boxID: "sbx-"
// followed by the ID, cut to 63 bytes, the limit of a DNS label, without
// hyphens at the end. It fails for an ID that is empty or holds anything
// but ASCII letters, digits and hyphens.
func ForkHostname(boxID string) (string, error) {
	if boxID == "" {
		return "", errors.New("fork hostname: empty box ID")
	}
	for _, r := range boxID {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-') {
			return "", fmt.Errorf("fork hostname: box ID %q: want only letters, digits and hyphens", truncate(boxID, 80))
		}
	}
	name := "sbx-" + boxID
	name = strings.TrimRight(name[:min(len(name), maxForkHostname)], "-")
	if !validHostname(name) { // cannot fail, given the checks above
		return "", fmt.Errorf("fork hostname: box ID %q makes invalid hostname %q", truncate(boxID, 80), name)
	}
	return name, nil
}

// NewMachineID returns a new random machine ID in the format of
// /etc/machine-id (machine-id(5)): 32 lowercase hexadecimal digits, a
// random (version 4) UUID without hyphens, as systemd makes them.
func NewMachineID() string {
	b := randomBytes(16)
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // variant 1 (RFC 9562)
	return hex.EncodeToString(b)
}

// randomBytes returns n bytes from crypto/rand, which never fails: if the
// host's random source does, the program crashes.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// A call describes one exchange for Client.do.
type call struct {
	op      string
	subject string // what the op acts on, for errors: a path, a quoted program name, or ""
	args    any    // marshalled to JSON as the request's Args, unless nil

	// stdin, if not nil, is sent as FrameStdin frames ended by a
	// FrameStdinEOF, while the answer is read.
	stdin io.Reader
	// output receives the payload of every FrameStdout and FrameStderr;
	// if it is nil, those frames are a protocol error. An error from
	// output ends the exchange.
	output func(typ FrameType, p []byte) error
	// kill says that ending the exchange early must kill the process that
	// the op started.
	kill bool
	// signals, if not nil, are sent as FrameSignal frames while the answer
	// is read.
	signals <-chan int
}

// killFrameTimeout bounds how long do waits to send the SIGKILL frame that
// ends an exec early.
const killFrameTimeout = 250 * time.Millisecond

// do runs one exchange on a new connection: it sends the request, then
// cl.stdin if any, and reads frames until the terminal one, decoding a
// FrameResponse into result. An answer in a FrameError is returned as an
// *Error. Every error is prefixed with the op and the call's subject.
//
// Goroutines: the calling goroutine owns the connection: it writes the
// request, reads every frame the agent sends, and closes the connection
// before it returns. A goroutine started by context.AfterFunc sets the
// connection's deadline to the past when ctx is cancelled, which makes
// blocked I/O return. If cl.stdin is set, a goroutine copies it to the
// connection; it ends when stdin ends or fails, or when it next tries to
// write after do has closed the connection. do does not wait for it, since
// it may be blocked in a Read of stdin that nothing can interrupt.
func (c *Client) do(ctx context.Context, cl *call, result any) (err error) {
	defer func() {
		if err != nil {
			name := cl.op
			if cl.subject != "" {
				name += " " + cl.subject
			}
			err = fmt.Errorf("agent %s: %w", name, err)
		}
	}()
	if c.Dial == nil {
		return errors.New("client has no Dial function")
	}
	req := Request{Op: cl.op}
	if cl.args != nil {
		b, err := json.Marshal(cl.args)
		if err != nil {
			return fmt.Errorf("encode arguments: %w", err)
		}
		req.Args = b
	}
	reqBytes, err := json.Marshal(&req)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}

	conn, err := c.Dial(ctx)
	if err != nil {
		return fmt.Errorf("dial: %w", contextError(ctx, err))
	}
	defer conn.Close()
	stop, err := watchContext(ctx, conn)
	if err != nil {
		return err
	}
	defer stop()

	w := &frameWriter{conn: conn}
	if err := w.write(FrameRequest, reqBytes); err != nil {
		return fmt.Errorf("write request: %w", contextError(ctx, err))
	}
	var stdinErr chan error // receives a failure to read stdin
	if cl.stdin != nil {
		stdinErr = make(chan error, 1)
		go func() {
			if err := sendInput(w, cl.stdin); err != nil {
				stdinErr <- err
				conn.SetReadDeadline(aLongTimeAgo) // interrupt do's read
			}
		}()
	}

	if cl.signals != nil {
		answered := make(chan struct{})
		defer close(answered)
		go forwardSignals(w, cl.signals, answered)
	}

	terminal, err := readAnswer(ctx, NewFrameReader(conn), cl, result)
	if err != nil && !terminal {
		select {
		case serr := <-stdinErr:
			err = serr
		default:
		}
		if cl.kill {
			// Best effort: if the frame cannot go out promptly, or an
			// interrupted write has left part of a frame behind, closing
			// the connection kills the process all the same.
			stop()
			conn.SetWriteDeadline(time.Now().Add(killFrameTimeout))
			payload, _ := json.Marshal(signalArgs{Signal: sigkill})
			w.write(FrameSignal, payload)
		}
	}
	return err
}

// forwardSignals sends each signal from signals as a FrameSignal until the
// exchange is answered. A failed write is left for the reader of the
// connection to report.
func forwardSignals(w *frameWriter, signals <-chan int, answered <-chan struct{}) {
	for {
		select {
		case <-answered:
			return
		case sig, ok := <-signals:
			if !ok {
				return
			}
			payload, _ := json.Marshal(signalArgs{Signal: sig})
			if w.write(FrameSignal, payload) != nil {
				return
			}
		}
	}
}

// sendInput copies r to w as FrameStdin frames and ends them with a
// FrameStdinEOF. It returns an error only if reading r fails, in which case
// it sends no FrameStdinEOF: the input is incomplete. A failure to write
// is left for the reader of the connection to report.
func sendInput(w *frameWriter, r io.Reader) error {
	buf := make([]byte, maxChunk)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if w.write(FrameStdin, buf[:n]) != nil {
				return nil
			}
		}
		if err == io.EOF {
			w.write(FrameStdinEOF, nil)
			return nil
		}
		if err != nil {
			return fmt.Errorf("read stdin: %w", err)
		}
	}
}

// readAnswer reads frames from fr, handing output frames to cl.output,
// until the terminal frame, and decodes a FrameResponse into result. It
// reports whether it read the terminal frame: if not, the exchange ended
// early.
func readAnswer(ctx context.Context, fr *FrameReader, cl *call, result any) (terminal bool, err error) {
	for {
		typ, payload, err := fr.Next()
		if err != nil {
			if err == io.EOF {
				err = errors.New("connection closed without a response")
			}
			return false, fmt.Errorf("read response: %w", contextError(ctx, err))
		}
		switch typ {
		case FrameResponse:
			if err := json.Unmarshal(payload, result); err != nil {
				return true, fmt.Errorf("decode response: %w", err)
			}
			return true, nil
		case FrameError:
			ae := new(Error)
			if err := json.Unmarshal(payload, ae); err != nil {
				return true, fmt.Errorf("decode error response: %w", err)
			}
			return true, ae
		case FrameStdout, FrameStderr:
			if cl.output != nil {
				if err := cl.output(typ, payload); err != nil {
					return false, err
				}
				continue
			}
		}
		return false, fmt.Errorf("read response: unexpected %v frame", typ)
	}
}

// watchContext makes I/O on conn honour ctx: it applies ctx's deadline, if
// any, and arranges for blocked I/O to return when ctx is cancelled, by
// setting conn's deadline to the past. The returned stop function ends the
// watch: once it has returned, ctx no longer touches conn's deadline. It
// reports false if cancellation has interrupted conn. Calling it again
// returns the same answer.
func watchContext(ctx context.Context, conn net.Conn) (stop func() bool, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return nil, fmt.Errorf("set deadline: %w", err)
		}
	}
	interrupted := make(chan struct{})
	stopWatch := context.AfterFunc(ctx, func() {
		conn.SetDeadline(aLongTimeAgo)
		close(interrupted)
	})
	return sync.OnceValue(func() bool {
		if stopWatch() {
			return true
		}
		<-interrupted // the AfterFunc has started: let it finish
		return false
	}), nil
}

// contextError returns ctx's error in place of err if err was caused by
// ctx: cancellation, or a connection deadline that ctx's deadline set.
func contextError(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) && isTimeout(err) {
		// The connection's deadline fired a hair before ctx's timer.
		return context.DeadlineExceeded
	}
	return err
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
