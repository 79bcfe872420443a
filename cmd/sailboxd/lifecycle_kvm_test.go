package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/guestagent"
)

// Every lifecycle call, end to end through the daemon's socket, on real
// VMs: create, exec, files, checkpoint, fork of a running, a sleeping
// and a paused parent, sleep and wake by exec, pause and resume, connect,
// list, and terminate of a parent whose forks live on.
func TestKVMDaemonLifecycle(t *testing.T) {
	h := newHost(t)
	ctx := ctxFor(t, 15*time.Minute)
	c := h.c

	a, err := c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if a.State != lifecycle.Running || a.GuestSchemaVersion != guestagent.GuestSchemaVersion || a.HostID != "lab" ||
		a.Created.IsZero() || a.LastCheckpoint != nil || a.MemoryMiB != 128 {
		t.Errorf("created box: %+v", a)
	}
	if out := h.run(a.ID, "echo", "hello"); out != "hello\n" {
		t.Errorf("echo hello: %q", out)
	}
	if _, code, err := h.exec(a.ID, "sh", "-c", "exit 3"); code != 3 || err != nil {
		t.Errorf("exit 3: %d, %v", code, err)
	}
	// The box's disk is the image, copy-on-write: mount it and write.
	h.run(a.ID, "sh", "-c", "mkdir -p /mnt && mount /dev/vda /mnt && echo -n one > /mnt/disk && echo -n one > /tmp/mem")
	if _, err := c.WriteFile(ctx, a.ID, "/tmp/api", strings.NewReader("written"), client.WriteOptions{}); err != nil {
		t.Fatalf("write file: %v", err)
	}
	var got bytes.Buffer
	if _, err := c.ReadFile(ctx, a.ID, "/tmp/api", &got); err != nil || got.String() != "written" {
		t.Errorf("read file: %q, %v", got.String(), err)
	}
	// The agent's "no such file" is the API's not found, not an internal
	// error.
	var ce *client.Error
	if _, err := c.ReadFile(ctx, a.ID, "/tmp/no-such-file", io.Discard); !errors.As(err, &ce) || ce.Status != http.StatusNotFound || ce.Code != api.CodeNotFound || !strings.Contains(ce.Message, "/tmp/no-such-file") {
		t.Errorf("read of a missing file: %v, want 404 %s naming it", err, api.CodeNotFound)
	}

	ck, err := c.Checkpoint(ctx, a.ID)
	if err != nil || !ck.Completed || ck.BoxID != a.ID {
		t.Fatalf("checkpoint: %+v, %v", ck, err)
	}
	if b, _ := c.Get(ctx, a.ID); b.LastCheckpoint == nil || b.LastCheckpointID != ck.ID || b.State != lifecycle.Running {
		t.Errorf("after checkpoint: %+v", b)
	}

	// Fork of the running parent: both run, neither sees the other's
	// later writes, in memory or on disk.
	h.run(a.ID, "sh", "-c", "echo -n two > /mnt/disk && echo -n two > /tmp/mem && sync")
	fr, err := c.Fork(ctx, a.ID)
	if err != nil {
		t.Fatalf("fork: %v", err)
	}
	kid := fr.Box
	if kid.State != lifecycle.Running || kid.ParentID != a.ID || fr.Checkpoint.ParentID != ck.ID {
		t.Errorf("fork: %+v", fr)
	}
	if out := h.run(kid.ID, "cat", "/mnt/disk", "/tmp/mem"); out != "twotwo" {
		t.Errorf("child sees %q, want the parent's twotwo", out)
	}
	h.run(kid.ID, "sh", "-c", "echo -n kid > /mnt/disk && echo -n kid > /tmp/mem && sync")
	h.run(a.ID, "sh", "-c", "echo -n three > /tmp/mem")
	if out := h.run(a.ID, "cat", "/mnt/disk", "/tmp/mem"); out != "twothree" {
		t.Errorf("parent sees %q after the child wrote", out)
	}
	if out := h.run(kid.ID, "cat", "/mnt/disk", "/tmp/mem"); out != "kidkid" {
		t.Errorf("child sees %q after the parent wrote", out)
	}
	if pa, ka := h.run(a.ID, "hostname"), h.run(kid.ID, "hostname"); pa == ka {
		t.Errorf("parent and child share hostname %q", pa)
	}
	// After its first exec the child recorded its working set in the
	// checkpoint it came from (in the background), for later forks and
	// wakes of the family to map ahead.
	ws := filepath.Join(h.stateDir, "store", "checkpoints", fr.Checkpoint.ID, "workingset")
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(ws); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("no working set recorded for %s a minute after the fork's first exec", fr.Checkpoint.ID)
			break
		}
	}

	// Sleep; a fork of the sleeping parent leaves it asleep.
	b, err := c.Sleep(ctx, a.ID)
	if err != nil || b.State != lifecycle.Sleeping {
		t.Fatalf("sleep: %+v, %v", b, err)
	}
	fr2, err := c.Fork(ctx, a.ID)
	if err != nil {
		t.Fatalf("fork of a sleeping box: %v", err)
	}
	if st := h.state(a.ID); st != string(lifecycle.Sleeping) {
		t.Errorf("parent is %s after a fork, want sleeping", st)
	}
	if out := h.run(fr2.Box.ID, "cat", "/tmp/mem"); out != "three" {
		t.Errorf("fork of the sleeping box sees %q, want three", out)
	}
	// An exec wakes it, with its memory as it went to sleep.
	if out := h.run(a.ID, "cat", "/tmp/mem", "/tmp/api"); out != "threewritten" {
		t.Errorf("woken box sees %q", out)
	}
	if st := h.state(a.ID); st != string(lifecycle.Running) {
		t.Errorf("box is %s after exec woke it", st)
	}

	// Pause: an exec does not wake a paused box; resume does.
	if b, err := c.Pause(ctx, a.ID); err != nil || b.State != lifecycle.Paused {
		t.Fatalf("pause: %+v, %v", b, err)
	}
	fr3, err := c.Fork(ctx, a.ID)
	if err != nil {
		t.Fatalf("fork of a paused box: %v", err)
	}
	if st := h.state(a.ID); st != string(lifecycle.Paused) {
		t.Errorf("parent is %s after a fork, want paused", st)
	}
	if out := h.run(fr3.Box.ID, "cat", "/tmp/mem"); out != "three" {
		t.Errorf("fork of the paused box sees %q, want three", out)
	}
	if _, _, err := h.exec(a.ID, "true"); !client.IsInvalidTransition(err) {
		t.Errorf("exec in a paused box: %v, want an invalid transition", err)
	}
	if _, err := c.Pause(ctx, a.ID); !client.IsInvalidTransition(err) {
		t.Errorf("pause of a paused box: %v, want an invalid transition", err)
	}
	if b, err := c.Resume(ctx, a.ID); err != nil || b.State != lifecycle.Running {
		t.Fatalf("resume: %+v, %v", b, err)
	}
	if out := h.run(a.ID, "cat", "/tmp/mem"); out != "three" {
		t.Errorf("resumed box sees %q", out)
	}
	// Connect resumes a sleeping box and reports where it lives.
	if _, err := c.Sleep(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if b, err := c.Connect(ctx, a.ID); err != nil || b.State != lifecycle.Running || b.HostID != "lab" {
		t.Errorf("connect: %+v, %v", b, err)
	}
	if _, err := c.Connect(ctx, "sb-nosuchbox"); !client.IsNotFound(err) {
		t.Errorf("connect to an unknown box: %v", err)
	}

	boxes, err := c.List(ctx, client.ListOptions{})
	if err != nil || len(boxes) != 4 {
		t.Errorf("list: %d boxes, %v", len(boxes), err)
	}
	// Terminating the parent leaves its forks working.
	if _, err := c.Terminate(ctx, a.ID); err != nil {
		t.Fatalf("terminate: %v", err)
	}
	if _, err := c.Get(ctx, a.ID); !client.IsNotFound(err) {
		t.Errorf("get after terminate: %v", err)
	}
	for _, id := range []string{kid.ID, fr2.Box.ID, fr3.Box.ID} {
		h.run(id, "sh", "-c", "echo -n after > /mnt/disk && sync")
		if out := h.run(id, "cat", "/mnt/disk"); out != "after" {
			t.Errorf("fork %s after its parent's end: %q", id, out)
		}
		if _, err := c.Checkpoint(ctx, id); err != nil {
			t.Errorf("checkpoint of fork %s after its parent's end: %v", id, err)
		}
	}
	for _, id := range []string{kid.ID, fr2.Box.ID, fr3.Box.ID} {
		if _, err := c.Terminate(ctx, id); err != nil {
			t.Errorf("terminate %s: %v", id, err)
		}
	}
	if n := len(h.vmmPIDs()); n != 0 {
		t.Errorf("%d VMMs still run after every box was terminated", n)
	}
	if left := h.storeFiles(); len(left) != 0 {
		t.Errorf("files left in the checkpoint store after every box was terminated: %s", strings.Join(left, " "))
	}
}

// A host TCP port exposed to a guest port reaches a server in the guest,
// and a connection to it wakes the box when it sleeps. The inference proxy
// puts the box to sleep for the upstream call and wakes it afterwards,
// also when the call fails.
func TestKVMDaemonExposeAndInference(t *testing.T) {
	var seen struct {
		sync.Mutex
		states []string
	}
	var h *host
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The box sleeps while its call is in flight.
		b, err := h.c.Get(r.Context(), r.Header.Get("X-Box-For-Test"))
		seen.Lock()
		seen.states = append(seen.states, string(b.State))
		seen.Unlock()
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		time.Sleep(500 * time.Millisecond)
		if r.URL.Path == "/v1/fail" {
			http.Error(w, "upstream down", http.StatusBadGateway)
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "answer to "+string(body))
	}))
	defer upstream.Close()
	h = newHost(t, "-inference-upstream", upstream.URL)
	ctx := ctxFor(t, 10*time.Minute)
	c := h.c

	a, err := c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	h.run(a.ID, "sh", "-c", "mkdir -p /tmp/www && echo -n 'hello from the guest' > /tmp/www/index.html && httpd -p 8080 -h /tmp/www")
	p, err := c.Expose(ctx, a.ID, api.ExposeRequest{GuestPort: 8080})
	if err != nil {
		t.Fatalf("expose: %v", err)
	}
	get := func() string {
		t.Helper()
		hc := &http.Client{Timeout: 3 * time.Minute}
		resp, err := hc.Get("http://" + p.HostAddr + "/index.html")
		if err != nil {
			t.Fatalf("GET through the exposed port: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := get(); got != "hello from the guest" {
		t.Errorf("through the exposed port: %q", got)
	}
	if _, err := c.Sleep(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if got := get(); got != "hello from the guest" {
		t.Errorf("through the exposed port of a sleeping box: %q", got)
	}
	if st := h.state(a.ID); st != string(lifecycle.Running) {
		t.Errorf("box is %s after a connection woke it", st)
	}
	// Exposing the same host port again is a conflict.
	if _, err := c.Expose(ctx, a.ID, api.ExposeRequest{GuestPort: 8081, HostPort: p.HostPort}); err == nil {
		t.Error("exposing a host port in use succeeded")
	}

	// Inference: the box sleeps during the call and runs after it.
	infer := func(path string) (int, string) {
		t.Helper()
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", h.sock)
		}}}
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://sailboxd/v1/inference/"+path, strings.NewReader("2+2"))
		req.Header.Set(api.SailboxIDHeader, a.ID)
		req.Header.Set("X-Box-For-Test", a.ID)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("inference call: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := infer("v1/complete"); code != 200 || body != "answer to 2+2" {
		t.Errorf("inference: %d %q", code, body)
	}
	if st := h.state(a.ID); st != string(lifecycle.Running) {
		t.Errorf("box is %s after the inference call", st)
	}
	if code, _ := infer("v1/fail"); code != http.StatusBadGateway {
		t.Errorf("failing inference: status %d, want the upstream's 502", code)
	}
	if st := h.state(a.ID); st != string(lifecycle.Running) {
		t.Errorf("box is %s after a failed inference call", st)
	}
	seen.Lock()
	if strings.Join(seen.states, ",") != "sleeping,sleeping" {
		t.Errorf("box states during the upstream calls: %v, want sleeping twice", seen.states)
	}
	seen.Unlock()
	// The guest kept its server through all of it.
	if got := get(); got != "hello from the guest" {
		t.Errorf("after inference: %q", got)
	}
}
