package vmmbackend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/internal/apiserver"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/vmm"
)

// refusingVM is a VMM whose machine has stopped: it refuses checkpoints
// (and so forks) as the real one does (vmm.ErrNotRunning).
type refusingVM struct{ hungVM }

func (refusingVM) Status() vmmapi.Status { return vmmapi.Status{State: "running", PID: os.Getpid()} }
func (refusingVM) Checkpoint(req vmmapi.CheckpointRequest) (vmmapi.CheckpointResult, error) {
	return vmmapi.CheckpointResult{}, fmt.Errorf("checkpoint %s: %w", req.ID, vmm.ErrNotRunning)
}

// fullDiskVM is a VMM whose store's disk is full.
type fullDiskVM struct{ hungVM }

func (fullDiskVM) Status() vmmapi.Status { return vmmapi.Status{State: "running", PID: os.Getpid()} }
func (fullDiskVM) Checkpoint(req vmmapi.CheckpointRequest) (vmmapi.CheckpointResult, error) {
	return vmmapi.CheckpointResult{}, fmt.Errorf("checkpoint %s: page copy: %w", req.ID, &os.PathError{Op: "write", Path: "memory.tmp", Err: syscall.ENOSPC})
}

// A call the VMM refuses because of the VM's state answers 409 through
// sailboxd, with the VMM's reason, never 500: vmmapi's server maps the
// VMM's sentinel, the client returns it typed, the backend maps it to the
// daemon's conflict and the API server to 409. A box the backend runs no
// VM for is a conflict too; a full disk is 507.
func TestVMMRefusalsAnswer409(t *testing.T) {
	b := newBackend(t)
	vms := map[string]vmmapi.Controller{"sb-1": refusingVM{}, "sb-full": fullDiskVM{}}
	cat := catalogWithRunningBoxes(t, slices.Collect(maps.Keys(vms))...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for id, vm := range vms {
		// The box's VMM, found by the daemon's start as after a restart.
		f := b.files(id)
		os.MkdirAll(f.dir, 0o700)
		l, err := net.Listen("unix", f.apiSock)
		if err != nil {
			t.Fatal(err)
		}
		go vmmapi.Serve(ctx, l, vm)
	}

	srv := serveManager(t, ctx, cat, b)

	post := func(path string) (int, api.ErrorBody) {
		t.Helper()
		resp, err := http.Post(srv.URL+path, "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var eb api.ErrorBody
		json.NewDecoder(resp.Body).Decode(&eb)
		return resp.StatusCode, eb
	}
	for _, call := range []string{"checkpoint", "fork"} {
		status, eb := post("/v1/boxes/sb-1/" + call)
		if status != http.StatusConflict || eb.Code != api.CodeConflict || !strings.Contains(eb.Error, "machine not running") {
			t.Errorf("%s refused by the VMM: %d %+v, want 409 %s with the VMM's reason", call, status, eb, api.CodeConflict)
		}
	}
	// A full disk under the store is the host's capacity, 507.
	if status, eb := post("/v1/boxes/sb-full/checkpoint"); status != http.StatusInsufficientStorage || eb.Code != api.CodeCapacity || !strings.Contains(eb.Error, "no space left on device") {
		t.Errorf("checkpoint on a full disk: %d %+v, want 507 %s", status, eb, api.CodeCapacity)
	}
	// No VM behind a box the catalog calls running.
	if _, err := b.Checkpoint(ctx, "sb-none", "c"); !errors.Is(err, daemon.ErrConflict) {
		t.Errorf("checkpoint of a box without a VM: %v, want daemon.ErrConflict", err)
	}
}

// catalogWithRunningBoxes opens a catalog, closed with the test, in which
// a running box exists for each of ids.
func catalogWithRunningBoxes(t *testing.T, ids ...string) *catalog.Catalog {
	t.Helper()
	cat, err := catalog.Open(filepath.Join(t.TempDir(), "catalog.db"), &catalog.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat.Close() })
	for _, id := range ids {
		box := catalog.Box{ID: id, State: lifecycle.Running, HostID: "h", Created: time.Now(), Spec: catalog.Spec{MemoryMiB: 256, VCPUs: 1}}
		if err := cat.Update(func(tx *catalog.Tx) error { return tx.CreateBox(box) }); err != nil {
			t.Fatal(err)
		}
	}
	return cat
}

// serveManager starts a daemon over cat and b (which attaches to the VMMs
// the test serves, as after a restart) and serves its API over HTTP until
// the test ends.
func serveManager(t *testing.T, ctx context.Context, cat *catalog.Catalog, b *Backend) *httptest.Server {
	t.Helper()
	m, err := daemon.New(daemon.Config{Catalog: cat, Backend: b, HostID: "h"})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(apiserver.New(apiserver.Config{Manager: m}))
	t.Cleanup(srv.Close)
	return srv
}
