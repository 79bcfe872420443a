package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
)

const (
	// imageBytes is the size of the boxes' base disk image.
	imageBytes = 32 << 20
	// readyTimeout bounds how long sailboxd may take to answer on its
	// socket.
	readyTimeout = 2 * time.Minute
	// cleanupTimeout bounds terminating the boxes left at the end.
	cleanupTimeout = 3 * time.Minute
	// stopTimeout bounds how long sailboxd may take to exit after SIGTERM.
	stopTimeout = 30 * time.Second
	// logTailLines is how much of each log a failure prints.
	logTailLines = 40
)

// daemon is a sailboxd this demo started, on a state directory and socket
// of its own.
type daemon struct {
	stateDir string
	sock     string
	logPath  string // the daemon's stdout and stderr
	out      io.Writer
	c        *client.Client

	cmd     *exec.Cmd
	logFile *os.File
	exited  chan struct{} // closed once cmd has been waited for
	waitErr error         // how cmd ended; set before exited is closed
}

// startDaemon makes a base image in dir, starts sailboxd on a state
// directory and socket in dir, and waits until it answers. On an error
// nothing it started is left running.
func startDaemon(ctx context.Context, c config, dir string, out io.Writer) (*daemon, error) {
	image := c.Image
	if image != "" {
		fmt.Fprintf(out, "# the boxes' root file system: %s (Debian, image/build.sh); each box writes to its own layer over it\n", image)
	} else {
		image = filepath.Join(dir, "base.ext4")
		if err := makeImage(ctx, image); err != nil {
			return nil, err
		}
		fmt.Fprintf(out, "# the boxes' base disk: %s, %d MiB of ext4; each box writes to its own layer over it\n", image, imageBytes>>20)
	}
	d := &daemon{
		stateDir: filepath.Join(dir, "state"),
		sock:     filepath.Join(dir, "d.sock"),
		logPath:  filepath.Join(dir, "sailboxd.log"),
		out:      out,
		exited:   make(chan struct{}),
	}
	d.c = client.New(d.sock)
	args := []string{
		"-state-dir", d.stateDir, "-socket", d.sock,
		"-kernel", c.Kernel, "-initrd", c.Initrd, "-vmm", c.VMM,
		"-image", image, "-mem", strconv.Itoa(c.MemoryMiB), "-log-level", "debug",
	}
	if h, _ := os.Hostname(); h == "" || h == "(none)" { // the KVM lab's
		args = append(args, "-host-id", "localhost")
	}
	logFile, err := os.Create(d.logPath)
	if err != nil {
		return nil, err
	}
	d.logFile = logFile
	d.cmd = exec.Command(c.Sailboxd, args...)
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	// Its own process group: a Ctrl-C at the terminal reaches only the
	// demo, which terminates the boxes before it stops the daemon.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	fmt.Fprintf(out, "\n$ %s >%s 2>&1 &\n", shellJoin(append([]string{"sailboxd"}, args...)), d.logPath)
	start := time.Now()
	if err := d.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start sailboxd: %w", err)
	}
	go func() {
		d.waitErr = d.cmd.Wait()
		close(d.exited)
	}()
	if err := d.waitReady(ctx); err != nil {
		err = fmt.Errorf("%w\n%s", err, d.logTail())
		return nil, errors.Join(err, d.stop())
	}
	fmt.Fprintf(out, "(%s)\n", seconds(time.Since(start)))
	return d, nil
}

// makeImage creates path: an empty ext4 file system of imageBytes.
func makeImage(ctx context.Context, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	err = f.Truncate(imageBytes)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("base image: %w", err)
	}
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", path).CombinedOutput(); err != nil {
		return fmt.Errorf("base image: mkfs.ext4: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// waitReady polls the daemon's API until it answers.
func (d *daemon) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := d.c.List(lctx, client.ListOptions{})
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sailboxd did not answer on %s within %v: %w", d.sock, readyTimeout, err)
		}
		select {
		case <-d.exited:
			return fmt.Errorf("sailboxd exited before it answered on its socket: %v", d.waitErr)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// env is what a client needs to find this daemon.
func (d *daemon) env() []string { return []string{api.SocketEnv + "=" + d.sock} }

// stop terminates every box, then stops the daemon with SIGTERM (which by
// itself would leave the boxes running), then kills any sailbox-vmm still
// running for the state directory: none, unless something before failed.
// It is safe to call whether the daemon still runs or not.
func (d *daemon) stop() error {
	var errs []error
	select {
	case <-d.exited:
	default:
		if err := d.terminateAll(); err != nil {
			errs = append(errs, err)
		}
		fmt.Fprintf(d.out, "\n$ kill -TERM %d   # stop sailboxd\n", d.cmd.Process.Pid)
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
			if d.waitErr != nil {
				errs = append(errs, fmt.Errorf("sailboxd: %w", d.waitErr))
			}
		case <-time.After(stopTimeout):
			d.cmd.Process.Kill()
			<-d.exited
			errs = append(errs, fmt.Errorf("sailboxd did not exit within %v of SIGTERM; killed it", stopTimeout))
		}
	}
	if pids := vmmPIDs(filepath.Join(d.stateDir, "run")); len(pids) > 0 {
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		errs = append(errs, fmt.Errorf("%d processes of boxes (sailbox-vmm, sailbox-net) outlived them; killed them (pids %v)", len(pids), pids))
	}
	d.logFile.Close()
	return errors.Join(errs...)
}

// terminateAll terminates every box the daemon has, forks before their
// parents.
func (d *daemon) terminateAll() error {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	boxes, err := d.c.List(ctx, client.ListOptions{})
	if err != nil {
		return fmt.Errorf("list the boxes left: %w", err)
	}
	var errs []error
	for i := len(boxes) - 1; i >= 0; i-- {
		fmt.Fprintf(d.out, "# terminating %s (%s), left by the walkthrough\n", boxes[i].ID, boxes[i].State)
		if _, err := d.c.Terminate(ctx, boxes[i].ID); err != nil && !client.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("terminate %s: %w", boxes[i].ID, err))
		}
	}
	return errors.Join(errs...)
}

// vmmPIDs lists the processes whose command line names a path under
// runDir: the daemon's sailbox-vmm processes, forks included, and the
// boxes' sailbox-net processes.
func vmmPIDs(runDir string) []int {
	needle := []byte(runDir + "/")
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cmdline, needle) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// printLogs writes the tails of the daemon's log and of every box's VMM
// and console logs to w.
func (d *daemon) printLogs(w io.Writer) {
	fmt.Fprint(w, d.logTail())
	logs, _ := filepath.Glob(filepath.Join(d.stateDir, "run", "*", "*.log"))
	for _, l := range logs {
		rel, _ := filepath.Rel(d.stateDir, l)
		fmt.Fprintf(w, "--- %s (last %d lines)\n%s", rel, logTailLines, tail(l, logTailLines))
	}
}

func (d *daemon) logTail() string {
	return fmt.Sprintf("--- sailboxd log (last %d lines)\n%s", logTailLines, tail(d.logPath, logTailLines))
}

// tail is the last n lines of the file at path, or why it cannot be read.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)\n", err)
	}
	lines := strings.SplitAfter(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "") + "\n"
}
