package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/netapi"
	"github.com/sailbox-dev/sailbox/internal/logtest"
	"github.com/sailbox-dev/sailbox/internal/nettest"
	"github.com/sailbox-dev/sailbox/internal/usernet/fakeguest"
)

// Every connection these tests have sailbox-net open on the host goes to
// 127.0.0.1: the refusals are of loopback destinations, and names are
// static hosts, so that even a broken policy could reach nothing else.

func TestMain(m *testing.M) {
	if os.Getenv("SAILBOX_NET_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// waitForControl polls the control socket until it answers.
func waitForControl(t *testing.T, control string) netapi.Stats {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		st, err := netapi.GetStats(context.Background(), control)
		if err == nil {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("control socket: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServesTheBoxNetworkAndItsControlAPI(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "from the host") }))
	defer srv.Close()
	hostPort := netip.MustParseAddrPort(srv.Listener.Addr().String()).Port()

	dir := filepath.Dir(nettest.SocketPath(t))
	socket, control := filepath.Join(dir, "net.sock"), filepath.Join(dir, "net.ctl")
	stderr := &logtest.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{
			"-socket", socket, "-control", control, "-box", "sb-cmd",
			"-no-internet", "-allow", "files.test", "-deny", "blocked.test",
			"-host", "files.test=" + netapi.HostIP.String(), "-host", "www.blocked.test=" + netapi.HostIP.String(),
		}, stderr)
	}()
	defer func() {
		if t.Failed() || os.Getenv("SHOWLOG") != "" {
			t.Logf("sailbox-net's log:\n%s", stderr)
		}
	}()
	if st := waitForControl(t, control); st.Box != "sb-cmd" || st.GuestAttached {
		t.Fatalf("stats before a VMM: %+v", st)
	}
	for _, p := range []string{socket, control} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v; want 0600", p, err, fi.Mode().Perm())
		}
	}

	g := fakeguest.Attach(t, socket, netapi.DefaultGuestMAC)
	tctx, tcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer tcancel()

	// Egress: an allowed name, resolved through the box's DNS.
	addrs, err := g.Lookup(tctx, "files.test")
	if err != nil || len(addrs) != 1 {
		t.Fatalf("lookup files.test: %v, %v", addrs, err)
	}
	resp, err := g.HTTPClient().Get(fmt.Sprintf("http://%s:%d/", addrs[0], hostPort))
	if err != nil {
		t.Fatalf("fetch from the guest: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "from the host" {
		t.Fatalf("fetched %q", body)
	}
	// A denied name: the same address, refused at once.
	if _, err := g.Lookup(tctx, "www.blocked.test"); err != nil {
		t.Fatal(err)
	}
	if c, err := g.DialTCP(tctx, netip.AddrPortFrom(netapi.HostIP, hostPort)); err == nil || !strings.Contains(err.Error(), "refused") {
		if c != nil {
			c.Close()
		}
		t.Fatalf("connect after resolving a denied name: %v, want refused", err)
	}

	// Ingress: a server in the guest, dialled through the control socket.
	l, err := g.ListenTCP(8080)
	if err != nil {
		t.Fatal(err)
	}
	nettest.Serve(t, l, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		fmt.Fprintf(c, "guest got %q", b)
	})
	c, err := netapi.Dial(tctx, control, 8080)
	if err != nil {
		t.Fatalf("dial the guest: %v", err)
	}
	io.WriteString(c, "ping")
	c.CloseWrite()
	answer, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(answer) != `guest got "ping"` {
		t.Fatalf("guest answered %q, %v", answer, err)
	}
	if _, err := netapi.Dial(tctx, control, 8081); !errors.Is(err, netapi.ErrRefused) {
		t.Fatalf("dial a port nothing listens on: %v, want ErrRefused", err)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://sailbox-net"+netapi.DialPath+"?port=70000", nil)
	if resp, err := api.UnixHTTPClient(control).Do(req); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("dial port 70000: %v, %v; want 400", resp, err)
	}

	st, err := netapi.GetStats(tctx, control)
	if err != nil {
		t.Fatal(err)
	}
	if !st.GuestAttached || st.ConnectionsOut != 1 || st.ConnectionsIn != 1 || st.Refused != 1 || st.BytesIn == 0 || st.BytesOut == 0 {
		t.Fatalf("stats %+v", st)
	}
	if log := stderr.String(); !strings.Contains(log, "refused connection") || !strings.Contains(log, "box=sb-cmd") || !strings.Contains(log, "deny blocked.test") {
		t.Fatalf("no refusal naming the box in the log:\n%s", log)
	}

	cancel()
	select {
	case code := <-exited:
		if code != 0 {
			t.Fatalf("exit status %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sailbox-net did not stop")
	}
	for _, p := range []string{socket, control} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
}

func TestSIGTERMStopsItCleanly(t *testing.T) {
	dir := filepath.Dir(nettest.SocketPath(t))
	socket, control := filepath.Join(dir, "net.sock"), filepath.Join(dir, "net.ctl")
	cmd := exec.Command(os.Args[0], "-socket", socket, "-control", control, "-box", "sb-term")
	cmd.Env = append(os.Environ(), "SAILBOX_NET_MAIN=1")
	var stderr logtest.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitForControl(t, control)
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, &stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit 10 s after SIGTERM")
	}
	if !strings.Contains(stderr.String(), "stopped") {
		t.Errorf("no stop logged:\n%s", &stderr)
	}
	if _, err := os.Lstat(socket); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestBadFlagsExit2(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"-socket", "s", "-control", "c", "-box", "b", "-allow", "10.0.0.0/33"},
		{"-socket", "s", "-control", "c", "-box", "b", "-deny", strings.Repeat("x", 254)},
	} {
		var stderr bytes.Buffer
		if code := run(context.Background(), args, &stderr); code != 2 || stderr.Len() == 0 {
			t.Errorf("run %q: status %d, stderr %q; want 2 and a reason", args, code, stderr.String())
		}
	}
}

// A stderr that is a file (sailboxd's net.log) is capped: its backup,
// net.log.1, is opened beside it at start.
func TestLogFileCapped(t *testing.T) {
	t.Cleanup(func() { stdlog.SetOutput(os.Stderr) })
	path := filepath.Join(t.TempDir(), "net.log")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if code := run(context.Background(), nil, f); code != 2 {
		t.Errorf("run without flags: status %d, want 2", code)
	}
	if _, err := os.Stat(path + ".1"); err != nil {
		t.Errorf("no backup beside the log: %v", err)
	}
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), "sailbox-net:") {
		t.Errorf("the log holds %q, want the refusal", b)
	}
}
