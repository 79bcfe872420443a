package debtest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var (
	pkgA = Package{Name: "sailbox-hello-a", Version: "1.0-1"}
	pkgB = Package{Name: "sailbox-hello-b", Version: "2.0-1"}
)

// The .deb is one dpkg-deb accepts, with the control fields and files it
// was given, and a program that prints its line.
func TestDebDpkgDeb(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb (package dpkg) is not installed")
	}
	p := filepath.Join(t.TempDir(), "a.deb")
	if err := os.WriteFile(p, pkgA.Deb(t), 0o644); err != nil {
		t.Fatal(err)
	}
	info, err := exec.Command("dpkg-deb", "--info", p).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb --info: %v\n%s", err, info)
	}
	for _, want := range []string{" Package: sailbox-hello-a\n", " Version: 1.0-1\n", " Architecture: all\n", " postinst "} {
		if !bytes.Contains(info, []byte(want)) {
			t.Errorf("dpkg-deb --info lacks %q:\n%s", want, info)
		}
	}
	contents, err := exec.Command("dpkg-deb", "--contents", p).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb --contents: %v\n%s", err, contents)
	}
	for _, want := range []string{"./usr/bin/sailbox-hello-a\n", "./usr/share/doc/sailbox-hello-a/copyright\n"} {
		if !bytes.Contains(contents, []byte(want)) {
			t.Errorf("dpkg-deb --contents lacks %q:\n%s", want, contents)
		}
	}
	dir := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-x", p, dir).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x: %v\n%s", err, out)
	}
	out, err := exec.Command(filepath.Join(dir, "usr/bin/sailbox-hello-a")).Output()
	if err != nil || string(out) != pkgA.Hello() {
		t.Errorf("the packaged program printed %q, %v", out, err)
	}
}

// get fetches path from the repository over HTTP.
func get(t *testing.T, r *Repo, path string) []byte {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/%s", r.Port(), path))
	if err != nil {
		t.Fatalf("GET /%s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /%s: %s, %v", path, resp.Status, err)
	}
	return b
}

// stanzas parses a Debian control file (a Release file, a Packages
// index) into its paragraphs, each a map of field to value; a
// multi-line value keeps its continuation lines, newline-separated.
func stanzas(t *testing.T, b []byte) []map[string]string {
	t.Helper()
	var out []map[string]string
	cur, last := map[string]string(nil), ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			cur = nil
		case line[0] == ' ' || line[0] == '\t':
			if cur == nil || last == "" {
				t.Fatalf("continuation line %q outside a field", line)
			}
			cur[last] += "\n" + strings.TrimSpace(line)
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				t.Fatalf("line %q is not a field", line)
			}
			if cur == nil {
				cur = map[string]string{}
				out = append(out, cur)
			}
			if _, dup := cur[k]; dup {
				t.Fatalf("field %s twice in a paragraph", k)
			}
			cur[k], last = strings.TrimSpace(v), k
		}
	}
	return out
}

// The repository's indexes are what apt reads, read back the way apt
// does: the Release file lists Packages and Packages.gz with the sizes
// and SHA-256 sums of what is served, Packages.gz is Packages, and each
// package's paragraph is its control file plus the Filename, Size and
// SHA256 of the .deb served there, which is the package's.
func TestRepoIndexes(t *testing.T) {
	r := NewRepo(t, pkgA, pkgB)
	rel := stanzas(t, get(t, r, "Release"))
	if len(rel) != 1 {
		t.Fatalf("Release has %d paragraphs, want 1", len(rel))
	}
	var listed []string
	for _, line := range strings.Split(rel[0]["SHA256"], "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 3 {
			t.Fatalf("Release's SHA256 line %q", line)
		}
		body := get(t, r, f[2])
		if f[0] != sha256Hex(body) || f[1] != strconv.Itoa(len(body)) {
			t.Errorf("Release lists %s as %s bytes, sha256 %s; served %d bytes, sha256 %s", f[2], f[1], f[0], len(body), sha256Hex(body))
		}
		listed = append(listed, f[2])
	}
	if !slices.Equal(listed, []string{"Packages", "Packages.gz"}) {
		t.Errorf("Release lists %v", listed)
	}

	index := get(t, r, "Packages")
	zr, err := gzip.NewReader(bytes.NewReader(get(t, r, "Packages.gz")))
	if err != nil {
		t.Fatal(err)
	}
	if unzipped, err := io.ReadAll(zr); err != nil || !bytes.Equal(unzipped, index) {
		t.Errorf("Packages.gz unzips to %d bytes (%v), Packages is %d", len(unzipped), err, len(index))
	}
	paras := stanzas(t, index)
	if len(paras) != 2 {
		t.Fatalf("Packages has %d paragraphs, want 2:\n%s", len(paras), index)
	}
	for i, p := range []Package{pkgA, pkgB} {
		got, control := paras[i], stanzas(t, []byte(p.Control()))[0]
		for k, v := range control {
			if got[k] != v {
				t.Errorf("%s's paragraph has %s %q, its control file %q", p.Name, k, got[k], v)
			}
		}
		deb := get(t, r, got["Filename"])
		if !bytes.Equal(deb, p.Deb(t)) {
			t.Errorf("%s: the .deb served at %s is not the package's", p.Name, got["Filename"])
		}
		if got["Size"] != strconv.Itoa(len(deb)) || got["SHA256"] != sha256Hex(deb) {
			t.Errorf("%s's paragraph says %s bytes, sha256 %s; served %d bytes, sha256 %s", p.Name, got["Size"], got["SHA256"], len(deb), sha256Hex(deb))
		}
	}
	if _, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/InRelease", r.Port())); err != nil {
		t.Fatal(err)
	}
	want := []string{"/Release", "/Packages", "/Packages.gz", "/Packages", "/Packages.gz", "/" + PoolPath(pkgA), "/" + PoolPath(pkgB), "/InRelease"}
	if got := r.Requests(); !slices.Equal(got, want) {
		t.Errorf("requests %v, want %v", got, want)
	}
}

// apt itself, where it is installed, takes the repository from its
// sources line: apt-get update reads its indexes and apt-get download
// fetches each package byte for byte. apt runs on a state, cache and
// sources of the test's own (the host's are neither read nor written),
// and dials only the repository, on loopback.
func TestRepoAptGet(t *testing.T) {
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("apt-get (package apt) is not installed")
	}
	r := NewRepo(t, pkgA, pkgB)
	dir := t.TempDir()
	for _, d := range []string{"etc/apt.conf.d", "etc/preferences.d", "etc/sources.list.d", "state/lists/partial", "cache/archives/partial", "log", "work"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"etc/sources.list": r.SourcesLine("127.0.0.1"),
		"state/status":     "",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// apt reads the file APT_CONFIG names first; as it moves Dir::Etc,
	// the host's apt.conf, apt.conf.d and sources are never read.
	conf := strings.Join([]string{
		`Dir::Etc "` + dir + `/etc/";`,
		`Dir::Etc::main "apt.conf";`,
		`Dir::Etc::parts "apt.conf.d";`,
		`Dir::Etc::preferences "preferences";`,
		`Dir::Etc::preferencesparts "preferences.d";`,
		`Dir::Etc::sourcelist "sources.list";`,
		`Dir::Etc::sourceparts "sources.list.d";`,
		`Dir::State "` + dir + `/state/";`,
		`Dir::State::status "` + dir + `/state/status";`,
		`Dir::Cache "` + dir + `/cache/";`,
		`Dir::Log "` + dir + `/log/";`,
		// As root, apt would download as its sandbox user, who cannot
		// reach the test's temporary directory.
		`APT::Sandbox::User "root";`,
		`Acquire::Languages "none";`,
		`Acquire::Retries "0";`,
	}, "\n") + "\n"
	confPath := filepath.Join(dir, "apt.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	apt := func(wd string, args ...string) string {
		t.Helper()
		cmd := exec.Command("apt-get", args...)
		cmd.Dir = wd
		cmd.Env = append(os.Environ(), "APT_CONFIG="+confPath, "LC_ALL=C")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("apt-get %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if out := apt(dir, "update"); strings.Contains(out, "W:") || strings.Contains(out, "E:") {
		t.Errorf("apt-get update warned:\n%s", out)
	}
	apt(filepath.Join(dir, "work"), "download", pkgA.Name, pkgB.Name)
	for _, p := range []Package{pkgA, pkgB} {
		got, err := os.ReadFile(filepath.Join(dir, "work", filepath.Base(PoolPath(p))))
		if err != nil || !bytes.Equal(got, p.Deb(t)) {
			t.Errorf("apt-get download %s: %d bytes, %v; want the package's .deb", p.Name, len(got), err)
		}
	}
	for _, want := range []string{"/Release", "/" + PoolPath(pkgA), "/" + PoolPath(pkgB)} {
		if !slices.Contains(r.Requests(), want) {
			t.Errorf("apt never asked for %s: %v", want, r.Requests())
		}
	}
}
