// Package servertest starts a sailboxd API server over the fake backend
// on a Unix socket, for tests of the server, the client and the CLI.
package servertest

import (
	"context"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/sailbox-dev/sailbox/internal/apiserver"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
)

// Env is a running server.
type Env struct {
	Socket  string
	Fake    *fakebackend.Backend
	Manager *daemon.Manager
	Server  *apiserver.Server
}

// Options tune Start.
type Options struct {
	InferenceUpstream *url.URL
}

// Start serves a new daemon (fake backend at guest schema 2, host ID
// "test-host") until the test ends.
func Start(t testing.TB, opts *Options) *Env {
	t.Helper()
	if opts == nil {
		opts = &Options{}
	}
	// Unix socket paths are short; t.TempDir can be long.
	dir, err := os.MkdirTemp("", "sbx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cat, err := catalog.Open(filepath.Join(dir, "catalog.db"), &catalog.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	fake := fakebackend.New(2)
	m, err := daemon.New(daemon.Config{Catalog: cat, Backend: fake, HostID: "test-host"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv := apiserver.New(apiserver.Config{Manager: m, Logger: slog.New(slog.DiscardHandler), InferenceUpstream: opts.InferenceUpstream})
	sock := filepath.Join(dir, "sailboxd.sock")
	l, err := apiserver.Listen(sock, "")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- apiserver.Serve(ctx, l, srv) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		m.Close()
		cat.Close()
	})
	return &Env{Socket: sock, Fake: fake, Manager: m, Server: srv}
}
