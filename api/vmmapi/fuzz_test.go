package vmmapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

// Whatever a client sends the control socket, the handler answers with a
// status the API documents and, for an error, a JSON error body; it never
// panics, and a request it refuses never reaches the controller.
func FuzzHandler(f *testing.F) {
	for _, seed := range []struct{ method, path, body string }{
		{"GET", "/status", ""},
		{"POST", "/checkpoint", `{"id":"c1"}`},
		{"POST", "/checkpoint", `{"id":1}`},
		{"POST", "/pause", ""},
		{"POST", "/working-set", "junk"},
		{"DELETE", "/status", ""},
		{"GET", "/../etc/passwd", ""},
	} {
		f.Add(seed.method, seed.path, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		req, err := http.NewRequest(method, "http://vmm"+path, bytes.NewReader(body))
		if err != nil {
			return // not an HTTP request a client could send
		}
		vm := &fakeVM{}
		w := httptest.NewRecorder()
		Handler(vm).ServeHTTP(w, req)
		switch w.Code {
		case 200, 202, 204, 301, 307, 308:
			return
		case 400, 404, 405, 409:
		default:
			t.Fatalf("%s %q %q: status %d", method, path, body, w.Code)
		}
		if w.Code == 405 || w.Code >= 300 && w.Code < 400 {
			return // the mux's own answers
		}
		var eb errorBody
		if err := json.Unmarshal(w.Body.Bytes(), &eb); err != nil || eb.Error == "" {
			t.Fatalf("%s %q: status %d with body %q, want a JSON error", method, path, w.Code, w.Body.Bytes())
		}
		if w.Code == 400 && (vm.shutdowns.Load() != 0 || vm.saves.Load() != 0) {
			t.Fatalf("%s %q: refused, yet the controller was called", method, path)
		}
	})
}
