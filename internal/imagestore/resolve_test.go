package imagestore

import (
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestWalk(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"usr/bin", "a"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{
		"bin":        "usr/bin",
		"abs":        "/usr",
		"hostetc":    "/etc",
		"a/up":       "..",
		"a/chain":    "up/../..",
		"a/deep":     "../../../usr",
		"loop":       "loop",
		"usr/bin/sh": "/bin/busybox",
	} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, c := range []struct {
		name       string
		mode       walkMode
		followLast bool
		want       string // physical path; "" when an error is wanted
		err        error  // checked with errors.Is, or escape
	}{
		{"bin", strictWalk, true, "usr/bin", nil},
		{"bin", strictWalk, false, "bin", nil},
		{"a/up/usr", strictWalk, true, "usr", nil},
		{"abs/bin", strictWalk, true, "", errEscape},
		{"hostetc", strictWalk, true, "", errEscape},
		{"a/chain", strictWalk, true, "", errEscape},
		{"a/deep", strictWalk, true, "", errEscape},
		{"..", strictWalk, true, "", errEscape},
		{"loop/x", strictWalk, true, "", syscall.ELOOP},
		{"missing/x", strictWalk, true, "", fs.ErrNotExist},
		{"abs/bin", guestWalk, true, "usr/bin", nil},
		{"a/chain/usr", guestWalk, true, "usr", nil},
		{"a/deep", guestWalk, true, "usr", nil},
		{"../../usr", guestWalk, true, "usr", nil},
		{"bin/sh", guestWalk, true, "", fs.ErrNotExist}, // /bin/busybox is missing
		{"bin/sh", guestWalk, false, "usr/bin/sh", nil},
	} {
		got, err := walk(root, c.name, c.mode, c.followLast, nil)
		switch {
		case c.err == errEscape:
			var esc *escapeError
			if !errors.As(err, &esc) {
				t.Errorf("walk %s (mode %d): %q %v, want an escape", c.name, c.mode, got, err)
			}
		case c.err != nil:
			if !errors.Is(err, c.err) {
				t.Errorf("walk %s (mode %d): %q %v, want %v", c.name, c.mode, got, err, c.err)
			}
		case err != nil || got != c.want:
			t.Errorf("walk %s (mode %d): %q %v, want %q", c.name, c.mode, got, err, c.want)
		}
	}
}

// errEscape marks cases that want an *escapeError.
var errEscape = errors.New("escape")

func TestLoopbackOnlyPlainHTTP(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost:5000": true, "LOCALHOST": true, "127.0.0.1:80": true, "127.8.9.1": true, "[::1]:5000": true, "::1": true,
		"10.0.0.1:5000": false, "192.168.1.2": false, "registry.local:5000": false, "example.com": false, "": false,
	} {
		if got := isLoopback(host); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", host, got, want)
		}
	}
	var reached []string
	rt := loopbackHTTPOnly{roundTripFunc(func(r *http.Request) (*http.Response, error) {
		reached = append(reached, r.URL.String())
		return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
	})}
	for _, c := range []struct {
		url string
		ok  bool
	}{
		{"http://10.1.2.3:5000/v2/", false},
		{"http://registry.local/v2/", false},
		{"http://127.0.0.1:5000/v2/", true},
		{"http://[::1]:5000/v2/", true},
		{"https://10.1.2.3:5000/v2/", true},
	} {
		req, err := http.NewRequest(http.MethodGet, c.url, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = rt.RoundTrip(req)
		if c.ok != (err == nil) || (!c.ok && !errors.Is(err, errPlainHTTP)) {
			t.Errorf("%s: %v, want allowed=%v", c.url, err, c.ok)
		}
	}
	if len(reached) != 3 {
		t.Errorf("reached the transport: %v, want the three allowed", reached)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
