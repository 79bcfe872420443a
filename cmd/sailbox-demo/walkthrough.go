package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
)

// stepTimeout bounds one sail command. The daemon bounds boots and
// restores itself; this only keeps a wedged step from hanging the demo.
const stepTimeout = 5 * time.Minute

// session runs the sail CLI as a user would at a shell, and echoes it.
type session struct {
	sail string   // the binary
	env  []string // its environment, which names the daemon's socket
	out  io.Writer
	// rootImage: the boxes' disk is a root file system image (the
	// Debian one), not an empty data disk.
	rootImage bool
	// fileURL is the file a box with a root image fetches over its
	// network (serveFile).
	fileURL string
}

// say prints a comment that introduces the next steps.
func (s *session) say(format string, a ...any) {
	fmt.Fprintf(s.out, "\n# "+format+"\n", a...)
}

// run runs `sail args...`, echoing the command line, its output as it
// comes and how long it took, and returns its stdout. A non-zero exit is
// an error.
func (s *session) run(ctx context.Context, args ...string) (string, error) {
	line := shellJoin(append([]string{"sail"}, args...))
	fmt.Fprintf(s.out, "$ %s\n", line)
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	var stdout bytes.Buffer
	out := &lockedWriter{w: s.out}
	cmd := exec.CommandContext(ctx, s.sail, args...)
	cmd.Env = s.env
	cmd.Stdout, cmd.Stderr = io.MultiWriter(out, &stdout), out
	start := time.Now()
	err := cmd.Run()
	fmt.Fprintf(s.out, "(%s)\n", seconds(time.Since(start)))
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("no answer within %v", stepTimeout)
	}
	if err != nil {
		return stdout.String(), fmt.Errorf("%s: %w", line, err)
	}
	return stdout.String(), nil
}

// walkthrough takes one box through its lifecycle, and a fork of it, and
// checks what each step shows.
func (s *session) walkthrough(ctx context.Context) error {
	s.say("Create a box: the first create of an image boots Linux once into a template checkpoint; every box is restored from it, ready when its guest agent answers.")
	create := []string{"create", "--json"}
	if s.rootImage {
		create = append(create, demoPolicy...)
	}
	out, err := s.run(ctx, create...)
	if err != nil {
		return err
	}
	var box api.Box
	if err := json.Unmarshal([]byte(out), &box); err != nil || box.ID == "" {
		return fmt.Errorf("sail create --json answered no box (%v): %q", err, out)
	}
	parent := box.ID
	if _, err := s.run(ctx, "ls"); err != nil {
		return err
	}

	s.say("Run commands in it, over vsock to its guest agent.")
	out, err = s.run(ctx, "exec", parent, "--", "uname", "-a")
	if err != nil {
		return err
	}
	uname := strings.Fields(out)
	if len(uname) < 2 {
		return fmt.Errorf("uname -a printed %q", out)
	}
	parentHost := uname[1]
	if s.rootImage {
		s.say("Its disk is its root file system, Debian with python3; execs get the image's PATH and working directory.")
		out, err = s.run(ctx, "exec", parent, "--", "python3", "-c", "import sqlite3, json, platform; print(platform.python_version())")
		if err != nil {
			return err
		}
		if !strings.HasPrefix(out, "3.") {
			return fmt.Errorf("python3 printed %q, want its version", out)
		}
		out, err = s.run(ctx, "exec", parent, "--", "df", "-h", "/")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "/dev/vda") {
			return fmt.Errorf("df -h / shows no /dev/vda: %q", out)
		}
		if err := s.network(ctx, parent); err != nil {
			return err
		}
	}
	if _, err := s.run(ctx, "exec", parent, "--", "sh", "-c", "echo hello > /tmp/greeting"); err != nil {
		return err
	}

	s.say("Checkpoint it while it runs: memory, vCPUs, devices and its disk layer. It keeps running.")
	if _, err := s.run(ctx, "checkpoint", parent); err != nil {
		return err
	}

	s.say("Fork it while it runs: a child restored from a new checkpoint of it, copy-on-write.")
	out, err = s.run(ctx, "fork", "--json", parent)
	if err != nil {
		return err
	}
	var fork api.ForkResponse
	if err := json.Unmarshal([]byte(out), &fork); err != nil || fork.Box.ID == "" {
		return fmt.Errorf("sail fork --json answered no box (%v): %q", err, out)
	}
	child := fork.Box.ID

	s.say("The child has the parent's memory (/tmp is in RAM), but a hostname of its own (the parent's is %s).", parentHost)
	out, err = s.run(ctx, "exec", child, "--", "cat", "/tmp/greeting")
	if err != nil {
		return err
	}
	if out != "hello\n" {
		return fmt.Errorf("the child's /tmp/greeting holds %q, want the parent's %q", out, "hello\n")
	}
	out, err = s.run(ctx, "exec", child, "--", "hostname")
	if err != nil {
		return err
	}
	if h := strings.TrimSpace(out); h == parentHost {
		return fmt.Errorf("the child's hostname is its parent's, %q", h)
	}

	s.say("Put the parent to sleep: a last checkpoint, then its VMM exits and frees its memory.")
	if _, err := s.run(ctx, "sleep", parent); err != nil {
		return err
	}
	if err := s.expectState(ctx, parent, lifecycle.Sleeping); err != nil {
		return err
	}

	s.say("An exec wakes it: the daemon restores it from that checkpoint, then runs the command.")
	out, err = s.run(ctx, "exec", parent, "--", "cat", "/tmp/greeting")
	if err != nil {
		return err
	}
	if out != "hello\n" {
		return fmt.Errorf("the woken parent's /tmp/greeting holds %q, want %q", out, "hello\n")
	}
	if err := s.expectState(ctx, parent, lifecycle.Running); err != nil {
		return err
	}

	s.say("Terminate both: their VMMs stop and the checkpoints only they used are freed.")
	for _, id := range []string{child, parent} {
		if _, err := s.run(ctx, "terminate", id); err != nil {
			return err
		}
	}
	out, err = s.run(ctx, "ls")
	if err != nil {
		return err
	}
	for _, id := range []string{child, parent} {
		if st, ok := lsState(out, id); ok {
			return fmt.Errorf("sail ls still lists %s (%s) after it was terminated", id, st)
		}
	}
	return nil
}

// expectState runs `sail ls` and checks that it shows box id in state want.
func (s *session) expectState(ctx context.Context, id string, want lifecycle.State) error {
	out, err := s.run(ctx, "ls")
	if err != nil {
		return err
	}
	got, ok := lsState(out, id)
	switch {
	case !ok:
		return fmt.Errorf("sail ls does not list %s", id)
	case got != string(want):
		return fmt.Errorf("sail ls shows %s %s, want %s", id, got, want)
	}
	return nil
}

// lsState finds box id in the table `sail ls` prints and returns its
// STATE column.
func lsState(table, id string) (string, bool) {
	sc := bufio.NewScanner(strings.NewReader(table))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == id {
			return f[1], true
		}
	}
	return "", false
}

// shellJoin is argv as it would be typed at a POSIX shell.
func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

func shellQuote(s string) string {
	plain := func(r rune) bool {
		return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@%+=:,./_-", r)
	}
	if s != "" && strings.IndexFunc(s, func(r rune) bool { return !plain(r) }) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// seconds is how the demo shows a duration: "0.82 s".
func seconds(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// lockedWriter serialises writes from a command's stdout and stderr
// copiers.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
