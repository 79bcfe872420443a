package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/logtest"
	"github.com/sailbox-dev/sailbox/internal/nettest"
)

// fakeVsock makes run listen on a Unix socket instead of vsock, and
// prepare no guest, and returns the socket's path and the port run asked
// for.
func fakeVsock(t *testing.T) (path string, port *atomic.Uint32) {
	fakePrepareGuest(t, nil)
	path = nettest.SocketPath(t)
	port = new(atomic.Uint32)
	old := listen
	listen = func(p uint32) (net.Listener, error) {
		port.Store(p)
		return net.Listen("unix", path)
	}
	t.Cleanup(func() { listen = old })
	return path, port
}

// fakePrepareGuest replaces guestagent.PrepareGuest, which must not touch
// the machine running the tests, with a function that counts its calls and
// returns err, and guestagent.MountRoot and guestagent.ConfigureNetwork
// with ones that do nothing.
func fakePrepareGuest(t *testing.T, err error) *atomic.Int32 {
	calls := new(atomic.Int32)
	old := prepareGuest
	prepareGuest = func(*slog.Logger) error {
		calls.Add(1)
		return err
	}
	t.Cleanup(func() { prepareGuest = old })
	fakeMountRoot(t, nil)
	oldNet := configureNetwork
	configureNetwork = func(*slog.Logger) error { return nil }
	t.Cleanup(func() { configureNetwork = oldNet })
	return calls
}

// fakeMountRoot replaces guestagent.MountRoot, which must not remount the
// machine running the tests, with a function that counts its calls and
// returns err.
func fakeMountRoot(t *testing.T, err error) *atomic.Int32 {
	calls := new(atomic.Int32)
	old := mountRoot
	mountRoot = func(*slog.Logger) error {
		calls.Add(1)
		return err
	}
	t.Cleanup(func() { mountRoot = old })
	return calls
}

func TestRunServesUntilCancelled(t *testing.T) {
	path, port := fakeVsock(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr logtest.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"sailbox-agent", "-port", "2048", "-log-level", "debug"}, &stdout, &stderr)
	}()

	c := &guestagent.Client{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	var (
		h   guestagent.HealthResponse
		err error
	)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		hctx, hcancel := context.WithTimeout(ctx, time.Second)
		h, err = c.Health(hctx)
		hcancel()
		if err == nil {
			break
		}
	}
	if err != nil || h.Status != guestagent.HealthStatusOK {
		t.Fatalf("Health = %+v, %v", h, err)
	}
	if got := port.Load(); got != 2048 {
		t.Errorf("listened on port %d, want 2048", got)
	}
	// Not in a guest, the agent must not touch the clock, the random
	// number generator or the name of the machine it runs on.
	_, err = c.Restored(ctx, guestagent.RestoreArgs())
	var ae *guestagent.Error
	if !errors.As(err, &ae) || ae.Code != guestagent.CodeUnknownOp || !strings.Contains(ae.Message, "not enabled") {
		t.Errorf("Restored on a host = %v, want an *Error with code %q saying it is not enabled", err, guestagent.CodeUnknownOp)
	}
	want := fmt.Sprintf("sailbox-agent %s schema %d listening on vsock port 2048\n",
		guestagent.AgentVersion, guestagent.GuestSchemaVersion)
	if got := stdout.String(); got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run = %v, want nil after cancellation", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancellation")
	}
	if !strings.Contains(stderr.String(), "request served") {
		t.Errorf("debug log lacks the served request:\n%s", stderr.String())
	}
}

func TestRunDefaultPort(t *testing.T) {
	_, port := fakeVsock(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // serve nothing
	var stdout, stderr bytes.Buffer
	if err := run(ctx, []string{"sailbox-agent"}, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v", err)
	}
	if got := port.Load(); got != guestagent.Port {
		t.Errorf("listened on port %d, want %d", got, guestagent.Port)
	}
	if !strings.HasSuffix(stdout.String(), fmt.Sprintf(" listening on vsock port %d\n", guestagent.Port)) {
		t.Errorf("stdout = %q", stdout.String())
	}
}

func TestRunBadArguments(t *testing.T) {
	fakeVsock(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-port", "4294967296"}, "out of range"},
		{[]string{"-port", "-1"}, "invalid value"},
		{[]string{"-log-level", "loud"}, "-log-level"},
		{[]string{"-nope"}, "not defined"},
		{[]string{"extra"}, "unexpected arguments"},
	} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), append([]string{"sailbox-agent"}, tc.args...), &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
		if stdout.Len() != 0 {
			t.Errorf("run(%q) printed %q on stdout", tc.args, stdout.String())
		}
	}
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"sailbox-agent", "-h"}, &stdout, &stderr); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("run(-h) = %v, want flag.ErrHelp", err)
	}
	if !strings.Contains(stderr.String(), "-port") {
		t.Errorf("run(-h) printed no usage: %q", stderr.String())
	}
}

func TestRunPreparesGuest(t *testing.T) {
	fakeVsock(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // serve nothing

	var stdout, stderr bytes.Buffer
	calls := fakePrepareGuest(t, nil)
	roots := fakeMountRoot(t, nil)
	if err := run(ctx, []string{"sailbox-agent"}, &stdout, &stderr); err != nil || calls.Load() != 0 || roots.Load() != 0 {
		t.Fatalf("run on a host: %v; prepared the guest %d times and its root %d times, want 0", err, calls.Load(), roots.Load())
	}
	if err := run(ctx, []string{"sailbox-agent", "-guest"}, &stdout, &stderr); err != nil || calls.Load() != 1 || roots.Load() != 1 {
		t.Fatalf("run -guest: %v; prepared the guest %d times and its root %d times, want 1", err, calls.Load(), roots.Load())
	}
	// A failure is logged, and the agent serves anyway.
	calls = fakePrepareGuest(t, errors.New("no busybox"))
	stdout.Reset()
	if err := run(ctx, []string{"sailbox-agent", "-guest"}, &stdout, &stderr); err != nil || calls.Load() != 1 {
		t.Fatalf("run -guest with a failing preparation: %v", err)
	}
	if !strings.Contains(stderr.String(), "no busybox") || !strings.Contains(stdout.String(), "listening") {
		t.Errorf("stderr %q, stdout %q; want the error logged and the agent listening", stderr.String(), stdout.String())
	}
}

// A box whose root file system cannot be mounted still gets an agent,
// which answers health and refuses exec and the file ops, saying why,
// rather than act on its initramfs.
func TestRunRootUnavailable(t *testing.T) {
	path, _ := fakeVsock(t)
	calls := fakeMountRoot(t, errors.New("box root /dev/vda: no such device after 5s"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr logtest.Buffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"sailbox-agent", "-guest"}, &stdout, &stderr) }()

	c := &guestagent.Client{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if h, err := c.WaitHealthy(wctx, 10*time.Millisecond, nil); err != nil || h.Status != guestagent.HealthStatusOK {
		t.Fatalf("health = %+v, %v", h, err)
	}
	if calls.Load() != 1 {
		t.Errorf("MountRoot called %d times, want 1", calls.Load())
	}
	_, _, _, err := c.Run(wctx, "true")
	var ae *guestagent.Error
	if !errors.As(err, &ae) || ae.Code != guestagent.CodeRootUnavailable || !strings.Contains(ae.Message, "no such device") {
		t.Errorf("exec = %v, want an *Error with code %q naming the root's problem", err, guestagent.CodeRootUnavailable)
	}
	if _, err := c.Stat(wctx, "/"); !errors.As(err, &ae) || ae.Code != guestagent.CodeRootUnavailable {
		t.Errorf("stat = %v, want code %q", err, guestagent.CodeRootUnavailable)
	}
	if !strings.Contains(stderr.String(), "root file system is unavailable") {
		t.Errorf("stderr lacks the root's failure:\n%s", stderr.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run = %v", err)
	}
}

func TestRunListenError(t *testing.T) {
	fakePrepareGuest(t, nil)
	old := listen
	listen = func(port uint32) (net.Listener, error) { return nil, errors.New("no vsock here") }
	t.Cleanup(func() { listen = old })
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"sailbox-agent"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "no vsock here") || stdout.Len() != 0 {
		t.Fatalf("run = %v, stdout %q; want the listen error and no announcement", err, stdout.String())
	}
}

// In a guest, the network is configured after the root is mounted (the
// resolver's file is the root's); a failure is logged and the agent
// serves without a network.
func TestRunConfiguresNetworkAfterRoot(t *testing.T) {
	fakeVsock(t)
	var order []string
	oldRoot, oldNet := mountRoot, configureNetwork
	mountRoot = func(*slog.Logger) error { order = append(order, "root"); return nil }
	configureNetwork = func(*slog.Logger) error {
		order = append(order, "network")
		return errors.New("network eth0: no such network interface")
	}
	t.Cleanup(func() { mountRoot, configureNetwork = oldRoot, oldNet })
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // serve nothing
	var stdout, stderr bytes.Buffer
	if err := run(ctx, []string{"sailbox-agent", "-guest"}, &stdout, &stderr); err != nil {
		t.Fatalf("run -guest: %v", err)
	}
	if got := strings.Join(order, ","); got != "root,network" {
		t.Errorf("ran %s, want root,network", got)
	}
	if !strings.Contains(stderr.String(), "no such network interface") || !strings.Contains(stdout.String(), "listening") {
		t.Errorf("stderr %q, stdout %q; want the error logged and the agent listening", stderr.String(), stdout.String())
	}
}
