package vmmbackend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api/netapi"
	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
)

// fakeNetEnv makes this test binary, started with sailbox-net's flags, a
// fake sailbox-net (fakeNet).
const fakeNetEnv = "SAILBOX_VMMBACKEND_FAKE_NET"

// fakeNet is a sailbox-net that listens where its flags say, answers
// stats (naming its box) and refuses every dial, until SIGTERM; then it
// removes its sockets and exits 0, as the real one does.
func fakeNet(args []string) int {
	l, err := netapi.ParseLaunch(args, os.Stderr)
	if err != nil {
		return 2
	}
	frames, err := net.Listen("unixpacket", l.Socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake sailbox-net:", err)
		return 1
	}
	ctl, err := net.Listen("unix", l.Control)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake sailbox-net:", err)
		return 1
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+netapi.StatsPath, func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(netapi.Stats{Box: l.Box, ConnectionsOut: uint64(len(l.Allow))})
	})
	mux.HandleFunc("POST "+netapi.DialPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadGateway)
		json.NewEncoder(w).Encode(netapi.ErrorBody{Error: "connection refused", Code: netapi.CodeRefused})
	})
	go http.Serve(ctl, mux)
	go func() {
		for {
			c, err := frames.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, c)
		}
	}()
	fmt.Fprintf(os.Stderr, "fake sailbox-net: serving box=%s allow=%v\n", l.Box, l.Allow)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	frames.Close()
	ctl.Close()
	return 0
}

// newNetBackend is a backend whose sailbox-net and sailbox-vmm are this
// test binary, in dir.
func newNetBackend(t *testing.T, dir string) *Backend {
	t.Helper()
	t.Setenv(fakeNetEnv, "1")
	b, err := New(Config{
		VMM: os.Args[0], Net: os.Args[0], Kernel: "/k", Initrd: "/i",
		Store: filepath.Join(dir, "store"), RunDir: filepath.Join(dir, "run"), BootTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var netSpec = catalog.Spec{MemoryMiB: 256, VCPUs: 1, Net: &catalog.NetPolicy{NoInternet: true, Allow: []string{"192.168.127.254/32"}}}

// A box with a network boots with the network device on its
// sailbox-net's socket and the guest's addresses on its command line; a
// restore, fork or reboot of it gets the device's new peer; a box
// without one gets neither. The network's flags are its policy's.
func TestLaunchesWithNetwork(t *testing.T) {
	b := newBackend(t)
	f := b.files("sb-1")
	boot := b.bootLaunch("sb-1", netSpec)
	if boot.NetSocket != f.netSock || !strings.Contains(boot.Cmdline, "sailbox.net=192.168.127.2/24,gw=192.168.127.1,dns=192.168.127.1,mtu=1500") {
		t.Errorf("boot launch: net %q, cmdline %q", boot.NetSocket, boot.Cmdline)
	}
	reboot := b.rebootLaunch("sb-1", netSpec, "sb-1-c2")
	if reboot.NetSocket != f.netSock || !strings.Contains(reboot.Cmdline, "sailbox.net=") {
		t.Errorf("reboot launch: net %q, cmdline %q", reboot.NetSocket, reboot.Cmdline)
	}
	for _, fork := range []bool{false, true} {
		if l := b.restoreLaunch("sb-1", netSpec, "sb-1-c2", fork); l.NetSocket != f.netSock || l.NetMAC != "" {
			t.Errorf("restore launch (fork %v): net %q, mac %q", fork, l.NetSocket, l.NetMAC)
		}
	}
	plain := catalog.Spec{MemoryMiB: 256, VCPUs: 1}
	for _, l := range []vmmapi.Launch{b.bootLaunch("sb-1", plain), b.restoreLaunch("sb-1", plain, "sb-1-c2", false), b.rebootLaunch("sb-1", plain, "sb-1-c2")} {
		if l.NetSocket != "" || strings.Contains(l.Cmdline, "sailbox.net") {
			t.Errorf("launch of a box without a network: net %q, cmdline %q", l.NetSocket, l.Cmdline)
		}
	}
	for _, l := range []vmmapi.Launch{boot, reboot} {
		got, err := vmmapi.ParseLaunch(l.Args(), io.Discard)
		if err != nil || got.NetSocket != f.netSock || got.Cmdline != l.Cmdline {
			t.Errorf("sailbox-vmm parses %q as %+v, %v", l.Args(), got, err)
		}
	}
	b.cfg.NetHosts = map[string]netip.Addr{"files.lab": netapi.HostIP}
	nl := b.netLaunch("sb-1", *netSpec.Net)
	want := netapi.Launch{Socket: f.netSock, Control: f.netCtl, Box: "sb-1", NoInternet: true, Allow: []string{"192.168.127.254/32"},
		Hosts: map[string]netip.Addr{"files.lab": netapi.HostIP}}
	if got, err := netapi.ParseLaunch(nl.Args(), io.Discard); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("sailbox-net parses %q as %+v, %v; want %+v", nl.Args(), got, err, want)
	}
	// What the agent reads back is the backend's guestNet.
	if guestNet.KernelParam() != "sailbox.net=192.168.127.2/24,gw=192.168.127.1,dns=192.168.127.1,mtu=1500" {
		t.Errorf("guestNet %q", guestNet.KernelParam())
	}
}

// waitFor polls cond for up to 30 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// A start of a box with a network runs its sailbox-net first and the VMM
// onto it; when the start fails (the guest never answers), neither is
// left running.
func TestStartWithNetwork(t *testing.T) {
	t.Setenv(hungVMMEnv, "1")
	b := newNetBackend(t, t.TempDir())
	f := b.files("sb-n")
	seen := make(chan vmmapi.Launch, 1)
	go func() {
		// The VMM, while the boot waits for its agent.
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			pids, _ := vmmsServing(f.apiSock)
			if len(pids) == 0 {
				continue
			}
			nets, _ := netsServing(f.netSock)
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pids[0]))
			argv := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
			l, _ := vmmapi.ParseLaunch(argv[1:], io.Discard)
			if len(nets) != 1 {
				l.NetSocket = "no network running"
			}
			seen <- l
			return
		}
		close(seen)
	}()
	_, err := b.Boot(context.Background(), "sb-n", netSpec)
	if err == nil {
		t.Fatal("a boot whose guest never answers succeeded")
	}
	l := <-seen
	if l.NetSocket != f.netSock || !strings.Contains(l.Cmdline, guestNet.KernelParam()) {
		t.Errorf("the VMM ran with net %q, cmdline %q; want its network's socket and the guest's addresses", l.NetSocket, l.Cmdline)
	}
	if nets, _ := netsServing(f.netSock); len(nets) != 0 {
		t.Errorf("networks left after the failed start: %v", nets)
	}
	if log, _ := os.ReadFile(f.netLog); !strings.Contains(string(log), "serving box=sb-n allow=[192.168.127.254/32]") {
		t.Errorf("the network's log: %q", log)
	}
}

// A network that cannot start fails the start, with its log's last line,
// and no VMM is started.
func TestStartNetworkFails(t *testing.T) {
	b := newNetBackend(t, t.TempDir())
	b.cfg.Net = "/bin/false"
	_, err := b.Boot(context.Background(), "sb-f", netSpec)
	if err == nil || !strings.Contains(err.Error(), "sailbox-net exited at start") {
		t.Errorf("boot with a network that exits: %v", err)
	}
	if pids, _ := vmmsServing(b.files("sb-f").apiSock); len(pids) != 0 {
		t.Errorf("a VMM started without its network: %v", pids)
	}
	// A run directory too deep for a socket's path is named.
	long := newNetBackend(t, filepath.Join(t.TempDir(), strings.Repeat("d", 90)))
	if _, err := long.Boot(context.Background(), "sb-long", netSpec); err == nil || !strings.Contains(err.Error(), "shorter state directory") {
		t.Errorf("boot with socket paths too long: %v", err)
	}
}

// startFakeVMM starts this test binary as box's VMM (one that exits when
// asked to shut down) with a network, as a previous daemon would have,
// and waits until it serves.
func startFakeVMM(t *testing.T, b *Backend, box string) *exec.Cmd {
	t.Helper()
	t.Setenv(hungVMMEnv, "exits")
	l := b.bootLaunch(box, netSpec)
	cmd, err := l.Start(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, "the fake VMM to serve", func() bool {
		c, err := net.Dial("unix", b.files(box).apiSock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return cmd
}

// After a daemon restart, Attach takes back a running box's network with
// its VMM: its counters (the network's and the VMM's device's) and dials
// go to them, and Stop ends both.
func TestAttachTakesBackNetwork(t *testing.T) {
	dir := t.TempDir()
	before := newNetBackend(t, dir)
	box := "sb-a"
	n, err := before.startNet(context.Background(), box, *netSpec.Net)
	if err != nil {
		t.Fatal(err)
	}
	vmm := startFakeVMM(t, before, box)
	vmmExited := make(chan struct{})
	go func() { vmm.Wait(); close(vmmExited) }()

	after := newNetBackend(t, dir) // the restarted daemon's
	if ok, err := after.Attach(context.Background(), box); !ok || err != nil {
		t.Fatalf("attach: %v, %v", ok, err)
	}
	v, _ := after.get(box)
	if v.net == nil || v.net.pid != n.pid {
		t.Fatalf("attached network %+v, want pid %d", v.net, n.pid)
	}
	st, err := after.NetworkStats(context.Background(), box)
	if err != nil || st.Stack.Box != box || st.Stack.ConnectionsOut != 1 {
		t.Errorf("stats: %+v, %v", st, err)
	}
	if want := fakeDevice(); st.Device == nil || *st.Device != *want {
		t.Errorf("device's counters: %+v, want the VMM's %+v", st.Device, want)
	}
	v.schema.Store(guestagent.NetworkSchemaVersion)
	if _, err := after.DialGuest(context.Background(), box, 8000); !errors.Is(err, netapi.ErrRefused) || !strings.Contains(err.Error(), "nothing listens on 192.168.127.2:8000") {
		t.Errorf("dial through the network: %v, want its refusal", err)
	}
	if err := after.Stop(context.Background(), box); err != nil {
		t.Fatal(err)
	}
	select {
	case <-vmmExited:
	case <-time.After(30 * time.Second):
		t.Fatal("Stop left the VMM running")
	}
	select {
	case <-n.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("Stop left the network running")
	}
	if _, err := os.Stat(after.files(box).dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("run directory left: %v", err)
	}
}

// A VMM that exits on its own takes its network with it, before the loss
// is reported (the restore that follows starts a new network on the same
// sockets).
func TestNetworkGoesWithItsVMM(t *testing.T) {
	dir := t.TempDir()
	b := newNetBackend(t, dir)
	box := "sb-w"
	n, err := b.startNet(context.Background(), box, *netSpec.Net)
	if err != nil {
		t.Fatal(err)
	}
	vmm := startFakeVMM(t, b, box)
	exited := make(chan struct{})
	go func() { vmm.Wait(); close(exited) }()
	v := &vm{files: b.files(box), pid: vmm.Process.Pid, ctl: vmmapi.NewClient(b.files(box).apiSock), exited: exited, net: n}
	netAlive := make(chan bool, 1)
	b.Watch(func(lost string) { netAlive <- n.alive() })
	b.register(box, v)
	vmm.Process.Kill()
	select {
	case alive := <-netAlive:
		if alive {
			t.Error("the loss was reported while the box's network still ran")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the VMM's exit was not reported")
	}
	if _, err := b.NetworkStats(context.Background(), box); !errors.Is(err, daemon.ErrConflict) {
		t.Errorf("stats of a box whose network is gone: %v, want a conflict", err)
	}
}

// Stop and a new start of a box find and kill a network that a crash
// left behind (no VM tracked for the box).
func TestOrphanNetworkKilled(t *testing.T) {
	dir := t.TempDir()
	crashed := newNetBackend(t, dir)
	for _, via := range []string{"stop", "start"} {
		box := "sb-orphan-" + via
		n, err := crashed.startNet(context.Background(), box, *netSpec.Net)
		if err != nil {
			t.Fatal(err)
		}
		b := newNetBackend(t, dir)
		if via == "stop" {
			if err := b.Stop(context.Background(), box); err != nil {
				t.Fatal(err)
			}
		} else {
			t.Setenv(hungVMMEnv, "1")
			b.Boot(context.Background(), box, netSpec) // fails: the guest never answers
		}
		select {
		case <-n.exited:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s left the orphan network running", via)
		}
		if nets, _ := netsServing(b.files(box).netSock); len(nets) != 0 {
			t.Errorf("%s: networks left: %v", via, nets)
		}
	}
}

// An exposed port of a box with a network goes through the network only
// when the box's agent configured the guest's side of it
// (guestagent.NetworkSchemaVersion); a box on an older agent, which
// leaves eth0 down, keeps the agent's dial_tcp path, to the guest's
// 127.0.0.1, until it is upgraded. An agent whose schema is not yet
// known is asked. The box's agent is a real one (guestagent.Server) on
// this host, whose 127.0.0.1 is its guest's; its network refuses every
// dial (fakeNet).
func TestDialGuestByAgentSchema(t *testing.T) {
	dir := t.TempDir()
	before := newNetBackend(t, dir)
	box := "sb-old"
	if _, err := before.startNet(context.Background(), box, *netSpec.Net); err != nil {
		t.Fatal(err)
	}
	startFakeVMM(t, before, box)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	vl, err := net.Listen("unix", before.files(box).vsockSock)
	if err != nil {
		t.Fatal(err)
	}
	go (&guestagent.Server{}).Serve(ctx, hybridListener{vl})
	guestServer, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { guestServer.Close() })
	go func() {
		for {
			c, err := guestServer.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "through the agent")
			c.Close()
		}
	}()
	port := guestServer.Addr().(*net.TCPAddr).Port

	b := newNetBackend(t, dir)
	if ok, err := b.Attach(ctx, box); !ok || err != nil {
		t.Fatalf("attach: %v, %v", ok, err)
	}
	t.Cleanup(func() { b.Stop(context.Background(), box) })
	v, _ := b.get(box)
	if v.net == nil {
		t.Fatal("the box's network was not taken back")
	}

	v.schema.Store(guestagent.NetworkSchemaVersion - 1)
	c, err := b.DialGuest(ctx, box, port)
	if err != nil {
		t.Fatalf("dial of a box on an agent older than its network: %v, want the agent's dial_tcp", err)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "through the agent" {
		t.Errorf("the older agent's box answered %q", got)
	}
	for _, schema := range []int32{guestagent.NetworkSchemaVersion, 0} {
		v.schema.Store(schema)
		if c, err := b.DialGuest(ctx, box, port); !errors.Is(err, netapi.ErrRefused) {
			if c != nil {
				c.Close()
			}
			t.Errorf("dial with agent schema %d (0: asked): %v, want the network's refusal", schema, err)
		}
	}
	if got := v.schema.Load(); got != guestagent.GuestSchemaVersion {
		t.Errorf("schema after asking the agent: %d, want %d", got, guestagent.GuestSchemaVersion)
	}
}
