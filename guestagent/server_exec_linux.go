package guestagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// orphanOutputGrace is how long the agent goes on forwarding a process's
// output after the process has exited, counted from the last bytes that
// arrived. Processes it leaves behind, such as "cmd &" in a shell, may hold
// its stdout or stderr open; once they have been silent this long, the
// agent closes its ends of the pipes and answers.
const orphanOutputGrace = 200 * time.Millisecond

// maxSignal is the highest signal number Linux has (SIGRTMAX).
const maxSignal = 64

// An execution is one exec request in flight: the process, the pipes to it,
// and the state its goroutines share.
type execution struct {
	x    *exchange
	name string // argv[0], for errors
	pid  int    // the process's ID, and its process group's

	stdout, stderr *os.File // the agent's ends of the output pipes; each is owned, and closed, by its pump
	stdin          *os.File // the agent's end of the stdin pipe, or nil; written by control, closed by control or exec

	exited chan struct{} // closed once the process has exited, before it is reaped
	done   atomic.Bool   // set when exec stops control: its read errors are expected

	mu       sync.Mutex
	reaped   bool  // the process has been reaped, so its ID may name another process now
	timedOut bool  // the timeout killed the process group
	err      error // the first failure of the exchange, which replaces the result
}

// exec runs the process that args describe, streams its output to the host
// and its input from the host, and returns how it ended.
//
// The process leads a new process group, which signals, the timeout,
// cancellation and failures of the exchange all act on as a whole. The
// process is reaped only once exec is done with it: until then it is at
// worst a zombie that still holds its process ID and group ID, so no other
// process can be signalled by mistake.
//
// Goroutines: the calling goroutine owns the execution. It starts two
// pumps, which forward stdout and stderr to the host, and control, which
// reads the host's frames; a timer's goroutine and one started by
// context.AfterFunc may kill the process group. exec waits for the process
// to exit and the pumps to finish, then stops the timer, the AfterFunc and
// control, and only then reaps the process. A timer or AfterFunc goroutine
// that had already started by then is all that can outlive exec, and it
// finds the process reaped and returns without doing anything.
func (s *Server) exec(ctx context.Context, x *exchange, args *execArgs) (*ExecResult, error) {
	cmd, user, err := args.command()
	if err != nil {
		return nil, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if user != nil {
		// Groups empty, and NoSetGroups false: setgroups drops the
		// agent's supplementary groups.
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: user.UID, Gid: user.GID, Groups: user.Groups}
	}
	e := &execution{x: x, name: args.Argv[0], exited: make(chan struct{})}
	if err := e.start(cmd, args.Stdin); err != nil {
		return nil, err
	}
	e.pid = cmd.Process.Pid
	log := s.logger().With("argv0", e.name, "pid", e.pid)
	log.Debug("agent: exec started")

	var timer *time.Timer
	if args.TimeoutMS > 0 {
		ms := min(args.TimeoutMS, math.MaxInt64/int64(time.Millisecond)) // no overflow
		timer = time.AfterFunc(time.Duration(ms)*time.Millisecond, e.timeout)
	}
	stopCtx := context.AfterFunc(ctx, func() { e.signal(unix.SIGKILL) })

	var pumps, control sync.WaitGroup
	pumps.Go(func() { e.pump(e.stdout, FrameStdout) })
	pumps.Go(func() { e.pump(e.stderr, FrameStderr) })
	// The host may rightly send nothing for as long as the process runs.
	if err := x.conn.SetReadDeadline(time.Time{}); err != nil {
		e.fail(fmt.Errorf("exec %q: clear read deadline: %w", e.name, err))
	}
	control.Go(e.control)

	if err := waitExited(e.pid); err != nil {
		e.fail(fmt.Errorf("exec %q: wait: %w", e.name, err))
	} else {
		close(e.exited)
		// Wake pumps blocked on pipes that orphans hold open; from now on
		// they give up after orphanOutputGrace of silence.
		grace := time.Now().Add(orphanOutputGrace)
		e.stdout.SetReadDeadline(grace)
		e.stderr.SetReadDeadline(grace)
	}
	pumps.Wait()

	if timer != nil {
		timer.Stop()
	}
	stopCtx()
	e.done.Store(true)
	x.conn.SetReadDeadline(aLongTimeAgo)
	if e.stdin != nil {
		e.stdin.Close() // unblocks a write to a stdin that nobody reads
	}
	control.Wait()

	e.mu.Lock()
	e.reaped = true // the kill paths above are all stopped, but may have run
	e.mu.Unlock()
	waitErr := cmd.Wait()

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return nil, e.err
	}
	ps := cmd.ProcessState
	if ps == nil {
		return nil, fmt.Errorf("exec %q: %w", e.name, waitErr)
	}
	res := &ExecResult{ExitCode: ps.ExitCode(), TimedOut: e.timedOut}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		res.Signal = int(ws.Signal())
	}
	log.Debug("agent: exec done", "exit_code", res.ExitCode, "signal", res.Signal, "timed_out", res.TimedOut)
	return res, nil
}

// start creates the pipes for cmd's stdout and stderr, and for its stdin if
// withStdin (else stdin is /dev/null), and starts cmd. The agent keeps its
// ends of the pipes in e, and closes the process's.
func (e *execution) start(cmd *exec.Cmd, withStdin bool) (err error) {
	var theirs []*os.File
	defer func() {
		for _, f := range theirs {
			f.Close()
		}
		if err != nil {
			for _, f := range []*os.File{e.stdout, e.stderr, e.stdin} {
				if f != nil {
					f.Close()
				}
			}
		}
	}()
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("exec %q: %w", e.name, err)
	}
	e.stdout, cmd.Stdout, theirs = r, w, append(theirs, w)
	if r, w, err = os.Pipe(); err != nil {
		return fmt.Errorf("exec %q: %w", e.name, err)
	}
	e.stderr, cmd.Stderr, theirs = r, w, append(theirs, w)
	if withStdin {
		if r, w, err = os.Pipe(); err != nil {
			return fmt.Errorf("exec %q: %w", e.name, err)
		}
		cmd.Stdin, e.stdin, theirs = r, w, append(theirs, r)
	}
	if err := cmd.Start(); err != nil {
		return &Error{Code: CodeExecFailed, Message: fmt.Sprintf("exec %q: %v", e.name, err)}
	}
	return nil
}

// waitExited waits for the process pid to exit without reaping it.
func waitExited(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return err
		}
	}
}

// signal sends sig to the process group, unless the process has been
// reaped.
func (e *execution) signal(sig unix.Signal) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.signalLocked(sig)
}

func (e *execution) signalLocked(sig unix.Signal) {
	if !e.reaped {
		// ESRCH cannot happen: the unreaped leader is still in its group.
		unix.Kill(-e.pid, sig)
	}
}

// timeout kills the process group when the request's timeout expires.
func (e *execution) timeout() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.reaped {
		e.timedOut = true
		e.signalLocked(unix.SIGKILL)
	}
}

// fail records err as the outcome of the exchange, unless a failure is
// recorded already, and kills the process group.
func (e *execution) fail(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err == nil {
		e.err = err
	}
	e.signalLocked(unix.SIGKILL)
}

// pump forwards what the process writes to r as frames of type typ, until
// r reaches its end, or the process has exited and r has been silent for
// orphanOutputGrace. It closes r. If the host does not take a frame within
// the server's RequestTimeout, pump fails the exchange, which kills the
// process group.
func (e *execution) pump(r *os.File, typ FrameType) {
	defer r.Close()
	buf := make([]byte, maxChunk)
	for {
		select {
		case <-e.exited:
			// Re-armed before every read, so that time spent waiting for
			// a slow host does not count as silence.
			r.SetReadDeadline(time.Now().Add(orphanOutputGrace))
		default:
		}
		n, err := r.Read(buf)
		if n > 0 {
			if err := e.x.out.write(typ, buf[:n]); err != nil {
				e.fail(fmt.Errorf("exec %q: send %v: %w", e.name, typ, err))
				return
			}
		}
		if err != nil {
			return // io.EOF, or os.ErrDeadlineExceeded: orphans went quiet
		}
	}
}

// control reads the host's frames while the exchange lasts: input for the
// process's stdin and its end, and signals for the process group. A frame
// that has no place here, or the host going away, fails the exchange,
// which kills the process group.
//
// Frames are read in order, so input that the process does not read holds
// back whatever the host sends after it, signals included, until the
// process exits or the exchange ends.
func (e *execution) control() {
	var stdin io.Writer // nil until the host may send input, and again after its end
	if e.stdin != nil {
		stdin = e.stdin
	}
	for {
		typ, p, err := e.x.in.Next()
		if err != nil {
			if !e.done.Load() {
				e.fail(fmt.Errorf("exec %q: read from host: %w", e.name, err))
			}
			return
		}
		switch {
		case typ == FrameStdin && stdin != nil:
			if _, err := stdin.Write(p); err != nil {
				if e.done.Load() {
					return
				}
				if !errors.Is(err, syscall.EPIPE) {
					e.fail(fmt.Errorf("exec %q: write stdin: %w", e.name, err))
					return
				}
				// The process closed its stdin: drop the rest.
				e.stdin.Close()
				stdin = io.Discard
			}
		case typ == FrameStdinEOF && stdin != nil:
			e.stdin.Close()
			stdin = nil
		case typ == FrameSignal:
			var a signalArgs
			if err := json.Unmarshal(p, &a); err != nil || a.Signal < 1 || a.Signal > maxSignal {
				e.fail(&Error{Code: CodeBadRequest, Message: fmt.Sprintf("exec %q: invalid signal frame %.64q", e.name, p)})
				return
			}
			e.signal(unix.Signal(a.Signal))
		default:
			msg := fmt.Sprintf("exec %q: unexpected %v frame", e.name, typ)
			if typ == FrameStdin || typ == FrameStdinEOF {
				msg += " (no stdin requested, or after stdin-eof)"
			}
			e.fail(&Error{Code: CodeProtocol, Message: msg})
			return
		}
	}
}
