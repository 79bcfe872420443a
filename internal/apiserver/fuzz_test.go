package apiserver_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/internal/apiserver/servertest"
)

// FuzzPostBodies sends arbitrary bodies to every POST and PUT route, for
// a running box: no panic, never a 5xx for what the daemon could refuse,
// and a 400 (or 413) for a body that is not JSON.
func FuzzPostBodies(f *testing.F) {
	for _, seed := range []string{
		``, `{}`, `{"argv":["echo","x"]}`, `{"guest_port":80}`, `{"memory_mib":128}`, `{"argv":[]}`,
		`{`, `null`, `[]`, `"x"`, `{"argv":["echo"],"stdin":"!!"}`, `{"timeout_ms":-1,"argv":["x"]}`,
		`{"guest_port":80,"host_addr":"::1"}`, `{"vcpus":1e9}`, "\x00", `{"a":1}`,
	} {
		f.Add(seed)
	}
	env := servertest.Start(f, nil)
	rec := httptest.NewRecorder()
	env.Server.ServeHTTP(rec, httptest.NewRequest("POST", "/v1/boxes", strings.NewReader(`{}`)))
	var box struct{ ID string }
	if rec.Code != 201 || json.Unmarshal(rec.Body.Bytes(), &box) != nil {
		f.Fatalf("create: %d %s", rec.Code, rec.Body)
	}
	var paths []string
	for _, r := range env.Server.Routes() {
		if r.Method != "POST" && r.Method != "PUT" || strings.Contains(r.Pattern, "inference") {
			continue
		}
		p := strings.ReplaceAll(r.Pattern, "{id}", box.ID)
		if r.Method == "PUT" {
			p += "?path=/fuzz"
		}
		paths = append(paths, r.Method+" "+p)
	}
	f.Fuzz(func(t *testing.T, body string) {
		for _, mp := range paths {
			method, path, _ := strings.Cut(mp, " ")
			rec := httptest.NewRecorder()
			env.Server.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
			switch {
			case rec.Code >= 500:
				// The fake's exec of an unknown command is a 500 (the
				// agent could not start it); nothing else may be.
				if !strings.HasSuffix(path, "/exec") {
					t.Errorf("%s %s %q: %d %s", method, path, body, rec.Code, rec.Body)
				}
			case method == "POST" && len(bytes.TrimSpace([]byte(body))) > 0 && !json.Valid([]byte(body)) &&
				rec.Code != http.StatusBadRequest && rec.Code != http.StatusRequestEntityTooLarge:
				t.Errorf("%s %s with garbage %q: %d, want 400", method, path, body, rec.Code)
			}
			// Keep the box running for the next route: pause, sleep and
			// fork change things.
			if rec.Code < 300 && (strings.HasSuffix(path, "/pause") || strings.HasSuffix(path, "/sleep")) {
				env.Manager.Resume(t.Context(), box.ID)
			}
			if rec.Code < 300 && strings.HasSuffix(path, "/fork") {
				var fr struct{ Box struct{ ID string } }
				json.Unmarshal(rec.Body.Bytes(), &fr)
				env.Manager.Terminate(t.Context(), fr.Box.ID)
			}
			if rec.Code == http.StatusCreated && strings.HasSuffix(path, "/ports") {
				var p struct {
					HostPort int `json:"host_port"`
				}
				json.Unmarshal(rec.Body.Bytes(), &p)
				env.Manager.Unexpose(t.Context(), box.ID, p.HostPort)
			}
			if rec.Code == http.StatusCreated && path == "/v1/boxes" {
				var b struct{ ID string }
				json.Unmarshal(rec.Body.Bytes(), &b)
				env.Manager.Terminate(t.Context(), b.ID)
			}
		}
	})
}
