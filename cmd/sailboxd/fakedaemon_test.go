package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
	"github.com/sailbox-dev/sailbox/internal/logtest"
)

// fakeDaemon is sailboxd's run over the fake backend, for the tests of
// its flags and its listeners.
type fakeDaemon struct {
	sock string
	logs *logtest.Buffer
	stop func() error // ends it and returns what run returned; once
}

// startFakeDaemon runs sailboxd over a fake backend with args after its
// own state directory, socket and host ID, and waits for its socket. With
// served not empty ("serving metrics"), it also waits for the log line
// with that message naming a listener's address, and returns the address.
// The daemon is stopped at the test's end if the test did not stop it.
func startFakeDaemon(t *testing.T, served string, args ...string) (*fakeDaemon, string) {
	t.Helper()
	newBackend = func(config, *slog.Logger) (daemon.Backend, error) { return fakebackend.New(2), nil }
	// Not t.TempDir: a socket's path must stay short.
	dir, err := os.MkdirTemp("", "sbd")
	if err != nil {
		t.Fatal(err)
	}
	d := &fakeDaemon{sock: filepath.Join(dir, "d.sock"), logs: &logtest.Buffer{}}
	args = append([]string{"-state-dir", filepath.Join(dir, "state"), "-socket", d.sock, "-host-id", "h1"}, args...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, io.Discard, d.logs) }()
	var once sync.Once
	var runErr error
	d.stop = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() {
		if err := d.stop(); err != nil && !t.Failed() {
			t.Errorf("run: %v", err)
		}
		os.RemoveAll(dir)
	})
	addrRE := regexp.MustCompile(`msg="` + regexp.QuoteMeta(served) + `" address=(\S+)`)
	for i := 0; ; i++ {
		_, err := os.Stat(d.sock)
		if m := addrRE.FindStringSubmatch(d.logs.String()); err == nil && (served == "" || m != nil) {
			if served == "" {
				return d, ""
			}
			return d, m[1]
		}
		if i == 200 {
			t.Fatalf("no socket (or %q) after 10s:\n%s", served, d.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
