package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
	"github.com/sailbox-dev/sailbox/internal/logtest"
)

// The kvm tier drives the real daemon: this test binary re-executed as
// sailboxd (asMain), with the real backend, running the sailbox-vmm and
// sailbox-net that `make test` builds ($SAILBOX_VMM, $SAILBOX_NET) on the
// project's guest kernel and initramfs.
const asMain = "SAILBOX_SAILBOXD_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMain) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// host is one test's machine: a state directory, a base disk image and
// the daemon serving them (restartable, and killable with SIGKILL).
type host struct {
	t        *testing.T
	dir      string // short: Unix socket paths must fit in 108 bytes
	stateDir string
	sock     string
	image    string
	args     []string // extra daemon flags
	initrd   string
	exe      string              // the daemon's binary; "" is this test binary
	cred     *syscall.Credential // the daemon's user; nil is the test's

	cmd  *exec.Cmd
	logs *logtest.Buffer
	done chan error
	c    *client.Client
}

// newHost prepares a host (a 32 MiB ext4 base image, a state directory)
// and starts its daemon. Every VMM it leaves is killed at cleanup.
func newHost(t *testing.T, args ...string) *host {
	t.Helper()
	kvmtest.Require(t)
	h := &host{t: t, args: args, initrd: kvmtest.Artifact(t, "SAILBOX_GUEST_INITRAMFS")}
	kvmtest.Artifact(t, "SAILBOX_GUEST_KERNEL")
	kvmtest.Artifact(t, "SAILBOX_VMM")
	kvmtest.Artifact(t, "SAILBOX_NET")
	dir, err := os.MkdirTemp("", "sbd")
	if err != nil {
		t.Fatal(err)
	}
	h.dir, h.stateDir, h.sock = dir, filepath.Join(dir, "state"), filepath.Join(dir, "d.sock")
	h.image = filepath.Join(dir, "base.ext4")
	kvmtest.Ext4Image(t, h.image, 32<<20)
	t.Cleanup(func() {
		h.tearDown()
		os.RemoveAll(dir)
	})
	h.start()
	return h
}

// tearDown ends a host at cleanup: where each live guest's vCPUs are if
// the test failed (a guest the lab's emulated SVM broke shows a sign the
// runner knows; any other stuck guest is ours to chase), then the daemon
// and every VMM it left are killed, and a failed test gets their logs.
func (h *host) tearDown() {
	t := h.t
	if t.Failed() {
		socks, _ := filepath.Glob(filepath.Join(h.stateDir, "run", "*", "api.sock"))
		for _, s := range socks {
			if id := filepath.Base(filepath.Dir(s)); len(h.vmmPIDsOf(id)) > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				h.describeVCPUs(ctx, id)
				cancel()
			}
		}
	}
	if h.cmd != nil {
		h.kill()
	}
	if n := h.killVMMs(); n > 0 {
		t.Logf("killed %d VMMs left running", n)
	}
	if t.Failed() {
		h.dumpLogs()
	}
}

// start runs the daemon and waits for its socket.
func (h *host) start() {
	t := h.t
	t.Helper()
	// One log across restarts: what a killed daemon said last is often
	// what explains the next one's trouble.
	if h.logs == nil {
		h.logs = &logtest.Buffer{}
	} else {
		fmt.Fprintf(h.logs, "--- sailboxd restarted at %s ---\n", time.Now().Format(time.TimeOnly))
	}
	args := append([]string{
		"-state-dir", h.stateDir, "-socket", h.sock, "-host-id", "lab",
		"-vmm", os.Getenv("SAILBOX_VMM"), "-sailbox-net", os.Getenv("SAILBOX_NET"), "-initrd", h.initrd, "-image", h.image, "-mem", "128",
		"-log-level", "debug",
	}, h.args...)
	exe := os.Args[0]
	if h.exe != "" {
		exe = h.exe
	}
	h.cmd = exec.Command(exe, args...)
	h.cmd.Env = append(os.Environ(), asMain+"=1")
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: h.cred}
	h.cmd.Stdout, h.cmd.Stderr = h.logs, h.logs
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	h.done = done
	go func() { done <- h.cmd.Wait() }()
	// Ready when it answers: a killed daemon leaves its socket file.
	h.c = client.New(h.sock)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if _, err := h.c.List(context.Background(), client.ListOptions{}); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("sailboxd exited: %v\n%s", err, h.logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not answer for a minute:\n%s", h.logs)
		}
	}
}

// stop ends the daemon with SIGTERM (boxes keep running).
func (h *host) stop() {
	h.t.Helper()
	h.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-h.done; err != nil {
		h.t.Errorf("sailboxd: %v\n%s", err, h.logs)
	}
	h.cmd = nil
}

// kill ends the daemon with SIGKILL.
func (h *host) kill() {
	h.cmd.Process.Kill()
	<-h.done
	h.cmd = nil
}

// vmmPIDs lists the sailbox-vmm processes serving this host's boxes: those
// whose command line names a socket under its run directory.
func (h *host) vmmPIDs() []int {
	return h.pidsNaming("sailbox-vmm", filepath.Join(h.stateDir, "run")+"/")
}

// vmmPIDsOf lists the sailbox-vmm processes serving box id.
func (h *host) vmmPIDsOf(id string) []int {
	return h.pidsNaming("sailbox-vmm", filepath.Join(h.stateDir, "run", id)+"/")
}

// netPIDs lists the sailbox-net processes of this host's boxes, and
// netPIDsOf those of box id.
func (h *host) netPIDs() []int {
	return h.pidsNaming("sailbox-net", filepath.Join(h.stateDir, "run")+"/")
}

func (h *host) netPIDsOf(id string) []int {
	return h.pidsNaming("sailbox-net", filepath.Join(h.stateDir, "run", id)+"/")
}

// pidsNaming lists the processes of the program called prog (its
// binary's name) whose command line contains run.
func (h *host) pidsNaming(prog, run string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte(run)) {
			continue
		}
		if argv0, _, _ := bytes.Cut(cmdline, []byte{0}); filepath.Base(string(argv0)) == prog {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killVMMs sends SIGKILL to every VMM of this host and every box's
// network, as a host failure would, waits for them to go, and returns
// how many VMMs there were.
func (h *host) killVMMs() int {
	pids := h.vmmPIDs()
	for _, pid := range append(h.netPIDs(), pids...) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(10 * time.Second); len(h.vmmPIDs())+len(h.netPIDs()) > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	return len(pids)
}

// dumpLogs logs the daemon's output and every box's VMM log and console.
func (h *host) dumpLogs() {
	h.t.Logf("sailboxd log:\n%s", h.logs)
	logs, _ := filepath.Glob(filepath.Join(h.stateDir, "run", "*", "*.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		if len(b) > 8<<10 {
			b = b[len(b)-8<<10:]
		}
		h.t.Logf("%s (tail):\n%s", l, b)
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// run execs argv in box id and returns its stdout, failing the test on an
// error or a non-zero exit.
func (h *host) run(id string, argv ...string) string {
	h.t.Helper()
	out, code, err := h.exec(id, argv...)
	if err != nil || code != 0 {
		h.t.Fatalf("exec %q in %s: exit %d, %v; stdout %q", argv, id, code, err, out)
	}
	return out
}

// exec execs argv in box id.
func (h *host) exec(id string, argv ...string) (string, int, error) {
	var stdout, stderr bytes.Buffer
	res, err := h.c.Exec(ctxFor(h.t, 2*time.Minute), id, api.ExecRequest{Argv: argv}, &stdout, &stderr)
	if err != nil {
		return stdout.String(), -1, fmt.Errorf("%w (stderr %q)", err, stderr.String())
	}
	return stdout.String(), res.ExitCode, nil
}

// state is box id's state, failing the test if it cannot be read.
func (h *host) state(id string) string {
	h.t.Helper()
	b, err := h.c.Get(ctxFor(h.t, time.Minute), id)
	if err != nil {
		h.t.Fatalf("get %s: %v", id, err)
	}
	return string(b.State)
}

// storeFiles lists the files of boxes in the checkpoint store: manifests,
// layers and disk tops (not the store's lock, nor the files of templates,
// "tpl-…", which stay for the next create).
func (h *host) storeFiles() []string {
	var files []string
	store := filepath.Join(h.stateDir, "store")
	filepath.WalkDir(store, func(p string, d os.DirEntry, err error) error {
		rel, _ := filepath.Rel(store, p)
		if err == nil && !d.IsDir() && rel != "lock" && !strings.HasPrefix(filepath.Base(filepath.Dir(rel)), "tpl-") && !strings.HasPrefix(d.Name(), "tpl-") {
			files = append(files, rel)
		}
		return nil
	})
	return files
}
