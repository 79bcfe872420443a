package main

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
)

// A streamed inference answer through the real daemon's TCP inference
// address, as an OpenAI-compatible client makes it: the events reach the
// client while the upstream is still answering, with the box asleep (its
// VMM gone); the box runs again, its guest as it was, once the answer
// ended, and also after a client that went away mid-stream. Both resumes
// are counted as inference_end wakes.
func TestKVMInferenceStreaming(t *testing.T) {
	release := make(chan struct{}, 2)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"4\"}}]}\n\n")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "data: [DONE]\n\n")
	}))
	defer upstream.Close()
	h := newHost(t, "-inference-upstream", upstream.URL, "-inference-listen", "127.0.0.1:0", "-metrics-listen", "127.0.0.1:0")
	ctx := ctxFor(t, 10*time.Minute)
	base := "http://" + logged(t, h, "serving inference")
	metricsAddr := logged(t, h, "serving metrics")

	a, err := h.c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	h.run(a.ID, "sh", "-c", "echo -n kept > /tmp/mem")

	stream := func() (*http.Response, *bufio.Reader) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "POST", base+"/v1/inference/v1/chat/completions",
			strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"2+2"}]}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(api.SailboxIDHeader, a.ID)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("inference call: %v", err)
		}
		br := bufio.NewReader(resp.Body)
		first, err := br.ReadString('\n')
		if err != nil || resp.StatusCode != 200 || !strings.HasPrefix(first, "data: {") {
			t.Fatalf("first event: %d %q, %v", resp.StatusCode, first, err)
		}
		// Mid-stream: the box sleeps, its VMM gone.
		if st := h.state(a.ID); st != string(lifecycle.Sleeping) {
			t.Errorf("box is %s mid-stream, want sleeping", st)
		}
		if pids := h.vmmPIDsOf(a.ID); len(pids) != 0 {
			t.Errorf("box's VMM still runs mid-stream: %v", pids)
		}
		return resp, br
	}

	resp, br := stream()
	release <- struct{}{}
	rest, err := io.ReadAll(br)
	resp.Body.Close()
	if err != nil || string(rest) != "\ndata: [DONE]\n\n" {
		t.Errorf("rest of the stream: %q, %v", rest, err)
	}
	if st := h.state(a.ID); st != string(lifecycle.Running) {
		t.Errorf("box is %s once its answer ended, want running", st)
	}
	if out := h.run(a.ID, "cat", "/tmp/mem"); out != "kept" {
		t.Errorf("guest memory after the streamed call: %q", out)
	}

	// A client that goes away mid-stream: the box is resumed anyway.
	resp, _ = stream()
	resp.Body.Close()
	for deadline := time.Now().Add(3 * time.Minute); h.state(a.ID) != string(lifecycle.Running); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("box is %s after its client went away mid-stream, want running", h.state(a.ID))
		}
	}
	if out := h.run(a.ID, "cat", "/tmp/mem"); out != "kept" {
		t.Errorf("guest memory after the abandoned call: %q", out)
	}

	// Only the proxy on the TCP address.
	if resp, err := http.Get(base + "/v1/boxes"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /v1/boxes on the inference address: %v, %v", resp, err)
	} else {
		resp.Body.Close()
	}
	resp, err = http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `sailbox_wakes_total{reason="inference_end"} 2`; !strings.Contains(string(metrics), want) {
		t.Errorf("no %q in /metrics:\n%s", want, metrics)
	}
}

// logged is the address the daemon of h logged it is serving what on
// (msg="WHAT" address=ADDR).
func logged(t *testing.T, h *host, what string) string {
	t.Helper()
	re := regexp.MustCompile(`msg="` + regexp.QuoteMeta(what) + `" address=(\S+)`)
	m := re.FindStringSubmatch(h.logs.String())
	if m == nil {
		t.Fatalf("the daemon did not log %q with an address:\n%s", what, h.logs)
	}
	return m[1]
}
