package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
	"github.com/sailbox-dev/sailbox/internal/logtest"
)

// notifyListener is a service manager's notification socket at path.
func notifyListener(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func readNotify(t *testing.T, l *net.UnixConn) string {
	t.Helper()
	l.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 256)
	n, err := l.Read(b)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(b[:n])
}

func TestSdNotify(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := sdNotify("READY=1"); err != nil {
		t.Errorf("without $NOTIFY_SOCKET: %v", err)
	}
	path := filepath.Join(t.TempDir(), "notify")
	l := notifyListener(t, path)
	t.Setenv("NOTIFY_SOCKET", path)
	if err := sdNotify("READY=1"); err != nil {
		t.Fatal(err)
	}
	if got := readNotify(t, l); got != "READY=1" {
		t.Errorf("sent %q", got)
	}
	// An abstract socket, as systemd may name it.
	abstract := "@sailboxd-test-" + filepath.Base(t.TempDir())
	la := notifyListener(t, "\x00"+abstract[1:])
	t.Setenv("NOTIFY_SOCKET", abstract)
	if err := sdNotify("READY=1"); err != nil {
		t.Fatal(err)
	}
	if got := readNotify(t, la); got != "READY=1" {
		t.Errorf("sent %q", got)
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "none"))
	if err := sdNotify("READY=1"); err == nil {
		t.Error("no error for a missing socket")
	}
}

// The daemon tells systemd it is ready once its socket listens.
func TestRunNotifiesReady(t *testing.T) {
	saved := newBackend
	t.Cleanup(func() { newBackend = saved })
	useFakeBackend()
	dir := t.TempDir()
	l := notifyListener(t, filepath.Join(dir, "notify"))
	t.Setenv("NOTIFY_SOCKET", filepath.Join(dir, "notify"))
	sock := filepath.Join(dir, "d.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-state-dir", filepath.Join(dir, "state"), "-socket", sock, "-host-id", "h"}, io.Discard, io.Discard)
	}()
	if got := readNotify(t, l); got != "READY=1" {
		t.Errorf("sent %q", got)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("ready before the socket listens: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}

// waitSocket waits for the daemon run is running to make its socket.
func waitSocket(t *testing.T, sock string, done <-chan error, logs *logtest.Buffer) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("run: %v\n%s", err, logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket after 10s:\n%s", logs)
		}
	}
}

// useFakeBackend makes run use a fake backend; the caller restores
// newBackend.
func useFakeBackend() {
	newBackend = func(config, *slog.Logger) (daemon.Backend, error) { return fakebackend.New(1), nil }
}

// runBriefly runs the daemon with args until it listens on sock, stops
// it, and returns its log.
func runBriefly(t *testing.T, sock string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	logs := &logtest.Buffer{}
	go func() { done <- run(ctx, args, io.Discard, logs) }()
	waitSocket(t, sock, done, logs)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v\n%s", err, logs)
	}
	return logs.String()
}
