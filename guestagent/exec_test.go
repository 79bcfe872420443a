//go:build linux

package guestagent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// execString runs req with stdin, collecting the output.
func execString(t *testing.T, c *Client, req ExecRequest, stdin io.Reader) (stdout, stderr string, res ExecResult) {
	t.Helper()
	var out, errOut bytes.Buffer
	res, err := c.Exec(testContext(t), req, stdin, &out, &errOut)
	if err != nil {
		t.Fatalf("Exec(%q): %v", req.Argv, err)
	}
	return out.String(), errOut.String(), res
}

func TestExecEcho(t *testing.T) {
	c := startClient(t)
	stdout, stderr, res := execString(t, c, ExecRequest{Argv: []string{"echo", "hello"}}, nil)
	if stdout != "hello\n" || stderr != "" || res != (ExecResult{}) {
		t.Fatalf("echo hello: stdout %q, stderr %q, %+v; want \"hello\\n\", \"\", exit 0", stdout, stderr, res)
	}
}

func TestExecExitCodeAndStderr(t *testing.T) {
	c := startClient(t)
	stdout, stderr, res := execString(t, c, ExecRequest{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}}, nil)
	if stdout != "out\n" || stderr != "err\n" || res != (ExecResult{ExitCode: 3}) {
		t.Fatalf("got stdout %q, stderr %q, %+v; want \"out\\n\", \"err\\n\", exit 3", stdout, stderr, res)
	}

	out, errOut, code, err := c.Run(testContext(t), "sh", "-c", "printf a; printf b >&2; exit 7")
	if string(out) != "a" || string(errOut) != "b" || code != 7 || err != nil {
		t.Fatalf("Run = %q, %q, %d, %v; want \"a\", \"b\", 7, nil", out, errOut, code, err)
	}
}

func TestExecEnvAndDir(t *testing.T) {
	c := startClient(t)
	dir := t.TempDir()
	stdout, _, res := execString(t, c, ExecRequest{
		Argv: []string{"sh", "-c", `echo "$FOO|$HOME|$TERM|$PATH"; pwd`},
		Env:  []string{"FOO=bar baz", "TERM=xterm"},
		Dir:  dir,
	}, nil)
	want := "bar baz|/root|xterm|" + defaultPath + "\n" + dir + "\n"
	if stdout != want || res.ExitCode != 0 {
		t.Fatalf("stdout %q, %+v; want %q", stdout, res, want)
	}

	// The agent's own environment is not inherited, and PATH can be
	// replaced: here it holds only a directory with a private program.
	t.Setenv("SAILBOX_TEST_SECRET", "leak")
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "hello-sailbox"), []byte("#!/bin/sh\necho private \"$SAILBOX_TEST_SECRET\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	stdout, _, _ = execString(t, c, ExecRequest{Argv: []string{"hello-sailbox"}, Env: []string{"PATH=relative:" + bin}}, nil)
	if stdout != "private \n" {
		t.Fatalf("private program: stdout %q, want \"private \\n\"", stdout)
	}
}

func TestExecStdin(t *testing.T) {
	c := startClient(t)
	in := make([]byte, 1<<20)
	rand.Read(in)
	var out bytes.Buffer
	res, err := c.Exec(testContext(t), ExecRequest{Argv: []string{"cat"}}, bytes.NewReader(in), &out, nil)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("cat: %+v, %v", res, err)
	}
	if !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("cat echoed %d bytes, not the %d sent", out.Len(), len(in))
	}

	// Empty input: the process sees EOF at once.
	stdout, _, _ := execString(t, c, ExecRequest{Argv: []string{"wc", "-c"}}, strings.NewReader(""))
	if strings.TrimSpace(stdout) != "0" {
		t.Fatalf("wc -c of empty stdin = %q", stdout)
	}
	// No stdin: /dev/null.
	stdout, _, _ = execString(t, c, ExecRequest{Argv: []string{"sh", "-c", "cat; echo done"}}, nil)
	if stdout != "done\n" {
		t.Fatalf("cat without stdin = %q", stdout)
	}
	// A process that exits without reading all of its input.
	in = bytes.Repeat([]byte("0123456789"), 1<<20)
	stdout, _, res = execString(t, c, ExecRequest{Argv: []string{"head", "-c", "5"}}, bytes.NewReader(in))
	if stdout != "01234" || res.ExitCode != 0 {
		t.Fatalf("head -c 5 = %q, %+v", stdout, res)
	}
}

// hashWriter hashes what is written to it and counts it.
type hashWriter struct {
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int64
}

func (w *hashWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return w.h.Write(p)
}

func TestExecLargeOutput(t *testing.T) {
	c := startClient(t)
	const size = 10 << 20
	want := sha256.Sum256(bytes.Repeat([]byte("abcdefgh\n"), size/9+1)[:size])

	out := &hashWriter{h: sha256.New()}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	res, err := c.Exec(testContext(t), ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("yes abcdefgh | head -c %d", size)}}, nil, out, nil)
	runtime.ReadMemStats(&after)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("Exec: %+v, %v", res, err)
	}
	if out.n != size || !bytes.Equal(out.h.Sum(nil), want[:]) {
		t.Fatalf("got %d bytes with sha256 %x, want %d bytes with %x", out.n, out.h.Sum(nil), size, want)
	}
	// Agent and client stream the output through fixed buffers: together
	// they must allocate far less than the output's size.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > size/4 {
		t.Errorf("streaming %d bytes allocated %d bytes", size, alloc)
	}
}

func TestExecTimeout(t *testing.T) {
	c := startClient(t)
	start := time.Now()
	_, _, res := execString(t, c, ExecRequest{Argv: []string{"sleep", "100"}, Timeout: 100 * time.Millisecond}, nil)
	if res != (ExecResult{ExitCode: -1, Signal: int(syscall.SIGKILL), TimedOut: true}) {
		t.Fatalf("sleep 100 with a timeout: %+v, want killed by SIGKILL, timed out", res)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("timeout took %v to take effect", d)
	}
	// A process that ends in time is not reported as timed out.
	_, _, res = execString(t, c, ExecRequest{Argv: []string{"true"}, Timeout: time.Minute}, nil)
	if res != (ExecResult{}) {
		t.Fatalf("true with a timeout: %+v", res)
	}
}

// startRawExec sends an exec request on a new connection to the agent at
// path, and returns the connection.
func startRawExec(t *testing.T, path string, args execArgs) net.Conn {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := json.Marshal(&args)
	req, _ := json.Marshal(&Request{Op: opExec, Args: b})
	if err := WriteFrame(conn, FrameRequest, req); err != nil {
		t.Fatal(err)
	}
	return conn
}

// readRawAnswer reads frames from conn until the terminal one, and returns
// the stdout collected and the terminal frame.
func readRawAnswer(t *testing.T, conn net.Conn) (stdout string, typ FrameType, payload []byte) {
	t.Helper()
	var out strings.Builder
	for {
		typ, p, err := ReadFrame(conn)
		if err != nil {
			t.Fatalf("read answer: %v", err)
		}
		switch typ {
		case FrameStdout:
			out.Write(p)
		case FrameStderr:
		default:
			return out.String(), typ, p
		}
	}
}

// readPID reads a process ID from the first line of the first stdout frame
// on conn, which the process must print first.
func readPID(t *testing.T, conn net.Conn) int {
	t.Helper()
	typ, p, err := ReadFrame(conn)
	if err != nil || typ != FrameStdout {
		t.Fatalf("read pid: %v %.100q %v", typ, p, err)
	}
	line, _, _ := strings.Cut(string(p), "\n")
	pid, err := strconv.Atoi(line)
	if err != nil {
		t.Fatalf("read pid: %v", err)
	}
	return pid
}

// waitGone waits until no process has ID pid.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
	}
	t.Fatalf("process %d still exists", pid)
}

func TestExecSignalFrame(t *testing.T) {
	path := startServer(t)
	conn := startRawExec(t, path, execArgs{ExecRequest: ExecRequest{Argv: []string{"sh", "-c", "echo $$; exec sleep 100"}}})
	readPID(t, conn)
	if err := WriteFrame(conn, FrameSignal, []byte(`{"signal":15}`)); err != nil {
		t.Fatal(err)
	}
	_, typ, p := readRawAnswer(t, conn)
	var res ExecResult
	if typ != FrameResponse || json.Unmarshal(p, &res) != nil || res != (ExecResult{ExitCode: -1, Signal: 15}) {
		t.Fatalf("answer %v %s, want a response reporting signal 15", typ, p)
	}
}

func TestExecSignalReachesProcessGroup(t *testing.T) {
	path := startServer(t)
	// The shell runs sleep as a child, in its process group, and waits.
	conn := startRawExec(t, path, execArgs{ExecRequest: ExecRequest{Argv: []string{"sh", "-c", "sleep 100 & echo $!; wait"}}})
	child := readPID(t, conn)
	WriteFrame(conn, FrameSignal, []byte(`{"signal":9}`))
	if _, typ, p := readRawAnswer(t, conn); typ != FrameResponse || !strings.Contains(string(p), `"signal":9`) {
		t.Fatalf("answer %v %s, want a response reporting signal 9", typ, p)
	}
	waitGone(t, child)
}

func TestExecCancelKillsProcess(t *testing.T) {
	c := startClient(t)
	ctx, cancel := context.WithCancel(testContext(t))
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, ExecRequest{Argv: []string{"sh", "-c", "echo $$; exec sleep 100"}}, nil, pw, nil)
		pw.Close()
		done <- err
	}()
	line := make([]byte, 32)
	n, err := pr.Read(line)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(line[:n])))
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, pr)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), `agent exec "sh": `) {
			t.Fatalf("Exec after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Exec did not return after cancel")
	}
	waitGone(t, pid)
}

func TestExecHostGoneKillsProcess(t *testing.T) {
	path := startServer(t)
	conn := startRawExec(t, path, execArgs{ExecRequest: ExecRequest{Argv: []string{"sh", "-c", "echo $$; exec sleep 100"}}})
	pid := readPID(t, conn)
	conn.Close()
	waitGone(t, pid)
}

func TestExecHostStopsReading(t *testing.T) {
	l, path := listenUnix(t)
	serve(t, &Server{Logger: testLogger(t), RequestTimeout: 200 * time.Millisecond}, l)
	conn := startRawExec(t, path, execArgs{ExecRequest: ExecRequest{Argv: []string{"sh", "-c", "echo $$; exec yes"}}})
	pid := readPID(t, conn)
	// Read nothing more: the agent must give up and kill the process.
	waitGone(t, pid)
}

func TestExecOrphanHoldsOutput(t *testing.T) {
	c := startClient(t)
	start := time.Now()
	stdout, _, res := execString(t, c, ExecRequest{Argv: []string{"sh", "-c", "sleep 30 & echo $!"}}, nil)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("exec waited %v for an orphan holding its stdout", d)
	}
	if res.ExitCode != 0 {
		t.Fatalf("%+v", res)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(stdout))
	if err != nil {
		t.Fatalf("stdout %q: %v", stdout, err)
	}
	// The orphan outlives the exec, as a daemon should.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("orphan %d: %v", pid, err)
	}
}

func TestExecStartFailures(t *testing.T) {
	c := startClient(t)
	dir := t.TempDir()
	notExec := filepath.Join(dir, "not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		req  ExecRequest
		code string
		want string
	}{
		{ExecRequest{Argv: []string{"no-such-program-sailbox"}}, CodeExecFailed, `exec "no-such-program-sailbox": executable file not found in $PATH`},
		{ExecRequest{Argv: []string{"/no/such/program"}}, CodeExecFailed, `exec "/no/such/program": `},
		{ExecRequest{Argv: []string{notExec}}, CodeExecFailed, "permission denied"},
		{ExecRequest{Argv: []string{"true"}, Dir: filepath.Join(dir, "missing")}, CodeExecFailed, "no such file or directory"},
		{ExecRequest{}, CodeBadRequest, "empty argv"},
		{ExecRequest{Argv: []string{"true"}, Dir: "relative"}, CodeBadRequest, `dir "relative" is not an absolute path`},
		{ExecRequest{Argv: []string{"true"}, Env: []string{"NOEQUALS"}}, CodeBadRequest, `env entry "NOEQUALS"`},
	} {
		_, err := c.Exec(testContext(t), tc.req, nil, nil, nil)
		var ae *Error
		if !errors.As(err, &ae) || ae.Code != tc.code || !strings.Contains(ae.Message, tc.want) {
			t.Errorf("Exec(%+v) = %v, want an *Error with code %s containing %q", tc.req, err, tc.code, tc.want)
		}
	}
	_, _, code, err := c.Run(testContext(t), "no-such-program-sailbox")
	if want := `agent exec "no-such-program-sailbox": exec "no-such-program-sailbox": executable file not found in $PATH (exec_failed)`; err == nil || err.Error() != want || code != -1 {
		t.Errorf("Run = %d, %v; want -1, %s", code, err, want)
	}
}

func TestExecProtocolErrors(t *testing.T) {
	path := startServer(t)
	for _, tc := range []struct {
		name  string
		stdin bool
		frame []byte
		code  string
	}{
		{"stdin without stdin", false, frame(FrameStdin, "x"), CodeProtocol},
		{"eof without stdin", false, frame(FrameStdinEOF, ""), CodeProtocol},
		{"request", true, frame(FrameRequest, `{"op":"health"}`), CodeProtocol},
		{"bad signal json", true, frame(FrameSignal, `{"signal":"TERM"}`), CodeBadRequest},
		{"signal zero", true, frame(FrameSignal, `{"signal":0}`), CodeBadRequest},
		{"signal too big", true, frame(FrameSignal, `{"signal":65}`), CodeBadRequest},
		{"stdin after eof", true, append(frame(FrameStdinEOF, ""), frame(FrameStdin, "x")...), CodeProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := startRawExec(t, path, execArgs{ExecRequest: ExecRequest{Argv: []string{"sleep", "100"}}, Stdin: tc.stdin})
			conn.Write(tc.frame)
			_, typ, p := readRawAnswer(t, conn)
			var e Error
			if typ != FrameError || json.Unmarshal(p, &e) != nil || e.Code != tc.code {
				t.Fatalf("answer %v %s, want an error with code %s", typ, p, tc.code)
			}
		})
	}
}

func TestExecStdinReadError(t *testing.T) {
	c := startClient(t)
	boom := errors.New("boom")
	start := time.Now()
	_, err := c.Exec(testContext(t), ExecRequest{Argv: []string{"cat"}}, io.MultiReader(strings.NewReader("x"), errReader{boom}), nil, nil)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), `agent exec "cat": read stdin: boom`) {
		t.Fatalf("Exec with failing stdin = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Exec took %v to fail", d)
	}
}

func TestExecOutputWriterError(t *testing.T) {
	c := startClient(t)
	_, _, code, err := c.Run(testContext(t), "sh", "-c", fmt.Sprintf("head -c %d /dev/zero", maxRunOutput+1))
	if err == nil || !strings.Contains(err.Error(), "stdout exceeds") || code != -1 {
		t.Fatalf("Run with too much output = %d, %v", code, err)
	}
}

func TestExecConcurrent(t *testing.T) {
	c := startClient(t)
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			want := strings.Repeat(strconv.Itoa(i), 100<<10)
			in := strings.NewReader(want)
			var out, errOut bytes.Buffer
			res, err := c.Exec(testContext(t), ExecRequest{Argv: []string{"sh", "-c", "cat; echo $N >&2; exit $N"}, Env: []string{"N=" + strconv.Itoa(i)}}, in, &out, &errOut)
			if err != nil || res.ExitCode != i || out.String() != want || errOut.String() != strconv.Itoa(i)+"\n" {
				t.Errorf("exec %d: %+v, %v, %d bytes of stdout, stderr %q", i, res, err, out.Len(), errOut.String())
			}
		})
	}
	wg.Wait()
}

func TestServeStopKillsExec(t *testing.T) {
	l, path := listenUnix(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- (&Server{Logger: testLogger(t)}).Serve(ctx, l) }()

	conn := startRawExec(t, path, execArgs{ExecRequest: ExecRequest{Argv: []string{"sh", "-c", "echo $$; exec sleep 100"}}})
	pid := readPID(t, conn)
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return with an exec in flight")
	}
	if _, typ, p := readRawAnswer(t, conn); typ != FrameResponse || !strings.Contains(string(p), `"signal":9`) {
		t.Fatalf("answer %v %s, want a response reporting signal 9", typ, p)
	}
	waitGone(t, pid)
}

// TestExecLeavesNoGoroutines runs execs that end in every way, and checks
// that the goroutines they started are gone once they have returned.
func TestExecLeavesNoGoroutines(t *testing.T) {
	path := startServer(t)
	c := &Client{Dial: unixDialer(path)}
	before := runtime.NumGoroutine()

	execString(t, c, ExecRequest{Argv: []string{"echo", "hi"}}, nil)
	execString(t, c, ExecRequest{Argv: []string{"cat"}}, strings.NewReader("data"))
	execString(t, c, ExecRequest{Argv: []string{"sleep", "100"}, Timeout: 10 * time.Millisecond}, nil)
	c.Exec(testContext(t), ExecRequest{Argv: []string{"no-such-program-sailbox"}}, nil, nil, nil)
	ctx, cancel := context.WithTimeout(testContext(t), 50*time.Millisecond)
	c.Exec(ctx, ExecRequest{Argv: []string{"sleep", "100"}}, strings.NewReader("unread"), nil, nil)
	cancel()
	conn := startRawExec(t, path, execArgs{ExecRequest: ExecRequest{Argv: []string{"sh", "-c", "echo $$; exec sleep 100"}}})
	readPID(t, conn)
	conn.Close()

	var now int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if now = runtime.NumGoroutine(); now <= before {
			return
		}
	}
	buf := make([]byte, 1<<20)
	t.Fatalf("%d goroutines before, %d after:\n%s", before, now, buf[:runtime.Stack(buf, true)])
}

// signalOnOutput is a stdout writer that sends sig on signals once the
// process has written something: it is then running and has its handlers.
type signalOnOutput struct {
	once    sync.Once
	signals chan<- int
	sig     int
}

func (s *signalOnOutput) Write(p []byte) (int, error) {
	s.once.Do(func() { s.signals <- s.sig })
	return len(p), nil
}

func TestExecClientSignals(t *testing.T) {
	path := startServer(t)
	c := &Client{Dial: unixDialer(path)}
	signals := make(chan int, 1)
	res, err := c.Exec(testContext(t), ExecRequest{
		Argv:    []string{"sh", "-c", "echo ready; exec sleep 100"},
		Signals: signals,
	}, nil, &signalOnOutput{signals: signals, sig: 15}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res != (ExecResult{ExitCode: -1, Signal: 15}) {
		t.Errorf("result = %+v, want killed by signal 15", res)
	}
}

// exec runs a process as the user the request names, with that user's
// home; it needs root to change user, and is skipped without it. A user
// that cannot be parsed is a bad request, one the guest does not know a
// failed exec; neither runs anything.
func TestExecUser(t *testing.T) {
	c := startClient(t)
	ctx := testContext(t)
	for _, tc := range []struct {
		user, code string
	}{
		{"no-such-user-sailbox", CodeExecFailed},
		{"0:no-such-group-sailbox", CodeExecFailed},
		{"a:b:c", CodeBadRequest},
		{":0", CodeBadRequest},
	} {
		_, err := c.Exec(ctx, ExecRequest{Argv: []string{"true"}, User: tc.user}, nil, nil, nil)
		var ae *Error
		if !errors.As(err, &ae) || ae.Code != tc.code || !strings.Contains(ae.Message, "user") {
			t.Errorf("exec as %q = %v, want an *Error with code %q about the user", tc.user, err, tc.code)
		}
	}

	if os.Getuid() != 0 {
		t.Skip("changing user needs root")
	}
	stdout, stderr, res := execString(t, c, ExecRequest{
		Argv: []string{"sh", "-c", `id -u; id -g; id -G; echo "$HOME"`},
		User: "4242:4243",
	}, nil)
	if stdout != "4242\n4243\n4243\n/\n" || res.ExitCode != 0 {
		t.Errorf("as 4242:4243: stdout %q, stderr %q, %+v", stdout, stderr, res)
	}
	// The request's HOME wins over the user's.
	stdout, _, _ = execString(t, c, ExecRequest{Argv: []string{"sh", "-c", `echo "$HOME"`}, User: "4242", Env: []string{"HOME=/srv"}}, nil)
	if stdout != "/srv\n" {
		t.Errorf("HOME with a request's HOME = %q", stdout)
	}
	// The process cannot do what its user may not.
	dir := t.TempDir() // 0700, root's
	_, _, res = execString(t, c, ExecRequest{Argv: []string{"ls", dir}, User: "4242"}, nil)
	if res.ExitCode == 0 {
		t.Errorf("user 4242 listed root's private %s", dir)
	}
}

// A client does not send a user to an agent that would ignore it and run
// the process as root: it asks for the agent's schema first.
func TestExecUserOnOldAgent(t *testing.T) {
	path := fakePeer(t, func(c net.Conn) {
		_, p, err := ReadFrame(c)
		if err != nil {
			t.Errorf("old agent: read request: %v", err)
			return
		}
		var req Request
		json.Unmarshal(p, &req)
		if req.Op != OpHealth {
			t.Errorf("old agent got op %q", req.Op)
			WriteFrame(c, FrameError, encodeError(&Error{Code: CodeInternal, Message: "unexpected"}))
			return
		}
		WriteFrame(c, FrameResponse, []byte(`{"status":"ok","agent_version":"v0.3.0","guest_schema_version":3}`))
	})
	c := &Client{Dial: unixDialer(path)}
	_, err := c.Exec(testContext(t), ExecRequest{Argv: []string{"id"}, User: "1000"}, nil, nil, nil)
	var old *AgentTooOldError
	if !errors.As(err, &old) || !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("exec as a user on a version 3 agent = %v, want an *AgentTooOldError", err)
	}
	want := AgentTooOldError{Op: "exec as a user", AgentVersion: "v0.3.0", SchemaVersion: 3, MinSchemaVersion: ExecUserSchemaVersion}
	if *old != want {
		t.Errorf("error = %+v, want %+v", *old, want)
	}
}

// A server whose box root could not be mounted refuses exec and the file
// ops, naming the problem, and serves the rest.
func TestServerRootUnavailable(t *testing.T) {
	l, path := listenUnix(t)
	serve(t, &Server{Logger: testLogger(t), RootErr: errors.New("box root /dev/vda: mount on /sysroot as ext4: invalid argument")}, l)
	c := &Client{Dial: unixDialer(path)}
	ctx := testContext(t)
	checkHealth(t, ctx, c)
	check := func(op string, err error) {
		t.Helper()
		var ae *Error
		if !errors.As(err, &ae) || ae.Code != CodeRootUnavailable || !strings.Contains(ae.Message, "/dev/vda") || !strings.HasPrefix(ae.Message, op+": ") {
			t.Errorf("%s = %v, want an *Error with code %q naming the root", op, err, CodeRootUnavailable)
		}
	}
	_, err := c.Exec(ctx, ExecRequest{Argv: []string{"true"}}, strings.NewReader("input"), nil, nil)
	check("exec", err)
	_, err = c.ReadFile(ctx, "/etc/hostname", io.Discard)
	check("read_file", err)
	_, err = c.WriteFile(ctx, filepath.Join(t.TempDir(), "f"), strings.NewReader("data"), WriteOptions{})
	check("write_file", err)
	_, err = c.Stat(ctx, "/")
	check("stat", err)
}
