package seccomp

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sailbox-dev/sailbox/internal/guestlog"
)

// The filter is tested on a child: this test binary run again with
// childEnv set to MODE/CALL. The child binds a Unix socket (start-up, as
// sailbox-vmm's), installs exactly the VMM's filter, does the kinds of
// thing the VMM does after start-up, says workDone, and then makes one
// forbidden call.
const (
	childEnv    = "SAILBOX_SECCOMP_TEST_CHILD"
	childDirEnv = "SAILBOX_SECCOMP_TEST_DIR"
	workDone    = "allowed work done"
)

func TestMain(m *testing.M) {
	if v := os.Getenv(childEnv); v != "" {
		mode, call, _ := strings.Cut(v, "/")
		os.Exit(child(Mode(mode), call, os.Getenv(childDirEnv)))
	}
	os.Exit(m.Run())
}

// forbiddenCalls are what a guest that escaped into the VMM would try.
// Each is harmless should the filter let it through.
var forbiddenCalls = map[string]func(dir string) error{
	"execve": func(string) error { return syscall.Exec("/bin/true", []string{"true"}, nil) },
	"fork": func(string) error {
		_, err := syscall.ForkExec("/bin/true", []string{"true"}, nil)
		return err
	},
	"ptrace":       func(string) error { return unix.PtraceAttach(0) },
	"inet-socket":  func(string) error { return closeFD(unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)) },
	"tty-ioctl":    func(string) error { _, err := unix.IoctlGetTermios(0, unix.TCGETS); return err },
	"signal-other": func(string) error { return unix.Kill(os.Getppid(), 0) },
	"prctl":        func(string) error { _, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); return err },
	"bind": func(dir string) error {
		l, err := net.Listen("unix", filepath.Join(dir, "late.sock"))
		if err == nil {
			l.Close()
		}
		return err
	},
}

// A forbidden call kills the VMM, and only it: the allowed work before
// it, new threads included, goes through.
func TestKillModeKillsForbiddenCalls(t *testing.T) {
	want := filtersAfter(t, len(argRules)+1)
	for call := range forbiddenCalls {
		t.Run(call, func(t *testing.T) {
			t.Parallel()
			c := runChild(t, Kill, call)
			if !strings.Contains(c.stdout, workDone) {
				trap := runChild(t, Trap, call)
				t.Fatalf("the child %s before its allowed work was done:\n%s\nIn trap mode it %s:\n%s\n"+
					"(no stack means the call was made with signals blocked; dmesg names it: audit type=1326 ... syscall=N)",
					c.status(), c, trap.status(), trap.stderr)
			}
			if !c.ws.Signaled() || c.ws.Signal() != syscall.SIGSYS {
				t.Fatalf("after %s the child %s, want killed by SIGSYS:\n%s", call, c.status(), c)
			}
			if !strings.Contains(c.stdout, "Seccomp 2, NoNewPrivs 1, "+want) {
				t.Errorf("the child's status is not Seccomp 2, NoNewPrivs 1, %s:\n%s", want, c)
			}
		})
	}
}

// In trap mode the Go runtime reports the forbidden call, and its stack
// names the wrapper that made it.
func TestTrapModeNamesTheCall(t *testing.T) {
	for call, wrapper := range map[string]string{
		"execve":      "syscall.Exec(",
		"inet-socket": "unix.Socket(",
		"tty-ioctl":   "unix.IoctlGetTermios(",
	} {
		t.Run(call, func(t *testing.T) {
			t.Parallel()
			c := runChild(t, Trap, call)
			if !strings.Contains(c.stdout, workDone) || !c.ws.Exited() || c.ws.ExitStatus() != 2 {
				t.Fatalf("the child %s, want exit status 2 after the allowed work:\n%s", c.status(), c)
			}
			for _, w := range []string{"SIGSYS: bad system call", wrapper} {
				if !strings.Contains(c.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, c.stderr)
				}
			}
		})
	}
}

// Off installs nothing: the child's seccomp state is its parent's, and
// a call the filter would refuse goes through.
func TestOffModeInstallsNothing(t *testing.T) {
	parent, err := readStatus("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	c := runChild(t, Off, "signal-other")
	if !c.ws.Exited() || c.ws.ExitStatus() != 0 || !strings.Contains(c.stdout, "survived signal-other: <nil>") {
		t.Fatalf("the child %s, want exit 0 having signalled its parent:\n%s", c.status(), c)
	}
	if want := fmt.Sprintf("Seccomp %s, NoNewPrivs %s, %s", parent.mode, parent.noNewPrivs, filtersAfter(t, 0)); !strings.Contains(c.stdout, want) {
		t.Errorf("the child's status is not its parent's (%s):\n%s", want, c)
	}
}

// filtersAfter is how the child reports its filter count when it has n
// more filters than this process.
func filtersAfter(t *testing.T, n int) string {
	st, err := readStatus("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	if st.filters < 0 {
		return "filters -1" // before Linux 5.9: not counted
	}
	return fmt.Sprintf("filters %d", st.filters+n)
}

type childRun struct {
	stdout, stderr string
	ws             syscall.WaitStatus
}

func (c childRun) String() string {
	return fmt.Sprintf("stdout:\n%s\nstderr:\n%s", c.stdout, c.stderr)
}

func (c childRun) status() string {
	switch {
	case c.ws.Signaled():
		return "was killed by " + c.ws.Signal().String()
	case c.ws.Exited():
		return fmt.Sprintf("exited %d", c.ws.ExitStatus())
	}
	return fmt.Sprintf("ended with status %#x", uint32(c.ws))
}

func runChild(t *testing.T, mode Mode, call string) childRun {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(mode)+"/"+call, childDirEnv+"="+t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	var exit *exec.ExitError
	if err := cmd.Run(); err != nil && !errors.As(err, &exit) {
		t.Fatalf("run child: %v", err)
	}
	return childRun{stdout.String(), stderr.String(), cmd.ProcessState.Sys().(syscall.WaitStatus)}
}

// child is the child's main; its exit status is 3 if something allowed
// failed, 0 if the forbidden call returned.
func child(mode Mode, call, dir string) int {
	fail := func(what string, err error) int {
		fmt.Fprintf(os.Stderr, "child: %s: %v\n", what, err)
		return 3
	}
	forbidden, ok := forbiddenCalls[call]
	if !ok {
		return fail("call", fmt.Errorf("no forbidden call %q", call))
	}
	// A kill must leave no core file behind.
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		return fail("no core files", err)
	}
	ln, err := net.Listen("unix", filepath.Join(dir, "api.sock"))
	if err != nil {
		return fail("listen", err)
	}
	// The user-space network's socket, bound by another process in life.
	if netListener, err = net.Listen("unixpacket", filepath.Join(dir, "net.sock")); err != nil {
		return fail("listen seqpacket", err)
	}
	// The VMM's own log, its stderr pointed at a file by its starter,
	// adopted before the filter as sailbox-vmm does at its start.
	logFile, err := os.OpenFile(filepath.Join(dir, "vmm.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fail("own log", err)
	}
	if ownLog, err = guestlog.AdoptCapped(logFile, logFile.Name(), ownLogCap, nil); err != nil {
		return fail("own log", err)
	}
	if err := Install(mode); err != nil {
		return fail("install", err)
	}
	st, err := readStatus("/proc/self/status")
	if err != nil {
		return fail("status", err)
	}
	fmt.Printf("Seccomp %s, NoNewPrivs %s, filters %d\n", st.mode, st.noNewPrivs, st.filters)
	for _, w := range allowedWork {
		if err := w.do(mode, dir, ln); err != nil {
			return fail(w.name, err)
		}
	}
	if mode != Off {
		if err := checkThreads(-1); err != nil {
			return fail("threads started after Install", err)
		}
	}
	fmt.Println(workDone)
	err = forbidden(dir)
	fmt.Printf("survived %s: %v\n", call, err)
	return 0
}

// heapSink grows the heap, so that the runtime maps (and names) more.
var heapSink [][]byte

// allowedWork is what sailbox-vmm does after start-up, in kind.
var allowedWork = []struct {
	name string
	do   func(mode Mode, dir string, ln net.Listener) error
}{
	{"threads", func(Mode, string, net.Listener) error {
		// Goroutines locked to their threads and ending so: each takes
		// its thread with it, and the runtime starts others.
		for range 3 {
			var wg sync.WaitGroup
			for range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					runtime.LockOSThread()
					time.Sleep(2 * time.Millisecond)
				}()
			}
			wg.Wait()
		}
		var set unix.CPUSet
		return unix.SchedGetaffinity(0, &set)
	}},
	{"memory", func(Mode, string, net.Listener) error {
		for range 64 {
			heapSink = append(heapSink, make([]byte, 1<<20))
		}
		heapSink = nil
		runtime.GC()
		debug.FreeOSMemory()
		b, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			return err
		}
		b[0] = 1
		nameMapping(b, "guest memory")
		return errors.Join(unix.Madvise(b, unix.MADV_DONTNEED), unix.Mprotect(b, unix.PROT_READ), unix.Munmap(b))
	}},
	{"checkpoint files", func(_ Mode, dir string, _ net.Listener) error {
		return checkpointFiles(filepath.Join(dir, "store"))
	}},
	{"unix sockets", func(_ Mode, _ string, ln net.Listener) error {
		return socketRoundTrip(ln)
	}},
	{"network link", func(Mode, string, net.Listener) error {
		return seqpacketRoundTrip(netListener)
	}},
	{"own log rotated in place", func(_ Mode, dir string, _ net.Listener) error {
		line := bytes.Repeat([]byte("x"), 99)
		for range 3 * ownLogCap / 100 {
			ownLog.Write(append(line, '\n'))
		}
		if lost := ownLog.Lost(); lost != 0 {
			return fmt.Errorf("%d bytes lost", lost)
		}
		fi, err := os.Stat(filepath.Join(dir, "vmm.log.1"))
		if err != nil || fi.Size() != ownLogCap {
			return fmt.Errorf("backup after rotations: %v, %v", fi, err)
		}
		return nil
	}},
	{"eventfd", func(Mode, string, net.Listener) error {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
		if _, err := unix.Write(fd, one); err != nil {
			return err
		}
		_, err = unix.Read(fd, make([]byte, 8))
		return err
	}},
	{"KVM and userfaultfd ioctls", func(_ Mode, dir string, _ net.Listener) error {
		f, err := os.Create(filepath.Join(dir, "not-kvm"))
		if err != nil {
			return err
		}
		defer f.Close()
		// KVM_GET_API_VERSION and UFFDIO_API on a plain file: allowed
		// calls that the file refuses.
		for _, req := range []uintptr{0xAE00, 0xc018aa3f} {
			if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), req, 0); e == 0 {
				return fmt.Errorf("ioctl %#x on a plain file succeeded", req)
			}
		}
		if fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK|1 /* UFFD_USER_MODE_ONLY */, 0, 0); e == 0 {
			unix.Close(int(fd))
		}
		return nil
	}},
	{"signals to itself", func(Mode, string, net.Listener) error {
		return errors.Join(unix.Tgkill(os.Getpid(), unix.Gettid(), unix.SIGURG), unix.Kill(os.Getpid(), 0))
	}},
	{"time and randomness", func(Mode, string, net.Listener) error {
		time.Sleep(time.Millisecond)
		_, err := rand.Read(make([]byte, 32))
		return err
	}},
	{"clone3 answers ENOSYS", func(mode Mode, _ string, _ net.Listener) error {
		_, _, e := unix.Syscall(unix.SYS_CLONE3, 0, 0, 0)
		if mode != Off && e != unix.ENOSYS {
			return fmt.Errorf("clone3: %v, want ENOSYS", e)
		}
		return nil
	}},
}

// checkpointFiles does to files what a checkpoint does: a layer written,
// synced, locked, sealed read-only and renamed into place; a link to it,
// a copy, a listing, and the debris deleted.
func checkpointFiles(store string) error {
	layers := filepath.Join(store, "layers")
	if err := os.MkdirAll(layers, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(layers, "layer-*.tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	page := bytes.Repeat([]byte{7}, 4096)
	if _, err := f.WriteAt(page, 8192); err != nil {
		return err
	}
	got := make([]byte, len(page))
	if _, err := f.ReadAt(got, 8192); err != nil || !bytes.Equal(got, page) {
		return fmt.Errorf("read back: %v", err)
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		return err
	}
	if _, err := f.Stat(); err != nil {
		return err
	}
	for _, err := range []error{
		f.Truncate(1 << 20), f.Sync(), unix.Fdatasync(int(f.Fd())),
		unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB), f.Chmod(0o444), f.Close(),
	} {
		if err != nil {
			return err
		}
	}
	sealed := filepath.Join(layers, "l1")
	if err := os.Rename(f.Name(), sealed); err != nil {
		return err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, sealed, unix.AT_FDCWD, sealed+"-final", unix.RENAME_NOREPLACE); err != nil {
		return err
	}
	if err := os.Link(sealed+"-final", filepath.Join(store, "linked")); err != nil {
		return err
	}
	src, err := os.Open(sealed + "-final")
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.Create(filepath.Join(store, "copy"))
	if err != nil {
		return err
	}
	defer dst.Close()
	if n, err := io.Copy(dst, src); err != nil || n != 1<<20 {
		return fmt.Errorf("copy: %d bytes, %v", n, err)
	}
	if ents, err := os.ReadDir(layers); err != nil || len(ents) != 1 {
		return fmt.Errorf("list: %v, %v", ents, err)
	}
	pagemap, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return err
	}
	defer pagemap.Close()
	if _, err := pagemap.ReadAt(make([]byte, 8), 8*4096); err != nil {
		return fmt.Errorf("pagemap: %w", err)
	}
	return os.RemoveAll(store)
}

// socketRoundTrip is a connection in, as the control API and the vsock
// device take them on a socket bound at start-up, and one out, as the
// vsock device dials <vsock-uds>_PORT.
func socketRoundTrip(ln net.Listener) error {
	echoed := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			echoed <- err
			return
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		if err == nil {
			_, err = c.Write(b)
		}
		echoed <- err
	}()
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.Dial("unix", ln.Addr().String())
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	bufs := net.Buffers{[]byte("CONNECT "), []byte("1024\n")}
	if _, err := bufs.WriteTo(c); err != nil {
		return err
	}
	if err := c.(*net.UnixConn).CloseWrite(); err != nil {
		return err
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "CONNECT 1024\n" {
		return fmt.Errorf("echo %q, %v", got, err)
	}
	return <-echoed
}

// netListener is the network's SOCK_SEQPACKET socket in the child.
var netListener net.Listener

// ownLog is the child's own log, capped as sailbox-vmm caps its stderr
// (guestlog.CapOutput), at ownLogCap.
var ownLog *guestlog.CappedFile

const ownLogCap = 64 << 10

// seqpacketRoundTrip is the virtio-net device's link: a SOCK_SEQPACKET
// connection (socket(AF_UNIX, SOCK_SEQPACKET|SOCK_CLOEXEC|SOCK_NONBLOCK)
// and connect; the VMM connects at start-up, but nothing needs it to), a
// frame sent as one message and one received with recvmsg.
func seqpacketRoundTrip(ln net.Listener) error {
	echoed := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			echoed <- err
			return
		}
		defer c.Close()
		b := make([]byte, 2048)
		n, err := c.Read(b)
		if err == nil {
			_, err = c.Write(b[:n])
		}
		echoed <- err
	}()
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.Dial("unixpacket", ln.Addr().String())
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	frame := bytes.Repeat([]byte{0x5a}, 1514)
	if _, err := c.Write(frame); err != nil {
		return err
	}
	got := make([]byte, 2048)
	n, _, flags, _, err := c.(*net.UnixConn).ReadMsgUnix(got, nil)
	if err != nil || flags&unix.MSG_TRUNC != 0 || !bytes.Equal(got[:n], frame) {
		return fmt.Errorf("echo of %d bytes: %d bytes, flags %#x, %v", len(frame), n, flags, err)
	}
	return <-echoed
}

func closeFD(fd int, err error) error {
	if err == nil {
		unix.Close(fd)
	}
	return err
}
