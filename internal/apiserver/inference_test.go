package apiserver_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/internal/apiserver/servertest"
)

// recorder is an upstream that remembers the paths it was asked for.
type recorder struct {
	mu    sync.Mutex
	paths []string
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec.mu.Lock()
	rec.paths = append(rec.paths, r.URL.EscapedPath())
	rec.mu.Unlock()
	io.WriteString(w, "ok")
}

func (rec *recorder) seen() []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]string(nil), rec.paths...)
}

// inferenceEnv starts a server proxying to upstream+"/base" and a box to
// make calls for.
func inferenceEnv(t *testing.T, upstream string) (*servertest.Env, string) {
	t.Helper()
	u, err := url.Parse(upstream + "/base")
	if err != nil {
		t.Fatal(err)
	}
	env := servertest.Start(t, &servertest.Options{InferenceUpstream: u})
	b, err := client.New(env.Socket).Create(context.Background(), api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return env, b.ID
}

// call sends an inference call with the raw (escaped) path, without
// following redirects, and returns the answer.
func call(t *testing.T, env *servertest.Env, box, rawPath string) *http.Response {
	t.Helper()
	hc := &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", env.Socket)
		}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequest("POST", "http://sailboxd"+rawPath, strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(api.SailboxIDHeader, box)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestInferenceRefusesDotSegments(t *testing.T) {
	rec := &recorder{}
	upstream := httptest.NewServer(rec)
	defer upstream.Close()
	env, box := inferenceEnv(t, upstream.URL)
	for _, p := range []string{
		"/v1/inference/%2e%2e/%2e%2e/admin",
		"/v1/inference/v1/%2E%2E/%2e%2e/admin",
		"/v1/inference/v1/%2e/chat",
		"/v1/inference/..%2f..%2fadmin",
		"/v1/inference/v1%2f..%2f..%2fadmin",
		"/v1/inference/v1%2F.%2Fchat",
		"/v1/inference/%2e%2e",
	} {
		resp := call(t, env, box, p)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `"code":"bad_request"`) {
			t.Errorf("%s: %d %s, want 400 bad_request", p, resp.StatusCode, body)
		}
	}
	if seen := rec.seen(); len(seen) != 0 {
		t.Errorf("upstream was called for %q", seen)
	}
	// Dots inside a segment are no dot segment.
	resp := call(t, env, box, "/v1/inference/v1/a..b/.c/d.")
	if body, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || string(body) != "ok" {
		t.Errorf("call with dots in segments: %d %s", resp.StatusCode, body)
	}
	if seen := rec.seen(); len(seen) != 1 || seen[0] != "/base/v1/a..b/.c/d." {
		t.Errorf("upstream saw %q", seen)
	}
}

func TestInferenceDoesNotFollowRedirects(t *testing.T) {
	elsewhere := &recorder{}
	other := httptest.NewServer(elsewhere)
	defer other.Close()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/stolen", http.StatusTemporaryRedirect)
	}))
	defer upstream.Close()
	env, box := inferenceEnv(t, upstream.URL)
	resp := call(t, env, box, "/v1/inference/v1/chat/completions")
	if resp.StatusCode != http.StatusTemporaryRedirect || resp.Header.Get("Location") != other.URL+"/stolen" {
		t.Errorf("redirecting upstream answered %d, Location %q; want its 307 passed on", resp.StatusCode, resp.Header.Get("Location"))
	}
	if seen := elsewhere.seen(); len(seen) != 0 {
		t.Errorf("the proxy followed the redirect to %q", seen)
	}
}
