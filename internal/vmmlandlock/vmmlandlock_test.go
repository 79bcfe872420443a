package vmmlandlock

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"

	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
)

// The rules name each file of a launch once, with the access it needs:
// a box's sockets and console log share one directory, a restore names
// no kernel or disk.
func TestRules(t *testing.T) {
	boot := vmmapi.Launch{
		Kernel: "/k/bzImage", Initrd: "/k/initramfs.cpio",
		Disks: []vmmapi.LaunchDisk{
			{Path: "/img/base.ext4", Layered: true, ID: "vda"},
			{Path: "/img/data.raw", ReadOnly: true},
			{Path: "/img/scratch.raw"},
			{Path: "/img/base.ext4", Layered: true, ID: "vdd"},
		},
		VsockCID: 3, VsockUDS: "/state/run/sb-1/vsock.sock", APISocket: "/state/run/sb-1/api.sock",
		ConsoleLog: "/state/run/sb-1/console.log", Store: "/state/store/",
	}
	type pa struct {
		Path   string
		Access Access
	}
	paths := func(rs []Rule) []pa {
		var out []pa
		for _, r := range rs {
			if r.Why == "" {
				t.Errorf("rule %+v says not why", r)
			}
			out = append(out, pa{r.Path, r.Access})
		}
		return out
	}
	want := []pa{
		{"/k/bzImage", ReadFile}, {"/k/initramfs.cpio", ReadFile},
		{"/img/base.ext4", ReadFile}, {"/img/data.raw", ReadFile}, {"/img/scratch.raw", ReadWriteFile},
		{"/state/store", StoreTree}, {"/state/run/sb-1", BoxDir}, {"/proc", ReadTree},
	}
	if got := paths(Rules(boot)); !reflect.DeepEqual(got, want) {
		t.Errorf("boot rules\n%v, want\n%v", got, want)
	}
	restore := vmmapi.Launch{Store: "/state/store", Restore: "sb-1-c3", ForkName: "sb-2",
		VsockUDS: "/state/run/sb-2/vsock.sock", APISocket: "/state/run/sb-2/api.sock", ConsoleLog: "/var/log/sb-2.console"}
	want = []pa{{"/state/store", StoreTree}, {"/state/run/sb-2", BoxDir}, {"/var/log", BoxDir}, {"/proc", ReadTree}}
	if got := paths(Rules(restore)); !reflect.DeepEqual(got, want) {
		t.Errorf("restore rules\n%v, want\n%v", got, want)
	}
	for _, a := range []Access{ReadFile, ReadWriteFile} {
		if a.rights()&^(llsys.AccessFSExecute|llsys.AccessFSWriteFile|llsys.AccessFSReadFile|llsys.AccessFSTruncate) != 0 {
			t.Errorf("%v has rights of directories: Landlock refuses them on a file", a)
		}
	}
	for _, a := range []Access{ReadFile, ReadWriteFile, ReadTree, StoreTree, BoxDir} {
		if a.rights()&llsys.AccessFSExecute != 0 {
			t.Errorf("%v lets the VMM execute files", a)
		}
	}
}

// restrictCase is what the parent hands the child of TestRestrict.
type restrictCase struct {
	Launch  vmmapi.Launch
	Outside string // a file in another directory, named by nothing
	Beside  string // a file beside the kernel, named by nothing
	TCP     string // a loopback TCP listener of the parent's
}

const restrictChild = "SAILBOX_VMMLANDLOCK_CHILD"

// A VMM confined by Restrict opens the files its Launch names as the
// rules allow, and nothing else: the test binary re-executes itself,
// applies exactly the VMM's rules (Restrict) for a launch whose files are
// in a temporary directory, and tries each. Landlock confines root too,
// so this runs as any user.
func TestRestrict(t *testing.T) {
	if env := os.Getenv(restrictChild); env != "" {
		var c restrictCase
		if err := json.Unmarshal([]byte(env), &c); err != nil {
			t.Fatal(err)
		}
		confined(t, c)
		return
	}
	abi, err := llsys.LandlockGetABIVersion()
	if err != nil || abi < 2 {
		t.Skipf("this kernel has no Landlock the VMM can use (ABI %d, %v): Linux 5.19 or later with landlock in its lsm= list runs this test", abi, err)
	}
	t.Logf("Landlock ABI %d", abi)

	dir := t.TempDir()
	mkdir := func(p string) string {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	file := func(p string) string {
		if err := os.WriteFile(p, []byte("contents"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	images, store, run := mkdir(filepath.Join(dir, "images")), mkdir(filepath.Join(dir, "store")), mkdir(filepath.Join(dir, "run", "sb-1"))
	for _, d := range []string{"checkpoints", "tops", "layers"} {
		mkdir(filepath.Join(store, d))
	}
	file(filepath.Join(store, "layers", "sb-0-c1-mem"))
	file(filepath.Join(run, "console.log"))
	file(filepath.Join(run, "console.log.1"))
	c := restrictCase{
		Launch: vmmapi.Launch{
			Kernel: file(filepath.Join(images, "bzImage")), Initrd: file(filepath.Join(images, "initramfs.cpio")),
			Disks: []vmmapi.LaunchDisk{
				{Path: file(filepath.Join(images, "base.ext4")), Layered: true, ID: "vda"},
				{Path: file(filepath.Join(images, "ro.raw")), ReadOnly: true},
				{Path: file(filepath.Join(images, "rw.raw"))},
			},
			VsockCID: 3, VsockUDS: filepath.Join(run, "vsock.sock"), APISocket: filepath.Join(run, "api.sock"),
			ConsoleLog: filepath.Join(run, "console.log"), Store: store,
		},
		Beside:  file(filepath.Join(images, "other.ext4")),
		Outside: file(filepath.Join(t.TempDir(), "secret")),
	}
	// Host programs the guest dials, outside the VMM's domain.
	guestDials, err := net.Listen("unix", c.Launch.VsockUDS+"_1024")
	if err != nil {
		t.Fatal(err)
	}
	defer guestDials.Close()
	go acceptAll(guestDials)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	go acceptAll(tcp)
	c.TCP = tcp.Addr().String()

	for _, confine := range []bool{true, false} {
		c.Launch.NoLandlock = !confine
		b, _ := json.Marshal(c)
		cmd := exec.Command(os.Args[0], "-test.run=^TestRestrict$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), restrictChild+"="+string(b))
		out, err := cmd.CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("--- PASS: TestRestrict")) {
			t.Errorf("confined VMM (landlock %v): %v\n%s", confine, err, out)
		}
	}
}

func acceptAll(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

// confined runs in the child: it calls Restrict as sailbox-vmm does,
// then tries what a VMM does, and what it must not.
func confined(t *testing.T, c restrictCase) {
	var warnings bytes.Buffer
	if err := Restrict(c.Launch, slog.New(slog.NewTextHandler(&warnings, nil))); err != nil {
		t.Fatalf("Restrict: %v", err)
	}
	if warnings.Len() > 0 {
		t.Errorf("Restrict warned: %s", warnings.String())
	}
	abi, _ := llsys.LandlockGetABIVersion()
	l := c.Launch
	confined := !l.NoLandlock
	denied := func(what string, err error) {
		t.Helper()
		switch {
		case confined && !errors.Is(err, syscall.EACCES):
			t.Errorf("%s: %v, want EACCES", what, err)
		case !confined && err != nil:
			t.Errorf("%s without Landlock: %v", what, err)
		}
	}
	allowed := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
	open := func(path string, flag int) error {
		f, err := os.OpenFile(path, flag, 0o644)
		if err == nil {
			f.Close()
		}
		return err
	}

	// Read-only files: the kernel, the initramfs, a layered disk's base,
	// a read-only image.
	for _, p := range []string{l.Kernel, l.Initrd, l.Disks[0].Path, l.Disks[1].Path} {
		allowed("read "+p, open(p, os.O_RDONLY))
		denied("write "+p, open(p, os.O_WRONLY))
	}
	rw := l.Disks[2].Path
	allowed("read-write "+rw, open(rw, os.O_RDWR))
	allowed("truncate "+rw, os.Truncate(rw, 4096))
	denied("read a file beside the kernel", open(c.Beside, os.O_RDONLY))
	_, err := os.ReadDir(filepath.Dir(l.Kernel))
	denied("list the kernel's directory", err)

	// The store: a checkpoint's files staged, sealed, moved and linked
	// between directories, debris deleted.
	ck := filepath.Join(l.Store, "checkpoints", "sb-1-c2")
	allowed("make a checkpoint directory", os.Mkdir(ck, 0o755))
	allowed("stage a manifest", os.WriteFile(filepath.Join(ck, "manifest.tmp"), []byte("{}"), 0o444))
	allowed("commit the manifest", os.Rename(filepath.Join(ck, "manifest.tmp"), filepath.Join(ck, "manifest")))
	top := filepath.Join(l.Store, "tops", "sb-1-vda")
	allowed("create a disk top", os.WriteFile(top, []byte("top"), 0o644))
	layer := filepath.Join(l.Store, "layers", "sb-1-c2-vda")
	allowed("move a sealed top into the layers", os.Rename(top, layer))
	allowed("link a working set into another checkpoint", os.Link(layer, filepath.Join(ck, "working-set")))
	allowed("read a layer", open(filepath.Join(l.Store, "layers", "sb-0-c1-mem"), os.O_RDONLY))
	_, err = os.ReadDir(filepath.Join(l.Store, "checkpoints"))
	allowed("list the checkpoints", err)
	allowed("delete a checkpoint", os.RemoveAll(ck))
	allowed("delete a layer", os.Remove(layer))
	denied("make a symlink in the store", os.Symlink("/etc/passwd", filepath.Join(l.Store, "link")))

	// The box's directory: the console log rotates, sockets come and go,
	// and the guest's connections reach the host's listeners.
	run := filepath.Dir(l.APISocket)
	allowed("rotate the console log", os.Rename(l.ConsoleLog, l.ConsoleLog+".1"))
	allowed("start a new console log", open(l.ConsoleLog, os.O_WRONLY|os.O_CREATE|os.O_TRUNC))
	sock, err := net.Listen("unix", l.APISocket)
	allowed("listen on the control socket", err)
	if err == nil {
		sock.(*net.UnixListener).SetUnlinkOnClose(false) // deleted below
		sock.Close()
	}
	conn, err := net.Dial("unix", l.VsockUDS+"_1024")
	allowed("dial a host program for the guest", err)
	if err == nil {
		conn.Close()
	}
	allowed("delete a socket", os.Remove(l.APISocket))
	denied("make a directory in the box's directory", os.Mkdir(filepath.Join(run, "sub"), 0o755))

	// /proc: read, never written.
	for _, p := range []string{"/proc/cpuinfo", "/proc/self/pagemap", "/proc/self/smaps", "/proc/self/status"} {
		allowed("read "+p, open(p, os.O_RDONLY))
	}
	_, err = os.ReadDir("/proc/self/task")
	allowed("list the VMM's threads", err)
	denied("write /proc/self/clear_refs", open("/proc/self/clear_refs", os.O_WRONLY))

	// Everything else.
	denied("read a file in another directory", open(c.Outside, os.O_RDONLY))
	denied("create a file in another directory", open(filepath.Join(filepath.Dir(c.Outside), "new"), os.O_WRONLY|os.O_CREATE))
	if confined { // without Landlock, these are up to the user's permissions
		for _, p := range []string{"/etc/hostname", "/etc/passwd", "/dev/kvm"} {
			if _, err := os.Stat(p); err == nil { // Landlock does not hide names
				denied("open "+p, open(p, os.O_RDONLY))
			}
		}
		if _, err := os.Stat("/bin/true"); err == nil {
			denied("execute /bin/true", exec.Command("/bin/true").Run())
		}
	}
	if abi >= 4 {
		conn, err := net.Dial("tcp", c.TCP)
		denied("connect to TCP "+c.TCP, err)
		if err == nil {
			conn.Close()
		}
	}
}
