package debtest

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Repo is a flat apt repository, the kind one sources line names with
// the distribution "./":
//
//	deb [trusted=yes] http://HOST:PORT/ ./
//
// It serves, on the host's 127.0.0.1, a Release file that lists the
// Packages index (plain and gzipped) with its sizes and SHA-256 sums,
// that index (each package's control file with its Filename, Size and
// SHA256), and the .debs under pool/. It is unsigned: no InRelease or
// Release.gpg (404), hence trusted=yes. It records every request, so
// that a test can tell what a box fetched and when.
type Repo struct {
	files map[string][]byte // by URL path, without the leading /
	port  int

	mu       sync.Mutex
	requests []string // guarded by mu: every request's path, in order
}

// NewRepo builds the repository of pkgs and serves it until the test
// ends.
func NewRepo(t testing.TB, pkgs ...Package) *Repo {
	t.Helper()
	r := &Repo{files: map[string][]byte{}}
	var index bytes.Buffer
	for i, p := range pkgs {
		deb := p.Deb(t)
		name := PoolPath(p)
		r.files[name] = deb
		if i > 0 {
			index.WriteString("\n")
		}
		fmt.Fprintf(&index, "%sFilename: %s\nSize: %d\nSHA256: %s\n", p.Control(), name, len(deb), sha256Hex(deb))
	}
	r.files["Packages"] = index.Bytes()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(index.Bytes())
	if err := zw.Close(); err != nil {
		t.Fatalf("gzip the Packages index: %v", err)
	}
	r.files["Packages.gz"] = gz.Bytes()
	// Dated at the packages' time: apt warns of a Release without a Date
	// and refuses one dated after its clock.
	release := "Origin: Sailbox tests\nLabel: Sailbox tests\nSuite: sailbox-tests\nCodename: sailbox-tests\n" +
		"Date: " + time.Unix(epoch, 0).UTC().Format(time.RFC1123) + "\nSHA256:\n"
	for _, f := range []string{"Packages", "Packages.gz"} {
		release += fmt.Sprintf(" %s %d %s\n", sha256Hex(r.files[f]), len(r.files[f]), f)
	}
	r.files["Release"] = []byte(release)

	srv := httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	r.port, _ = strconv.Atoi(port)
	return r
}

// PoolPath is where the repository keeps p's .deb, relative to its root:
// the Packages index's Filename.
func PoolPath(p Package) string {
	return "pool/" + p.Name + "_" + p.Version + "_all.deb"
}

func (r *Repo) serve(w http.ResponseWriter, req *http.Request) {
	// apt asks a flat repository for "./Release", "./Packages.gz".
	p := path.Clean("/" + req.URL.Path)
	r.mu.Lock()
	r.requests = append(r.requests, p)
	r.mu.Unlock()
	body, ok := r.files[strings.TrimPrefix(p, "/")]
	if !ok || (req.Method != http.MethodGet && req.Method != http.MethodHead) {
		http.NotFound(w, req)
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if req.Method == http.MethodGet {
		w.Write(body)
	}
}

// Port is the TCP port the repository listens on, on 127.0.0.1.
func (r *Repo) Port() int { return r.port }

// SourcesLine is the one-line-style apt source for the repository, as a
// machine reaches the host's loopback at host.
func (r *Repo) SourcesLine(host string) string {
	return fmt.Sprintf("deb [trusted=yes] http://%s/ ./\n", net.JoinHostPort(host, strconv.Itoa(r.port)))
}

// File is what the repository serves at path (relative to its root), and
// whether it serves anything there.
func (r *Repo) File(path string) ([]byte, bool) {
	b, ok := r.files[path]
	return b, ok
}

// Requests lists the path of every request the repository has had
// (cleaned: "/./Release" is "/Release"), in the order they came.
func (r *Repo) Requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.requests)
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
