package vmmbackend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

func newBackend(t *testing.T) *Backend {
	dir := t.TempDir()
	b, err := New(Config{VMM: "/bin/false", Kernel: "/k", Initrd: "/i", Store: filepath.Join(dir, "store"), RunDir: filepath.Join(dir, "run")})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Every VMM of a box is started with the box's sockets and logs, and
// each kind of start says what it is; sailbox-vmm parses back exactly
// that (vmmapi.ParseLaunch).
func TestLaunches(t *testing.T) {
	b := newBackend(t)
	spec := catalog.Spec{MemoryMiB: 512, VCPUs: 2, Image: "/img/base.raw"}
	f := b.files("sb-1")
	boot := b.bootLaunch("sb-1", spec)
	want := vmmapi.Launch{
		Kernel: "/k", Initrd: "/i", MemoryMiB: 512, VCPUs: 2, VsockCID: guestCID,
		Disks: []vmmapi.LaunchDisk{{Path: "/img/base.raw", Layered: true, ID: "vda"}},
		Store: b.cfg.Store, VsockUDS: f.vsockSock, APISocket: f.apiSock, ConsoleLog: f.console, Log: f.log,
	}
	if !reflect.DeepEqual(boot, want) {
		t.Errorf("boot launch\n got %+v\nwant %+v", boot, want)
	}
	// A reboot boots the same way on a checkpoint's disks instead of a
	// new disk over the image.
	want.Disks, want.DisksFrom = nil, "sb-1-c4"
	if got := b.rebootLaunch("sb-1", spec, "sb-1-c4"); !reflect.DeepEqual(got, want) {
		t.Errorf("reboot launch\n got %+v\nwant %+v", got, want)
	}
	fork := b.restoreLaunch("sb-2", spec, "sb-1-c3", true)
	if fork.Restore != "sb-1-c3" || fork.ForkName != "sb-2" || fork.Kernel != "" || fork.APISocket != b.files("sb-2").apiSock {
		t.Errorf("fork launch: %+v", fork)
	}
	if l := b.restoreLaunch("sb-1", spec, "sb-1-c3", false); l.ForkName != "" {
		t.Errorf("plain restore names a fork: %+v", l)
	}
	for _, l := range []vmmapi.Launch{boot, want, fork} {
		got, err := vmmapi.ParseLaunch(l.Args(), io.Discard)
		l.Log = ""
		if err != nil || !reflect.DeepEqual(got, l) {
			t.Errorf("sailbox-vmm parses %q as %+v, %v; want %+v", l.Args(), got, err, l)
		}
	}
}

func TestWithoutVM(t *testing.T) {
	b := newBackend(t)
	ctx := context.Background()
	if err := b.Stop(ctx, "sb-x"); err != nil {
		t.Errorf("stop of a box without VM: %v", err)
	}
	if alive, err := b.Attach(ctx, "sb-x"); alive || err != nil {
		t.Errorf("attach of a box without VM: %v, %v", alive, err)
	}
	if _, err := b.Checkpoint(ctx, "sb-x", "c"); err == nil {
		t.Error("checkpoint of a box without VM succeeded")
	}
	if err := b.RemoveCheckpoints(ctx, []string{"nope"}); err != nil {
		t.Errorf("remove of unknown checkpoints: %v", err)
	}
	// A VMM that exits at once fails the boot and leaves nothing running.
	if _, err := b.Boot(ctx, "sb-y", catalog.Spec{MemoryMiB: 256, VCPUs: 1}); err == nil {
		t.Error("boot with /bin/false as the VMM succeeded")
	}
	if _, err := b.get("sb-y"); err == nil {
		t.Error("a failed boot left a VM registered")
	}
	// So does a reboot.
	if _, err := b.Reboot(ctx, "sb-z", catalog.Spec{MemoryMiB: 256, VCPUs: 1}, "c"); err == nil {
		t.Error("reboot with /bin/false as the VMM succeeded")
	}
	if _, err := b.get("sb-z"); err == nil {
		t.Error("a failed reboot left a VM registered")
	}
}

// A process is running until it exits, zombie or not.
func TestRunning(t *testing.T) {
	if !running(os.Getpid()) {
		t.Error("this process is not running")
	}
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Not yet waited for: a zombie once it exits.
	for deadline := time.Now().Add(10 * time.Second); running(cmd.Process.Pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("an exited child (a zombie) still counts as running")
		}
	}
	cmd.Wait()
	if running(cmd.Process.Pid) {
		t.Error("a reaped child counts as running")
	}
}

// A VMM killed with the host leaves its sockets; the next start of the box
// removes them so that its new VMM can listen there.
func TestStartRemovesStaleSockets(t *testing.T) {
	b := newBackend(t)
	f := b.files("sb-z")
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{f.apiSock, f.vsockSock} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b.Boot(context.Background(), "sb-z", catalog.Spec{MemoryMiB: 256, VCPUs: 1}) // /bin/false: fails
	for _, p := range []string{f.apiSock, f.vsockSock} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("stale %s still there: %v", p, err)
		}
	}
}

// A socket something still listens on is not stale: the start refuses
// rather than cut a live VMM off.
func TestStartKeepsLiveSockets(t *testing.T) {
	b := newBackend(t)
	f := b.files("sb-live")
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", f.apiSock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := b.Boot(context.Background(), "sb-live", catalog.Spec{MemoryMiB: 256, VCPUs: 1}); err == nil || !strings.Contains(err.Error(), "still serves") {
		t.Errorf("boot over a live socket: %v", err)
	}
	if _, err := os.Stat(f.apiSock); err != nil {
		t.Errorf("live socket removed: %v", err)
	}
}

// A VMM that dies before its agent answers fails the boot with the last
// line of its log: often the reason.
func TestBootFailureQuotesTheVMMLog(t *testing.T) {
	dir := t.TempDir()
	vmm := filepath.Join(dir, "fake-vmm")
	if err := os.WriteFile(vmm, []byte("#!/bin/sh\necho starting\necho 'sailbox-vmm: guest shutdown'\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{VMM: vmm, Kernel: "/k", Store: filepath.Join(dir, "store"), RunDir: filepath.Join(dir, "run")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Boot(context.Background(), "sb-dies", catalog.Spec{MemoryMiB: 256, VCPUs: 1})
	if err == nil || !strings.Contains(err.Error(), "sailbox-vmm: guest shutdown") {
		t.Errorf("boot of a dying VMM: %v", err)
	}
}

// hungVMMEnv makes this test binary a sailbox-vmm whose guest never
// answers: it serves the control API on -api-sock and nothing on vsock
// ("1"; "exits": and it exits when asked to shut down), or nothing at
// all ("silent"). With fakeNetEnv set, this binary started with
// sailbox-net's flags is a fake sailbox-net (fakeNet).
const hungVMMEnv = "SAILBOX_VMMBACKEND_HUNG_VMM"

func TestMain(m *testing.M) {
	if sock := os.Getenv(zombieLeaderEnv); sock != "" {
		zombieLeader(sock)
	}
	if os.Getenv(fakeNetEnv) == "1" && slices.Contains(os.Args, "-control") {
		os.Exit(fakeNet(os.Args[1:]))
	}
	if os.Getenv(hungVMMEnv) == "silent" {
		select {}
	}
	if mode := os.Getenv(hungVMMEnv); mode == "1" || mode == "exits" {
		args := os.Args[1:]
		i := slices.Index(args, "-api-sock")
		if i < 0 || i+1 >= len(args) {
			os.Exit(2)
		}
		l, err := net.Listen("unix", args[i+1])
		if err != nil {
			os.Exit(2)
		}
		// The hung guest's last words, where a launch puts its console.
		if j := slices.Index(args, "-console-log"); j >= 0 && j+1 < len(args) {
			os.WriteFile(args[j+1], []byte("[    2.1] Kernel panic - not syncing: hung\n"), 0o644)
		}
		var c vmmapi.Controller = hungVM{}
		if os.Getenv(hungVMMEnv) == "exits" {
			c = exitingVM{}
		}
		vmmapi.Serve(context.Background(), l, c)
		return
	}
	os.Exit(m.Run())
}

type hungVM struct{}

func (hungVM) Status() vmmapi.Status { return vmmapi.Status{State: "running", PID: os.Getpid()} }
func (hungVM) Shutdown()             {}
func (hungVM) Pause() error          { return nil }
func (hungVM) Resume() error         { return nil }
func (hungVM) Checkpoint(vmmapi.CheckpointRequest) (vmmapi.CheckpointResult, error) {
	return vmmapi.CheckpointResult{}, errors.New("hung")
}
func (hungVM) DescribeVCPUs() string { return "vcpu 0 rip=0xfeedface\n" }
func (hungVM) SaveWorkingSet() (vmmapi.WorkingSetResult, error) {
	return vmmapi.WorkingSetResult{}, errors.New("hung")
}

// countingVM counts the working sets it is asked to record.
type countingVM struct {
	hungVM
	saves atomic.Int32
}

func (c *countingVM) SaveWorkingSet() (vmmapi.WorkingSetResult, error) {
	c.saves.Add(1)
	return vmmapi.WorkingSetResult{Saved: true}, nil
}

// A restored VM is asked to record its working set once, after its first
// exec, however many follow; a booted one never.
func TestRecordWorkingSetOnce(t *testing.T) {
	b := newBackend(t)
	serve := func() (*countingVM, *vm) {
		sock := filepath.Join(t.TempDir(), "api.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		c := &countingVM{}
		go vmmapi.Serve(ctx, l, c)
		return c, &vm{ctl: vmmapi.NewClient(sock), exited: make(chan struct{})}
	}
	restored, rv := serve()
	rv.restored = true
	booted, bv := serve()
	for range 3 {
		b.recordWorkingSet("sb-r", rv)
		b.recordWorkingSet("sb-b", bv)
	}
	for deadline := time.Now().Add(10 * time.Second); restored.saves.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // room for a wrong second call
	if n := restored.saves.Load(); n != 1 {
		t.Errorf("restored VM asked %d times, want once", n)
	}
	if n := booted.saves.Load(); n != 0 {
		t.Errorf("booted VM asked %d times, want never", n)
	}
}

// A boot whose agent never answers logs where the VMM's vCPUs are before
// the VMM is killed: the one clue to where a hung guest is.
func TestBootTimeoutLogsVCPUs(t *testing.T) {
	t.Setenv(hungVMMEnv, "1")
	dir := t.TempDir()
	var log bytes.Buffer
	var mu sync.Mutex
	b, err := New(Config{
		VMM: os.Args[0], Kernel: "/k", Store: filepath.Join(dir, "store"), RunDir: filepath.Join(dir, "run"),
		BootTimeout: 2 * time.Second,
		Logger:      slog.New(slog.NewTextHandler(&lockedWriter{w: &log, mu: &mu}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Boot(context.Background(), "sb-hung", catalog.Spec{MemoryMiB: 256, VCPUs: 1}); err == nil {
		t.Fatal("boot of a guest that never answers succeeded")
	}
	mu.Lock()
	got := log.String()
	mu.Unlock()
	if !strings.Contains(got, "guest agent did not answer; its vCPUs") || !strings.Contains(got, "rip=0xfeedface") || !strings.Contains(got, "Kernel panic - not syncing: hung") {
		t.Errorf("log lacks the vCPUs or the guest's console:\n%s", got)
	}
	if c, err := net.DialTimeout("unix", b.files("sb-hung").apiSock, time.Second); err == nil {
		c.Close()
		t.Error("the hung VMM still serves its socket after the failed boot")
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// A VMM that exits on its own is reported to Watch's function; one the
// backend stopped (forgot first) is not.
func TestWatchReportsVMMsThatExitOnTheirOwn(t *testing.T) {
	b := newBackend(t)
	lost := make(chan string, 2)
	b.Watch(func(box string) { lost <- box })
	crashed := &vm{files: b.files("sb-crashed"), exited: make(chan struct{})}
	stopped := &vm{files: b.files("sb-stopped"), exited: make(chan struct{})}
	b.register("sb-crashed", crashed)
	b.register("sb-stopped", stopped)
	b.mu.Lock()
	delete(b.vms, "sb-stopped") // as Stop does before it shuts the VMM down
	b.mu.Unlock()
	close(stopped.exited)
	close(crashed.exited)
	select {
	case box := <-lost:
		if box != "sb-crashed" {
			t.Errorf("reported %s, want sb-crashed", box)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the crashed VMM was not reported")
	}
	select {
	case box := <-lost:
		t.Errorf("also reported %s", box)
	case <-time.After(100 * time.Millisecond):
	}
}

// Stop finds and kills a box's VMM that the backend does not track (left
// by a crash, or started by a fork for a client that had gone), whether
// it answers on its control socket or not.
func TestStopKillsUntrackedVMM(t *testing.T) {
	b := newBackend(t)
	for _, mode := range []string{"1", "silent"} {
		t.Run(mode, func(t *testing.T) {
			t.Setenv(hungVMMEnv, mode)
			box := "sb-orphan-" + mode
			if err := os.MkdirAll(b.files(box).dir, 0o700); err != nil {
				t.Fatal(err)
			}
			cmd, err := b.bootLaunch(box, catalog.Spec{MemoryMiB: 256, VCPUs: 1}).Start(os.Args[0])
			if err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { cmd.Wait(); close(exited) }()
			if mode == "1" { // wait until it serves, as a VMM the daemon lost would
				for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
					if c, err := net.Dial("unix", b.files(box).apiSock); err == nil {
						c.Close()
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("the orphan never served its socket")
					}
				}
			}
			if mode == "1" {
				// A new start of the box (a wake after a crash in the
				// middle of one) replaces the orphan.
				if _, err := b.Boot(context.Background(), box, catalog.Spec{MemoryMiB: 256, VCPUs: 1}); err == nil || strings.Contains(err.Error(), "still serves") {
					t.Errorf("boot over an orphan VMM: %v", err)
				}
			} else if err := b.Stop(context.Background(), box); err != nil {
				t.Fatal(err)
			}
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				t.Fatal("Stop left the untracked VMM running")
			}
			if _, err := os.Stat(b.files(box).dir); mode == "silent" && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("run directory left: %v", err)
			}
		})
	}
}

// exitingVM is a hung VM that exits when asked to shut down, as a VMM
// whose guest powers off does. Its network device reports fakeDevice.
type exitingVM struct{ hungVM }

func (exitingVM) Status() vmmapi.Status {
	return vmmapi.Status{State: "running", PID: os.Getpid(), Network: fakeDevice()}
}

// fakeDevice has every counter set, each to a different value.
func fakeDevice() *vmmapi.NetworkStats {
	return &vmmapi.NetworkStats{FramesOut: 1, BytesOut: 2, InvalidOut: 4, DroppedOut: 8, FramesIn: 16, BytesIn: 32, InvalidIn: 64, DroppedIn: 128, PeerGone: true}
}

func (exitingVM) Shutdown() {
	go func() {
		time.Sleep(20 * time.Millisecond)
		os.Exit(0)
	}()
}

// zombieLeaderEnv makes the test binary a process whose leader thread
// exits while another thread goes on serving a Unix socket (the first
// argument): what a killed Go process looks like while its threads exit.
const zombieLeaderEnv = "SAILBOX_VMMBACKEND_ZOMBIE_LEADER"

func init() {
	if os.Getenv(zombieLeaderEnv) != "" {
		// The leader thread is the one that exits below.
		runtime.LockOSThread()
	}
}

func zombieLeader(sock string) {
	l, err := net.Listen("unix", sock)
	if err != nil {
		os.Exit(2)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// exit(2), not exit_group(2): only the leader ends.
	syscall.RawSyscall(syscall.SYS_EXIT, 0, 0, 0)
}

// A process whose leader is a zombie but whose other threads still hold
// its sockets is running: a restore must not take its sockets for free.
func TestRunningWhileThreadsOutliveTheLeader(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), zombieLeaderEnv+"="+sock)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	defer func() {
		syscall.Kill(pid, syscall.SIGKILL)
		cmd.Wait()
	}()
	leaderState := func() byte {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
			return b[i+2]
		}
		return 0
	}
	for leaderState() != 'Z' {
		time.Sleep(10 * time.Millisecond) // until the leader has exited
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("the process's other threads do not serve: %v", err)
	}
	c.Close()
	if !running(pid) {
		t.Fatal("a process whose threads still serve its socket is not running")
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for running(pid) {
		time.Sleep(10 * time.Millisecond)
	}
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		t.Error("a process that is not running still serves its socket")
	}
}

// A template is keyed by the boot identity (daemon.Manager.templateID):
// a daemon started with another guest kernel command line, kernel,
// initramfs or VMM must get other templates, and the same files and
// command line the same ones.
func TestBootIdentity(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := Config{VMM: write("vmm", "vmm 1"), Kernel: write("kernel", "kernel 1"), Initrd: write("initrd", "initrd 1"), Cmdline: "quiet"}
	identity := func(cfg Config) string {
		t.Helper()
		cfg.Store, cfg.RunDir = filepath.Join(t.TempDir(), "store"), filepath.Join(t.TempDir(), "run")
		b, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		id, err := b.BootIdentity()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	want := identity(base)
	if again := identity(base); again != want {
		t.Errorf("the same boot gave identities %s and %s", want, again)
	}
	other := func(what string, cfg Config) {
		t.Helper()
		if id := identity(cfg); id == want {
			t.Errorf("another %s, the same boot identity %s: its boxes would share the old templates", what, id)
		}
	}
	cfg := base
	cfg.Cmdline = "quiet sailbox.debug=1"
	other("command line", cfg)
	for _, f := range []struct{ what, path string }{{"VMM", base.VMM}, {"kernel", base.Kernel}, {"initramfs", base.Initrd}} {
		cfg := base
		cfg.VMM, cfg.Kernel, cfg.Initrd = write("vmm2", "vmm 1"), write("kernel2", "kernel 1"), write("initrd2", "initrd 1")
		if id := identity(cfg); id != want {
			t.Fatalf("the same files under other names: identity %s, want %s", id, want)
		}
		changed := f.path + "2"
		write(filepath.Base(changed), f.what+" 2")
		other(f.what, cfg)
	}
}
