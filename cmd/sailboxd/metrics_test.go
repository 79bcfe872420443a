package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
)

// -metrics-listen serves the daemon's metrics on /metrics of the address
// given, and nothing else there.
func TestMetricsListen(t *testing.T) {
	d, addr := startFakeDaemon(t, "serving metrics", "-metrics-listen", "127.0.0.1:0")

	b, err := client.New(d.sock).Create(context.Background(), api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	code, body := get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d\n%s", code, body)
	}
	for _, want := range []string{
		`sailbox_boxes{state="running"} 1`,
		`sailbox_call_duration_seconds_count{call="create",outcome="ok"} 1`,
		`sailbox_vm_start_seconds_count{kind="create"} 1`,
		`sailbox_wakes_total{reason="exec"} 0`,
		"go_goroutines ",
		"process_start_time_seconds ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("no %q in /metrics:\n%s", want, body)
		}
	}
	if strings.Contains(body, b.ID) {
		t.Errorf("a box ID in /metrics:\n%s", body)
	}
	if code, _ := get("/v1/boxes"); code != http.StatusNotFound {
		t.Errorf("the API on the metrics address: %d", code)
	}
}

// An address that cannot be bound stops the daemon at start, naming the
// flag.
func TestMetricsListenBadAddress(t *testing.T) {
	newBackend = func(config, *slog.Logger) (daemon.Backend, error) { return fakebackend.New(2), nil }
	dir := t.TempDir()
	args := []string{"-state-dir", filepath.Join(dir, "state"), "-socket", filepath.Join(dir, "d.sock"), "-host-id", "h1", "-metrics-listen", "256.0.0.1:nope"}
	err := run(context.Background(), args, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "-metrics-listen") {
		t.Errorf("run = %v, want a -metrics-listen error", err)
	}
}
