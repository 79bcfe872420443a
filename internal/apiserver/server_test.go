package apiserver_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/apiserver"
	"github.com/sailbox-dev/sailbox/internal/apiserver/servertest"
)

// raw sends a request over env's socket and returns the status and body.
func raw(t *testing.T, env *servertest.Env, method, path, body string, header ...string) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", env.Socket)
	}}}
	req, _ := http.NewRequest(method, "http://sailboxd"+path, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

func status(err error) int {
	var e *client.Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

func TestAPI(t *testing.T) {
	env := servertest.Start(t, nil)
	c := client.New(env.Socket)
	ctx := context.Background()

	b, err := c.Create(ctx, api.CreateRequest{MemoryMiB: 512, VCPUs: 2})
	if err != nil || b.State != lifecycle.Running || b.MemoryMiB != 512 || b.HostID != "test-host" || b.GuestSchemaVersion != 2 {
		t.Fatalf("create = %+v, %v", b, err)
	}
	if got, err := c.Get(ctx, b.ID); err != nil || got.ID != b.ID || got.LastCheckpoint != nil {
		t.Errorf("get = %+v, %v", got, err)
	}
	if _, err := c.Get(ctx, "sb-nope"); !client.IsNotFound(err) {
		t.Errorf("get unknown: %v", err)
	}
	if _, err := c.Create(ctx, api.CreateRequest{VCPUs: 999}); status(err) != 400 {
		t.Errorf("create with 999 vcpus: %v", err)
	}

	ck, err := c.Checkpoint(ctx, b.ID)
	if err != nil || !ck.Completed || ck.BoxID != b.ID {
		t.Errorf("checkpoint = %+v, %v", ck, err)
	}
	if cks, err := c.Checkpoints(ctx, b.ID); err != nil || len(cks) != 1 || cks[0].ID != ck.ID {
		t.Errorf("checkpoints = %+v, %v", cks, err)
	}

	// Exec streams stdout and stderr and ends with the exit code.
	var out, errOut bytes.Buffer
	res, err := c.Exec(ctx, b.ID, api.ExecRequest{Argv: []string{"echo", "hi", "there"}}, &out, &errOut)
	if err != nil || res.ExitCode != 0 || out.String() != "hi there\n" {
		t.Errorf("exec echo = %+v, %q, %v", res, out.String(), err)
	}
	res, err = c.Exec(ctx, b.ID, api.ExecRequest{Argv: []string{"exit", "3"}}, nil, nil)
	if err != nil || res.ExitCode != 3 {
		t.Errorf("exec exit 3 = %+v, %v", res, err)
	}
	out.Reset()
	res, err = c.Exec(ctx, b.ID, api.ExecRequest{Argv: []string{"stdin"}, Stdin: []byte("in\x00put")}, &out, nil)
	if err != nil || out.String() != "in\x00put" {
		t.Errorf("exec with stdin = %q, %v", out.String(), err)
	}
	if _, err := c.Exec(ctx, b.ID, api.ExecRequest{Argv: []string{"nosuch"}}, nil, nil); status(err) != 400 {
		t.Errorf("exec of an unknown command: %v", err)
	}
	if _, err := c.Exec(ctx, b.ID, api.ExecRequest{}, nil, nil); status(err) != 400 {
		t.Errorf("exec without argv: %v", err)
	}
	// The stream format itself.
	code, body := raw(t, env, "POST", "/v1/boxes/"+b.ID+"/exec", `{"argv":["stderr","oops"]}`)
	if code != 200 || body != `{"stderr":"b29wcwo="}`+"\n"+`{"exit":{"exit_code":0}}`+"\n" {
		t.Errorf("exec stream: %d %q", code, body)
	}

	// Files.
	if n, err := c.WriteFile(ctx, b.ID, "/etc/motd", strings.NewReader("hello"), client.WriteOptions{Mode: 0o600}); err != nil || n != 5 {
		t.Errorf("write = %d, %v", n, err)
	}
	c.WriteFile(ctx, b.ID, "/etc/motd", strings.NewReader("!"), client.WriteOptions{Append: true})
	var file bytes.Buffer
	if _, err := c.ReadFile(ctx, b.ID, "/etc/motd", &file); err != nil || file.String() != "hello!" {
		t.Errorf("read = %q, %v", file.String(), err)
	}
	if _, err := c.ReadFile(ctx, b.ID, "relative", io.Discard); status(err) != 400 {
		t.Errorf("read of a relative path: %v", err)
	}
	if code, _ := raw(t, env, "GET", "/v1/boxes/"+b.ID+"/files", ""); code != 400 {
		t.Errorf("read without path: %d", code)
	}
	if code, _ := raw(t, env, "PUT", "/v1/boxes/"+b.ID+"/files?path=/x&mode=999", "x"); code != 400 {
		t.Errorf("write with mode 999: %d", code)
	}

	// Fork, pause, sleep, resume, connect.
	f, err := c.Fork(ctx, b.ID)
	if err != nil || f.Box.ParentID != b.ID || f.Box.State != lifecycle.Running {
		t.Errorf("fork = %+v, %v", f, err)
	}
	p, err := c.Pause(ctx, b.ID)
	if err != nil || p.State != lifecycle.Paused || p.LastCheckpoint == nil {
		t.Errorf("pause = %+v, %v", p, err)
	}
	_, err = c.Pause(ctx, b.ID)
	if !client.IsInvalidTransition(err) || status(err) != 409 || !strings.Contains(err.Error(), "cannot pause a paused box") {
		t.Errorf("second pause: %v", err)
	}
	if _, err := c.Exec(ctx, b.ID, api.ExecRequest{Argv: []string{"echo"}}, nil, nil); status(err) != 409 {
		t.Errorf("exec on a paused box: %v", err)
	}
	if s, err := c.Sleep(ctx, b.ID); err != nil || s.State != lifecycle.Sleeping {
		t.Errorf("sleep of a paused box = %+v, %v", s, err)
	}
	if _, err := c.Exec(ctx, b.ID, api.ExecRequest{Argv: []string{"echo"}}, nil, nil); err != nil {
		t.Errorf("exec on a sleeping box: %v", err)
	}
	if got, _ := c.Get(ctx, b.ID); got.State != lifecycle.Running {
		t.Errorf("exec did not wake the box: %s", got.State)
	}
	c.Sleep(ctx, b.ID)
	if r, err := c.Resume(ctx, b.ID); err != nil || r.State != lifecycle.Running {
		t.Errorf("resume = %+v, %v", r, err)
	}
	if r, err := c.Connect(ctx, b.ID); err != nil || r.State != lifecycle.Running || r.HostID != "test-host" {
		t.Errorf("connect = %+v, %v", r, err)
	}

	// Upgrade and the list filter.
	if u, err := c.Upgrade(ctx, b.ID); err != nil || !u.Upgraded {
		t.Errorf("upgrade of a current box = %+v, %v", u, err)
	}
	env.Fake.SetSchema(3)
	c.Sleep(ctx, b.ID)
	if u, err := c.Upgrade(ctx, b.ID); err != nil || u.Upgraded || !u.Box.PendingUpgrade {
		t.Errorf("upgrade of a sleeping box = %+v, %v", u, err)
	}
	two := 2
	if l, err := c.List(ctx, client.ListOptions{MaxGuestSchemaVersion: &two}); err != nil || len(l) != 2 {
		t.Errorf("list max 2 = %d boxes, %v", len(l), err)
	}
	c.Resume(ctx, b.ID)
	if l, err := c.List(ctx, client.ListOptions{MaxGuestSchemaVersion: &two}); err != nil || len(l) != 1 || l[0].ID != f.Box.ID {
		t.Errorf("list max 2 after the upgrade = %+v, %v", l, err)
	}
	if code, _ := raw(t, env, "GET", "/v1/boxes?max_guest_schema_version=x", ""); code != 400 {
		t.Errorf("list with a bad filter: %d", code)
	}

	// Expose and unexpose.
	port, err := c.Expose(ctx, b.ID, api.ExposeRequest{GuestPort: 80})
	if err != nil || port.HostPort == 0 {
		t.Fatalf("expose = %+v, %v", port, err)
	}
	if got, _ := c.Get(ctx, b.ID); len(got.Ports) != 1 || got.Ports[0] != port {
		t.Errorf("box ports = %+v", got.Ports)
	}
	if err := c.Unexpose(ctx, b.ID, port.HostPort); err != nil {
		t.Errorf("unexpose: %v", err)
	}
	if err := c.Unexpose(ctx, b.ID, port.HostPort); status(err) != 404 {
		t.Errorf("second unexpose: %v", err)
	}
	if code, _ := raw(t, env, "DELETE", "/v1/boxes/"+b.ID+"/ports/x", ""); code != 400 {
		t.Errorf("unexpose of port x: %d", code)
	}

	// Malformed requests and unknown endpoints.
	for _, bad := range []string{`{`, `{"memory_mib":"x"}`, `{"nope":1}`, `{} {}`, `[]`} {
		if code, body := raw(t, env, "POST", "/v1/boxes", bad); code != 400 || !strings.Contains(body, `"code":"bad_request"`) {
			t.Errorf("create %s: %d %s", bad, code, body)
		}
	}
	if code, _ := raw(t, env, "POST", "/v1/boxes/"+b.ID+"/pause", `{"x":1}`); code != 400 {
		t.Errorf("pause with an unknown field: %d", code)
	}
	if code, body := raw(t, env, "GET", "/v1/nope", ""); code != 404 || !strings.Contains(body, "no such endpoint") {
		t.Errorf("GET /v1/nope: %d %s", code, body)
	}
	if code, _ := raw(t, env, "POST", "/v1/boxes", strings.Repeat(" ", 70<<10)); code != 413 {
		t.Errorf("oversized create: %d", code)
	}

	// Terminate.
	tr, err := c.Terminate(ctx, b.ID)
	if err != nil || tr.State != "terminated" || tr.ID != b.ID {
		t.Errorf("terminate = %+v, %v", tr, err)
	}
	if _, err := c.Terminate(ctx, b.ID); !client.IsNotFound(err) {
		t.Errorf("second terminate: %v", err)
	}
}

func TestInferenceProxy(t *testing.T) {
	var env *servertest.Env
	var seen struct {
		path, query, auth, sailbox string
		state                      lifecycle.State
		body                       string
	}
	var boxID string
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		seen.path, seen.query, seen.auth, seen.sailbox, seen.body = r.URL.Path, r.URL.RawQuery, r.Header.Get("Authorization"), r.Header.Get(api.SailboxIDHeader), string(body)
		b, _ := env.Manager.Get(r.Context(), boxID)
		seen.state = b.State
		w.Header().Set("X-Upstream", "yes")
		w.WriteHeader(201)
		io.WriteString(w, `{"choices":[]}`)
	}))
	defer upstream.Close()
	u, _ := url.Parse(upstream.URL + "/base")
	env = servertest.Start(t, &servertest.Options{InferenceUpstream: u})
	b, err := client.New(env.Socket).Create(context.Background(), api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	boxID = b.ID
	code, body := raw(t, env, "POST", "/v1/inference/v1/chat/completions?x=1", `{"model":"m"}`, api.SailboxIDHeader, b.ID, "Authorization", "Bearer k")
	if code != 201 || body != `{"choices":[]}` {
		t.Errorf("proxied call: %d %s", code, body)
	}
	if seen.path != "/base/v1/chat/completions" || seen.query != "x=1" || seen.auth != "Bearer k" || seen.sailbox != "" || seen.body != `{"model":"m"}` {
		t.Errorf("upstream saw %+v", seen)
	}
	if seen.state != lifecycle.Sleeping {
		t.Errorf("box was %s during the upstream call, want sleeping", seen.state)
	}
	if got, _ := env.Manager.Get(context.Background(), b.ID); got.State != lifecycle.Running {
		t.Errorf("box is %s after the call", got.State)
	}
	if code, _ := raw(t, env, "POST", "/v1/inference/x", `{}`); code != 400 {
		t.Errorf("call without %s: %d", api.SailboxIDHeader, code)
	}
	if code, _ := raw(t, env, "POST", "/v1/inference/x", `{}`, api.SailboxIDHeader, "sb-nope"); code != 404 {
		t.Errorf("call for an unknown box: %d", code)
	}
	upstream.Close()
	if code, _ := raw(t, env, "GET", "/v1/inference/x", ``, api.SailboxIDHeader, b.ID); code != 502 {
		t.Errorf("call with the upstream down: %d", code)
	}
	if got, _ := env.Manager.Get(context.Background(), b.ID); got.State != lifecycle.Running {
		t.Errorf("box is %s after a failed call", got.State)
	}
	// Without an upstream: 501.
	env2 := servertest.Start(t, nil)
	if code, _ := raw(t, env2, "POST", "/v1/inference/x", `{}`, api.SailboxIDHeader, "sb-x"); code != 501 {
		t.Errorf("call with no upstream configured: %d", code)
	}
}

func TestListen(t *testing.T) {
	dir, err := os.MkdirTemp("", "sbl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s.sock")
	l, err := apiserver.Listen(sock, "")
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode %v, %v", fi.Mode(), err)
	}
	// A stale socket (a listener that went away without removing it) is
	// replaced.
	os.Rename(sock, sock+".keep")
	l.Close()
	os.Rename(sock+".keep", sock)
	gid := os.Getgid()
	l, err = apiserver.Listen(sock, strconv.Itoa(gid))
	if err != nil {
		t.Fatalf("listen over a stale socket, with a group: %v", err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode with a group %v, %v", fi.Mode(), err)
	}
	l.Close()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}
	os.WriteFile(sock, nil, 0o600)
	if _, err := apiserver.Listen(sock, ""); err == nil {
		t.Error("listen over a regular file succeeded")
	}
	if _, err := apiserver.Listen(filepath.Join(dir, "g.sock"), "no-such-group-xyz"); err == nil {
		t.Error("listen with an unknown group succeeded")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("debris in the socket's directory: %v", entries)
	}
}
