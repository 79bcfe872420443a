package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
	"github.com/sailbox-dev/sailbox/internal/logtest"
)

// The daemon serves on its socket, keeps its boxes across a restart, and
// stops cleanly.
func TestRun(t *testing.T) {
	fake := fakebackend.New(2)
	newBackend = func(config, *slog.Logger) (daemon.Backend, error) { return fake, nil }
	dir, err := os.MkdirTemp("", "sbd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "run", "d.sock")
	args := []string{"-state-dir", filepath.Join(dir, "state"), "-socket", sock, "-host-id", "h1", "-mem", "128"}

	start := func() (context.CancelFunc, chan error, *logtest.Buffer) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		logs := &logtest.Buffer{}
		go func() { done <- run(ctx, args, io.Discard, logs) }()
		for i := 0; ; i++ {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if i == 200 {
				t.Fatalf("no socket after 10s: %s", logs)
			}
			select {
			case err := <-done:
				t.Fatalf("run: %v\n%s", err, logs)
			case <-time.After(50 * time.Millisecond):
			}
		}
		return cancel, done, logs
	}

	cancel, done, logs := start()
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode: %v, %v", fi.Mode(), err)
	}
	c := client.New(sock)
	b, err := c.Create(context.Background(), api.CreateRequest{})
	if err != nil || b.MemoryMiB != 128 || b.HostID != "h1" {
		t.Fatalf("create = %+v, %v", b, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if !strings.Contains(logs.String(), "sailboxd listening") || !strings.Contains(logs.String(), "box created") {
		t.Errorf("logs:\n%s", logs)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
	if !fake.Running(b.ID) {
		t.Error("stopping the daemon stopped the box")
	}

	cancel, done, _ = start()
	defer func() { cancel(); <-done }()
	got, err := c.Get(context.Background(), b.ID)
	if err != nil || got.State != lifecycle.Running {
		t.Errorf("after restart: %+v, %v", got, err)
	}
}

func TestArgs(t *testing.T) {
	for _, args := range [][]string{{"extra"}, {"-image", "rel.img"}, {"-host-id", ""}, {"-log-level", "loud"}, {"-nope"}, {"-min-resumable-schema", "-1"}, {"-max-running", "-1"}, {"-min-free-disk", "-5"}, {"-compact-after", "-1"}} {
		if _, err := parseArgs(args, io.Discard); err == nil {
			t.Errorf("parseArgs(%q) succeeded", args)
		}
	}
	c, err := parseArgs([]string{"-log-level", "debug", "-socket-group", "wheel", "-min-resumable-schema", "3"}, io.Discard)
	if err != nil || c.LogLevel != slog.LevelDebug || c.SocketGroup != "wheel" || c.StateDir == "" || c.Socket == "" || c.MinSchema != 3 {
		t.Errorf("parseArgs = %+v, %v", c, err)
	}
	if c.CompactAfter != daemon.DefaultCompactAfter {
		t.Errorf("-compact-after defaults to %d, want %d: chains are compacted unless told not to", c.CompactAfter, daemon.DefaultCompactAfter)
	}
	if c, err := parseArgs([]string{"-compact-after", "0"}, io.Discard); err != nil || c.CompactAfter != 0 {
		t.Errorf("parseArgs(-compact-after 0) = %d, %v; want 0 (never)", c.CompactAfter, err)
	}
	t.Setenv("XDG_STATE_HOME", "/xdg")
	if os.Geteuid() != 0 && defaultStateDir() != "/xdg/sailbox" {
		t.Errorf("state dir with XDG_STATE_HOME: %s", defaultStateDir())
	}
	if err := run(context.Background(), []string{"-inference-upstream", "nope"}, io.Discard, io.Discard); err == nil {
		t.Error("a relative upstream URL was accepted")
	}
}
