package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
)

// -inference-listen (here from the configuration file) serves the
// inference proxy on a TCP address, and only it, until the daemon stops.
func TestInferenceListen(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "answer for "+r.URL.Path)
	}))
	defer upstream.Close()
	conf := filepath.Join(t.TempDir(), "sailboxd.conf")
	if err := os.WriteFile(conf, []byte("inference-upstream = "+upstream.URL+"\ninference-listen = 127.0.0.1:0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d, addr := startFakeDaemon(t, "serving inference", "-config", conf)
	if host, _, _ := net.SplitHostPort(addr); net.ParseIP(host) == nil || !net.ParseIP(host).IsLoopback() {
		t.Errorf("inference served on %s, want loopback", addr)
	}
	b, err := client.New(d.sock).Create(context.Background(), api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	do := func(method, path string, box string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+addr+path, nil)
		if box != "" {
			req.Header.Set(api.SailboxIDHeader, box)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := do("POST", "/v1/inference/v1/chat/completions", b.ID); code != 200 || body != "answer for /v1/chat/completions" {
		t.Errorf("inference over TCP: %d %q", code, body)
	}
	if code, _ := do("GET", "/v1/boxes", ""); code != http.StatusNotFound {
		t.Errorf("GET /v1/boxes over the inference address: %d, want 404", code)
	}
	if code, _ := do("DELETE", "/v1/boxes/"+b.ID, ""); code != http.StatusNotFound {
		t.Errorf("DELETE /v1/boxes/%s over the inference address: %d, want 404", b.ID, code)
	}

	if err := d.stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Error("the inference address still accepts connections after the daemon stopped")
	}
}

// The inference address must be loopback unless the operator says
// otherwise, and needs an upstream.
func TestInferenceAddr(t *testing.T) {
	for _, c := range []struct {
		listen string
		public bool
		ok     bool
	}{
		{"127.0.0.1:0", false, true},
		{"[::1]:8089", false, true},
		{"127.0.0.1:8089", false, true},
		{"0.0.0.0:8089", false, false},
		{":8089", false, false},
		{"[::]:8089", false, false},
		{"192.0.2.1:8089", false, false},
		{"0.0.0.0:8089", true, true},
		{"192.0.2.1:8089", true, true},
		{"127.0.0.1", false, false}, // no port
	} {
		_, err := inferenceAddr(config{InferenceListen: c.listen, InferencePublic: c.public, Inference: "http://127.0.0.1:1"})
		if (err == nil) != c.ok {
			t.Errorf("-inference-listen %s (public %v): %v, want ok %v", c.listen, c.public, err, c.ok)
		}
	}
	if a, err := inferenceAddr(config{}); a != nil || err != nil {
		t.Errorf("no -inference-listen: %v, %v", a, err)
	}
	if _, err := inferenceAddr(config{InferenceListen: "127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), "-inference-upstream") {
		t.Errorf("-inference-listen without an upstream: %v", err)
	}
	// The daemon refuses to start on one.
	dir := t.TempDir()
	args := []string{"-state-dir", filepath.Join(dir, "state"), "-socket", filepath.Join(dir, "d.sock"), "-host-id", "h1",
		"-inference-upstream", "http://127.0.0.1:1", "-inference-listen", "0.0.0.0:0"}
	if err := run(context.Background(), args, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "-inference-listen-public") {
		t.Errorf("run with a public inference address = %v, want a refusal naming -inference-listen-public", err)
	}
}
