package vmmbackend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/daemon"
)

// hybridListener is the host end of a hybrid vsock device in front of an
// agent: it answers each connection's CONNECT line as sailbox-vmm does
// before the agent's protocol begins.
type hybridListener struct{ net.Listener }

func (l hybridListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		// One byte at a time: nothing after the line may be lost.
		var line []byte
		b := make([]byte, 1)
		for len(line) < 32 && (len(line) == 0 || line[len(line)-1] != '\n') {
			if _, err := io.ReadFull(c, b); err != nil {
				break
			}
			line = append(line, b[0])
		}
		if string(line) != fmt.Sprintf("CONNECT %d\n", guestagent.Port) {
			c.Close()
			continue
		}
		if _, err := io.WriteString(c, "OK 1\n"); err != nil {
			c.Close()
			continue
		}
		return c, nil
	}
}

// The agent's typed refusals keep their meaning through the daemon: a
// guest file that does not exist is 404 not_found (not 500), a directory
// read as a file and a program that does not exist are 400 bad_request,
// each with the agent's message. The box is served by a real agent
// (guestagent.Server, on this host's files) behind its hybrid vsock
// socket, reached by the backend as after a daemon restart.
func TestAgentRefusalsKeepTheirStatus(t *testing.T) {
	b := newBackend(t)
	const id = "sb-1"
	cat := catalogWithRunningBoxes(t, id)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := b.files(id)
	os.MkdirAll(f.dir, 0o700)
	l, err := net.Listen("unix", f.apiSock)
	if err != nil {
		t.Fatal(err)
	}
	go vmmapi.Serve(ctx, l, hungVM{})
	vl, err := net.Listen("unix", f.vsockSock)
	if err != nil {
		t.Fatal(err)
	}
	go (&guestagent.Server{}).Serve(ctx, hybridListener{vl})

	srv := serveManager(t, ctx, cat, b)

	call := func(method, path, body string) (int, api.ErrorBody) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var eb api.ErrorBody
		json.NewDecoder(resp.Body).Decode(&eb)
		return resp.StatusCode, eb
	}
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	for _, tc := range []struct {
		what, method, path, body string
		status                   int
		code, says               string
	}{
		{"read of a missing file", "GET", "/v1/boxes/" + id + "/files?path=" + missing, "", http.StatusNotFound, api.CodeNotFound, missing},
		{"write under a missing directory", "PUT", "/v1/boxes/" + id + "/files?path=" + missing + "/f", "x", http.StatusNotFound, api.CodeNotFound, missing},
		{"read of a directory", "GET", "/v1/boxes/" + id + "/files?path=" + dir, "", http.StatusBadRequest, api.CodeBadRequest, dir},
	} {
		status, eb := call(tc.method, tc.path, tc.body)
		if status != tc.status || eb.Code != tc.code || !strings.Contains(eb.Error, tc.says) {
			t.Errorf("%s: %d %+v, want %d %s naming %s", tc.what, status, eb, tc.status, tc.code, tc.says)
		}
	}

	// The backend's own error, for callers in Go.
	_, err = b.Exec(ctx, id, api.ExecRequest{Argv: []string{"/no/such/program"}}, io.Discard, io.Discard)
	var ae *guestagent.Error
	if !errors.Is(err, daemon.ErrInvalidArgument) || !errors.As(err, &ae) || ae.Code != guestagent.CodeExecFailed {
		t.Errorf("exec of a missing program: %v, want daemon.ErrInvalidArgument wrapping the agent's exec_failed", err)
	}
	// A code the daemon gives no kind stays internal.
	if err := agentError(&guestagent.Error{Code: "from_a_newer_agent", Message: "m"}); errors.Is(err, daemon.ErrNotFound) || errors.Is(err, daemon.ErrInvalidArgument) {
		t.Errorf("an unknown agent code became a daemon kind: %v", err)
	}
}
