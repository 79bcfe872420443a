package apiserver

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// shortTimeout stands in for every timeout in these tests; each test
// waits at most testWait (many times longer) for the server to act.
const (
	shortTimeout = 100 * time.Millisecond
	testWait     = 5 * time.Second
)

// serveTest serves h with t until the test ends and returns the socket.
func serveTest(t *testing.T, h http.Handler, ct connTimeouts) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sbt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, l, h, ct) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return sock
}

// dial connects to sock; reads on the connection give up after testWait.
func dial(t *testing.T, sock string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(testWait))
	return c
}

// readToClose reads c until the server closes it and returns what came.
// A read that times out means the server kept the connection open.
func readToClose(t *testing.T, c net.Conn, what string) string {
	t.Helper()
	data, err := io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: the server kept the connection open for %v (got %q)", what, testWait, data)
	}
	return string(data)
}

func TestStalledBodyIsCutOff(t *testing.T) {
	s := New(Config{BodyTimeout: shortTimeout})
	sock := serveTest(t, s, connTimeouts{header: time.Minute, idle: time.Minute})
	c := dial(t, sock)
	// The headers promise 100 bytes; one comes, then nothing.
	io.WriteString(c, "POST /v1/boxes HTTP/1.1\r\nHost: sailboxd\r\nContent-Length: 100\r\n\r\n{")
	got := readToClose(t, c, "stalled body")
	if !strings.HasPrefix(got, "HTTP/1.1 400 ") || !strings.Contains(got, "read body") {
		t.Errorf("stalled body answered %q, want a 400 about the body", got)
	}
}

func TestStalledUploadIsCutOff(t *testing.T) {
	s := New(Config{BodyTimeout: shortTimeout})
	read := make(chan error, 1)
	h := s.wrap(uploading(func(w http.ResponseWriter, r *http.Request) error {
		// The upload as a whole takes longer than the timeout, but no
		// single read waits that long until the client stops.
		_, err := io.Copy(io.Discard, r.Body)
		read <- err
		return badRequest("read body: %v", err)
	}))
	sock := serveTest(t, h, connTimeouts{header: time.Minute, idle: time.Minute})
	c := dial(t, sock)
	io.WriteString(c, "PUT /upload HTTP/1.1\r\nHost: sailboxd\r\nContent-Length: 100\r\n\r\n")
	// An upload that keeps sending is not limited in total...
	for range 4 {
		io.WriteString(c, "x")
		time.Sleep(shortTimeout / 2)
	}
	// ...but one that stops is.
	readToClose(t, c, "stalled upload")
	if err := <-read; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("stalled upload read: %v, want a timeout", err)
	}
}

func TestStreamOutlivesBodyTimeout(t *testing.T) {
	s := New(Config{BodyTimeout: shortTimeout})
	h := s.wrap(func(w http.ResponseWriter, r *http.Request) error {
		var req struct{ N int }
		if err := decode(w, r, maxRequest, &req); err != nil {
			return err
		}
		// Stream for several body timeouts, as exec does: neither the
		// answer nor the call's context may be cut by the body's deadline.
		rc := http.NewResponseController(w)
		w.WriteHeader(http.StatusOK)
		for i := range req.N {
			select {
			case <-r.Context().Done():
				return r.Context().Err()
			case <-time.After(shortTimeout):
			}
			io.WriteString(w, strings.Repeat("x", i+1)+"\n")
			rc.Flush()
		}
		_, err := io.WriteString(w, "done\n")
		return err
	})
	sock := serveTest(t, h, connTimeouts{header: time.Minute, idle: time.Minute})
	c := dial(t, sock)
	io.WriteString(c, "POST /stream HTTP/1.1\r\nHost: sailboxd\r\nContent-Length: 8\r\n\r\n{\"N\": 5}")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || !strings.HasSuffix(string(body), "xxxxx\ndone\n") {
		t.Errorf("stream: %d %q, %v", resp.StatusCode, body, err)
	}
}

func TestStalledHeadersAreCutOff(t *testing.T) {
	s := New(Config{})
	sock := serveTest(t, s, connTimeouts{header: shortTimeout, idle: time.Minute})
	c := dial(t, sock)
	io.WriteString(c, "GET /v1/boxes HTTP/1.1\r\nHo")
	readToClose(t, c, "stalled headers")
}

func TestIdleConnectionIsClosed(t *testing.T) {
	s := New(Config{})
	sock := serveTest(t, s, connTimeouts{header: time.Minute, idle: shortTimeout})
	c := dial(t, sock)
	io.WriteString(c, "GET /v1/nope HTTP/1.1\r\nHost: sailboxd\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 404 || resp.Close {
		t.Fatalf("first call: %d, close %v; want a kept-alive 404", resp.StatusCode, resp.Close)
	}
	if rest, err := io.ReadAll(br); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("idle connection kept open for %v (got %q)", testWait, rest)
	}
}
