package apiserver_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/apiserver"
	"github.com/sailbox-dev/sailbox/internal/apiserver/servertest"
)

// streamer is an upstream that answers with server-sent events: the
// first at once, the rest only once the test says so (next), so that a
// client that has the first event got it while the upstream was still
// answering. What it did with its call it reports on done: nil when it
// wrote the whole answer, the call's context error when the proxy gave
// up on it first.
type streamer struct {
	// breakOff makes it abort the answer after the first event instead
	// of finishing it.
	breakOff bool
	next     chan struct{}
	done     chan error
}

func newStreamer(t *testing.T, breakOff bool) (*streamer, string) {
	s := &streamer{breakOff: breakOff, next: make(chan struct{}), done: make(chan error, 1)}
	up := httptest.NewServer(s)
	t.Cleanup(up.Close)
	return s, up.URL
}

const firstEvent = "data: {\"delta\":\"Hel\"}\n\n"

func (s *streamer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/event-stream")
	io.WriteString(w, firstEvent)
	http.NewResponseController(w).Flush()
	select {
	case <-s.next:
	case <-r.Context().Done():
		s.done <- r.Context().Err()
		return
	}
	if s.breakOff {
		s.done <- errors.New("broke off")
		panic(http.ErrAbortHandler)
	}
	io.WriteString(w, "data: {\"delta\":\"lo\"}\n\n")
	io.WriteString(w, "data: [DONE]\n\n")
	s.done <- nil
}

// startStream sends a streaming inference call for box through env's
// socket and returns the answer with its first event read.
func startStream(t *testing.T, env *servertest.Env, box string) (*http.Response, *bufio.Reader) {
	t.Helper()
	resp := call(t, env, box, "/v1/inference/v1/chat/completions")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("streaming call: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if resp.ContentLength != -1 {
		t.Errorf("streamed answer has Content-Length %d", resp.ContentLength)
	}
	br := bufio.NewReader(resp.Body)
	if got := readEvent(t, br); got != firstEvent {
		t.Fatalf("first event: %q", got)
	}
	return resp, br
}

// readEvent reads one server-sent event, through its blank line.
func readEvent(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	var ev strings.Builder
	for {
		line, err := br.ReadString('\n')
		ev.WriteString(line)
		if err != nil {
			t.Fatalf("read event: %q, %v", ev.String(), err)
		}
		if line == "\n" {
			return ev.String()
		}
	}
}

func boxState(t *testing.T, env *servertest.Env, id string) lifecycle.State {
	t.Helper()
	b, err := env.Manager.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return b.State
}

// waitState waits (a minute at most) for box id to be in state want.
func waitState(t *testing.T, env *servertest.Env, id string, want lifecycle.State) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); boxState(t, env, id) != want; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("box is %s, want %s", boxState(t, env, id), want)
		}
	}
}

// restores counts the fake backend's restores of box id: its wakes.
func restores(env *servertest.Env, id string) int {
	n := 0
	for _, c := range env.Fake.Calls() {
		if strings.HasPrefix(c, "Restore "+id) {
			n++
		}
	}
	return n
}

// A streamed answer reaches the client event by event while the upstream
// is still answering, with the box asleep; the box is running again by
// the time the answer ends.
func TestInferenceStreamsWhileTheBoxSleeps(t *testing.T) {
	up, url := newStreamer(t, false)
	env, box := inferenceEnv(t, url)
	resp, br := startStream(t, env, box)
	if st := boxState(t, env, box); st != lifecycle.Sleeping {
		t.Errorf("box is %s mid-stream, want sleeping", st)
	}
	close(up.next)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "data: {\"delta\":\"lo\"}\n\ndata: [DONE]\n\n" {
		t.Fatalf("rest of the stream: %q, %v", rest, err)
	}
	if err := <-up.done; err != nil {
		t.Errorf("upstream: %v", err)
	}
	resp.Body.Close()
	if st := boxState(t, env, box); st != lifecycle.Running {
		t.Errorf("box is %s once the answer ended, want running", st)
	}
	if n := restores(env, box); n != 1 {
		t.Errorf("box restored %d times, want once", n)
	}
}

// An answer of known length is passed on without it, so that it too ends
// only once the box is running again.
func TestInferenceAnswerEndsAfterTheResume(t *testing.T) {
	up := httptest.NewServer(&recorder{})
	defer up.Close()
	env, box := inferenceEnv(t, up.URL)
	resp := call(t, env, box, "/v1/inference/v1/models")
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || string(body) != "ok" {
		t.Fatalf("call: %d %q, %v", resp.StatusCode, body, err)
	}
	if resp.ContentLength != -1 {
		t.Errorf("the upstream's Content-Length was passed on: %d", resp.ContentLength)
	}
	if st := boxState(t, env, box); st != lifecycle.Running {
		t.Errorf("box is %s when its answer ended, want running", st)
	}
}

// A client that goes away mid-stream ends the upstream call, and the box
// is resumed all the same, once.
func TestInferenceClientGoneMidStream(t *testing.T) {
	up, url := newStreamer(t, false)
	env, box := inferenceEnv(t, url)
	resp, _ := startStream(t, env, box)
	if st := boxState(t, env, box); st != lifecycle.Sleeping {
		t.Errorf("box is %s mid-stream, want sleeping", st)
	}
	resp.Body.Close() // mid-stream: closes the connection
	if err := <-up.done; !errors.Is(err, context.Canceled) {
		t.Errorf("upstream call after the client went away: %v, want it cancelled", err)
	}
	waitState(t, env, box, lifecycle.Running)
	if n := restores(env, box); n != 1 {
		t.Errorf("box restored %d times, want once", n)
	}
}

// An upstream that breaks off its answer has it cut short for the
// client too (no clean end), after the box is resumed.
func TestInferenceUpstreamBreaksOff(t *testing.T) {
	up, url := newStreamer(t, true)
	env, box := inferenceEnv(t, url)
	_, br := startStream(t, env, box)
	close(up.next)
	if rest, err := io.ReadAll(br); err == nil {
		t.Errorf("a broken-off answer ended cleanly after %q", rest)
	}
	<-up.done
	if st := boxState(t, env, box); st != lifecycle.Running {
		t.Errorf("box is %s after its answer was cut, want running", st)
	}
	if n := restores(env, box); n != 1 {
		t.Errorf("box restored %d times, want once", n)
	}
}

// The inference handler on a TCP address serves the proxy, streaming,
// and nothing of the box API.
func TestInferenceHandlerOnTCP(t *testing.T) {
	up, url := newStreamer(t, false)
	env, box := inferenceEnv(t, url)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- apiserver.Serve(ctx, l, env.Server.InferenceHandler()) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	base := "http://" + l.Addr().String()

	req, _ := http.NewRequest("POST", base+"/v1/inference/v1/chat/completions", strings.NewReader(`{"stream":true}`))
	req.Header.Set(api.SailboxIDHeader, box)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if got := readEvent(t, br); resp.StatusCode != 200 || got != firstEvent {
		t.Fatalf("over TCP: %d, first event %q", resp.StatusCode, got)
	}
	if st := boxState(t, env, box); st != lifecycle.Sleeping {
		t.Errorf("box is %s mid-stream, want sleeping", st)
	}
	close(up.next)
	if rest, err := io.ReadAll(br); err != nil || !strings.HasSuffix(string(rest), "data: [DONE]\n\n") {
		t.Errorf("rest of the stream over TCP: %q, %v", rest, err)
	}
	if st := boxState(t, env, box); st != lifecycle.Running {
		t.Errorf("box is %s after the stream, want running", st)
	}

	for _, c := range []struct{ method, path string }{
		{"GET", "/v1/boxes"}, {"POST", "/v1/boxes"}, {"GET", "/v1/boxes/" + box}, {"DELETE", "/v1/boxes/" + box}, {"GET", "/"},
	} {
		req, _ := http.NewRequest(c.method, base+c.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), `"code":"not_found"`) {
			t.Errorf("%s %s over the inference address: %d %s, want 404", c.method, c.path, resp.StatusCode, body)
		}
	}
	if st := boxState(t, env, box); st != lifecycle.Running {
		t.Errorf("box is %s after calls of the box API over TCP", st)
	}
}
